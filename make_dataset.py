"""Tokenize a corpus into rows of --ctx_len tokens with BOS first, saved under $DATASET_DIR/<family>/.

    python make_dataset.py --model toy-gpt2-a --hf_dataset python-stdlib --ctx_len 128
    python make_dataset.py --model stanford-gpt2-small-a --hf_dataset EleutherAI/pile --ctx_len 512
    python make_dataset.py --model gpt2 --hf_dataset path/to/folder_of_txt_or_jsonl
"""
import argparse

from universal_neurons.token_datasets import main_make_dataset
from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-gpt2-a", help="model whose tokenizer to use (decides the family folder)")
    p.add_argument("--hf_dataset", default="EleutherAI/pile",
                   help="hub dataset, alias (pile, openwebtext/owt, c4, code/python, c4_code/c4-code, wiki: "
                        "the original's 10k sample sets), 'python-stdlib' or a local folder")
    p.add_argument("--hf_dataset_split", default="test")
    p.add_argument("--ctx_len", type=int, default=512)
    p.add_argument("--output_dir", default=None, help="dataset root (default $DATASET_DIR or token_datasets)")
    p.add_argument("--mix_tokens", nargs="*", default=None,
                   help="sizes of the seeded all-<N> mixes, e.g. 100k 1m (default: 1m for python-stdlib, none otherwise)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixes' row sampling")
    add_common(p, "n_seq", "overwrite")  # --n_seq: rows per dataset or subset
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    main_make_dataset(parse_args(argv))


if __name__ == "__main__":
    main()
