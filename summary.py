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
from universal_neurons.flags import add_dataclass


def parse_args(argv=None):
    from universal_neurons.activation_summary import SummaryConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, SummaryConfig)
    return SummaryConfig.from_args(p.parse_args(argv))


@cli_entry
def main(argv=None):
    parse_args(argv).run()


if __name__ == "__main__":
    main()
