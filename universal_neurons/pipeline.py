"""The main job (`universal-neurons run`): every stage of the paper on a set of seeds of one model.

Stages, each skipped when its artifacts exist:
    zoo       train the toy seeds (embedded default only)
    datasets  token datasets of the corpus per subset and a held-out mix
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from . import token_datasets, zoo
from .models import load_tokenizer, model_family


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=None,
                   help="seed a first, then the others (default: toy-gpt2-a .. e; --quick: toy-gpt2-tiny-a .. e)")
    p.add_argument("--dataset", default="python-stdlib", help="corpus for make_dataset (default the built-in one)")
    p.add_argument("--quick", action="store_true", help="tiny zoo and small datasets (CI, smoke tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch_size", type=int, default=32)


def settings(args) -> SimpleNamespace:
    preset = "tiny" if args.quick else "default"
    models = args.models or [zoo.zoo_name(preset, s) for s in range(5)]
    ctx = zoo.get_preset(preset).ctx_len if zoo.is_zoo_name(models[0]) else 512
    return SimpleNamespace(preset=preset, models=models, ctx_len=ctx, family=model_family(models[0]),
                           mix_tokens=[32_000] if args.quick else [10 ** 6],
                           n_seq=400 if args.quick else -1)


def run(args) -> None:
    s = settings(args)
    t0 = time.time()
    print(f"== universal-neurons run: {', '.join(s.models)} on {args.dataset} ==")
    if all(zoo.is_zoo_name(m) for m in s.models):
        metas = [zoo.model_meta(m) for m in s.models]
        print(zoo.format_zoo_table(metas))
    tok = load_tokenizer(s.models[0])
    mix = f"{args.dataset}.all-{token_datasets.format_count(s.mix_tokens[0])}.{s.ctx_len}"
    if mix not in token_datasets.available_datasets(s.family):
        token_datasets.main_make_dataset(SimpleNamespace(
            model=s.models[0], hf_dataset=args.dataset, hf_dataset_split="test", ctx_len=s.ctx_len,
            n_seq=s.n_seq, output_dir=None, mix_tokens=[str(n) for n in s.mix_tokens], seed=0))
    ds = token_datasets.load_token_dataset(mix, s.family, tok)
    print(f"dataset {mix}: {len(ds)} rows x {s.ctx_len} tokens")
    print(f"done in {time.time() - t0:.1f} s")
