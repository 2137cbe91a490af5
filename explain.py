"""Explain neurons by token or sequence features (variance reduction), as the original explain.py.

Writes $RESULTS_DIR/explanations/<model>/<dataset>/<type>_feature/layer_<l>/
variance_reduction.csv and prev_token_variance_reduction.csv (rows 'l.n', columns features).
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model name (TransformerLens alias, hub id, folder or zoo model)")
    p.add_argument("--dataset", required=True, help="token dataset name under $DATASET_DIR/<family>/")
    p.add_argument("--layer", type=int, default=-1, help="layer to explain (-1 = all)")
    p.add_argument("--neuron_df_path", default=None,
                   help="CSV with layer,neuron columns (e.g. universal.csv): explain only those neurons")
    p.add_argument("--activation_path", default=None,
                   help="folder of cached activations from activations.py ({l}.{n}.pt, or {l}.all.none.all.pt); "
                        "pre-activation caches go through the model's activation function first; "
                        "default: compute blocks.{l}.mlp.hook_post with the model")
    p.add_argument("--feature_type", choices=["token", "sequence"], default="token")
    p.add_argument("--exclude_special_tokens", action="store_true",
                   help="leave BOS/EOS/padding positions out of the variance reduction (default: count every "
                        "position, as the original)")
    add_common(p)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    from universal_neurons.explanations import run_explanations

    written = run_explanations(args.model, args.dataset, feature_type=args.feature_type, layer=args.layer,
                               neuron_df_path=args.neuron_df_path, activation_path=args.activation_path,
                               batch_size=args.batch_size, device=args.device, n_seq=args.n_seq,
                               exclude_special=args.exclude_special_tokens, overwrite=args.overwrite)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
