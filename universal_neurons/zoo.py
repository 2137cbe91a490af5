"""The seed zoo: tiny GPT-2s trained from several seeds on the built-in corpus (the embedded default).

Names: toy-gpt2-<seed letter> (preset 'default') and toy-gpt2-<preset>-<seed letter>, e.g.
toy-gpt2-tiny-a. Seed letter a, b, c, ... = seed 0, 1, 2, ...; like the paper's a..e seeds, the
models share architecture, data and tokenizer and differ in the random seed (initialisation, and
the data order unless the preset shares it). Each model is saved as a Hugging Face folder
(GPT2LMHeadModel + tokenizer) under $UNIVERSAL_NEURONS_ZOO/<name>, with zoo.json recording the
preset, seed, training time and held-out loss. Loading a missing zoo name trains it; a folder whose
preset no longer matches the code is retrained. Same seed, same machine, same thread count: identical weights.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import corpus, paths
from .errors import UserError, would
from .flags import StageConfig

SEED_LETTERS = "abcdefghijklmnopqrstuvwxyz"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Preset:
    n_layer: int
    d_model: int
    d_mlp: int
    n_head: int
    vocab_size: int
    ctx_len: int
    train_tokens: int          # tokens seen in training, per seed
    batch_size: int = 32       # sequences per step
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    shared_data_order: bool = False   # True: every seed sees the same batches (only the init differs)
    tokenizer_docs: int | None = None   # documents per subset used to train the BPE (None = all)
    corpus_docs: int | None = None      # documents per subset used for training (None = all)
    eval_tokens: int = 262_144
    tie_embeddings: bool = True         # False: a separate unembedding (lm_head), as in GPT-NeoX / Pythia
    precision: str = "fp32"             # "bf16": training's matrix products in bfloat16 (see lm_loss); weights stay fp32

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"Preset.precision must be one of {sorted(PRECISIONS)}, not {self.precision!r}")

    def data_key(self) -> str:
        """What the tokenizer and the tokenised corpus depend on (not the training hyperparameters)."""
        return json.dumps({"vocab_size": self.vocab_size, "tokenizer_docs": self.tokenizer_docs,
                           "corpus_docs": self.corpus_docs, "corpus_version": corpus.VERSION}, sort_keys=True)

    def key(self) -> str:
        d = dataclasses.asdict(self)
        if d["tie_embeddings"]:
            del d["tie_embeddings"]  # absent from tied presets' keys, so zoos trained before the field stay valid
        if d["precision"] == "fp32":
            del d["precision"]  # likewise absent from fp32 presets' keys
        return json.dumps({**d, "corpus_version": corpus.VERSION}, sort_keys=True)


PRESETS = {
    # The embedded default: the cheapest configuration measured whose seed a has >= 1% universal
    # neurons in both layers (3.9% at lr 4e-2; none at 3e-3): see benchmarks/zoo_search.md.
    "default": Preset(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64,
                      train_tokens=10_000_000, batch_size=32, lr=4e-2),
    # Half a minute per seed: for tests and `universal-neurons run --quick`. 2M tokens at lr 4e-2 (was 250k at
    # 5e-3, with no excess_corr above 0.16): 4 of seed a's 256 neurons pass 0.5 against b..e in --quick.
    "tiny": Preset(n_layer=2, d_model=32, d_mlp=128, n_head=2, vocab_size=512, ctx_len=32,
                   train_tokens=2_000_000, batch_size=16, lr=4e-2, tokenizer_docs=40, corpus_docs=60,
                   eval_tokens=16_384),
    # The paper's late-layer families (`universal-neurons run --preset deep`, a one-time build of under an hour on
    # 2 cores): a residual stream 4x wider, so a neuron writing onto a few tokens' unembeddings stands out from the
    # bulk of cos(w_out, W_U) (sd ~ 1 / sqrt(d_model)). Screened (2 seeds, fp32): at 4M tokens 5 prediction and 1
    # suppression neuron (W_U kurtosis > 10) in the last two layers; at 8M 23 and 3, no entropy neuron at either.
    # 12M tokens fit the hour with bf16 matrix products (2.2x faster per step): benchmarks/zoo_search.md, round 6.
    "deep": Preset(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64,
                   train_tokens=12_000_000, batch_size=32, lr=1e-2, precision="bf16"),
}
RUN_MIX_TOKENS = {"deep": 250_000}  # `universal-neurons run`'s correlation mix for a preset (1M otherwise; --quick 32k)

_NAME = re.compile(r"toy-gpt2(?:-(?P<preset>[a-z0-9_]+))?-(?P<seed>[a-z])")


def parse_zoo_name(name: str) -> tuple[str, int] | None:
    """'toy-gpt2-c' -> ('default', 2); 'toy-gpt2-tiny-a' -> ('tiny', 0); other names -> None."""
    m = _NAME.fullmatch(name)
    if not m:
        return None
    return m.group("preset") or "default", SEED_LETTERS.index(m.group("seed"))


def is_zoo_name(name: str) -> bool:
    return parse_zoo_name(name) is not None


def zoo_name(preset: str, seed: int) -> str:
    return f"toy-gpt2-{SEED_LETTERS[seed]}" if preset == "default" else f"toy-gpt2-{preset}-{SEED_LETTERS[seed]}"


def get_preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise UserError(f"unknown zoo preset {preset!r}; choose from {sorted(PRESETS)}")
    return PRESETS[preset]


# Tokenizer and training tokens, shared by all seeds of a preset ------------------------------------

def _preset_dir(preset: str) -> Path:
    return paths.zoo_dir() / f".preset-{preset}"


def preset_data(preset: str):
    """(tokenizer, train ids int32 [n], heldout ids int32 [n]) for a preset, cached on disk."""
    from transformers import AutoTokenizer

    from .tokenizer import tokenize_and_concatenate, train_bpe

    p = get_preset(preset)
    d = _preset_dir(preset)
    key_file = d / "preset.json"
    if not (key_file.is_file() and key_file.read_text() == p.data_key()):
        with paths.atomic_path(d) as tmp:
            tmp.mkdir()
            texts = [doc for _, doc in corpus.iter_all("train", p.tokenizer_docs)]
            tok = train_bpe(texts, p.vocab_size)
            tok.save_pretrained(str(tmp / "tokenizer"))
            for split, n_docs in (("train", p.corpus_docs), ("heldout", p.corpus_docs)):
                docs = (doc for _, doc in corpus.iter_all(split, n_docs))
                ids = tokenize_and_concatenate(docs, tok, 1025).reshape(-1)  # BOS every 1024: harmless here
                np.save(tmp / f"{split}.npy", ids)
            (tmp / "preset.json").write_text(p.data_key())
    tok = AutoTokenizer.from_pretrained(str(d / "tokenizer"))
    return tok, np.load(d / "train.npy"), np.load(d / "heldout.npy")


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the token frequency distribution: the loss of the best context-free model."""
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _windows(ids: np.ndarray, starts: np.ndarray, ctx: int, bos: int) -> torch.Tensor:
    """Rows [len(starts), ctx]: BOS, then ctx-1 tokens of the stream from each start."""
    idx = starts[:, None] + np.arange(ctx - 1)[None, :]
    rows = np.concatenate([np.full((len(starts), 1), bos), ids[idx]], axis=1)
    return torch.from_numpy(rows.astype(np.int64))


