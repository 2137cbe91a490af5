"""Hostile artifacts: a crafted pickle anywhere in an artifact folder is refused with one message and
never runs; damaged files are one message too."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO
from universal_neurons import paths
from universal_neurons.errors import UserError


class _Evil:
    """Unpickling this runs a shell command (what a hostile results bundle would hold)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"max_corr": torch.zeros(3), "payload": _Evil(marker)}, path)


def _readers():
    """(artifact file, its one reader called on it) for every .pt artifact kind."""
    from universal_neurons import activation_cache, attention_deactivation, interventions, weights
    from universal_neurons.activation_summary import read_summary
    from universal_neurons.correlation_stats import CorrelationStats
    from universal_neurons.correlation_summary import load_correlation_matrix, read_correlation_summary

    corr = paths.correlation_path("m", "n", "ds", "pearson", "none")
    att = paths.attention_deactivation_path("m", "ds", 1, 0)
    run = paths.intervention_path("m", "ds", "1.2", "zero_ablation_0")
    return [
        (corr / "correlation_summary.pt", lambda: read_correlation_summary(corr)),
        (corr / "correlation_summary_T.pt", lambda: read_correlation_summary(corr, transposed=True, mmap=True)),
        (corr / "correlation.pt", lambda: load_correlation_matrix(corr / "correlation.pt")),
        (corr.parent / "pearson.stats" / "x.pt", lambda: CorrelationStats.load(corr.parent / "pearson.stats" / "x.pt")),
        (paths.activation_summary_path("m", "ds") / "neuron_bin_counts.pt", lambda: read_summary("m", "ds")),
        (paths.weights_summary_path("m") / "vocab_comps.pt", lambda: weights.read_weight_summaries("m")),
        (paths.activation_cache_path("m", "ds") / "1.2.pt", lambda: activation_cache.read_cache("m", "ds", "1.2.pt")),
        (run / "loss.pt", lambda: interventions.load_run(run)),
        (att / "corr_dict.pt", lambda: attention_deactivation.read_run(att)),
    ]


@pytest.mark.parametrize("i", range(9))
def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, i):
    path, read = _readers()[i]
    marker = tmp_path / "pwned"
    _plant(path, marker)
    if path.name == "corr_dict.pt":
        (path.parent / "meta.json").write_text("{}")
    with pytest.raises(UserError, match=r"refusing to load .*nothing in it was run"):
        read()
    assert not marker.exists()


def test_a_damaged_file_is_one_message(tmp_path):
    f = paths.correlation_path("m", "n", "ds", "pearson", "none") / "correlation_summary.pt"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"PK\x03\x04 truncated")
    from universal_neurons.correlation_summary import read_correlation_summary

    with pytest.raises(UserError, match=r"cannot read .*correlation_summary.pt .*remake it"):
        read_correlation_summary(f.parent)


def test_every_load_goes_through_the_safe_loader():
    """No module, notebook or script loads a .pt file except through paths.torch_load."""
    offenders = []
    files = [p for d in ("universal_neurons", "analysis", "slurm") for p in (REPO / d).glob("*.py")]
    files += list(REPO.glob("*.py")) + list((REPO / "paper_notebooks").glob("*.py"))
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(", line) and not (f.name == "paths.py" and "weights_only=True" in line):
                offenders.append(f"{f.relative_to(REPO)}:{n}")
    assert offenders == [], offenders
