"""Print the default neuron of the entropy interventions for a model: the last layer's neuron with
the largest output weight norm (w_out_norm) in its neuron dataframe, as 'layer.neuron'.

The paper's entropy neurons (GPT2-small 11.3030, 11.2859, medium 23.945) are last-layer neurons with
unusually large output norms; for models without published ones this picks the most likely one.

    python slurm/entropy_neuron.py toy-gpt2-a    ->  1.117
"""
import sys

import pandas as pd

from universal_neurons import paths
from universal_neurons.errors import UserError, cli_entry


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise UserError("usage: python slurm/entropy_neuron.py MODEL")
    path = paths.neuron_df_path(argv[0])
    if not path.is_file():
        raise UserError(f"no neuron dataframe at {path} (run universal-neurons neuron-df --model {argv[0]} ...)")
    df = pd.read_csv(path)
    last = df[df["layer"] == df["layer"].max()]
    row = last.loc[last["w_out_norm"].idxmax()]
    print(f"{int(row['layer'])}.{int(row['neuron'])}")


if __name__ == "__main__":
    main()