@torch.no_grad()
def heldout_loss(model, ids: np.ndarray, ctx: int, bos: int, n_tokens: int, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) on consecutive held-out windows."""
    n_rows = max(1, min(n_tokens // ctx, (len(ids) - 1) // (ctx - 1)))
    starts = np.arange(n_rows) * (ctx - 1)
    total, count = 0.0, 0
    for i in range(0, n_rows, batch_size):
        x = _windows(ids, starts[i:i + batch_size], ctx, bos)
        logits = model(x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                 reduction="sum")
        total += loss.item()
        count += x[:, 1:].numel()
    return total / count


def lm_loss(params: dict, x: torch.Tensor, n_layer: int, n_head: int,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Next-token cross-entropy (nats) of a GPT-2 given by its Hugging Face parameters; x [batch, pos].

    The same function as GPT2LMHeadModel(x, labels=x).loss without dropout (tested to 1e-5), written
    out because at toy width the module stack's overhead is a third of each step: 1.5x faster.
    dtype bfloat16 (Preset.precision "bf16"): mixed precision. The matrix products and the MLP run in
    bf16 on bf16 copies of the weights (made here, so gradients reach the fp32 parameters); the residual
    stream, the LayerNorms, the attention softmax and the loss stay fp32. 2.2x faster per step than fp32 on
    a CPU core with AMX (benchmarks/zoo_search.md, round 6); tested against the HF model in float64.
    """
    B, T = x.shape
    P = params
    low = dtype != torch.float32
    C = {k: q.to(dtype) for k, q in P.items() if q.ndim == 2 or k.endswith("bias")} if low else P  # compute copies
    h = P["transformer.wte.weight"][x] + P["transformer.wpe.weight"][:T]                  # [batch, pos, d_model] fp32
    d = h.shape[-1]
    dh = d // n_head
    for l in range(n_layer):
        b = f"transformer.h.{l}."
        a = F.layer_norm(h, (d,), P[b + "ln_1.weight"], P[b + "ln_1.bias"]).to(dtype)
        qkv = a @ C[b + "attn.c_attn.weight"] + C[b + "attn.c_attn.bias"]                  # [batch, pos, 3 d_model]
        q, k, v = qkv.view(B, T, 3, n_head, dh).permute(2, 0, 3, 1, 4)                     # [batch, head, pos, d_head]
        if low:  # written out: the CPU's bf16 flash-attention backward is slower than all the bf16 GEMMs together
            s = (q @ k.transpose(-1, -2)).float() / math.sqrt(dh)                            # [batch, head, pos, pos]
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            z = torch.softmax(s, -1).to(dtype) @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        z = z.transpose(1, 2).reshape(B, T, d)
        h = h + z @ C[b + "attn.c_proj.weight"] + C[b + "attn.c_proj.bias"]
        m = F.layer_norm(h, (d,), P[b + "ln_2.weight"], P[b + "ln_2.bias"]).to(dtype)
        post = F.gelu(m @ C[b + "mlp.c_fc.weight"] + C[b + "mlp.c_fc.bias"], approximate="tanh")  # = gelu_new
        h = h + post @ C[b + "mlp.c_proj.weight"] + C[b + "mlp.c_proj.bias"]
    f = F.layer_norm(h[:, :-1], (d,), P["transformer.ln_f.weight"], P["transformer.ln_f.bias"]).to(dtype)
    W_U = C.get("lm_head.weight", C["transformer.wte.weight"])  # [vocab, d_model]; wte itself when tied
    logits = f.reshape(-1, d) @ W_U.T
    return F.cross_entropy(logits.float(), x[:, 1:].reshape(-1))


