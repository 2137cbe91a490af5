"""The `universal-neurons` command.

    zoo         train (or find) the seed zoo and print its table        zoo.ZooConfig
    neuron-df   the neuron dataframe and universal.csv                   neuron_df.NeuronDfConfig
    view        the neuron viewer                                        viewer.ViewConfig
    run         the main job: every stage (pipeline.py)                  pipeline.PipelineConfig
    done        which stage runs are finished (the Slurm grid asks it)   artifacts.check_runs

Every subcommand's flags are generated from its config dataclass (flags.py).
"""
from __future__ import annotations

import argparse
import sys

from .errors import cli_entry
from .flags import add_dataclass


def _configs() -> dict:
    from .neuron_df import NeuronDfConfig
    from .pipeline import PipelineConfig
    from .viewer import ViewConfig
    from .zoo import ZooConfig

    return {"zoo": (ZooConfig, "train (or find) the seed zoo and print its table"),
            "neuron-df": (NeuronDfConfig, "build dataframes/neuron_dfs/<model>.csv and universal.csv from the summaries"),
            "view": (ViewConfig, "the neuron viewer in the browser, over the working directory's artifacts"),
            "run": (PipelineConfig, "the main job: the whole pipeline on the embedded default or given models")}


def _done(_args) -> None:
    from .artifacts import check_runs

    for line in check_runs(sys.stdin.read().splitlines()):
        print(line, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="universal-neurons", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (cls, help) in _configs().items():
        s = sub.add_parser(name, help=help, description=cls.__doc__)
        add_dataclass(s, cls)
        s.set_defaults(config=cls)
    d = sub.add_parser("done", help="read stage command lines on stdin (e.g. 'summary.py --model m --token_dataset d'); "
                                    "print per line: done, todo <what>, stale <why> or error <why>")
    d.set_defaults(config=None)
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.config is None:
        return _done(args)
    args.config.from_args(args).run()


if __name__ == "__main__":
    main()
