"""The report's figures (the notebooks' import path): they live in universal_neurons/plots.py."""
from universal_neurons.plots import (  # noqa: F401
    excess_corr_hist, universal_by_layer, within_layer_percentiles, property_percentiles, intervention_curve,
    PROPERTIES)
