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
from universal_neurons.flags import add_dataclass


def parse_args(argv=None):
    from universal_neurons.activation_cache import ActivationsConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, ActivationsConfig)
    return ActivationsConfig.from_args(p.parse_args(argv))


@cli_entry
def main(argv=None):
    written = parse_args(argv).run()
    print(f"{len(written)} file(s) written" + (f" under {written[0].parent}" if written else " (all cached already)"))


if __name__ == "__main__":
    main()
