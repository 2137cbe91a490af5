"""Weight summaries of every MLP neuron (the original weights.py).

Writes <save_path>/<model>/weights/: neuron_stats.csv, {k,q,v,o}_comps.pt, vocab_comps.pt,
neuron_comps.pt (see universal_neurons/weights.py for the definitions). A rerun skips files
that already exist unless --force.

    python weights.py --model stanford-gpt2-small-a --device cuda
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_dataclass


def parse_args(argv=None):
    from universal_neurons.weights import WeightsConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass(parser, WeightsConfig)
    return WeightsConfig.from_args(parser.parse_args(argv))


@cli_entry
def main(argv=None):
    print(f"weight summaries in {parse_args(argv).run()}")


if __name__ == "__main__":
    main()
