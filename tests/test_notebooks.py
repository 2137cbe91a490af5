"""The twelve paper notebooks run end to end on the artifacts of one `universal-neurons run --quick`.

The quick pipeline runs once per session (subprocess, in a temporary folder, with the shared zoo);
each notebook then runs in its own kernel with UN_MODEL / UN_OTHERS / UN_DATASET / UN_ARTIFACT_ROOT /
UN_FIG_DIR set. Figures are kept under ci_artifacts/notebook_figures/<notebook>/ for CI to upload.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NB_DIR = REPO / "paper_notebooks"
FIG_ROOT = REPO / "ci_artifacts" / "notebook_figures"
NOTEBOOKS = ["family_count", "properties_of_universal_neurons", "unigram_neurons", "alphabet_neurons",
             "previous_token_neurons", "syntax_neurons", "position_neurons", "topic_neurons",
             "prediction_neurons", "entropy_neurons", "bos_signal_neurons", "mysteries"]
QUICK_MODELS = [f"toy-gpt2-tiny-{s}" for s in "abcde"]
QUICK_DATASET = "python-stdlib.all-32k.32"
ARTIFACT_VARS = ("DATASET_DIR", "RESULTS_DIR", "SUMMARY_DIR", "ACTIVATION_DIR", "INTERVENTION_DIR",
                 "DATAFRAME_DIR", "EXPLANATION_DIR", "REPORT_DIR")


def _build_module():
    spec = importlib.util.spec_from_file_location("build_notebooks", NB_DIR / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebooks_match_generator_and_have_no_outputs():
    import nbformat

    build = _build_module()
    assert sorted(build.NOTEBOOKS) == sorted(NOTEBOOKS)
    for name, cells in build.NOTEBOOKS.items():
        on_disk = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        fresh = build.build(name, cells)
        assert [c.source for c in on_disk.cells] == [c.source for c in fresh.cells], \
            f"{name}.ipynb is stale: run python paper_notebooks/build_notebooks.py"
        assert on_disk.cells[0].metadata.get("tags") == ["parameters"]
        assert all(not c.get("outputs") for c in on_disk.cells if c.cell_type == "code")


def _stream_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def _execute(name: str, artifacts: Path):
    """Run one notebook in its own kernel (environment passed to the kernel, so several can run at
    once). Returns (executed notebook or None, error text or None)."""
    import nbformat
    from nbclient import NotebookClient

    figs = FIG_ROOT / name
    figs.mkdir(parents=True, exist_ok=True)
    for old in figs.glob("*.png"):
        old.unlink()
    env = {k: v for k, v in os.environ.items() if k not in ARTIFACT_VARS}
    env.update(UN_MODEL=QUICK_MODELS[0], UN_OTHERS=",".join(QUICK_MODELS[1:]), UN_DATASET=QUICK_DATASET,
               UN_ARTIFACT_ROOT=str(artifacts), UN_FIG_DIR=str(figs),
               UN_N_ROWS="48",  # fewer rows through the model: the test checks the plumbing
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NB_DIR)}}).execute(env=env)
    except Exception as e:  # reported by the notebook's own test
        return nb, f"{type(e).__name__}: {e}"
    return nb, None


@pytest.fixture(scope="session")
def executed(quick_artifacts):
    """{notebook: (executed notebook, error)}: all twelve, two kernels at a time (2-core CI runners)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(NOTEBOOKS, pool.map(lambda n: _execute(n, quick_artifacts), NOTEBOOKS)))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, executed):
    nb, error = executed[name]
    assert error is None, error[-4000:]
    text = _stream_text(nb)
    # Every artifact of the quick run exists, so no section may have been skipped.
    assert "SKIPPED" not in text, text
    assert f"model {QUICK_MODELS[0]}" in text
    pngs = sorted((FIG_ROOT / name).glob("*.png"))
    assert pngs, f"{name} wrote no figure"
    assert all(p.stat().st_size > 5000 for p in pngs), [(p.name, p.stat().st_size) for p in pngs]


def test_quick_run_reports_its_position_conventions(quick_artifacts):
    """The report says which positions each statistic counted (the original's conventions by default),
    and the stages' own records agree with it."""
    import json

    report = (quick_artifacts / "reports" / QUICK_MODELS[0] / "report.md").read_text()
    line = next(l for l in report.splitlines() if l.startswith("Conventions of this run"))
    assert "--drop_newlines single" in line and "with BOS/EOS/padding (the original's)" in line
    summaries = list((quick_artifacts / "summary_data" / QUICK_MODELS[0] / "activations").glob("*/summary_config.json"))
    assert summaries and all(json.loads(p.read_text())["settings"]["exclude_special_tokens"] is False for p in summaries)
    explained = list((quick_artifacts / "results" / "explanations" / QUICK_MODELS[0]).rglob("explain_config.json"))
    assert explained and all(json.loads(p.read_text())["exclude_special_tokens"] is False for p in explained)
