"""Intervene on one MLP neuron at every position and record next-token loss, entropy and rank.

Writes <output_dir>/<model>/<dataset>/<type>_<param>/<l.n>/{loss,entropy,rank}.pt (fp16 / int32
[n_seq, ctx]) and, once per model and dataset, the clean run <output_dir>/<model>/<dataset>/clean/.
Finished folders are skipped on a rerun. See universal_neurons/interventions.py for definitions.
"""
from __future__ import annotations

import argparse

from universal_neurons.interventions import add_run_arguments

from universal_neurons.errors import cli_entry
from universal_neurons.interventions import INTERVENTION_TYPES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model name (TransformerLens alias, hub id, folder or zoo model)")
    p.add_argument("--token_dataset", required=True, help="token dataset name under $DATASET_DIR/<family>/")
    p.add_argument("--activation_location", default="mlp.hook_pre", choices=["mlp.hook_pre", "mlp.hook_post"],
                   help="hook point of the neuron (default: the pre-activation, as the original)")
    p.add_argument("--neuron", required=True, help="LAYER.NEURON, e.g. 11.3030")
    p.add_argument("--intervention_type", default="zero_ablation", choices=INTERVENTION_TYPES,
                   help="zero_ablation: a->0; threshold_ablation: a->min(a, param); relu_ablation: a->max(a, 0); "
                        "fixed_activation: a->param")
    p.add_argument("--intervention_param", type=float, default=0,  # the int 0: folder <type>_0, as the original
                   help="threshold or fixed value")
    add_run_arguments(p)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    from universal_neurons.interventions import run_intervention

    for folder in run_intervention(args.model, args.token_dataset, args.neuron, args.intervention_type,
                                   args.intervention_param, args.activation_location, args.output_dir,
                                   args.batch_size, args.device, args.n_seq, overwrite=args.overwrite):
        print(folder)


if __name__ == "__main__":
    main()
