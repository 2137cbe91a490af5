"""Neuron-to-neuron correlations, as the original's fuller correlations.py.

The same engine and flags as correlations_fast.py (see its help); the one difference is this
script's default of also writing the full matrix correlation.pt [L1, D1, L2, D2], as the older
script did.
"""
from universal_neurons.correlations import FULL_DEFAULTS, main

if __name__ == "__main__":
    main(defaults=FULL_DEFAULTS, description=__doc__)
