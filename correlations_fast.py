"""Neuron-to-neuron correlations between two models, as the paper's correlations_fast.py.

One pass over the token dataset accumulates, for every model 2 given and every baseline asked for
(none, rotation, permutation, gaussian), the statistics of the similarity (pearson, cosine or
jaccard) of each model-1 neuron with each model-2 neuron, then writes
$RESULTS_DIR/<m1>+<m2>/<dataset>/<sim>.<baseline>/correlation_summary.pt, correlation_summary_T.pt
and optionally correlation.pt. Shards (--num_shards/--shard_index, then --merge), memory tiles
(--max_memory_gb) and checkpoints (--checkpoint_every) give the same artifacts as a single run.

    python correlations_fast.py --model_1_name stanford-gpt2-small-a --model_2_name stanford-gpt2-small-b \\
        --token_dataset pile.test.all-100m.512 --baseline none rotation
"""
from universal_neurons.correlations import FAST_DEFAULTS, main

if __name__ == "__main__":
    main(defaults=FAST_DEFAULTS, description=__doc__)
