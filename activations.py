"""Cache neuron activations on a token dataset, as the original activations.py.

Neuron mode (--neuron_subset / --neuron_subset_file): <output_dir>/<model>/<dataset>/{l}.{n}.pt
(fp16 [n_seq * ctx]) plus loss.pt, entropy.pt and rank.pt ([n_seq, ctx]).
Layer mode (no subset): {l}.all.{agg}.all.pt per layer, aggregated over positions
(none / mean / max / last), 8-bit per-neuron quantised by default. Formats: see
universal_neurons/activation_cache.py.

    python activations.py --model toy-gpt2-a --token_dataset python-stdlib.all-1m.64 --neuron_subset 0.5 1.17
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_common


def parse_args(argv=None):
    from universal_neurons.activation_cache import AGGREGATIONS, LOCATIONS, PRECISIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model name (TransformerLens alias, hub id, folder or zoo model)")
    p.add_argument("--token_dataset", required=True, help="token dataset name under $DATASET_DIR/<family>/")
    p.add_argument("--activation_location", default="mlp.hook_pre", choices=list(LOCATIONS),
                   help="hook under blocks.{l}. to read")
    p.add_argument("--activation_aggregation", default="none", choices=AGGREGATIONS,
                   help="layer mode: how positions of a sequence are aggregated")
    p.add_argument("--neuron_subset", nargs="+", default=None, help="neurons as LAYER.NEURON, e.g. 3.1024 11.3030")
    p.add_argument("--neuron_subset_file", default=None, help="CSV with 'layer' and 'neuron' columns")
    p.add_argument("--save_precision", type=int, default=8, choices=[8, 16, 32],
                   help="layer mode: 8 = per-neuron uint8 quantisation, 16 / 32 = float; neuron mode: fp16 unless 32")
    p.add_argument("--output_dir", default=None, help="cache root (default $ACTIVATION_DIR or cached_activations)")
    p.add_argument("--exclude_special_tokens", action="store_true",
                   help="layer mode, mean / max: leave BOS/EOS/padding positions out (default: every position)")
    add_common(p)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    from universal_neurons.activation_cache import run_activations

    written = run_activations(args.model, args.token_dataset, args.activation_location, args.batch_size,
                              args.activation_aggregation, args.neuron_subset, args.neuron_subset_file,
                              args.save_precision, args.output_dir, args.device, args.n_seq,
                              exclude_special=args.exclude_special_tokens, overwrite=args.overwrite)
    print(f"{len(written)} file(s) written" + (f" under {written[0].parent}" if written else " (all cached already)"))


if __name__ == "__main__":
    main()
