"""Print the default neuron of the entropy interventions for a model, as 'layer.neuron': the
pipeline's rule (universal_neurons.neuron_df.entropy_candidate: the last layer's neuron with a large
output norm whose output is nearly orthogonal to the unembedding), read off its neuron dataframe.

The paper's entropy neurons (GPT2-small 11.3030, 11.2859, medium 23.945) are last-layer neurons with
unusually large output norms and low vocab_var; for models without published ones this picks the most
likely one.

    python slurm/entropy_neuron.py toy-gpt2-a    ->  1.43
"""
import sys

from universal_neurons.neuron_df import entropy_candidate, load_neuron_df
from universal_neurons.errors import UserError, cli_entry


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise UserError("usage: python slurm/entropy_neuron.py MODEL")
    print(entropy_candidate(load_neuron_df(argv[0])))


if __name__ == "__main__":
    main()
