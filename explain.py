"""Explain neurons by token or sequence features (variance reduction), as the original explain.py.

Writes $RESULTS_DIR/explanations/<model>/<dataset>/<type>_feature/layer_<l>/
variance_reduction.csv and prev_token_variance_reduction.csv (rows 'l.n', columns features).
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_dataclass


def parse_args(argv=None):
    from universal_neurons.explanations import ExplainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, ExplainConfig)
    return ExplainConfig.from_args(p.parse_args(argv))


@cli_entry
def main(argv=None):
    for path in parse_args(argv).run():
        print(path)


if __name__ == "__main__":
    main()
