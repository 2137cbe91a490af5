"""The shared prelude of the paper notebooks (paper_notebooks/*.py): parameters, section guards, loaders.

Every notebook's second code cell is

    setup(MODEL, OTHERS, DATASET, ARTIFACT_ROOT, FIG_DIR, N_ROWS, THRESHOLD, N_MIN)

after its `parameters` cell (papermill tag; values default to UN_MODEL, UN_OTHERS, UN_DATASET,
UN_ARTIFACT_ROOT, UN_FIG_DIR, UN_N_ROWS). A section is a `with section("title"):` block: a missing
artifact inside it prints `SKIPPED [title]: <what> is missing: run <command>` and the notebook goes on.

Figures: `save(fig, name)` draws the figure once at FIG_DPI, stores it as a 256-colour PNG (matplotlib's
flat colours survive the palette; the files are 3-4x smaller than RGBA ones) in FIG_DIR/<name>.png and
shows the same bytes in the notebook, so the committed notebooks stay small.
"""
from __future__ import annotations

import io
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from universal_neurons import paths
from universal_neurons.errors import UserError

FIG_DPI = 90
# The models of the paper's published dataframes (dataframes/paper/): (layers, d_mlp) of each.
PAPER_WIDTHS = {"stanford-gpt2-small-a": (12, 3072), "stanford-gpt2-medium-a": (24, 4096), "pythia-160m": (12, 3072)}
PAPER_MODELS = tuple(PAPER_WIDTHS)


@dataclass
class Params:
    model: str
    others: list[str]
    dataset: str
    fig_dir: Path
    n_rows: int
    threshold: float  # excess_corr above which a neuron is universal (the paper's 0.5)
    n_min: int  # study the n_min highest excess_corr neurons when fewer are universal (small models)

    @property
    def run_cmd(self) -> str:
        return f"universal-neurons run --models {self.model} {' '.join(self.others)}"


P: Params | None = None  # set by setup()


class Missing(Exception):
    """An artifact this section needs is not there."""


def setup(model: str, others: list[str], dataset: str, artifact_root: str = "", fig_dir: str = "",
          n_rows: int = 128, threshold: float = 0.5, n_min: int = 20) -> Params:
    """Fix the notebook's parameters, chdir to artifact_root (where token_datasets/, ... live) and make
    the figure folder (default paper_notebooks/figures/<model>/)."""
    global P
    repo = Path(__file__).resolve().parent.parent
    fig = Path(fig_dir or repo / "paper_notebooks" / "figures" / paths.model_dirname(model)).resolve()
    fig.mkdir(parents=True, exist_ok=True)
    if artifact_root:
        os.chdir(artifact_root)
    warnings.filterwarnings("ignore", message="Glyph .* missing")  # control tokens' glyphs
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
    P = Params(model, list(others), dataset, fig, int(n_rows), float(threshold), int(n_min))
    print(f"model {model}, others {others}, dataset {dataset}\nartifacts in {artifact_root or 'the current folder'}")
    return P


def params() -> Params:
    if P is None:
        raise RuntimeError("call setup(MODEL, OTHERS, DATASET, ...) first (the notebook's second code cell)")
    return P


@contextmanager
def section(title: str):
    """Run a block; a missing artifact prints what produces it instead of stopping the notebook."""
    try:
        yield
    except (Missing, UserError, FileNotFoundError) as e:
        print(f"SKIPPED [{title}]: {e}")


def need(ok, what: str, command: str) -> None:
    if not ok:
        raise Missing(f"{what} is missing: run `{command}`")


def after(*names: str) -> None:
    """Raise Missing unless an earlier section defined every variable in `names` (in the notebook's
    namespace: the caller's globals)."""
    scope = sys._getframe(1).f_globals
    gone = [n for n in names if n not in scope]
    if gone:
        raise Missing(f"needs {', '.join(gone)} from an earlier section, which was skipped (see above)")


def png_bytes(fig) -> bytes:
    """fig as a 256-colour, optimised PNG at FIG_DPI."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI, bbox_inches="tight", facecolor="white")
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="png", optimize=True)
    return out.getvalue()


def save(fig, name: str) -> Path:
    """Save fig as FIG_DIR/<name>.png, show the same PNG, close the figure."""
    from IPython.display import Image, display

    data = png_bytes(fig)
    plt.close(fig)
    f = params().fig_dir / f"{name}.png"
    f.write_bytes(data)
    display(Image(data=data))
    return f


def load_df() -> pd.DataFrame:
    """The neuron dataframe of this run (dataframes/neuron_dfs/<model>.csv)."""
    p = params()
    f = paths.neuron_df_path(p.model)
    need(f.exists(), f"neuron dataframe {f}", p.run_cmd)
    return pd.read_csv(f)


def load_published(name: str = "universal", model: str | None = None) -> pd.DataFrame:
    """The paper's published dataframes/interpretable_neurons/<model>/<name>.csv (shipped in
    dataframes/paper/, MIT): there for PAPER_MODELS only."""
    from universal_neurons.neuron_df import load_paper_dataframe

    try:
        return load_paper_dataframe(model or params().model, name)
    except UserError as e:
        raise Missing(str(e)) from None


def load_selection(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(universal neurons, or the N_MIN highest excess_corr when fewer are universal; label for titles)."""
    from analysis.families import select_universal

    p = params()
    sel, fallback = select_universal(df, p.threshold, p.n_min)
    if fallback:
        n_u = int((df["excess_corr"] > p.threshold).sum())
        print(f"only {n_u} neurons have excess_corr > {p.threshold}: studying the {len(sel)} highest instead")
        return sel, f"top {len(sel)} by excess_corr"
    return sel, f"universal (excess_corr > {p.threshold})"


def load_explained(sel: pd.DataFrame) -> pd.DataFrame:
    """sel's rows joined with their best current/previous-token explanation (NaN where not explained)."""
    from analysis.families import explained_df
    from analysis.heuristic_explanation import load_best_features

    p = params()
    out = explained_df(sel, load_best_features(p.model, p.dataset))
    need(out["feature"].notna().any(), "explanations of these neurons",
         f"python explain.py --model {p.model} --dataset {p.dataset} --feature_type token")
    return out


def model_activations(n_rows: int | None = None):
    """(model, tokens [n_rows, ctx], post-GELU activations [n_rows, ctx, layer, neuron]) on the dataset."""
    from universal_neurons.capture import mlp_activations
    from universal_neurons.models import load_model, model_family
    from universal_neurons.token_datasets import load_token_dataset, token_tensor

    p = params()
    n_rows = n_rows or p.n_rows
    where = paths.token_dataset_path(model_family(p.model), p.dataset)
    need(where.is_dir(), f"token dataset {where}", f"python make_dataset.py --model {p.model} ...")
    model = load_model(p.model)
    ds = load_token_dataset(p.dataset, model.family, model.tokenizer)
    tokens = token_tensor(ds, 0, min(n_rows, len(ds)))
    acts = torch.cat([mlp_activations(model, tokens[i:i + 32]) for i in range(0, len(tokens), 32)])
    return model, tokens, acts
