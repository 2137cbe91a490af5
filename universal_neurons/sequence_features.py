"""Sequence features: spaCy linguistic tags aligned to model tokens.

For each token sequence the decoded model tokens are concatenated into one text, spaCy tags
the text, and each model token takes the tags of the spaCy token (word) covering its first
non-space character. Model tokens that are all whitespace, or masked (BOS, padding), fall in
no word and get no tag. Features (booleans, one column each):

    pos_<UPOS>          coarse part of speech (pos_NOUN, pos_VERB, ...)
    dep_<label>         dependency relation to the head (dep_nsubj, dep_prep, ...)
    morph_<Key>=<Val>   one per morphological feature (morph_Number=Plur, morph_Tense=Past)
    ent_<TYPE>          inside a named entity of that type (ent_PERSON, ent_DATE, ...)
    is_stop             spaCy stop word
    sent_start          the token starts the first word of a sentence

spaCy is optional: `load_spacy` raises a UserError naming what to install when it is missing.
The alignment (`align_tokens_to_words`) is a pure function of character spans.
"""
from __future__ import annotations

import numpy as np

from .errors import UserError

SPACY_INSTALL = "pip install spacy && python -m spacy download en_core_web_sm"


def load_spacy(name: str = "en_core_web_sm"):
    """The spaCy pipeline `name`, or a UserError saying how to install it."""
    try:
        import spacy
    except ImportError:
        raise UserError(f"sequence features need spaCy and an English pipeline, which are not installed: "
                        f"{SPACY_INSTALL} (token features work without them)") from None
    try:
        return spacy.load(name)
    except OSError:
        raise UserError(f"spaCy is installed but its English pipeline {name!r} is not: "
                        f"python -m spacy download {name}") from None


def token_char_spans(pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Character [start, end) of each piece in "".join(pieces): two int64 arrays [n_pieces]."""
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    ends = np.cumsum(lengths)
    return ends - lengths, ends


def align_tokens_to_words(text: str, token_starts, token_ends, word_starts, word_ends) -> tuple[np.ndarray, np.ndarray]:
    """Word covering each token's first non-space character.

    text: the string both tokenisations cover; token_starts/ends [n_tokens] and word_starts/ends
    [n_words]: character spans [start, end), words sorted by start and not overlapping.
    Returns (word_index [n_tokens] int64, -1 where the token holds no non-space character or that
    character is in no word; at_word_start [n_tokens] bool, whether that character is the word's
    first character).
    """
    token_starts = np.asarray(token_starts, dtype=np.int64)
    token_ends = np.asarray(token_ends, dtype=np.int64)
    word_starts = np.asarray(word_starts, dtype=np.int64)
    word_ends = np.asarray(word_ends, dtype=np.int64)
    n = len(text)
    # next_char[i] = index of the first non-space character at or after i (n if none).
    is_space = np.fromiter((c.isspace() for c in text), dtype=bool, count=n)
    idx = np.where(is_space, n, np.arange(n))
    next_char = np.append(np.minimum.accumulate(idx[::-1])[::-1], n)
    first = next_char[np.clip(token_starts, 0, n)]
    has_char = first < token_ends
    # The word whose start is the last one <= first, if it also ends after first.
    j = np.searchsorted(word_starts, first, side="right") - 1
    inside = has_char & (j >= 0)
    inside[inside] &= first[inside] < word_ends[j[inside]]
    word = np.where(inside, j, -1)
    at_start = inside & (word_starts[np.maximum(j, 0)] == first)
    return word, at_start


def word_tags(word) -> list[str]:
    """The feature names one spaCy token carries (see the module docstring)."""
    tags = []
    if word.pos_:
        tags.append(f"pos_{word.pos_}")
    if word.dep_:
        tags.append(f"dep_{word.dep_}")
    tags.extend(f"morph_{m}" for m in str(word.morph).split("|") if m)
    if word.ent_type_:
        tags.append(f"ent_{word.ent_type_}")
    if word.is_stop:
        tags.append("is_stop")
    return tags


def sequence_features(tokens, vocab: list[str], nlp, mask=None, names: dict[str, int] | None = None):
    """Tag every model token of a batch of sequences.

    tokens: [batch, pos] token ids; vocab: decoded string of each id; nlp: a spaCy pipeline
    (`load_spacy()`); mask: [batch, pos] bool, False for positions to leave out of the text (BOS,
    padding), which get no features; names: feature name -> column, extended in place with new
    names (pass the same dict for every batch of a dataset so columns stay put).
    Returns (features [batch, pos, len(names)] bool, names).
    """
    tokens = np.asarray(tokens)
    mask = np.ones(tokens.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    names = {} if names is None else names
    hits: list[tuple[int, int, int]] = []  # (sequence, position, column)
    for b, (row, keep) in enumerate(zip(tokens, mask)):
        pieces = [vocab[t] if k else "" for t, k in zip(row.tolist(), keep.tolist())]
        text = "".join(pieces)
        doc = nlp(text)
        t_start, t_end = token_char_spans(pieces)
        w_start = np.array([w.idx for w in doc], dtype=np.int64)
        w_end = w_start + np.array([len(w.text) for w in doc], dtype=np.int64)
        word_of, at_start = align_tokens_to_words(text, t_start, t_end, w_start, w_end)
        tags = [word_tags(w) for w in doc]
        sent_start = [bool(w.is_sent_start) for w in doc]
        for p in np.flatnonzero(word_of >= 0):
            w = word_of[p]
            for tag in tags[w] + (["sent_start"] if sent_start[w] and at_start[p] else []):
                hits.append((b, p, names.setdefault(tag, len(names))))
    out = np.zeros((*tokens.shape, len(names)), dtype=bool)
    if hits:
        b, p, c = np.array(hits).T
        out[b, p, c] = True
    return out, names
