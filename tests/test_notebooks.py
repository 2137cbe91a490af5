"""The paper notebooks: committed sources and executed notebooks in sync, and every notebook running on
the artifacts of one `universal-neurons run --quick`.

The committed paper_notebooks/<name>.ipynb carry the outputs of the default zoo run; they must hold the
cells of <name>.py and the hash of the cells they were executed from (build_notebooks.problems). The
quick pipeline runs once per session; each notebook's source then runs in its own kernel with UN_MODEL /
UN_OTHERS / UN_DATASET / UN_ARTIFACT_ROOT / UN_FIG_DIR set; its figures are kept under
ci_artifacts/notebook_figures/<notebook>/ for CI to upload. The paper's published files alone (no run)
drive the properties and prediction notebooks' paper sections.
"""
import base64
import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
NB_DIR = REPO / "paper_notebooks"
FIG_ROOT = REPO / "ci_artifacts" / "notebook_figures"
QUICK_MODELS = [f"toy-gpt2-tiny-{s}" for s in "abcde"]
QUICK_DATASET = "python-stdlib.all-32k.32"


def _build_module():
    spec = importlib.util.spec_from_file_location("build_notebooks", NB_DIR / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _build_module()
NOTEBOOKS = build.NOTEBOOKS


def _png_colours(data: bytes) -> int:
    """Number of distinct colours of a PNG (a blank figure has one or two)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    return len(img.getcolors(maxcolors=1 << 20) or [])


def test_every_source_has_its_notebook():
    assert sorted(p.stem for p in NB_DIR.glob("*.py") if p.name != "build_notebooks.py") == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_its_source_executed(name):
    """The .ipynb holds the .py's cells, was executed from exactly those cells on the default zoo run, and
    shows its figures; else: python paper_notebooks/build_notebooks.py --artifacts <default run>."""
    assert build.problems(name) == []
    import nbformat

    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert "model toy-gpt2-a, others" in build.stream_text(nb)  # the default zoo, not the quick one
    assert nb.cells[1].metadata.get("tags") == ["parameters"]
    for b64 in build.image_outputs(nb):
        data = base64.b64decode(b64)
        assert len(data) < 250_000 and _png_colours(data) > 8


def test_committed_notebooks_stay_small():
    sizes = {n: (NB_DIR / f"{n}.ipynb").stat().st_size for n in NOTEBOOKS}
    assert sum(sizes.values()) < build.MAX_TOTAL_BYTES, sizes


def test_check_reports_an_edited_source(tmp_path, monkeypatch):
    """--check fails when a source was edited after its notebook was executed, and names it."""
    import shutil

    for f in NB_DIR.glob("family_count.*"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(build, "HERE", tmp_path)
    assert build.problems("family_count") == []
    src = tmp_path / "family_count.py"
    src.write_text(src.read_text().replace("counted by layer", "counted per layer"))
    assert build.problems("family_count") == ["family_count.ipynb does not hold the cells of family_count.py"]


def _execute(name: str, artifacts: Path, **env):
    figs = FIG_ROOT / name
    figs.mkdir(parents=True, exist_ok=True)
    for old in figs.glob("*.png"):
        old.unlink()
    return build.execute(name, {"UN_ARTIFACT_ROOT": str(artifacts), "UN_FIG_DIR": str(figs), **env}, timeout=300)


@pytest.fixture(scope="session")
def executed(quick_artifacts):
    """{notebook: (executed notebook, error)}: all twelve, two kernels at a time (2-core CI runners)."""
    from concurrent.futures import ThreadPoolExecutor

    env = dict(UN_MODEL=QUICK_MODELS[0], UN_OTHERS=",".join(QUICK_MODELS[1:]), UN_DATASET=QUICK_DATASET,
               UN_N_ROWS="48")  # fewer rows through the model: the test checks the plumbing
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(NOTEBOOKS, pool.map(lambda n: _execute(n, quick_artifacts, **env), NOTEBOOKS)))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, executed):
    nb, error = executed[name]
    assert error is None, error[-4000:]
    text = build.stream_text(nb)
    # Every artifact of the quick run exists, so no section may have been skipped.
    assert "SKIPPED" not in text, text
    assert f"model {QUICK_MODELS[0]}" in text
    pngs = sorted((FIG_ROOT / name).glob("*.png"))
    assert pngs and len(build.image_outputs(nb)) == len(pngs), f"{name}: {len(pngs)} files"
    assert all(_png_colours(p.read_bytes()) > 8 for p in pngs), [p.name for p in pngs]


def test_paper_sections_run_on_the_published_files_alone(tmp_path):
    """No run at all: the properties and prediction notebooks show the paper's own neurons from the
    shipped files; the sections that need a run say what to run."""
    nb, error = _execute("properties_of_universal_neurons", tmp_path, UN_MODEL="stanford-gpt2-medium-a",
                         UN_OTHERS="stanford-gpt2-medium-b")
    assert error is None, error[-4000:]
    text = build.stream_text(nb)
    assert "stanford-gpt2-medium-a: 1211 universal neurons of 98304 (1.23%)" in text
    assert "SKIPPED [properties]: neuron dataframe" in text and "universal-neurons run --models" in text
    assert (FIG_ROOT / "properties_of_universal_neurons" / "paper_published_properties.png").is_file()
    nb, error = _execute("prediction_neurons", tmp_path)
    assert error is None, error[-4000:]
    text = build.stream_text(nb)
    # 136 published: 81 prediction, 55 suppression; 59 in the universal set, 56 of them classed alike
    assert "136 published neurons: 81 prediction, 55 suppression; 59 are in the published universal set, " \
           "and the rule gives the published class for 56 of them" in text
    assert (FIG_ROOT / "prediction_neurons" / "paper_gpt2_medium_prediction_neurons.png").is_file()


def test_properties_notebook_compares_a_paper_model_with_the_paper(tmp_path):
    """A constructed neuron dataframe of stanford-gpt2-small-a (every neuron; 70% of the paper's universal
    neurons universal here too, plus 40 of our own): the notebook's overlap numbers are those of sets
    computed here."""
    from universal_neurons.neuron_df import NEURON_DF_COLUMNS, load_paper_dataframe

    paper = load_paper_dataframe("stanford-gpt2-small-a")
    rng = np.random.default_rng(0)
    L, D = 12, 3072
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron": np.tile(np.arange(D), L)})
    for c in NEURON_DF_COLUMNS:
        if c not in df:
            df[c] = rng.normal(size=len(df))
    df["excess_corr"] = rng.uniform(0, 0.45, len(df))
    ix = paper["layer"].to_numpy() * D + paper["neuron"].to_numpy()
    keep = rng.random(len(ix)) < 0.7
    df.loc[ix[keep], "excess_corr"] = 0.6
    others = rng.choice(np.setdiff1d(np.arange(L * D), ix), 40, replace=False)
    df.loc[others, "excess_corr"] = 0.7
    (tmp_path / "dataframes" / "neuron_dfs").mkdir(parents=True)
    df.to_csv(tmp_path / "dataframes" / "neuron_dfs" / "stanford-gpt2-small-a.csv", index=False)
    ours = set(np.flatnonzero(df["excess_corr"].to_numpy() > 0.5).tolist())
    theirs = set(ix.tolist())
    nb, error = _execute("properties_of_universal_neurons", tmp_path, UN_MODEL="stanford-gpt2-small-a",
                         UN_OTHERS="stanford-gpt2-small-b")
    assert error is None, error[-4000:]
    text = build.stream_text(nb)
    assert f"{len(theirs)} universal neurons in the paper, {len(ours)} here; " \
           f"Jaccard {len(ours & theirs) / len(ours | theirs):.3f}; {int(keep.sum())} of the paper's" in text
    for f in ("paper_share_by_layer.png", "paper_excess_corr_scatter.png", "property_percentiles.png"):
        assert (FIG_ROOT / "properties_of_universal_neurons" / f).is_file(), f


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
