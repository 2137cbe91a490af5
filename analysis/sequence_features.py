"""spaCy sequence features (the notebooks' import path): they live in universal_neurons/sequence_features.py."""
from universal_neurons.sequence_features import (  # noqa: F401
    load_spacy, token_char_spans, align_tokens_to_words, word_tags, sequence_features, SPACY_INSTALL)
