"""universal-neurons: the pipeline of "Universal Neurons in GPT2 Language Models" on TransformerLens 4.

One module per stage; see README.md for how data flows between them.
"""
import os as _os

# Hugging Face libraries print per-file progress bars and config chatter on every load and save;
# the pipeline shows its own progress instead.
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_hf() -> None:
    """Silence transformers' logging and progress bars (call after importing transformers)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