def train_model(preset: str, seed: int, out: Path, progress: bool | int = True) -> dict:
    """Train one zoo model and save it (atomically) as a Hugging Face folder at `out`.

    progress: False (silent), True, or the progress bar's line when several seeds train at once.
    """
    from tqdm.auto import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    from . import quiet_hf

    quiet_hf()
    p = get_preset(preset)
    tok, train_ids, heldout_ids = preset_data(preset)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=p.ctx_len, n_embd=p.d_model, n_layer=p.n_layer,
                     n_head=p.n_head, n_inner=p.d_mlp, activation_function="gelu_new",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     tie_word_embeddings=p.tie_embeddings)
    model = GPT2LMHeadModel(cfg)
    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "wpe" not in n]
    no_decay = [q for n, q in model.named_parameters() if not (q.ndim >= 2 and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))
    steps = max(1, p.train_tokens // (p.batch_size * p.ctx_len))
    warmup = max(1, int(p.warmup_frac * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    params = dict(model.named_parameters())
    rng = np.random.default_rng(0 if p.shared_data_order else 1000 + seed)
    bos = tok.bos_token_id
    model.train()
    t0 = time.time()
    bar = tqdm(range(steps), desc=f"training {zoo_name(preset, seed)}", disable=progress is False,
               position=None if isinstance(progress, bool) else progress, leave=True, mininterval=2.0)
    for step in bar:
        x = _windows(train_ids, rng.integers(0, len(train_ids) - p.ctx_len, p.batch_size), p.ctx_len, bos)
        loss = lm_loss(params, x, p.n_layer, p.n_head, PRECISIONS[p.precision])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0
    model.eval()
    meta = {
        "name": zoo_name(preset, seed), "preset": preset, "seed": seed, "preset_config": json.loads(p.key()),
        "family": "toy", "train_seconds": round(train_s, 1), "train_tokens": steps * p.batch_size * p.ctx_len,
        "heldout_loss": heldout_loss(model, heldout_ids, p.ctx_len, bos, p.eval_tokens),
        "unigram_entropy": unigram_entropy(train_ids, len(tok)),
        "torch_version": torch.__version__,
    }
    with paths.atomic_path(out) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "zoo.json").write_text(json.dumps(meta, indent=1))
        (tmp / "universal_neurons.json").write_text(json.dumps({"family": "toy"}))
    return meta


def model_dir(name: str) -> Path:
    return paths.zoo_model_path(name)


def is_trained(name: str) -> bool:
    parsed = parse_zoo_name(name)
    meta = model_dir(name) / "zoo.json"
    if parsed is None or not meta.is_file():
        return False
    return json.loads(meta.read_text()).get("preset_config") == json.loads(get_preset(parsed[0]).key())


def _check_name(name: str) -> tuple[str, int]:
    """(preset, seed) of a zoo name whose preset exists, else one clear error."""
    parsed = parse_zoo_name(name)
    if parsed is None:
        raise UserError(f"{name!r} is not a zoo model name (toy-gpt2-a, toy-gpt2-tiny-b, ...)")
    get_preset(parsed[0])
    return parsed


def ensure_model(name: str, progress: bool = True) -> Path:
    """The folder of zoo model `name`, training it first if it is missing or stale."""
    parsed = _check_name(name)
    if not is_trained(name):
        would(f"train zoo model {name}")
        import sys

        have = [n for n in (zoo_name(parsed[0], s) for s in range(len(SEED_LETTERS))) if is_trained(n)]
        print(f"note: zoo model {name} (preset {parsed[0]}, seed {parsed[1]}) is not trained yet: training it now "
              f"(trained: {', '.join(have) or 'none'})", file=sys.stderr)
        train_model(*parsed, model_dir(name), progress=progress)
    return model_dir(name)


def model_meta(name: str) -> dict:
    return json.loads((ensure_model(name) / "zoo.json").read_text())


def _train_worker(args: tuple) -> None:
    name, preset_obj, threads, position, zoo_root = args
    import os

    os.environ["UNIVERSAL_NEURONS_ZOO"] = zoo_root  # the parent may have set it in code
    torch.set_num_threads(threads)
    preset, seed = parse_zoo_name(name)
    PRESETS[preset] = preset_obj  # presets registered at run time exist only in the parent
    train_model(preset, seed, model_dir(name), progress=position)


def cores() -> int:
    """CPU cores this process may use."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(n_models: int) -> int:
    """Seeds trained side by side: one per core (a toy model uses one thread better than two)."""
    return max(1, min(n_models, cores()))


def ensure_models(names: list[str], workers: int | None = None, progress: bool = True) -> list[dict]:
    """Train the missing zoo models among `names`, `workers` at a time, each on cores/workers threads.

    Measured on 2 cores: two seeds side by side on one thread each train 1.35x faster in total than
    one after the other on two threads (benchmarks/zoo_search.md). Returns the zoo.json records.
    """
    import multiprocessing as mp

    for n in names:
        _check_name(n)
    missing = [n for n in names if not is_trained(n)]
    if missing:
        would(f"train zoo models {', '.join(missing)}")
    for preset in {parse_zoo_name(n)[0] for n in missing}:
        preset_data(preset)  # tokenizer and tokenised corpus once, before the workers read them
    workers = workers or default_workers(len(missing))
    if len(missing) <= 1 or workers <= 1:
        for n in missing:
            ensure_model(n, progress)
    else:
        # the last jobs, when fewer than `workers` remain, get the cores the finished workers leave idle
        jobs = [(n, get_preset(parse_zoo_name(n)[0]), max(1, cores() // min(workers, len(missing) - i)),
                 (i % workers) if progress else False, str(paths.zoo_dir()))
                for i, n in enumerate(missing)]
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap(_train_worker, jobs):
                pass
    return [model_meta(n) for n in names]


def train_zoo(preset: str = "default", n_seeds: int = 5, progress: bool = True,
              workers: int | None = None) -> list[dict]:
    """Train (or find) seeds a.. of a preset; returns their zoo.json records."""
    return ensure_models([zoo_name(preset, s) for s in range(n_seeds)], workers, progress)


@dataclass(kw_only=True)
class ZooConfig(StageConfig):
    """`universal-neurons zoo`: train (or find) seeds a.. of a preset and print their table; `run()`."""

    preset: str = dataclasses.field(default="default", metadata={"help": "default | tiny | deep"})
    n_seeds: int = dataclasses.field(default=5, metadata={"type": int, "help": "seeds a, b, ... to train"})
    workers: int | None = dataclasses.field(default=None, metadata={"type": int, "help":
                                            "seeds trained side by side (default: one per core, up to the number "
                                            "of seeds)"})

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.n_seeds <= len(SEED_LETTERS):
            raise UserError(f"--n_seeds must be in [1, {len(SEED_LETTERS)}] (seeds a..{SEED_LETTERS[-1]}), "
                            f"got {self.n_seeds}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")

    def run(self, progress: bool = True) -> list[dict]:
        metas = train_zoo(self.preset, self.n_seeds, progress=progress, workers=self.workers)
        print(format_zoo_table(metas))
        return metas


def format_zoo_table(metas: list[dict]) -> str:
    lines = [f"{'model':<18} {'train s':>8} {'tokens':>10} {'held-out loss':>14} {'unigram entropy':>16}"]
    for m in metas:
        lines.append(f"{m['name']:<18} {m['train_seconds']:>8.1f} {m['train_tokens']:>10,} "
                     f"{m['heldout_loss']:>14.3f} {m['unigram_entropy']:>16.3f}")
    return "\n".join(lines)
