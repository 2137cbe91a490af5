"""Activation statistics of the neuron dataframe (the notebooks' import path).

They live in universal_neurons/neuron_df.py (the neuron dataframe stage); the histogram maths in
universal_neurons/activation_summary.py.
"""
from universal_neurons.neuron_df import activation_moment_df, summed_histograms  # noqa: F401
