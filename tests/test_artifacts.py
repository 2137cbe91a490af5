"""The artifact layer: a killed writer never poisons later stages; its leftovers are cleaned up."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from universal_neurons import paths


def _killed_writer(target: str, files: int = 1) -> None:
    """A subprocess that starts paths.atomic_path(target), writes `files` files and is then killed
    with SIGKILL mid-write (what a Slurm time limit does)."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from universal_neurons import paths
        with paths.atomic_path(Path({target!r})) as tmp:
            tmp.mkdir(parents=True)
            for i in range({files}):
                (tmp / f"part{{i}}.pt").write_bytes(b"half-written")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9


def test_killed_summary_does_not_break_the_neuron_dataframe(tmp_path):
    from analysis.neuron_df import make_neuron_df
    from test_neuron_df import _fake_artifacts

    _fake_artifacts()
    before = make_neuron_df("m-a", ["m-b", "m-c"], "ds", 2, 5)
    target = paths.activation_summary_path("m-a", "ds.z")
    _killed_writer(str(target))
    leftovers = [p for p in target.parent.iterdir() if p.name.startswith(".ds.z.")]
    assert len(leftovers) == 1 and not target.exists()  # the kill left a temporary, never the artifact
    assert paths.artifact_names(target.parent) == ["ds.x", "ds.y"]
    after = make_neuron_df("m-a", ["m-b", "m-c"], "ds", 2, 5)  # lists the summaries itself
    pd.testing.assert_frame_equal(before, after)
    # the next writer of the same artifact removes what the killed one left
    with paths.atomic_path(target) as tmp:
        tmp.mkdir()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".ds.z.")] and target.is_dir()


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "artifact"
    with paths.atomic_path(target) as tmp:  # this process is alive: another writer must not remove it
        tmp.write_text("in progress")
        assert paths.clean_stale_temporaries(target) == [] and tmp.exists()
    assert target.read_text() == "in progress"
    # a temporary of unknown form (another host's, or a name we did not make) is never touched
    foreign = tmp_path / ".artifact.otherhost-1.abcd.tmp"
    foreign.mkdir()
    assert paths.clean_stale_temporaries(target) == [] and foreign.exists()


def test_readers_never_list_temporaries(tmp_path):
    root = tmp_path / "root"
    for name in ("b", "a", ".a.host-1.x.tmp", ".hidden"):
        (root / name).mkdir(parents=True)
    (root / "file.pt").write_text("")
    assert paths.artifact_names(root) == ["a", "b"]
    assert paths.artifact_names(tmp_path / "missing") == []


SCRIPTS_WITH_N_SEQ = {  # script: the arguments it needs besides --n_seq (names that do not exist)
    "make_dataset.py": ["--model", "no-such-model"],
    "activations.py": ["--model", "no-such-model", "--token_dataset", "no.such"],
    "correlations_fast.py": ["--model_1_name", "no-such-a", "--model_2_name", "no-such-b", "--token_dataset", "no.such"],
    "correlations.py": ["--model_1_name", "no-such-a", "--model_2_name", "no-such-b", "--token_dataset", "no.such"],
    "summary.py": ["--model", "no-such-model", "--token_dataset", "no.such"],
    "explain.py": ["--model", "no-such-model", "--dataset", "no.such"],
    "intervention.py": ["--model", "no-such-model", "--token_dataset", "no.such", "--neuron", "0.1"],
    "entropy_intervention.py": ["--model", "no-such-model", "--token_dataset", "no.such", "--neuron_subset", "0.1",
                                "--intervention_param", "1"],
    "attention_deactivation.py": ["--model", "no-such-model", "--token_dataset", "no.such", "--layer", "1",
                                  "--head", "0"],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS_WITH_N_SEQ))
@pytest.mark.parametrize("n_seq", ["0", "-2"])
def test_n_seq_has_one_meaning_in_every_cli(script, n_seq):
    """--n_seq -1 = all, N > 0 = the first N; 0 or below -1 is one clear error, before anything loads."""
    proc = subprocess.run([sys.executable, str(REPO / script), *SCRIPTS_WITH_N_SEQ[script], "--n_seq", n_seq],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--n_seq must be -1" in lines[0], proc.stderr[-2000:]


def test_pipeline_never_reads_a_killed_writers_temporary(tmp_path):
    """`universal-neurons run` picks the intervention's scale from the first finished summary
    (activation_summary.summary_datasets): a killed summary.py's temporary (sorted first: it starts
    with '.') and a folder without its histograms must not be it."""
    from universal_neurons.activation_summary import summary_datasets

    target = paths.activation_summary_path("m", "b.ds")
    _killed_writer(str(target), files=3)
    (paths.activation_summary_path("m", "a.ds")).mkdir(parents=True)  # no histograms: not finished
    (paths.activation_summary_path("m", "c.ds")).mkdir(parents=True)
    (paths.activation_summary_path("m", "c.ds") / "neuron_bin_counts.pt").write_bytes(b"")
    assert summary_datasets("m") == ["c.ds"]


def test_common_flags_have_one_definition():
    """--device, --batch_size, --n_seq and --overwrite come from flags.CommonOptions in every script
    that has them: the same type, default and help (universal-neurons run defaults to the CPU)."""
    import argparse
    import dataclasses
    import importlib

    from universal_neurons import cli
    from universal_neurons.flags import FIELDS, CommonOptions

    parsers = {}
    for script in sorted(SCRIPTS_WITH_N_SEQ) + ["weights.py"]:
        mod = importlib.import_module(script[:-3])
        cap = {}
        real = argparse.ArgumentParser.parse_args
        argparse.ArgumentParser.parse_args = lambda self, *a, **k: cap.setdefault("p", self) and real(self, [])
        try:
            try:
                mod.parse_args([]) if hasattr(mod, "parse_args") else None
            except SystemExit:
                pass
        finally:
            argparse.ArgumentParser.parse_args = real
        if "p" not in cap:  # correlations*.py build their parser in the library
            from universal_neurons.correlations import build_parser
            cap["p"] = build_parser()
        parsers[script] = cap["p"]
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers["universal-neurons run"] = sub.choices["run"]
    seen = 0
    for script, p in parsers.items():
        actions = {a.dest: a for a in p._actions}
        for name, f in FIELDS.items():
            a = actions.get(name)
            if a is None or (script == "weights.py" and name == "overwrite"):
                continue
            seen += 1
            want = "cpu" if (script == "universal-neurons run" and name == "device") else f.default
            assert a.default == want and a.help == f.metadata["help"], (script, name)
    assert seen >= 30
    assert dataclasses.asdict(CommonOptions()) == {"device": "auto", "batch_size": 32, "n_seq": -1, "overwrite": False}


def test_dotted_hostnames_and_dot_temporaries(tmp_path, monkeypatch):
    """Cluster hostnames hold dots: a dead writer's temporary is still recognised and removed; a folder
    holding only a killed writer's temporary counts as empty (no --overwrite needed to rerun)."""
    import socket

    from universal_neurons import runs

    monkeypatch.setattr(socket, "gethostname", lambda: "node01.cluster.org")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)  # that process has exited
    target = tmp_path / "layer_0" / "variance_reduction.csv"
    target.parent.mkdir()
    stale = target.parent / f".variance_reduction.csv.node01.cluster.org-{dead}.ab12_x.tmp"
    stale.mkdir()
    assert not runs.finished(target.parent, "explain_config.json", {"a": 1}, overwrite=False)
    assert paths.clean_stale_temporaries(target) == [stale] and not stale.exists()
