"""The paper notebooks: each <name>.py here (jupytext percent format) is the source you edit; its paired
<name>.ipynb is that source executed on the default zoo run, outputs included, so the figures show on a
code host without running anything.

    mkdir -p /tmp/run && (cd /tmp/run && universal-neurons run)      # the default zoo, ~17 min on 2 cores
    python paper_notebooks/build_notebooks.py --artifacts /tmp/run   # execute every source, write the .ipynb
    python paper_notebooks/build_notebooks.py --check                # exit 1 if a .ipynb is not its .py, executed

`--only NAME ...` rebuilds some. An .ipynb records the sha256 of the cells it was executed from
(metadata.universal_neurons.source_sha256); --check (and tests/test_notebooks.py) fails when the .py and
the .ipynb differ, when the recorded hash is not that of the cells (edited after the run), or when a code
cell has no output, an error, or a section was skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOKS = ["family_count", "properties_of_universal_neurons", "unigram_neurons", "alphabet_neurons",
             "previous_token_neurons", "syntax_neurons", "position_neurons", "topic_neurons",
             "prediction_neurons", "entropy_neurons", "bos_signal_neurons", "mysteries"]
# Artifact folder variables of universal_neurons/paths.py: a notebook's kernel must not inherit them
# from the shell that builds it, or it would read another run's artifacts.
ARTIFACT_VARS = ("DATASET_DIR", "RESULTS_DIR", "SUMMARY_DIR", "ACTIVATION_DIR", "INTERVENTION_DIR",
                 "DATAFRAME_DIR", "EXPLANATION_DIR", "REPORT_DIR")
MAX_NOTEBOOK_BYTES = 1_500_000  # one committed notebook, outputs included
MAX_TOTAL_BYTES = 6_000_000  # all twelve


def read_source(name: str):
    """The notebook of paper_notebooks/<name>.py, cell ids numbered (stable diffs)."""
    import jupytext

    nb = jupytext.read(HERE / f"{name}.py")
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i:02d}"
    return nb


def cells_of(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def source_hash(nb) -> str:
    return hashlib.sha256(json.dumps(cells_of(nb)).encode()).hexdigest()


def execute(name: str, env: dict[str, str], timeout: int = 900):
    """Run paper_notebooks/<name>.py in a fresh kernel (cwd paper_notebooks/, environment `env` on top of
    this one's minus ARTIFACT_VARS). Returns (executed notebook, error text or None)."""
    from nbclient import NotebookClient

    nb = read_source(name)
    full = {k: v for k, v in os.environ.items() if k not in ARTIFACT_VARS}
    full["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    full.update(env)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(HERE)}}).execute(env=full)
    except Exception as e:  # the caller reports it
        return nb, f"{type(e).__name__}: {e}"
    return nb, None


def stream_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def image_outputs(nb) -> list[str]:
    """The base64 PNGs of nb's outputs, in order."""
    return [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]


def problems(name: str) -> list[str]:
    """What is wrong with the committed paper_notebooks/<name>.ipynb (empty: nothing)."""
    import nbformat

    f = HERE / f"{name}.ipynb"
    if not f.is_file():
        return [f"{f.name} is missing"]
    nb = nbformat.read(f, as_version=4)
    src = read_source(name)
    out = []
    if cells_of(nb) != cells_of(src):
        out.append(f"{f.name} does not hold the cells of {name}.py")
    if nb.metadata.get("universal_neurons", {}).get("source_sha256") != source_hash(nb):
        out.append(f"{f.name}'s outputs are not from its current cells (edited after it was executed)")
    code = [c for c in nb.cells if c.cell_type == "code"]
    if any(c.get("execution_count") is None for c in code):
        out.append(f"{f.name} has code cells that were not executed")
    errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        out.append(f"{f.name} has errors in its outputs: {errors}")
    if "SKIPPED" in stream_text(nb):
        out.append(f"{f.name} skipped a section (its artifact was missing from the run it was executed on)")
    if not image_outputs(nb):
        out.append(f"{f.name} shows no figure")
    if f.stat().st_size > MAX_NOTEBOOK_BYTES:
        out.append(f"{f.name} is {f.stat().st_size / 1e6:.2f} MB (limit {MAX_NOTEBOOK_BYTES / 1e6:.1f} MB)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", help="folder of a default `universal-neurons run` to execute the notebooks on")
    p.add_argument("--check", action="store_true", help="report notebooks out of sync with their sources")
    p.add_argument("--only", nargs="+", choices=NOTEBOOKS, default=NOTEBOOKS)
    a = p.parse_args(argv)
    if a.check == bool(a.artifacts):
        p.error("give --artifacts DIR (execute and write) or --check")
    if a.check:
        found = {n: problems(n) for n in a.only}
        for n, msgs in found.items():
            for m in msgs:
                print(f"{n}: {m}")
        bad = sum(map(bool, found.values()))
        print(f"{len(found) - bad} of {len(found)} notebooks in sync")
        return 1 if bad else 0

    import nbformat

    root = Path(a.artifacts).resolve()
    if not (root / "dataframes" / "neuron_dfs").is_dir():
        print(f"error: {root} holds no dataframes/neuron_dfs: run `universal-neurons run` there first", file=sys.stderr)
        return 2
    failed = 0
    for name in a.only:
        nb, error = execute(name, {"UN_ARTIFACT_ROOT": a.artifacts})
        if error:
            print(f"{name}: FAILED\n{error[-3000:]}", file=sys.stderr)
            failed += 1
            continue
        nb.metadata["universal_neurons"] = {
            "source_sha256": source_hash(nb),
            "executed_on": "the default zoo run (universal-neurons run); rebuild: python paper_notebooks/build_notebooks.py --artifacts DIR"}
        tmp = HERE / f".{name}.ipynb.tmp"
        nbformat.write(nb, tmp)
        tmp.replace(HERE / f"{name}.ipynb")  # a failed build leaves the old notebook, never half of one
        print(f"{name}: {len(image_outputs(nb))} figures, {(HERE / f'{name}.ipynb').stat().st_size / 1e3:.0f} kB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
