"""Summarise a model's neuron activations on token datasets, as the original summary.py.

Writes <output_dir>/<model>/activations/<dataset>/: neuron_bin_counts.pt / neuron_bin_edges.pt
(histograms of pre-activations), neuron_max_activating_index.pt / _value.pt (top-k dataset
examples of post-activations), neuron_vocab_max(_ix).pt / neuron_vocab_mean(_ix).pt (top tokens
by per-token max / mean post-activation) and vocab_counts.pt. Formats: see
universal_neurons/activation_summary.py.

    python summary.py --model toy-gpt2-a --token_dataset python-stdlib.code.64
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model name (TransformerLens alias, hub id, folder or zoo model)")
    p.add_argument("--token_dataset", required=True, nargs="+",
                   help="token dataset name(s) under $DATASET_DIR/<family>/ (several share one model load)")
    p.add_argument("--output_dir", default=None, help="summary root (default $SUMMARY_DIR or summary_data)")
    p.add_argument("--n_bins", type=int, default=256, help="histogram edges; there are n_bins + 1 bins")
    p.add_argument("--bin_min", type=float, default=-10.0, help="first histogram edge")
    p.add_argument("--bin_max", type=float, default=15.0, help="last histogram edge")
    p.add_argument("--top_k_dataset_examples", type=int, default=50, help="max-activating tokens kept per neuron")
    p.add_argument("--top_vocab_k_truncate", type=int, default=100,
                   help="top tokens kept per neuron by max / mean activation (0 = skip, -1 = full [L, D, V] tensors)")
    p.add_argument("--max_memory_gb", type=float, default=4.0,
                   help="budget for the [layer, neuron, vocab] accumulators; layers are processed in groups that fit")
    p.add_argument("--exclude_special_tokens", action="store_true",
                   help="leave BOS/EOS/padding positions out of every statistic (default: count every "
                        "position, as the original)")
    add_common(p)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    from universal_neurons.activation_summary import run_summary

    run_summary(args.model, args.token_dataset, args.output_dir, batch_size=args.batch_size, n_bins=args.n_bins,
                bin_min=args.bin_min, bin_max=args.bin_max, top_k=args.top_k_dataset_examples,
                vocab_k=args.top_vocab_k_truncate, max_memory_gb=args.max_memory_gb, device=args.device,
                n_seq=args.n_seq, exclude_special=args.exclude_special_tokens,
                overwrite=args.overwrite)


if __name__ == "__main__":
    main()
