"""The `universal-neurons` command: `zoo` trains the seed zoo, `run` is the main job."""
from __future__ import annotations

import argparse

from .errors import cli_entry


def _zoo(args):
    from . import zoo

    metas = zoo.train_zoo(args.preset, args.n_seeds, progress=True)
    print(zoo.format_zoo_table(metas))


def _run(args):
    from . import pipeline

    pipeline.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="universal-neurons", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    z = sub.add_parser("zoo", help="train (or find) the seed zoo and print its table")
    z.add_argument("--preset", default="default", help="default | tiny")
    z.add_argument("--n_seeds", type=int, default=5)
    z.set_defaults(func=_zoo)
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
