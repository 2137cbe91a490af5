"""Token features: boolean properties of each vocabulary entry's decoded string.

`make_vocab_df(tokenizer, ...)` returns one row per token id ([vocab] rows) with
- `token`: the decoded string (object column),
- about 200 boolean columns, each a string predicate (type, case, digits and years,
  symbols, code shapes, pronouns, function words, dates and places, first letter,
  prefixes, suffixes),
- optionally `embed_norm` / `unembed_norm` (floats, ||W_E[v]|| and ||W_U[:, v]||),
- optionally unigram features `unigram_<form>` (see `unigram_features`).

Explanations use the boolean columns only (`feature_columns`).

Conventions for every predicate:
- `raw` is the decoded token; `body` is `raw` without ONE leading space (byte-level BPE puts at
  most one space in front of a word: " the" -> body "the"); `low` is `body.lower()`.
- Word predicates (pronouns, months, stop words, ...) look at `low` (or `body` where case
  matters, stated per feature) and need the whole body to be the word: " she" is a
  third-person pronoun, " shed" is not.
- An empty body (the token " " or "") is never alphabetic, numeric or symbolic.
"""
from __future__ import annotations

import builtins
import keyword
import re
import unicodedata

import numpy as np
import pandas as pd

# ------------------------------------------------------------------------------------------------
# Decoding the vocabulary
# ------------------------------------------------------------------------------------------------


def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-character table used by byte-level BPE.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; the remaining 68 bytes (space, control characters, ...) are shifted, in byte
    order, to the characters U+0100, U+0101, ... (so the space 0x20 becomes 'Ġ', '\\n' 'Ċ').
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _is_byte_level(tokenizer) -> bool:
    if getattr(tokenizer, "byte_decoder", None) is not None:  # a python ("slow") GPT-2 tokenizer
        return True
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    from tokenizers import decoders

    return isinstance(backend.decoder, decoders.ByteLevel)


