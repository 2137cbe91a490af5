"""The paper's neuron families, by rule: which neurons of a run are unigram, alphabet, previous-token,
syntax, prediction, suppression or entropy neurons (the report's family table; the notebooks use the
same rules through analysis.families and analysis.prediction_neurons).

Token families, from a neuron's best explanation (VR = variance reduction of its activation by the
best feature; first matching rule wins):
    unexplained      best VR (current and previous) below min_vr, or no explanation
    position         |corr(activation, position)| >= position_r (when a `position_corr` column is given)
    previous_token   the best previous-token VR beats the best current-token VR
    syntax           best feature is a sequence feature (pos_, dep_, morph_, ent_, is_stop, sent_start)
    unigram          best feature is unigram_<form>
    alphabet         best feature is starts_with_<letter> or is_single_letter
    token_property   any other token feature (case, digits, symbols, code shapes, ...)
Output families, from the weights and the intervention stage:
    prediction       vocab_kurt > PREDICTION_KURT (W_U kurtosis, plain: Gaussian = 3) and vocab_skew > 0
    suppression      vocab_kurt > PREDICTION_KURT and vocab_skew < 0
    entropy          the intervention's target (neuron_df.entropy_candidate), fixed at the largest value,
                     raises mean next-token entropy by more than the random neurons' mean + 2 sd
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

FAMILIES = ["unigram", "alphabet", "previous_token", "position", "syntax", "token_property", "unexplained"]
SEQUENCE_PREFIXES = ("pos_", "dep_", "morph_", "ent_")
SEQUENCE_NAMES = ("is_stop", "sent_start")
NOT_IN_REPORT = {  # token families the pipeline's explanations cannot show, and where they are measured
    "position": "not measured by the pipeline (paper_notebooks/position_neurons correlates activations with position)",
    "syntax": "not measured by the pipeline, which explains with token features (paper_notebooks/syntax_neurons "
              "uses spaCy's sequence features)",
}
PREDICTION_KURT = 10.0  # the paper's W_U kurtosis threshold
PREDICTION_CLASSES = ["prediction", "suppression", "other"]


def is_sequence_feature(name) -> bool:
    return isinstance(name, str) and (name.startswith(SEQUENCE_PREFIXES) or name in SEQUENCE_NAMES)


def is_alphabet_feature(name: str) -> bool:
    return bool(re.fullmatch(r"starts_with_[a-z]", name)) or name == "is_single_letter"


def classify_family(df: pd.DataFrame, min_vr: float = 0.1, position_r: float = 0.5) -> pd.Series:
    """Family (one of FAMILIES) of each row of a frame with columns feature, variance_reduction,
    prev_feature, prev_variance_reduction and optionally position_corr. NaN VRs count as 0."""
    vr = df["variance_reduction"].fillna(0.0).to_numpy(dtype=float)
    pvr = df["prev_variance_reduction"].fillna(0.0).to_numpy(dtype=float)
    feat = df["feature"].where(df["feature"].notna(), "").astype(str)
    pos = df["position_corr"].abs().fillna(0.0).to_numpy(dtype=float) if "position_corr" in df else np.zeros(len(df))
    conditions = [
        np.maximum(vr, pvr) < min_vr,
        pos >= position_r,
        pvr > vr,
        feat.map(is_sequence_feature).to_numpy(dtype=bool),
        feat.str.startswith("unigram_").to_numpy(dtype=bool),
        feat.map(is_alphabet_feature).to_numpy(dtype=bool),
    ]
    # An unexplained neuron can still be a position neuron: position is measured directly, not by VR.
    conditions[0] = conditions[0] & ~conditions[1]
    choices = ["unexplained", "position", "previous_token", "syntax", "unigram", "alphabet"]
    return pd.Series(np.select(conditions, choices, default="token_property"), index=df.index, name="family")


def classify_prediction(df: pd.DataFrame, kurt_threshold: float = PREDICTION_KURT) -> pd.Series:
    """Class (PREDICTION_CLASSES) per row of a frame with vocab_kurt and vocab_skew; NaN moments give 'other'."""
    heavy = df["vocab_kurt"].to_numpy(dtype=float) > kurt_threshold
    skew = df["vocab_skew"].to_numpy(dtype=float)
    out = np.select([heavy & (skew > 0), heavy & (skew < 0)], ["prediction", "suppression"], default="other")
    return pd.Series(out, index=df.index, name="prediction_class")


def entropy_verdict(intervention: pd.DataFrame) -> dict | None:
    """From an entropy intervention summary (interventions.read_summary: groups target / random, one row
    per value): the target at its largest fixed value against the random neurons at that value.
    {neuron, value, delta_entropy, random_mean, random_std, bar (mean + 2 sd), entropy_neuron}; None
    without a target or with fewer than two random neurons."""
    tgt = intervention[intervention["group"] == "target"]
    if tgt.empty:
        return None
    value = float(tgt["value"].max())
    rnd = intervention[(intervention["group"] == "random") & (intervention["value"] == value)]["delta_entropy"]
    if len(rnd) < 2:
        return None
    row = tgt[tgt["value"] == value].iloc[0]
    mean, std = float(rnd.mean()), float(rnd.std(ddof=1))
    delta = float(row["delta_entropy"])
    return {"neuron": str(row["label"]), "value": value, "delta_entropy": delta, "random_mean": mean,
            "random_std": std, "bar": mean + 2 * std, "entropy_neuron": bool(delta > mean + 2 * std)}


def neuron_names(rows: pd.DataFrame, threshold: float, limit: int = 12) -> str:
    """'L1.88†, L0.3, ...' († universal), the most universal first, at most `limit`."""
    rows = rows.sort_values("excess_corr", ascending=False)
    names = [f"L{int(r.layer)}.{int(r.neuron)}{'†' if r.excess_corr > threshold else ''}"
             for r in rows.itertuples()]
    return ", ".join(names[:limit]) + (f", +{len(names) - limit} more" if len(names) > limit else "")


def family_table(df: pd.DataFrame, explained: pd.DataFrame | None, intervention: pd.DataFrame | None,
                 threshold: float) -> tuple[pd.DataFrame, list[str]]:
    """(table, missing): one row per family with its rule, how many neurons it has, how many of them are
    universal and their names († universal); `missing` says, one line each, which families this run
    does not show and why. df: the neuron dataframe (every neuron); explained: the explained neurons
    with layer, neuron, feature, variance_reduction, prev_feature, prev_variance_reduction (the
    pipeline's explanation stage; None: not run); intervention: the entropy intervention summary."""
    rows, missing = [], []
    key = ["layer", "neuron"]
    if explained is not None and len(explained):
        cols = ["feature", "variance_reduction", "prev_feature", "prev_variance_reduction"]
        ex = explained[key + cols].merge(df[key + ["excess_corr"]], on=key, how="left")
        ex["family"] = classify_family(ex).to_numpy()
        for fam in FAMILIES:
            if fam in NOT_IN_REPORT:
                missing.append(f"{fam}: {NOT_IN_REPORT[fam]}")
                continue
            got = ex[ex["family"] == fam]
            if got.empty and fam != "unexplained":
                missing.append(f"{fam}: none among the {len(ex)} explained neurons")
            rows.append({"family": fam, "rule": "best explanation of the explained neurons",
                         "neurons": len(got), "universal": int((got["excess_corr"] > threshold).sum()),
                         "names": neuron_names(got, threshold)})
    else:
        missing.append("token families: no explanations in this run")
    cls = classify_prediction(df)
    for fam in ("prediction", "suppression"):
        got = df[cls == fam]
        rows.append({"family": fam, "rule": f"vocab_kurt > {PREDICTION_KURT:g}, vocab_skew {'>' if fam == 'prediction' else '<'} 0",
                     "neurons": len(got), "universal": int((got["excess_corr"] > threshold).sum()),
                     "names": neuron_names(got, threshold)})
        if got.empty:
            kurt = df["vocab_kurt"].to_numpy(dtype=float)
            largest = f"largest {np.nanmax(kurt):.1f}" if np.isfinite(kurt).any() else "no W_U moments in this run"
            missing.append(f"{fam}: no neuron has W_U kurtosis > {PREDICTION_KURT:g} ({largest})")
    verdict = entropy_verdict(intervention) if intervention is not None and len(intervention) else None
    if verdict is None:
        missing.append("entropy: no entropy intervention with random baselines in this run")
    else:
        l, n = map(int, verdict["neuron"].split("."))
        got = df[(df["layer"] == l) & (df["neuron"] == n)] if verdict["entropy_neuron"] else df.iloc[:0]
        rows.append({"family": "entropy", "rule": "fixed high, raises entropy > random mean + 2 sd",
                     "neurons": len(got), "universal": int((got["excess_corr"] > threshold).sum()),
                     "names": neuron_names(got, threshold)})
        if got.empty:
            missing.append(f"entropy: the candidate L{verdict['neuron']} fixed at {verdict['value']:g} changes entropy by "
                           f"{verdict['delta_entropy']:+.3f} nats, not above the random neurons' "
                           f"{verdict['random_mean']:+.3f} + 2 x {verdict['random_std']:.3f}")
    return pd.DataFrame(rows, columns=["family", "rule", "neurons", "universal", "names"]), missing
