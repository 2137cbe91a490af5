"""Token datasets: text -> rows of `ctx_len` token ids with BOS first, saved with datasets.save_to_disk.

Layout: $DATASET_DIR/<family>/<name>, a `datasets.Dataset` with an int column `tokens`
[n_seq, ctx_len] (and `subset` for mixes). Names follow the original:
    pile.test.<subset>.512, pile.test.all-10m.512          (the Pile, per subset and seeded mixes)
    python-stdlib.<subset>.128, python-stdlib.all-1m.128   (the built-in offline corpus)
    <folder>.<file stem>.<ctx>                             (a local folder of .txt / .jsonl files)
Next to the data, `tokenizer_fingerprint.txt` records which vocabulary made it, so a dataset is
never silently read with another tokenizer, and `content_fingerprint.txt` a hash of its rows, which
every later stage's run record holds (runs.dataset_fingerprint).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import corpus, paths
from .tokenizer import tokenize_and_concatenate  # noqa: F401 (rows of ctx tokens; zoo.py uses it too)
from .errors import UserError, check_n_seq
from .flags import StageConfig

# The 10k-document sample sets: the original make_dataset.py's short aliases (all have only a
# train split, which is what the original loaded for them whatever --hf_dataset_split said).
HF_ALIASES = {
    "pile": "NeelNanda/pile-10k",
    "openwebtext": "stas/openwebtext-10k",
    "owt": "stas/openwebtext-10k",
    "c4": "NeelNanda/c4-10k",
    "code": "NeelNanda/code-10k",
    "python": "NeelNanda/code-10k",
    "c4_code": "NeelNanda/c4-code-20k",
    "c4-code": "NeelNanda/c4-code-20k",
    "wiki": "NeelNanda/wiki-10k",
}
PILE_MIN_CHARS = 50  # the original kept only Pile documents longer than this
PILE = "EleutherAI/pile"
BUILTIN = "python-stdlib"
FINGERPRINT_FILE = "tokenizer_fingerprint.txt"
CONTENT_FILE = "content_fingerprint.txt"
RECORD_FILE = "dataset_config.json"  # make_dataset.py's settings (runs.py): source, split, ctx, n_seq, seed, ...  # sha1 of the rows (and subset labels): runs.dataset_fingerprint


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()[:16]


def format_count(n: int) -> str:
    """1_000_000 -> '1m', 100_000 -> '100k' (the Pile mixes' naming)."""
    for unit, size in (("b", 10**9), ("m", 10**6), ("k", 10**3)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def parse_count(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmb]?)", text.strip().lower())
    if not m:
        raise UserError(f"cannot read token count {text!r}: use e.g. 100k, 1m, 250000")
    return int(float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}[m.group(2)])


def dataset_record(settings: dict, name: str, tokenizer) -> dict:
    """A token dataset's record (dataset_config.json): make_dataset.py's settings, its name, the tokenizer."""
    return {**settings, "name": name, "tokenizer": tokenizer_fingerprint(tokenizer)}


def save_token_dataset(tokens: np.ndarray, family: str, name: str, tokenizer, subset: list[str] | None = None,
                       record: dict | None = None, overwrite: bool = False) -> Path:
    """Atomically write a token dataset (and its tokenizer and content fingerprints) to
    $DATASET_DIR/<family>/<name>. record: make_dataset.py's settings (dataset_config.json); an existing
    dataset made with other settings is never replaced silently: UserError unless `overwrite`."""
    from . import runs

    out = paths.token_dataset_path(family, name)
    if len(tokens) == 0:
        raise UserError(f"token dataset {name!r} would have no rows: its text is shorter than one row of "
                        f"{tokens.shape[1] if tokens.ndim == 2 else '?'} tokens (use more text or a smaller --ctx_len)")
    if record is not None:
        record = dataset_record(record, name, tokenizer)
        if runs.finished(out, RECORD_FILE, record, overwrite, (FINGERPRINT_FILE,), what=f"token dataset {name!r}"):
            return out  # the same settings made it: the same rows
    from datasets import Dataset

    from . import quiet_hf

    quiet_hf()
    columns = {"tokens": tokens.tolist()}
    if subset is not None:
        columns["subset"] = list(subset)
    content = hashlib.sha1(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())
    content.update(json.dumps(list(subset) if subset is not None else None).encode())
    with paths.atomic_path(out) as tmp:
        Dataset.from_dict(columns).save_to_disk(str(tmp))
        (tmp / FINGERPRINT_FILE).write_text(tokenizer_fingerprint(tokenizer) + "\n")
        (tmp / CONTENT_FILE).write_text(content.hexdigest()[:16] + "\n")
        if record is not None:
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return out