def decoded_vocab(tokenizer) -> list[str]:
    """The string of every token id, decoded on its own: list of len(tokenizer) strings.

    For byte-level BPE (GPT-2, Pythia, our toy tokenizers) each token's characters are mapped
    back to bytes and decoded as UTF-8 with U+FFFD for incomplete sequences (a token holding
    half of a multi-byte character); 'Ġ' becomes a leading space and 'Ċ' a newline. Added and
    special tokens keep their literal content. Other tokenizers fall back to decode([id]).
    """
    n = len(tokenizer)
    added = {i: str(t.content if hasattr(t, "content") else t)
             for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    if not _is_byte_level(tokenizer):
        return [added[i] if i in added else tokenizer.decode([i], clean_up_tokenization_spaces=False)
                for i in range(n)]
    byte_of = _byte_level_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = []
    for i, piece in enumerate(pieces):
        if i in added:
            out.append(added[i])
        elif piece is None:  # a hole in the id space
            out.append("")
        elif all(c in byte_of for c in piece):
            out.append(bytes(byte_of[c] for c in piece).decode("utf-8", errors="replace"))
        else:  # not a byte-level piece (should not happen): keep it readable
            out.append(piece)
    return out


# ------------------------------------------------------------------------------------------------
# Word lists (lowercase unless stated)
# ------------------------------------------------------------------------------------------------

PRONOUNS = {
    "first_person_singular": {"i", "me", "my", "mine", "myself"},
    "first_person_plural": {"we", "us", "our", "ours", "ourselves"},
    "second_person": {"you", "your", "yours", "yourself", "yourselves", "ya", "thou", "thee", "thy"},
    "third_person_masculine": {"he", "him", "his", "himself"},
    "third_person_feminine": {"she", "her", "hers", "herself"},
    "third_person_neuter": {"it", "its", "itself"},
    "third_person_plural": {"they", "them", "their", "theirs", "themselves"},
}
FIRST_PERSON = PRONOUNS["first_person_singular"] | PRONOUNS["first_person_plural"]
THIRD_PERSON_SINGULAR = (PRONOUNS["third_person_masculine"] | PRONOUNS["third_person_feminine"]
                         | PRONOUNS["third_person_neuter"])
THIRD_PERSON = THIRD_PERSON_SINGULAR | PRONOUNS["third_person_plural"]
PERSONAL_PRONOUNS = set().union(*PRONOUNS.values())
POSSESSIVE_PRONOUNS = {"my", "mine", "our", "ours", "your", "yours", "his", "her", "hers", "its", "their", "theirs", "thy"}
REFLEXIVE_PRONOUNS = {"myself", "ourselves", "yourself", "yourselves", "himself", "herself", "itself", "themselves"}
SUBJECT_PRONOUNS = {"i", "we", "you", "he", "she", "it", "they"}
OBJECT_PRONOUNS = {"me", "us", "you", "him", "her", "it", "them"}
DEMONSTRATIVES = {"this", "that", "these", "those"}
WH_WORDS = {"who", "whom", "whose", "which", "what", "where", "when", "why", "how", "whatever", "whoever", "whichever"}

ARTICLES = {"a", "an", "the"}
DETERMINERS = ARTICLES | DEMONSTRATIVES | {"my", "your", "his", "her", "its", "our", "their", "some", "any", "no",
                                           "every", "each", "either", "neither", "all", "both", "another", "such"}
PREPOSITIONS = {"of", "in", "to", "for", "with", "on", "at", "from", "by", "about", "as", "into", "like", "through",
                "after", "over", "between", "out", "against", "during", "without", "before", "under", "around",
                "among", "within", "along", "across", "behind", "beyond", "upon", "toward", "towards", "onto",
                "via", "per", "since", "until", "till", "above", "below", "beneath", "beside", "besides",
                "despite", "except", "inside", "outside", "near", "off", "throughout", "unlike", "amid"}
COORDINATING_CONJUNCTIONS = {"and", "or", "but", "nor", "yet", "so", "for"}
SUBORDINATING_CONJUNCTIONS = {"because", "although", "though", "if", "unless", "while", "whereas", "since", "when",
                              "whenever", "where", "wherever", "whether", "once", "until", "till", "than", "that",
                              "after", "before", "as"}
AUXILIARY_VERBS = {"be", "is", "are", "was", "were", "am", "been", "being", "have", "has", "had", "having",
                   "do", "does", "did"}
MODAL_VERBS = {"can", "could", "will", "would", "shall", "should", "may", "might", "must", "ought"}
NEGATIONS = {"not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "n't", "cannot"}
QUANTIFIERS = {"all", "some", "any", "many", "much", "few", "fewer", "little", "less", "more", "most", "each",
               "every", "both", "several", "enough", "none", "various", "numerous"}
CONTRACTIONS = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "n't", "’s", "’t", "’re", "’ve", "’m", "’ll", "’d", "n’t"}
TITLES = {"mr", "mrs", "ms", "miss", "dr", "prof", "sir", "madam", "jr", "sr", "st", "rev", "gen", "capt", "lt", "sgt"}
NUMBER_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
                "thousand", "million", "billion", "trillion", "dozen"}
ORDINAL_WORDS = {"first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
                 "eleventh", "twelfth", "thirteenth", "twentieth", "hundredth", "thousandth", "millionth"}
# A general English stop-word list (function words and the most frequent light words).
STOP_WORDS = (PERSONAL_PRONOUNS | REFLEXIVE_PRONOUNS | DETERMINERS | PREPOSITIONS | COORDINATING_CONJUNCTIONS
              | SUBORDINATING_CONJUNCTIONS | AUXILIARY_VERBS | MODAL_VERBS | WH_WORDS | QUANTIFIERS
              | {"not", "no", "nor", "only", "own", "same", "too", "very", "just", "now", "then", "there", "here",
                 "again", "further", "also", "other", "up", "down", "s", "t", "don", "ll", "re", "ve", "d", "m",
                 "o", "y", "ain", "isn", "aren", "wasn", "weren", "doesn", "didn", "hasn", "haven", "hadn",
                 "won", "wouldn", "shouldn", "couldn", "mustn", "needn", "even", "ever", "still", "yes"})

MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"}
MONTH_ABBREVIATIONS = {"jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
DAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
DAY_ABBREVIATIONS = {"mon", "tue", "tues", "wed", "thu", "thur", "thurs", "fri", "sat", "sun"}
US_STATES = {"alabama", "alaska", "arizona", "arkansas", "california", "colorado", "connecticut", "delaware",
             "florida", "georgia", "hawaii", "idaho", "illinois", "indiana", "iowa", "kansas", "kentucky",
             "louisiana", "maine", "maryland", "massachusetts", "michigan", "minnesota", "mississippi",
             "missouri", "montana", "nebraska", "nevada", "new hampshire", "new jersey", "new mexico",
             "new york", "north carolina", "north dakota", "ohio", "oklahoma", "oregon", "pennsylvania",
             "rhode island", "south carolina", "south dakota", "tennessee", "texas", "utah", "vermont",
             "virginia", "washington", "west virginia", "wisconsin", "wyoming"}
US_STATE_CODES = {"AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS",
                  "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY",
                  "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV",
                  "WI", "WY", "DC"}

PYTHON_KEYWORDS = set(keyword.kwlist)  # case-sensitive: True, None, def, ...
PYTHON_BUILTINS = {n for n in dir(builtins) if not n.startswith("_") and n[:1].islower()}  # print, len, ...
PYTHON_OPERATORS = {"+", "-", "*", "/", "//", "%", "**", "@", "==", "!=", "<", ">", "<=", ">=", "=", "+=", "-=",
                    "*=", "/=", "//=", "%=", "**=", "@=", "&=", "|=", "^=", ">>=", "<<=", "&", "|", "^", "~",
                    "<<", ">>", "->", ":="}

# Characters with a `contains_<name>` feature.
SYMBOLS = {
    "open_paren": "(", "close_paren": ")", "open_bracket": "[", "close_bracket": "]", "open_brace": "{",
    "close_brace": "}", "less_than": "<", "greater_than": ">", "single_quote": "'", "double_quote": '"',
    "backtick": "`", "dash": "-", "underscore": "_", "slash": "/", "backslash": "\\", "dot": ".",
    "comma": ",", "colon": ":", "semicolon": ";", "exclamation": "!", "question": "?", "at": "@", "hash": "#",
    "dollar": "$", "percent": "%", "caret": "^", "ampersand": "&", "asterisk": "*", "plus": "+",
    "equals": "=", "pipe": "|", "tilde": "~",
}
FIRST_LETTERS = "abcdefghijklmnopqrstuvwxyz"
PREFIXES = ["un", "re", "in", "im", "dis", "pre", "non", "over", "under", "sub", "inter", "anti", "de", "en",
            "ex", "mis", "co", "trans", "pro", "super", "semi", "multi", "auto"]
SUFFIXES = ["s", "es", "ed", "ing", "ly", "er", "est", "tion", "sion", "ment", "ness", "ity", "able", "ible", "al",
            "ful", "less", "ive", "ous", "ic", "ize", "ise", "ist", "ism", "ance", "ence", "ship", "ward", "y", "en"]

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:[.,][0-9]+)*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Roman numerals 1..399 that use I, V or X (CC, CL, MD... are mostly abbreviations, not numbers).
_ROMAN = re.compile(r"(?=[IVXLC]*[IVX])C{0,3}(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})")


def _is_ordinal_number(s: str) -> bool:
    """'1st', '22nd', '103rd', '11th', '4th' (the suffix the number actually takes)."""
    m = re.fullmatch(r"([0-9]+)(st|nd|rd|th)", s.lower())
    if not m:
        return False
    n = int(m.group(1))
    want = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return m.group(2) == want


def _all_chars(s: str, pred) -> bool:
    return bool(s) and all(pred(c) for c in s)


# A symbol character: neither a letter/digit of any script (str.isalnum, which is what re's \w tests
# besides '_') nor whitespace: punctuation, math, currency, '_', ... U+FFFD stands for bytes of an
# incomplete UTF-8 character, whose nature is unknown: not a symbol.
_SYMBOL_CHAR = r"[^\w\s\ufffd]|_"
# CJK ideographs (and extension A, compatibility), kana, hangul syllables.
_CJK = r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"


# ------------------------------------------------------------------------------------------------
# The feature table
# ------------------------------------------------------------------------------------------------


