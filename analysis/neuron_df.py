"""The neuron dataframe (the notebooks' import path): it lives in universal_neurons/neuron_df.py."""
from universal_neurons.neuron_df import *  # noqa: F401,F403
from universal_neurons.neuron_df import (NEURON_DF_COLUMNS, UNIVERSAL_THRESHOLD, entropy_candidate,  # noqa: F401
                                         load_activation_summaries, load_neuron_df, make_corr_compare_df,
                                         make_neuron_df, make_weight_df, per_seed_max, select_universal,
                                         universal_neurons, universal_share_by_layer, write_neuron_df)
