"""Position neurons: correlation of each neuron's activation with the token's position in the context."""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def position_correlations(acts: torch.Tensor, first_pos: int = 1) -> torch.Tensor:
    """Pearson r between activation and position, per neuron.

    acts: [batch, pos, layer, neuron] activations (universal_neurons.capture.mlp_activations);
    positions before first_pos are left out (position 0 holds BOS, which every neuron sees alike).
    Returns [layer, neuron] float64; NaN for neurons constant over the kept tokens.
    """
    a = acts[:, first_pos:].double()
    b, p = a.shape[:2]
    pos = torch.arange(first_pos, first_pos + p, dtype=torch.float64, device=a.device)
    pos = (pos - pos.mean()).view(1, p, 1, 1)  # centred once: every sequence covers the same positions
    a = a - a.mean(dim=(0, 1), keepdim=True)
    cov = (a * pos).sum(dim=(0, 1))
    denom = torch.sqrt((a ** 2).sum(dim=(0, 1)) * (pos ** 2).sum() * b)
    return torch.where(denom > 0, cov / denom, torch.full_like(cov, float("nan")))


def mean_by_position(acts: torch.Tensor, layer: int, neuron: int) -> np.ndarray:
    """[pos] mean activation of one neuron at each position."""
    return acts[:, :, layer, neuron].double().mean(0).cpu().numpy()
