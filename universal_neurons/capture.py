"""Activation capture: token batches in, neuron activations out, through named hook points.

    mlp_activations(model, tokens [batch, pos], 'mlp.hook_post') -> [batch, pos, layer, neuron]
    masked_activations(model, tokens, rows [T]) -> [T, layer * neuron]   (the kept positions only)
    run_until_last_hook(model, tokens, hooks)   every stage's forward: stops after its last hook
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


# the order of a block's hook points in its forward (parallel-residual blocks run attention first too)
_BLOCK_ORDER = {"hook_resid_pre": 0, "ln1.hook_scale": 1, "ln1.hook_normalized": 1, "attn.hook_q": 2,
                "attn.hook_k": 2, "attn.hook_v": 2, "attn.hook_rot_q": 3, "attn.hook_rot_k": 3,
                "attn.hook_attn_scores": 4, "attn.hook_pattern": 5, "attn.hook_z": 6, "hook_attn_out": 7,
                "hook_resid_mid": 8, "ln2.hook_scale": 9, "ln2.hook_normalized": 9, "mlp.hook_pre": 10,
                "mlp.hook_pre_linear": 10, "mlp.hook_post": 11}


class _Done(Exception):
    """Raised by the stop hook once every hook of a forward has fired: the rest is never computed."""


def _last_hook(names) -> tuple[str | None, int | None]:
    """(the hook point that fires last, or None; the layer whose block it is in). A name outside
    _BLOCK_ORDER (or not in a block) gives None: the forward then stops only at a block boundary."""
    best, best_key, last_layer = None, None, -1
    for name in names:
        parts = name.split(".", 2)
        if parts[0] != "blocks" or len(parts) < 3 or not parts[1].isdigit():
            return None, None
        layer = int(parts[1])
        last_layer = max(last_layer, layer)
        key = (layer, _BLOCK_ORDER.get(parts[2], 99))
        if best_key is None or key > best_key:
            best, best_key = name, key
    return (best if best_key and best_key[1] != 99 else None), last_layer


@torch.no_grad()
def run_until_last_hook(model, tokens: torch.Tensor, fwd_hooks: list) -> None:
    """model.run_with_hooks(tokens, fwd_hooks) that stops right after the last hook has fired: no
    later block, no final LayerNorm, no unembedding (a [batch*pos, d_vocab] float32 logits tensor,
    3.3 GB per GPT-2 batch of 16k tokens). tokens must already be on the model's device."""
    last, layer = _last_hook(n for n, _ in fwd_hooks)

    def stop(act, hook):
        raise _Done

    hooks = list(fwd_hooks) + ([(last, stop)] if last else [])
    # a hook point whose place in the block is unknown: stop at the next block (if there is one)
    at = layer + 1 if last is None and layer is not None and layer + 1 < model.cfg.n_layers else None
    try:
        model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None, stop_at_layer=at)
    except _Done:
        pass


@torch.no_grad()
def mlp_activations(model, tokens: torch.Tensor, location: str = "mlp.hook_post",
                    layers: list[int] | None = None) -> torch.Tensor:
    """Neuron activations [batch, pos, layer, neuron] (float32, on the model's device).

    location: 'mlp.hook_pre' (pre-GELU) or 'mlp.hook_post' (post-GELU, what the paper correlates).
    layers: a subset of layers (default all); the forward pass stops after the last one needed.
    """
    from .device import to_device

    if location not in LOCATIONS:
        raise UserError(f"unknown activation location {location!r}; choose from {LOCATIONS}")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    device = next(model.parameters()).device
    tokens = to_device(tokens, device)
    out = torch.empty(*tokens.shape, len(layers), model.cfg.d_mlp, device=device)  # [batch, pos, layer, neuron]

    def save(act, hook, i):
        out[:, :, i].copy_(act)

    run_until_last_hook(model, tokens, [(hook_name(l, location), lambda a, hook, i=i: save(a, hook, i))
                                        for i, l in enumerate(layers)])
    return out


@torch.no_grad()
def masked_activations(model, tokens: torch.Tensor, rows: torch.Tensor, location: str = "mlp.hook_post",
                       layers: list[int] | None = None) -> torch.Tensor:
    """Activations of the kept positions only: [T, len(layers) * d_mlp] float32, on the model's device.

    tokens [batch, pos] and rows [T] (flat indices batch * pos of the kept positions, e.g.
    `keep_rows(mask)`), both on the model's device. Each hook gathers its layer's kept rows straight
    into the one output tensor: no [batch, pos, layer, neuron] stack, no boolean mask (a host sync
    on a GPU), and the forward stops after the last layer.
    """
    if location not in LOCATIONS:
        raise UserError(f"unknown activation location {location!r}; choose from {LOCATIONS}")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    D = model.cfg.d_mlp
    out = torch.empty(rows.shape[0], len(layers) * D, device=tokens.device)  # [T, layer * neuron]

    def save(act, hook, i):
        out[:, i * D:(i + 1) * D].copy_(act.reshape(-1, D).index_select(0, rows))

    if rows.shape[0]:
        run_until_last_hook(model, tokens, [(hook_name(l, location), lambda a, hook, i=i: save(a, hook, i))
                                            for i, l in enumerate(layers)])
    return out


def keep_rows(mask: torch.Tensor) -> torch.Tensor:
    """[batch, pos] bool (on the CPU) -> [T] int64 flat indices of its True positions. Computed on the
    host from host tokens, so a GPU never waits on a boolean mask's nonzero."""
    return mask.flatten().nonzero().squeeze(1)


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
