"""Activation capture: token batches in, neuron activations out, through named hook points.

    mlp_activations(model, tokens [batch, pos], 'mlp.hook_post') -> [batch, pos, layer, neuron]
    position_mask(tokens, tokenizer, ...) -> [batch, pos] bool, the positions a statistic counts
    token_mask(tokens, tokenizer) -> [batch, pos] bool, the correlations' positions (the original's)

Which positions count, by stage (defaults are the original's; flags in parentheses):
    correlations           no BOS/EOS/padding, no single-token '\\n'   (--drop_newlines all | none)
    summaries, explanations, activation caches   every position       (--exclude_special_tokens)
    intervention summaries no BOS/EOS/padding, no last position
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


NEWLINE_SETS = ("keep", "single", "all")


# cfg.act_fn -> the elementwise function that turns mlp.hook_pre into mlp.hook_post
_ACT_FNS = {
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu": torch.nn.functional.gelu,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
}


def activation_function(model):
    """The model's own activation function: post = f(pre), elementwise (float32 in, float32 out).

    The original applied torch.nn.GELU() (the erf GELU) to every cache, although GPT-2's is the
    tanh approximation (`gelu_new`, up to 4e-4 apart); this is the function the model itself uses.
    """
    if getattr(model.cfg, "gated_mlp", False):
        raise UserError("this model's MLP is gated (post = act(gate) * in): its post-activation is not a function "
                        "of mlp.hook_pre alone; cache mlp.hook_post instead")
    name = getattr(model.cfg, "act_fn", None)
    if name not in _ACT_FNS:
        raise UserError(f"no elementwise activation function known for act_fn {name!r} "
                        f"(known: {', '.join(_ACT_FNS)}); cache mlp.hook_post instead")
    return _ACT_FNS[name]


@lru_cache(maxsize=8)
def _excluded_ids(tokenizer, special: bool, newlines: str) -> torch.Tensor:
    """The token ids a position mask leaves out (see `position_mask`)."""
    if newlines not in NEWLINE_SETS:
        raise UserError(f"unknown newline set {newlines!r}; choose from {NEWLINE_SETS}")
    ids = set()
    if not special:
        ids |= {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    if newlines == "single":  # the original: model.to_single_token('\n'), when '\n' is one token
        enc = tokenizer.encode("\n", add_special_tokens=False)
        if len(enc) == 1:
            ids.add(enc[0])
    elif newlines == "all":
        for tok_str, i in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([tok_str])
            if "\n" in text and not text.strip():
                ids.add(i)
    return torch.tensor(sorted(ids), dtype=torch.long)


def position_mask(tokens: torch.Tensor, tokenizer, *, special: bool = True, newlines: str = "keep",
                  last: bool = True) -> torch.Tensor:
    """[batch, pos] bool: True at the positions a statistic counts; the one definition every stage uses.

    special=False leaves out the BOS, EOS and padding ids (one id, 50256, for GPT-2; 0 for Pythia).
    newlines: 'keep' counts every newline token; 'single' leaves out the one-token newline ('\\n',
    198 in GPT-2: the original's correlations); 'all' every token that is only whitespace with a
    newline ('\\n\\n' = 628, 44320, ...). last=False leaves out the last position (metrics of the
    next token, which it does not have).
    """
    mask = ~torch.isin(tokens, _excluded_ids(tokenizer, special, newlines).to(tokens.device))
    if not last:
        mask[..., -1] = False
    return mask


def token_mask(tokens: torch.Tensor, tokenizer, newlines: str = "single") -> torch.Tensor:
    """[batch, pos] bool: the positions of correlations. The original's: no padding/BOS/EOS id and no
    single-token newline; newlines='all' also drops every other newline-only token."""
    return position_mask(tokens, tokenizer, special=False, newlines=newlines)


def check_same_tokenizer(model_1, model_2) -> None:
    if not same_vocabulary(model_1.tokenizer, model_2.tokenizer):
        raise UserError(f"models {model_1.model_name!r} and {model_2.model_name!r} have different tokenizers "
                        f"({len(model_1.tokenizer)} vs {len(model_2.tokenizer)} tokens): neuron activations "
                        f"can only be compared on the same token sequence")
