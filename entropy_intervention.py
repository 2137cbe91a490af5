"""Fix (or scale, ablate) a set of MLP neurons together and record loss, entropy, rank and the final
LayerNorm scale; optionally compare with random last-layer neurons (the paper's entropy-neuron experiment).

Writes <output_dir>/<model>/<dataset>/<l.n_l.n>/<type>_<value>/{loss,entropy,rank,scale}.pt for each
value, the same for each random baseline (its own <l.n> folder), the clean run
<output_dir>/<model>/<dataset>/clean/, and a summary CSV <...>/<l.n_l.n>/summary_<type>.csv
(mean loss / entropy / scale / reciprocal rank per run and value, deltas vs clean).

The paper's experiment on GPT2-small, e.g.:
    python entropy_intervention.py --model stanford-gpt2-small-a --token_dataset pile.test.all-10m.512 \
        --neuron_subset 11.3030 --intervention_type fixed_activation \
        --intervention_param -0.17 0 1 2 3 4 5 6 --n_random_baselines 20
"""
from __future__ import annotations

import argparse

from universal_neurons.errors import cli_entry
from universal_neurons.flags import add_dataclass
from universal_neurons.interventions import EntropyConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, EntropyConfig)
    return EntropyConfig.from_args(p.parse_args(argv))


@cli_entry
def main(argv=None):
    out = parse_args(argv).run()
    for folder in out["runs"] + [out["clean"], out["summary"]]:
        if folder is not None:
            print(folder)


if __name__ == "__main__":
    main()
