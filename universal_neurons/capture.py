"""Activation capture: token batches in, neuron activations out, through named hook points.

    mlp_activations(model, tokens [batch, pos], 'mlp.hook_post') -> [batch, pos, layer, neuron]
    position_mask(tokens, tokenizer, ...) -> [batch, pos] bool, the positions a statistic counts
    token_mask(tokens, tokenizer) -> [batch, pos] bool, the correlations' positions (the paper's)
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .errors import UserError
from .tokenizer import same_vocabulary

LOCATIONS = ("mlp.hook_pre", "mlp.hook_post")


def hook_name(layer: int, location: str) -> str:
    return f"blocks.{layer}.{location}"


@torch.no_grad()
def mlp_activations(model, tokens: torch.Tensor, location: str = "mlp.hook_post",
                    layers: list[int] | None = None) -> torch.Tensor:
    """Neuron activations [batch, pos, layer, neuron] (float32, on the model's device).

    location: 'mlp.hook_pre' (pre-GELU) or 'mlp.hook_post' (post-GELU, what the paper correlates).
    layers: a subset of layers (default all); the forward pass stops after the last one needed.
    """
    if location not in LOCATIONS:
        raise UserError(f"unknown activation location {location!r}; choose from {LOCATIONS}")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = {hook_name(l, location): i for i, l in enumerate(layers)}
    out: list[torch.Tensor | None] = [None] * len(layers)

    def save(act, hook):
        out[names[hook.name]] = act.float()

    device = next(model.parameters()).device
    model.run_with_hooks(tokens.to(device), fwd_hooks=[(n, save) for n in names], return_type=None)
    return torch.stack(out, dim=2)


@lru_cache(maxsize=8)
def _excluded_ids(tokenizer, drop_newlines: bool) -> torch.Tensor:
    """BOS/EOS/PAD ids, and with drop_newlines the tokens that are only whitespace with a newline."""
    ids = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    if drop_newlines:
        for tok_str, i in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([tok_str])
            if "\n" in text and not text.strip():
                ids.add(i)
    return torch.tensor(sorted(ids), dtype=torch.long)


def position_mask(tokens: torch.Tensor, tokenizer, *, newlines: bool = True, last: bool = True) -> torch.Tensor:
    """[batch, pos] bool: True at the positions a statistic counts; the one definition every stage uses.

    BOS, EOS and padding ids never count. newlines=False also leaves out tokens that are only
    whitespace with a newline (the paper's correlations); last=False leaves out the last position
    (metrics of the next token, which it does not have).
    """
    mask = ~torch.isin(tokens, _excluded_ids(tokenizer, drop_newlines=not newlines).to(tokens.device))
    if not last:
        mask[..., -1] = False
    return mask


def token_mask(tokens: torch.Tensor, tokenizer) -> torch.Tensor:
    """[batch, pos] bool: the positions of correlations (as the paper: no BOS/EOS/PAD, no newlines)."""
    return position_mask(tokens, tokenizer, newlines=False)


def check_same_tokenizer(model_1, model_2) -> None:
    if not same_vocabulary(model_1.tokenizer, model_2.tokenizer):
        raise UserError(f"models {model_1.model_name!r} and {model_2.model_name!r} have different tokenizers "
                        f"({len(model_1.tokenizer)} vs {len(model_2.tokenizer)} tokens): neuron activations "
                        f"can only be compared on the same token sequence")
