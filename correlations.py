"""Neuron-to-neuron correlations, as the original's fuller correlations.py.

The same engine, flags and defaults as correlations_fast.py (see its help); as in the original,
the full matrix correlation.pt [L1, D1, L2, D2] is written with --save_full_correlation_matrix.
"""
from universal_neurons.correlations import FULL_DEFAULTS, main

if __name__ == "__main__":
    main(defaults=FULL_DEFAULTS, description=__doc__)
