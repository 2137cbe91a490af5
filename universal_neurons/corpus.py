"""The built-in corpus `python-stdlib`: text that ships with every Python, so the pipeline runs offline.

Subsets (each a list of documents):
    prose   the language reference (pydoc_data.topics) and the docstrings of every stdlib module
    code    the source of the standard library, without its tests
    tests   the source of the standard library's test suite (Lib/test)
site-packages is never included (globbing the stdlib folder without excluding it picks up
everything installed). Documents are split by a hash of their content into a training part for the
zoo and a held-out part (`HELDOUT_PERCENT`) that the analyses (make_dataset python-stdlib) use, so
correlations and summaries are measured on text the models never saw.
"""
from __future__ import annotations

import ast
import hashlib
import sysconfig
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Iterator

SUBSETS = ("prose", "code", "tests")
VERSION = 2  # bump when the documents or the split change: zoo caches key on it
HELDOUT_PERCENT = 20
SPLITS = ("train", "heldout", "all")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "idle_test", "lib2to3"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


@lru_cache(maxsize=1)
def _source_files() -> tuple[Path, ...]:
    root = stdlib_root()
    files = [p for p in root.rglob("*.py") if not (_SKIP_DIRS & set(p.relative_to(root).parts[:-1]))]
    return tuple(sorted(files))


def _read_source(path: Path) -> str | None:
    try:
        with tokenize.open(path) as f:  # honours PEP 263 encoding declarations
            return f.read()
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def _docstrings(source: str) -> str:
    """All module/class/function docstrings of a source file, blank-line separated."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                docs.append(doc)
    return "\n\n".join(docs)


def iter_documents(subset: str, split: str = "all", max_docs: int | None = None) -> Iterator[str]:
    """Yield the documents of one subset ('prose' | 'code' | 'tests') in a fixed order.

    split: 'train' (documents the zoo trains on), 'heldout' (never trained on) or 'all'.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown python-stdlib subset {subset!r}; choose from {SUBSETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    root = stdlib_root()
    n = 0

    def keep(key: str) -> bool:
        return split == "all" or (split == "heldout") == is_heldout(key)

    if subset == "prose":
        from pydoc_data.topics import topics

        for name in sorted(topics):
            if keep(f"topic:{name}") and topics[name].strip():
                yield topics[name]
                n += 1
                if max_docs is not None and n >= max_docs:
                    return
    for path in _source_files():
        rel = path.relative_to(root).as_posix()
        in_tests = rel.startswith("test/")
        if subset == "code" and in_tests or subset == "tests" and not in_tests:
            continue
        text = _read_source(path)
        if subset == "prose" and text is not None:
            text = _docstrings(text)
        # split by content, so files that exist twice (vendored copies, empty modules) cannot leak
        # from training into the held-out part
        if text and text.strip() and keep(f"{subset}:{text}"):
            yield text
            n += 1
            if max_docs is not None and n >= max_docs:
                return


def iter_all(split: str = "all", max_docs_per_subset: int | None = None) -> Iterator[tuple[str, str]]:
    """(subset, document) for every subset in turn."""
    for subset in SUBSETS:
        for doc in iter_documents(subset, split, max_docs_per_subset):
            yield subset, doc