def token_features(tokens: list[str]) -> pd.DataFrame:
    """Boolean string features of `tokens` ([vocab] decoded strings) -> DataFrame [vocab, ~210]."""
    raw = pd.Series(tokens, dtype=object).fillna("")
    body = raw.map(lambda s: s[1:] if s.startswith(" ") else s)
    low = body.str.lower()
    blen = body.str.len()
    f: dict[str, pd.Series] = {}

    def full(pattern: str, series=body):
        return series.str.fullmatch(pattern).fillna(False).astype(bool)

    # --- token type -----------------------------------------------------------------------------
    alpha = body.map(str.isalpha)
    f["has_leading_space"] = raw.str.startswith(" ")
    f["is_whitespace"] = raw.map(lambda s: bool(s) and s.isspace())
    f["only_spaces"] = full(r" +", raw)
    f["is_indent"] = full(r"(?: {4})+", raw)  # code indentation: a multiple of 4 spaces
    f["is_newline"] = f["is_whitespace"] & raw.str.contains("\n", regex=False)
    f["contains_newline"] = raw.str.contains("\n", regex=False)
    f["contains_tab"] = raw.str.contains("\t", regex=False)
    f["is_alpha"] = alpha
    f["is_ascii_alpha"] = full(r"[A-Za-z]+")
    f["is_alnum"] = body.map(str.isalnum)
    f["is_lower"] = alpha & body.map(str.islower)
    f["all_caps"] = alpha & body.map(str.isupper) & (blen >= 2)  # single capitals are is_capitalized only
    f["is_capitalized"] = alpha & body.map(str.istitle)  # 'Hello', 'A'; not 'HELLO' or 'HeLLo'
    f["is_mixed_case"] = (alpha & body.map(lambda s: any(c.isupper() for c in s) and any(c.islower() for c in s))
                          & ~body.map(str.istitle))  # iPhone, YouTube (uncased scripts are neither)
    f["starts_with_upper"] = body.str[:1].map(str.isupper)
    f["starts_with_lower"] = body.str[:1].map(str.islower)
    f["word_start"] = f["has_leading_space"] & alpha  # ' word'
    f["alpha_no_space"] = ~f["has_leading_space"] & alpha  # 'word' (a word's inner piece or a line start)
    f["is_single_char"] = blen == 1
    f["is_single_letter"] = (blen == 1) & alpha
    f["len_1"] = blen == 1
    f["len_2"] = blen == 2
    f["len_3"] = blen == 3
    f["len_4_5"] = blen.between(4, 5)
    f["len_6_8"] = blen.between(6, 8)
    f["len_9_plus"] = blen >= 9
    f["is_ascii"] = raw.map(lambda s: bool(s) and s.isascii())
    f["contains_non_ascii"] = ~raw.map(str.isascii)
    f["contains_replacement_char"] = raw.str.contains("\ufffd", regex=False)  # part of a multi-byte char
    f["contains_cjk"] = raw.str.contains(_CJK)

    # --- digits and numbers -----------------------------------------------------------------------
    f["contains_digit"] = body.str.contains(r"[0-9]")
    f["all_digits"] = full(r"[0-9]+")
    f["starts_with_digit"] = body.str.match(r"[0-9]").fillna(False).astype(bool)
    f["is_single_digit"] = full(r"[0-9]")
    f["is_two_digits"] = full(r"[0-9]{2}")
    f["is_three_digits"] = full(r"[0-9]{3}")
    f["is_four_digits"] = full(r"[0-9]{4}")
    f["is_year"] = full(r"1[7-9][0-9]{2}|20[0-9]{2}")  # 1700-2099
    f["is_numeric"] = full(_NUMBER.pattern)  # 42, -3.5, 1,000, .5, 1e-6
    f["is_decimal"] = full(r"[0-9]*\.[0-9]+")
    f["is_ordinal_number"] = body.map(_is_ordinal_number)
    f["is_hex_literal"] = full(r"0[xX][0-9a-fA-F]+")
    f["is_roman_numeral"] = full(_ROMAN.pattern) & (blen >= 2)  # II, XIV; 'I' alone is the pronoun
    f["is_number_word"] = low.isin(NUMBER_WORDS)
    f["is_ordinal_word"] = low.isin(ORDINAL_WORDS)

    # --- symbols ----------------------------------------------------------------------------------
    f["any_symbol"] = body.str.contains(_SYMBOL_CHAR)
    f["all_symbolic"] = full(f"(?:{_SYMBOL_CHAR})+")  # EVERY char is a symbol
    f["is_punctuation"] = body.map(lambda s: _all_chars(s, lambda c: unicodedata.category(c).startswith("P")))
    f["contains_any_open_bracket"] = body.str.contains(r"[(\[{]")
    f["contains_any_close_bracket"] = body.str.contains(r"[)\]}]")
    f["contains_any_quote"] = body.str.contains(r"['\"`‘’“”]")
    for name, char in SYMBOLS.items():
        f[f"contains_{name}"] = body.str.contains(char, regex=False)
    f["starts_with_dot"] = body.str.startswith(".") & (blen > 1)  # '.append', '.py'
    f["ends_with_period"] = body.str.endswith(".")
    f["ends_with_comma"] = body.str.endswith(",")
    f["ends_with_colon"] = body.str.endswith(":")

    # --- code ---------------------------------------------------------------------------------------
    f["python_keyword"] = body.isin(PYTHON_KEYWORDS)
    f["python_builtin"] = body.isin(PYTHON_BUILTINS)
    f["is_self_or_cls"] = body.isin({"self", "cls"})
    f["is_dunder"] = full(r"__[A-Za-z][A-Za-z0-9_]*__")
    f["starts_with_underscore"] = body.str.startswith("_")
    f["is_identifier"] = body.map(str.isidentifier)
    f["is_camel_case"] = full(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")  # fooBar
    f["is_pascal_case"] = full(r"(?:[A-Z][a-z0-9]+){2,}")  # FooBar
    f["is_snake_case"] = full(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")  # foo_bar
    f["is_constant_case"] = full(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")  # FOO_BAR
    f["is_operator"] = body.isin(PYTHON_OPERATORS)
    f["is_comment_marker"] = body.str.startswith("#")
    f["is_string_quote"] = body.isin({'"', "'", '"""', "'''"})
    f["contains_triple_quote"] = body.str.contains(r"\"\"\"|'''")
    f["is_prefixed_string_quote"] = full(r"[rRbBfFuU]{1,2}[\"']")  # f" r' b"
    f["contains_escape_sequence"] = body.str.contains(r"\\[nrt0'\"\\]")
    f["is_file_extension"] = full(r"\.[A-Za-z0-9]{1,5}") & body.str.contains(r"[A-Za-z]")

    # --- pronouns -----------------------------------------------------------------------------------
    for name, words in PRONOUNS.items():
        f[f"pronoun_{name}"] = low.isin(words)
    f["pronoun_first_person"] = low.isin(FIRST_PERSON)
    f["pronoun_third_person_singular"] = low.isin(THIRD_PERSON_SINGULAR)
    f["pronoun_third_person"] = low.isin(THIRD_PERSON)
    f["pronoun_personal"] = low.isin(PERSONAL_PRONOUNS)
    f["pronoun_possessive"] = low.isin(POSSESSIVE_PRONOUNS)
    f["pronoun_reflexive"] = low.isin(REFLEXIVE_PRONOUNS)
    f["pronoun_subject"] = low.isin(SUBJECT_PRONOUNS)
    f["pronoun_object"] = low.isin(OBJECT_PRONOUNS)
    f["is_demonstrative"] = low.isin(DEMONSTRATIVES)
    f["is_wh_word"] = low.isin(WH_WORDS)

    # --- function words -------------------------------------------------------------------------------
    f["is_article"] = low.isin(ARTICLES)
    f["is_determiner"] = low.isin(DETERMINERS)
    f["is_preposition"] = low.isin(PREPOSITIONS)
    f["is_coordinating_conjunction"] = low.isin(COORDINATING_CONJUNCTIONS)
    f["is_subordinating_conjunction"] = low.isin(SUBORDINATING_CONJUNCTIONS)
    f["is_auxiliary_verb"] = low.isin(AUXILIARY_VERBS)
    f["is_modal_verb"] = low.isin(MODAL_VERBS)
    f["is_negation"] = low.isin(NEGATIONS)
    f["is_quantifier"] = low.isin(QUANTIFIERS)
    f["is_stop_word"] = low.isin(STOP_WORDS)
    f["is_contraction"] = low.isin(CONTRACTIONS)  # "'s", "n't", ...
    f["is_title_abbreviation"] = low.isin(TITLES) & f["starts_with_upper"]  # Mr, Dr, St

    # --- dates and places (proper nouns: capitalised or all caps) -------------------------------------
    proper = f["is_capitalized"] | (alpha & body.map(str.isupper))
    f["is_month"] = proper & low.isin(MONTHS)
    f["is_month_abbreviation"] = proper & low.isin(MONTH_ABBREVIATIONS)
    f["is_day_of_week"] = proper & low.isin(DAYS)
    f["is_day_abbreviation"] = proper & low.isin(DAY_ABBREVIATIONS)
    f["is_us_state"] = proper & low.isin(US_STATES)
    f["is_us_state_code"] = body.isin(US_STATE_CODES)  # exactly 'CA', 'NY', ... (upper case)

    # --- first letter, prefixes, suffixes (alphabetic tokens, case-insensitive) -------------------------
    first = low.str[:1]
    for letter in FIRST_LETTERS:
        f[f"starts_with_{letter}"] = first == letter
    # The token itself may be the affix ('ing' is suffix_ing): subword tokens are often exactly that.
    for p in PREFIXES:
        f[f"prefix_{p}"] = alpha & low.str.startswith(p)
    for s in SUFFIXES:
        f[f"suffix_{s}"] = alpha & low.str.endswith(s)

    df = pd.DataFrame({k: v.fillna(False).astype(bool).to_numpy() for k, v in f.items()})
    return df


# ------------------------------------------------------------------------------------------------
# Unigram features and the full table
# ------------------------------------------------------------------------------------------------


def unigram_features(tokens: list[str], token_counts, min_count: int = 3000, min_forms: int = 3) -> pd.DataFrame:
    """One boolean column `unigram_<form>` per frequent normalised form.

    A token's form is `raw.strip().lower()` (' The', 'the', 'THE' -> 'the'). A form becomes a
    feature when its surface forms (vocabulary ids with that form) number more than `min_forms`
    AND their summed count in `token_counts` ([vocab], occurrences in a dataset) is more than
    `min_count`. The feature is true on all its surface forms. Empty forms (whitespace) and forms
    with U+FFFD (distinct byte fragments that all print as the replacement character) never count.
    """
    counts = np.asarray(token_counts, dtype=np.float64).reshape(-1)
    n = len(tokens)
    if len(counts) < n:  # ids the counts do not cover never occurred
        counts = np.concatenate([counts, np.zeros(n - len(counts))])
    forms = pd.Series([t.strip().lower() for t in tokens])
    stats = pd.DataFrame({"form": forms, "count": counts[:n]}).groupby("form")["count"].agg(["sum", "size"])
    valid = (stats.index != "") & ~stats.index.str.contains("\ufffd", regex=False)
    stats = stats[(stats["sum"] > min_count) & (stats["size"] > min_forms) & valid]
    cols = {f"unigram_{form}": (forms == form).to_numpy() for form in sorted(stats.index)}
    return pd.DataFrame(cols, index=pd.RangeIndex(n), dtype=bool)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def make_vocab_df(tokenizer, W_E=None, W_U=None, token_counts=None, min_count: int = 3000,
                  min_forms: int = 3) -> pd.DataFrame:
    """Token-feature table indexed by token id.

    W_E: [vocab, d_model] embedding, W_U: [d_model, vocab] unembedding (torch or numpy), optional;
    token_counts: [vocab] occurrences in a dataset, optional (enables unigram features).
    When W_E/W_U have more rows than the tokenizer has tokens (padded vocabularies, e.g. Pythia),
    the extra ids get an empty token string and all features false.
    Columns: `token` (str), boolean features, `embed_norm`, `unembed_norm` (float, if given).
    """
    tokens = decoded_vocab(tokenizer)
    n = len(tokens)
    if W_E is not None:
        n = max(n, W_E.shape[0])
    if W_U is not None:
        n = max(n, W_U.shape[1])
    tokens = tokens + [""] * (n - len(tokens))
    df = token_features(tokens)
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    df.insert(0, "is_special_token", np.isin(np.arange(n), sorted(special)))
    if token_counts is not None:
        df = pd.concat([df, unigram_features(tokens, token_counts, min_count, min_forms)], axis=1)
    df.insert(0, "token", tokens)
    if W_E is not None:
        norms = np.linalg.norm(_to_numpy(W_E), axis=1)
        df["embed_norm"] = np.pad(norms, (0, n - len(norms)), constant_values=np.nan)
    if W_U is not None:
        norms = np.linalg.norm(_to_numpy(W_U), axis=0)
        df["unembed_norm"] = np.pad(norms, (0, n - len(norms)), constant_values=np.nan)
    df.index.name = "token_id"
    return df


def feature_columns(vocab_df: pd.DataFrame) -> list[str]:
    """The boolean feature columns of a vocab df (what explanations use)."""
    return [c for c in vocab_df.columns if vocab_df[c].dtype == bool]