def available_datasets(family: str) -> list[str]:
    root = paths.dataset_dir() / family
    return paths.artifact_names(root)


def load_token_dataset(name: str, family: str, tokenizer=None):
    """The saved dataset $DATASET_DIR/<family>/<name>; checks it was made with `tokenizer` if given."""
    from datasets import load_from_disk

    path = paths.token_dataset_path(family, name)
    if not path.is_dir():
        have = available_datasets(family)
        raise UserError(f"token dataset {name!r} not found at {path} "
                        f"({'available: ' + ', '.join(have) if have else 'no datasets for family ' + repr(family)}); "
                        f"make it with make_dataset.py")
    fp = path / FINGERPRINT_FILE
    if tokenizer is not None and fp.exists() and fp.read_text().strip() != tokenizer_fingerprint(tokenizer):
        raise UserError(f"token dataset {path} was made with a different tokenizer than this model's; "
                        f"rebuild it with make_dataset.py --model <this model>")
    try:
        return load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError, IndexError, KeyError) as e:  # an empty, foreign or damaged folder
        raise UserError(f"{path} is not a readable token dataset ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        f"remake it with make_dataset.py (--overwrite)") from None


def check_fits(models, name: str, ctx: int) -> None:
    """Rows of `ctx` tokens must fit every model's context (else the embedding fails deep inside)."""
    for model in models:
        n_ctx = getattr(model.cfg, "n_ctx", None)
        if n_ctx is not None and ctx > n_ctx:
            raise UserError(f"token dataset {name!r} has rows of {ctx} tokens but {getattr(model, 'model_name', 'the model')} "
                            f"reads at most {n_ctx}: make a dataset with make_dataset.py --ctx_len {n_ctx} (or less)")


def model_rows(model, name: str, n_seq: int = -1, context_length: int | None = None) -> torch.Tensor:
    """The first n_seq rows (-1: all) of token dataset `name` for `model`, checked: its tokenizer made
    them, they fit its context and vocabulary, there is at least one. LongTensor [n_seq, ctx]."""
    data = load_token_dataset(name, model.family, model.tokenizer)
    tokens = token_tensor(data, 0, n_seq if n_seq > 0 else None) if len(data) else torch.zeros(0, 0)
    if len(tokens) == 0:
        raise UserError(f"token dataset {name!r} is empty: remake it with make_dataset.py")
    if context_length is not None:  # only the first positions are used
        tokens = tokens[:, :context_length]
    check_fits([model], name, tokens.shape[1])
    if int(tokens.max()) >= model.cfg.d_vocab or int(tokens.min()) < 0:
        raise UserError(f"token dataset {name!r} holds token id {int(tokens.max())}, outside the model's vocabulary "
                        f"of {model.cfg.d_vocab}")
    return tokens


def token_tensor(dataset, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Rows [start, stop) of a token dataset as a LongTensor [n_seq, ctx]."""
    stop = len(dataset) if stop is None else min(stop, len(dataset))
    return torch.tensor(np.asarray(dataset[start:stop]["tokens"]), dtype=torch.long)


def iter_token_batches(dataset, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
    """LongTensor [batch, ctx] batches of rows [start, stop)."""
    stop = len(dataset) if stop is None else min(stop, len(dataset))
    for i in range(start, stop, batch_size):
        yield token_tensor(dataset, i, min(i + batch_size, stop))


def shard_rows(n_rows: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """Contiguous row range of shard `shard_index` of `num_shards` (sizes differ by at most one)."""
    if not 0 <= shard_index < num_shards:
        raise UserError(f"--shard_index {shard_index} must be in [0, {num_shards})")
    base, extra = divmod(n_rows, num_shards)
    start = shard_index * base + min(shard_index, extra)
    return start, start + base + (shard_index < extra)


# Builders ----------------------------------------------------------------------------------------

def make_mix(parts: dict[str, np.ndarray], n_tokens: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A seeded random mix of rows from several subsets totalling n_tokens (rows x ctx) tokens."""
    ctx = next(iter(parts.values())).shape[1]
    if n_tokens < 1:
        raise UserError(f"--mix_tokens must be a positive number of tokens, got {n_tokens}")
    n_rows = -(-n_tokens // ctx)  # ceil, as the original: at least n_tokens tokens
    labels = np.concatenate([np.full(len(v), k, dtype=object) for k, v in parts.items()])
    rows = np.concatenate(list(parts.values()))
    if n_rows > len(rows):
        raise UserError(f"a mix of {format_count(n_tokens)} tokens needs {n_rows} rows of {ctx} but only "
                        f"{len(rows)} ({len(rows) * ctx} tokens) are available")
    pick = np.random.default_rng(seed).permutation(len(rows))[:n_rows]
    return rows[pick], list(labels[pick])


def _mix_record(record: dict | None, seed: int) -> dict | None:
    """A mix's record: the subsets' settings and the seed of its row sampling."""
    return None if record is None else {**record, "seed": seed}


def build_builtin(tokenizer, family: str, ctx_len: int, mix_sizes: list[int], seed: int = 0,
                  split: str = "heldout", max_docs: int | None = None, n_seq: int = -1, record: dict | None = None,
                  overwrite: bool = False) -> list[Path]:
    """python-stdlib.<subset>.<ctx> per subset and python-stdlib.all-<N>.<ctx> mixes."""
    from tqdm.auto import tqdm

    parts = {}
    written = []
    for subset in tqdm(corpus.SUBSETS, desc="python-stdlib subsets"):
        rows = tokenize_and_concatenate(corpus.iter_documents(subset, split, max_docs), tokenizer, ctx_len,
                                        max_rows=None if n_seq < 0 else n_seq)
        parts[subset] = rows
        written.append(save_token_dataset(rows, family, f"{BUILTIN}.{subset}.{ctx_len}", tokenizer,
                                          record=record, overwrite=overwrite))
    for n in mix_sizes:
        rows, labels = make_mix(parts, n, seed)
        written.append(save_token_dataset(rows, family, f"{BUILTIN}.all-{format_count(n)}.{ctx_len}", tokenizer, labels,
                                          record=_mix_record(record, seed), overwrite=overwrite))
    return written


def _read_jsonl(path: Path) -> list[str]:
    """The 'text' field of each line of a .jsonl file; a malformed line is one error naming it."""
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj["text"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}:{n}: not a JSON object with a 'text' field ({type(e).__name__}: {e})") from None
        if not isinstance(text, str):
            raise UserError(f"{path}:{n}: 'text' is {type(text).__name__}, not a string")
        docs.append(text)
    return docs


def dataset_prefix(source: str, split: str = "test") -> str:
    """The name prefix of the datasets make_dataset.py makes from a source (its --hf_dataset and
    --hf_dataset_split): <prefix>.<subset>.<ctx> and <prefix>.all-<N>.<ctx>. 'python-stdlib' for the
    built-in corpus, the folder's name for a local folder, '<short name>.<split>' for the hub
    ('pile.test'; the 10k-document aliases only have a train split)."""
    if source == BUILTIN:
        return BUILTIN
    if Path(source).is_dir():
        return Path(source).resolve().name
    repo = HF_ALIASES.get(source, source)
    if source in HF_ALIASES:
        split = "train"
    short = "pile" if repo in (PILE, "NeelNanda/pile-10k") else repo.split("/")[-1]
    return f"{short}.{split}"


def build_local_folder(folder: Path, tokenizer, family: str, ctx_len: int, mix_sizes: list[int], seed: int = 0,
                       n_seq: int = -1, record: dict | None = None, overwrite: bool = False) -> list[Path]:
    """<folder>.<stem>.<ctx> for every .txt / .jsonl file (jsonl: the 'text' field of each line)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".txt", ".jsonl"))
    if not files:
        raise UserError(f"no .txt or .jsonl files in {folder}")
    parts, written, prefix = {}, [], dataset_prefix(str(folder))
    for f in files:
        if f.suffix == ".txt":
            docs = [f.read_text(encoding="utf-8", errors="replace")]
        else:
            docs = _read_jsonl(f)
        rows = tokenize_and_concatenate(docs, tokenizer, ctx_len, max_rows=None if n_seq < 0 else n_seq)
        parts[f.stem] = rows
        written.append(save_token_dataset(rows, family, f"{prefix}.{f.stem}.{ctx_len}", tokenizer,
                                          record=record, overwrite=overwrite))
    for n in mix_sizes:
        rows, labels = make_mix(parts, n, seed)
        written.append(save_token_dataset(rows, family, f"{prefix}.all-{format_count(n)}.{ctx_len}", tokenizer,
                                          labels, record=_mix_record(record, seed), overwrite=overwrite))
    return written


def pile_subset_key(pile_set_name: str) -> str:
    """'Gutenberg (PG-19)' -> 'gutenberg', 'Pile-CC' -> 'pile_cc': the original's subset names."""
    base = re.sub(r"\s*\(.*?\)", "", pile_set_name).strip()
    return base.lower().replace("-", "_").replace(" ", "_")


def build_hub(hf_dataset: str, split: str, tokenizer, family: str, ctx_len: int, mix_sizes: list[int],
              seed: int = 0, n_seq: int = -1, record: dict | None = None, overwrite: bool = False) -> list[Path]:
    """A hub dataset (needs the network). The Pile is written per subset (meta.pile_set_name) plus mixes."""
    from datasets import load_dataset

    repo = HF_ALIASES.get(hf_dataset, hf_dataset)
    if hf_dataset in HF_ALIASES and split != "train":
        print(f"note: {hf_dataset} ({repo}) has only a train split; using it (as the original did)")
        split = "train"
    try:
        ds = load_dataset(repo, split=split)
    except Exception as e:  # the hub client raises many types; all mean "could not get it"
        raise UserError(f"could not load dataset {repo!r} split {split!r} from the hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); offline, use --hf_dataset {BUILTIN} or a local folder") from None
    prefix = dataset_prefix(hf_dataset, split)
    max_rows = None if n_seq < 0 else n_seq
    written, parts = [], {}
    if "meta" in ds.column_names:
        names = [m["pile_set_name"] for m in ds["meta"]]
        texts = ds["text"]
        if repo == PILE:
            keep = [len(t) > PILE_MIN_CHARS for t in texts]
            texts = [t for t, k in zip(texts, keep) if k]
            names = [n for n, k in zip(names, keep) if k]
        for sub in sorted(set(names)):
            docs = [t for t, n in zip(texts, names) if n == sub]
            key = pile_subset_key(sub)
            rows = tokenize_and_concatenate(docs, tokenizer, ctx_len, max_rows)
            parts[key] = rows
            written.append(save_token_dataset(rows, family, f"{prefix}.{key}.{ctx_len}", tokenizer,
                                          record=record, overwrite=overwrite))
        for n in mix_sizes:
            rows, labels = make_mix(parts, n, seed)
            written.append(save_token_dataset(rows, family, f"{prefix}.all-{format_count(n)}.{ctx_len}",
                                              tokenizer, labels, record=_mix_record(record, seed), overwrite=overwrite))
    else:
        rows = tokenize_and_concatenate(ds["text"], tokenizer, ctx_len, max_rows)
        written.append(save_token_dataset(rows, family, f"{prefix}.{ctx_len}", tokenizer,
                                          record=record, overwrite=overwrite))
    return written


@dataclass
class MakeDatasetConfig(StageConfig):
    """make_dataset.py's flags (the original's names and defaults, plus the mixes' sizes and seed), built
    by the CLI and by the pipeline; `main_make_dataset(config)` runs it."""

    model: str = field(default="toy-gpt2-a", metadata={"help": "model whose tokenizer to use (decides the family folder)"})
    hf_dataset: str = field(default=PILE, metadata={"help": "hub dataset, alias (pile, openwebtext/owt, c4, code/python, "
                            "c4_code/c4-code, wiki: the original's 10k sample sets), 'python-stdlib' or a local folder"})
    hf_dataset_split: str = field(default="test", metadata={"help": "split of a hub dataset (aliases: train)"})
    ctx_len: int = field(default=512, metadata={"type": int, "help": "tokens per row, BOS included"})
    n_seq: int = field(default=-1, metadata={"common": True})
    output_dir: str | None = field(default=None, metadata={"help": "dataset root (default $DATASET_DIR or token_datasets)"})
    mix_tokens: list[str] | None = field(default=None, metadata={"nargs": "*", "help":
                                         "sizes of the seeded all-<N> mixes, e.g. 100k 1m (default: 1m for "
                                         "python-stdlib, none otherwise)"})
    seed: int = field(default=0, metadata={"type": int, "help": "seed of the mixes' row sampling"})
    overwrite: bool = field(default=False, metadata={"common": True})

    def run(self) -> list[Path]:
        return main_make_dataset(self)



def main_make_dataset(args: MakeDatasetConfig) -> list[Path]:
    """make_dataset.py: resolve the tokenizer and the source, build, print what was written
    (under --output_dir when given, else $DATASET_DIR or token_datasets)."""
    args = MakeDatasetConfig.from_args(args)
    check_n_seq(args.n_seq)
    with paths.overriding(DATASET_DIR=args.output_dir):
        return _make_dataset(args)


def _make_dataset(args) -> list[Path]:
    from .models import context_length, load_tokenizer, model_family

    if args.ctx_len < 2:
        raise UserError(f"--ctx_len must be >= 2 (BOS and one token), got {args.ctx_len}")
    n_ctx = context_length(args.model)
    if n_ctx is not None and args.ctx_len > n_ctx:
        raise UserError(f"--ctx_len {args.ctx_len} is longer than {args.model}'s context of {n_ctx} positions")
    tokenizer = load_tokenizer(args.model)
    family = model_family(args.model)
    src = args.hf_dataset
    if args.mix_tokens is None:
        mixes = [10**6] if src == BUILTIN else []
    else:
        mixes = [parse_count(m) for m in args.mix_tokens]
    if any(m < 1 for m in mixes):  # before any subset is written
        raise UserError(f"--mix_tokens must be a positive number of tokens, got {args.mix_tokens}")
    from . import runs

    record = {"source": src, "split": args.hf_dataset_split, "ctx_len": args.ctx_len, "n_seq": args.n_seq,
              "code_version": runs.code_version()}
    over = {"record": record, "overwrite": args.overwrite}
    if src == BUILTIN:
        import platform

        record.update(split="heldout", python=platform.python_version(), corpus_version=corpus.VERSION)
        parts = [f"{BUILTIN}.{sub}.{args.ctx_len}" for sub in corpus.SUBSETS]
        if _all_finished(family, parts, mixes, f"{BUILTIN}.all-{{}}.{args.ctx_len}", record, args, tokenizer):
            return _print_written([paths.token_dataset_path(family, n) for n in parts] + [
                paths.token_dataset_path(family, f"{BUILTIN}.all-{format_count(m)}.{args.ctx_len}") for m in mixes])
        written = build_builtin(tokenizer, family, args.ctx_len, mixes, args.seed, n_seq=args.n_seq, **over)
    elif Path(src).is_dir():
        record.update(source=str(Path(src).resolve()), split=None)
        folder = Path(src)
        prefix = dataset_prefix(src)
        parts = [f"{prefix}.{f.stem}.{args.ctx_len}" for f in sorted(folder.iterdir()) if f.suffix in (".txt", ".jsonl")]
        mix = f"{prefix}.all-{{}}.{args.ctx_len}"
        if parts and _all_finished(family, parts, mixes, mix, record, args, tokenizer):
            return _print_written([paths.token_dataset_path(family, n) for n in parts] + [
                paths.token_dataset_path(family, mix.format(format_count(m))) for m in mixes])
        written = build_local_folder(Path(src), tokenizer, family, args.ctx_len, mixes, args.seed, args.n_seq, **over)
    elif Path(src).exists():
        raise UserError(f"--hf_dataset {src!r} is a file; pass a folder of .txt/.jsonl files")
    else:
        runs.would(f"download and tokenise {src}")  # check mode: the subsets are known only after the download
        written = build_hub(src, args.hf_dataset_split, tokenizer, family, args.ctx_len, mixes, args.seed, args.n_seq,
                            **over)
    return _print_written(written)


def _print_written(written: list[Path]) -> list[Path]:
    for w in written:
        print(w)
    return written


def _all_finished(family: str, parts: list[str], mixes: list[int], mix_name: str, record: dict, args,
                  tokenizer) -> bool:
    """Whether every dataset a build would write is finished with these settings, decided before the
    corpus is read (the rows are a function of the record); another record stops (runs.finished)."""
    from . import runs

    want = [(n, record) for n in parts] + [(mix_name.format(format_count(m)), _mix_record(record, args.seed))
                                           for m in mixes]
    return all([runs.finished(paths.token_dataset_path(family, n), RECORD_FILE, dataset_record(r, n, tokenizer),
                              args.overwrite, (FINGERPRINT_FILE,), what=f"token dataset {n!r}") for n, r in want])


def dataset_fingerprint(name: str, family: str) -> str:
    """The content fingerprint save_token_dataset recorded (datasets' own _fingerprint for older folders)."""
    folder = paths.token_dataset_path(family, name)
    try:
        return (folder / CONTENT_FILE).read_text().strip()
    except OSError:
        pass
    try:
        return "datasets:" + json.loads((folder / "state.json").read_text())["_fingerprint"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"token dataset {name!r} not found under {folder.parent} (run make_dataset.py)") from None


def run_inputs(model_name: str, dataset: str, family: str) -> dict:
    """The inputs part of a stage's run record (runs.py): weights and rows fingerprints, code version."""
    from . import runs
    from .models import model_fingerprint

    return {"model_fingerprint": model_fingerprint(model_name),
            "dataset_fingerprint": dataset_fingerprint(dataset, family), "code_version": runs.code_version()}
