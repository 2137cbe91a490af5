"""Reading explain.py's variance-reduction CSVs: the best features of each neuron.

`load_variance_reduction` gathers the per-layer CSVs of
`$RESULTS_DIR/explanations/<model>/<dataset>/<type>_feature/layer_<l>/` into two DataFrames
(current token, previous token), rows 'l.n', columns features. `top_features` ranks each row's
features; `best_features` gives one row per neuron with its best current- and previous-token
feature. NaN variance reductions (dead neurons, features absent from the data) never rank.
"""
from __future__ import annotations

import re

import pandas as pd

from .errors import UserError
from .explanations import PREV_VR_FILE, VR_FILE, layer_dir, read_vr_csv


def _layer_folders(model: str, dataset: str, feature_type: str) -> dict[int, object]:
    root = layer_dir(model, dataset, feature_type, 0).parent
    if not root.is_dir():
        raise UserError(f"no explanations at {root}: run explain.py --model {model} --dataset {dataset} "
                        f"--feature_type {feature_type} first")
    found = {int(m.group(1)): p for p in root.iterdir() if (m := re.fullmatch(r"layer_(\d+)", p.name))}
    return dict(sorted(found.items()))


def load_variance_reduction(model: str, dataset: str, feature_type: str = "token",
                            layers: list[int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(current, previous) variance reductions [neurons, features] of the given (default: all) layers."""
    folders = _layer_folders(model, dataset, feature_type)
    layers = list(folders) if layers is None else list(layers)
    missing = [l for l in layers if l not in folders]
    if missing or not layers:
        raise UserError(f"no explanations for layer(s) {missing or 'any'} of {model} on {dataset} "
                        f"({feature_type} features); found layers {list(folders)}")
    cur = pd.concat([read_vr_csv(folders[l] / VR_FILE) for l in layers])
    prev = pd.concat([read_vr_csv(folders[l] / PREV_VR_FILE) for l in layers])
    return cur, prev


def top_features(vr: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The k highest-VR features of each neuron (row), long format.

    Returns columns neuron, rank (1 = best), feature, variance_reduction; rows in the input's
    neuron order; NaN entries are skipped (an all-NaN neuron has no rows).
    """
    long = vr.rename_axis(index="neuron", columns="feature").stack(future_stack=True).dropna()
    long = long.rename("variance_reduction").reset_index()
    order = {n: i for i, n in enumerate(vr.index)}
    long["_row"] = long["neuron"].map(order)
    long = long.sort_values(["_row", "variance_reduction"], ascending=[True, False], kind="stable")
    long["rank"] = long.groupby("_row").cumcount() + 1
    long = long[long["rank"] <= k]
    return long[["neuron", "rank", "feature", "variance_reduction"]].reset_index(drop=True)


def best_features(cur: pd.DataFrame, prev: pd.DataFrame) -> pd.DataFrame:
    """One row per neuron: feature, variance_reduction, prev_feature, prev_variance_reduction."""
    out = pd.DataFrame(index=cur.index.rename("neuron"))
    for frame, prefix in ((cur, ""), (prev, "prev_")):
        top = top_features(frame, k=1).set_index("neuron")
        out[f"{prefix}feature"] = top["feature"].reindex(out.index)
        out[f"{prefix}variance_reduction"] = top["variance_reduction"].reindex(out.index)
    return out


def load_best_features(model: str, dataset: str, feature_type: str = "token",
                       layers: list[int] | None = None) -> pd.DataFrame:
    """`best_features` of the explanations on disk."""
    return best_features(*load_variance_reduction(model, dataset, feature_type, layers))


def load_top_features(model: str, dataset: str, feature_type: str = "token", k: int = 5,
                      layers: list[int] | None = None) -> pd.DataFrame:
    """Top-k features per neuron for the current and the previous token, long format with a
    `position` column ('current' / 'previous')."""
    cur, prev = load_variance_reduction(model, dataset, feature_type, layers)
    parts = [top_features(cur, k).assign(position="current"), top_features(prev, k).assign(position="previous")]
    return pd.concat(parts, ignore_index=True)[["neuron", "position", "rank", "feature", "variance_reduction"]]
