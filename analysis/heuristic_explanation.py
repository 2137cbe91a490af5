"""Reading explanations (the notebooks' import path): it lives in universal_neurons/heuristic_explanation.py."""
from universal_neurons.heuristic_explanation import (  # noqa: F401
    _layer_folders, load_variance_reduction, top_features, best_features, load_best_features,
    load_top_features)
