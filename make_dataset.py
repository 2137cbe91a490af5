"""Tokenize a corpus into rows of --ctx_len tokens with BOS first, saved under $DATASET_DIR/<family>/.

    python make_dataset.py --model toy-gpt2-a --hf_dataset python-stdlib --ctx_len 128
    python make_dataset.py --model stanford-gpt2-small-a --hf_dataset EleutherAI/pile --ctx_len 512
    python make_dataset.py --model gpt2 --hf_dataset path/to/folder_of_txt_or_jsonl
"""
import argparse

from universal_neurons.token_datasets import MakeDatasetConfig, main_make_dataset
from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_dataclass


def parse_args(argv=None) -> MakeDatasetConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, MakeDatasetConfig)
    return MakeDatasetConfig.from_args(p.parse_args(argv))


@cli_entry
def main(argv=None):
    main_make_dataset(parse_args(argv))


if __name__ == "__main__":
    main()
