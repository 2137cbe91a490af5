"""Training-step speed of the zoo, fp32 against bf16 (Preset.precision), as a ratio in one process.

For each preset shape: one AdamW step of zoo.lm_loss (forward, backward, clip, step) on a
[batch_size, ctx_len] batch of random tokens, `--repeats` rounds alternating fp32 and bf16 so that
drift in the machine's speed hits both; reports tokens/s (median over rounds) and bf16 / fp32.
The bf16 gain needs bf16 matrix units (x86 AMX or AVX512-BF16, Arm BF16); without them bf16 can be
slower than fp32, so measure on the machine that trains.

    python benchmarks/zoo_train_step.py --presets deep default --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from universal_neurons import zoo  # noqa: E402


def model_params(p: zoo.Preset, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=p.vocab_size, n_positions=p.ctx_len, n_embd=p.d_model, n_layer=p.n_layer,
                     n_head=p.n_head, n_inner=p.d_mlp, activation_function="gelu_new", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                     tie_word_embeddings=p.tie_embeddings)
    model = GPT2LMHeadModel(cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def tokens_per_s(p: zoo.Preset, dtype: torch.dtype, model, opt, x: torch.Tensor, steps: int) -> float:
    params = dict(model.named_parameters())

    def step():
        loss = zoo.lm_loss(params, x, p.n_layer, p.n_head, dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()  # warm-up: allocations, oneDNN kernels
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.numel() / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["deep", "default"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print("| preset | layers x d_model / d_mlp | batch x ctx | fp32 tokens/s | bf16 tokens/s | bf16 / fp32 |")
    print("|---|---|---|---|---|---|")
    for name in args.presets:
        p = zoo.get_preset(name)
        x = torch.randint(0, p.vocab_size, (p.batch_size, p.ctx_len))  # [batch, pos]
        runs = {torch.float32: [], torch.bfloat16: []}
        models = {dt: model_params(p) for dt in runs}  # the same init for both
        for _ in range(args.repeats):
            for dt in runs:
                runs[dt].append(tokens_per_s(p, dt, *models[dt], x, args.steps))
        f32, b16 = (statistics.median(runs[dt]) for dt in (torch.float32, torch.bfloat16))
        print(f"| {name} | {p.n_layer} x {p.d_model} / {p.d_mlp} | {p.batch_size} x {p.ctx_len} | {f32:,.0f} | "
              f"{b16:,.0f} | {b16 / f32:.2f} |", flush=True)


if __name__ == "__main__":
    main()
