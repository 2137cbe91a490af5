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

from universal_neurons.interventions import add_run_arguments

from universal_neurons.errors import cli_entry
from universal_neurons.interventions import ENTROPY_INTERVENTION_TYPES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model name (TransformerLens alias, hub id, folder or zoo model)")
    p.add_argument("--token_dataset", required=True, help="token dataset name under $DATASET_DIR/<family>/")
    p.add_argument("--activation_location", default="mlp.hook_post", choices=["mlp.hook_post", "mlp.hook_pre"])
    p.add_argument("--neuron_subset", required=True,
                   help="neurons intervened on together: LAYER.NEURON[,LAYER.NEURON...], e.g. 11.3030,11.2859")
    p.add_argument("--intervention_type", default="fixed_activation", choices=ENTROPY_INTERVENTION_TYPES,
                   help="... multiply_activation: a -> a * param")
    p.add_argument("--intervention_param", "--values", dest="values", type=float, nargs="+", default=None,
                   help="one or more values (fixed activation, multiplier or threshold), one run each")
    p.add_argument("--n_random_baselines", type=int, default=0,
                   help="also intervene on this many random sets of last-layer neurons (the paper: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines")
    add_run_arguments(p)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    from universal_neurons.interventions import run_entropy_intervention

    out = run_entropy_intervention(args.model, args.token_dataset, args.neuron_subset, args.values,
                                   args.intervention_type, args.activation_location, args.n_random_baselines,
                                   args.seed, args.output_dir, args.batch_size, args.device, args.n_seq,
                                   overwrite=args.overwrite)
    for folder in out["runs"] + [out["clean"], out["summary"]]:
        print(folder)


if __name__ == "__main__":
    main()
