"""Intervene on one MLP neuron at every position and record next-token loss, entropy and rank.

Writes <output_dir>/<model>/<dataset>/<type>_<param>/<l.n>/{loss,entropy,rank}.pt (fp16 / int32
[n_seq, ctx]) and, once per model and dataset, the clean run <output_dir>/<model>/<dataset>/clean/.
Finished folders are skipped on a rerun. See universal_neurons/interventions.py for definitions.
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_dataclass
from universal_neurons.interventions import InterventionConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, InterventionConfig)
    return InterventionConfig.from_args(p.parse_args(argv))


@cli_entry
def main(argv=None):
    for folder in parse_args(argv).run():
        print(folder)


if __name__ == "__main__":
    main()
