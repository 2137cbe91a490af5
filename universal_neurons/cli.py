"""The `universal-neurons` command: `zoo` trains the seed zoo, `run` is the main job."""
from __future__ import annotations

import argparse

from .errors import cli_entry
from .neuron_df import UNIVERSAL_THRESHOLD


def _zoo(args):
    from . import zoo

    metas = zoo.train_zoo(args.preset, args.n_seeds, progress=True, workers=args.workers)
    print(zoo.format_zoo_table(metas))


def _neuron_df(args):
    from .neuron_df import make_neuron_df, universal_share_by_layer, write_neuron_df
    from .models import load_model

    cfg = load_model(args.model).cfg
    df = make_neuron_df(args.model, args.others, args.dataset, cfg.n_layers, cfg.d_mlp, args.activation_datasets)
    out, uni = write_neuron_df(df, args.model, args.threshold)
    share = universal_share_by_layer(df, args.threshold)
    print(f"wrote {out} ({len(df)} neurons) and {uni} ({int((df['excess_corr'] > args.threshold).sum())} universal)")
    print("universal share per layer: " + ", ".join(f"L{l}: {100 * v:.2f}%" for l, v in share.items()))


def _view(args):
    from .viewer import serve

    serve(args.model, args.host, args.port)


def _run(args):
    from . import pipeline

    pipeline.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="universal-neurons", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    z = sub.add_parser("zoo", help="train (or find) the seed zoo and print its table")
    z.add_argument("--preset", default="default", help="default | tiny")
    z.add_argument("--n_seeds", type=int, default=5)
    z.add_argument("--workers", type=int, default=None,
                   help="seeds trained side by side (default: one per core, up to the number of seeds)")
    z.set_defaults(func=_zoo)
    d = sub.add_parser("neuron-df", help="build dataframes/neuron_dfs/<model>.csv and universal.csv from the summaries")
    d.add_argument("--model", required=True, help="seed a (the model whose neurons are rows)")
    d.add_argument("--others", nargs="+", required=True, help="the other seeds it was correlated with")
    d.add_argument("--dataset", required=True, help="token dataset of the correlations")
    d.add_argument("--activation_datasets", nargs="*", default=None,
                   help="datasets whose summary.py histograms to sum (default: all present)")
    d.add_argument("--threshold", type=float, default=UNIVERSAL_THRESHOLD, help="excess_corr above which a neuron is universal")
    d.set_defaults(func=_neuron_df)
    v = sub.add_parser("view", help="the neuron viewer in the browser, over the working directory's artifacts")
    v.add_argument("--model", required=True)
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    v.set_defaults(func=_view)
    r = sub.add_parser("run", help="the main job: the whole pipeline on the embedded default or given models")
    from .pipeline import add_arguments

    add_arguments(r)
    r.set_defaults(func=_run)
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
