"""Weight summaries of every MLP neuron (the original weights.py).

Writes <save_path>/<model>/weights/: neuron_stats.csv, {k,q,v,o}_comps.pt, vocab_comps.pt,
neuron_comps.pt (see universal_neurons/weights.py for the definitions). A rerun skips files
that already exist unless --force.

    python weights.py --model stanford-gpt2-small-a --device cuda
"""
from __future__ import annotations

import argparse
from pathlib import Path

from universal_neurons import paths
from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_common


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="TransformerLens alias, hub id or local Hugging Face folder")
    parser.add_argument("--save_path", default=None,
                        help="root folder; the output is <save_path>/<model>/weights/ "
                             "(default: $SUMMARY_DIR or summary_data)")
    add_common(parser, "device")
    parser.add_argument("--block_size", type=int, default=512,
                        help="neuron rows per block; peak memory ~ 10 x block_size x max(d_vocab, n_neurons) x 4 bytes")
    parser.add_argument("--force", "--overwrite", dest="force", action="store_true",
                        help="recompute files that already exist (also when they were made from other weights)")
    # accepted so the original's command lines run; the original ignored both on its default path
    parser.add_argument("--causal_only", action="store_true", help="accepted for the original's command lines (unused)")
    parser.add_argument("--save_precision", type=int, default=8, choices=[8, 16, 32],
                        help="accepted for the original's command lines (unused: fp16 summaries)")
    parser.add_argument("--compute_full_stats", action="store_true",
                        help="the original's untested full-statistics path (it crashed there): not supported")
    return parser.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    if args.compute_full_stats:
        from universal_neurons.errors import UserError

        raise UserError("--compute_full_stats is not supported (the original's path behind it crashed); the default "
                        "summaries hold the compositions' histograms, moments and top/bottom entries")
    from universal_neurons.device import resolve_device
    from universal_neurons.models import load_model
    from universal_neurons.weights import check_block_size, save_weight_summaries

    device = resolve_device(args.device)
    root = Path(args.save_path) if args.save_path is not None else paths.summary_dir()
    out_dir = root / paths.model_dirname(args.model) / "weights"
    check_block_size(args.block_size)  # before the (slow) model load
    model = load_model(args.model, device=str(device))
    save_weight_summaries(model, out_dir, block_size=args.block_size, force=args.force, progress=True)
    print(f"weight summaries in {out_dir}")


if __name__ == "__main__":
    main()
