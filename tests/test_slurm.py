"""slurm/: the job scripts and the grid driver.

Without Slurm: the driver against a fake `sbatch` that records its arguments (dependencies, arrays,
skipping of finished work, --dry-run), and the job scripts' array-index-to-argument mapping with
stand-ins for the stage scripts.

On a real single-node Slurm cluster (marked `slurm`; tests/slurm_cluster.py starts munged, slurmctld
and slurmd): an array and a dependent job, then the toy-tiny grid end to end, whose merged sharded
correlations must equal a single-process run of correlations_fast.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster, unavailable_reason
from universal_neurons import paths

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "slurm" / "paper_grid.sh"
SEEDS = 3          # toy-tiny a vs b and c
SHARDS = 3

FAKE_SBATCH = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["SBATCH_LOG"]
n = sum(1 for _ in open(log)) if os.path.exists(log) else 0
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print(f"{101 + n};untest")
"""


@pytest.fixture(scope="module")
def tiny_zoo3(tiny_zoo):
    """toy-gpt2-tiny-a .. c, trained (seconds each; a and b come from the shared fixture)."""
    from universal_neurons import zoo

    names = [zoo.zoo_name("tiny", s) for s in range(SEEDS)]
    for n in names:
        zoo.ensure_model(n, progress=False)
    return names


def base_env(**extra) -> dict:
    """The environment of the driver: the test's, with the repository importable and the venv named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UN_") and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO)
    if sys.prefix != sys.base_prefix:   # jobs enter the same virtual environment
        env["UN_ENV_ACTIVATE"] = f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    env.update({"UN_N_SEEDS": str(SEEDS), "UN_SHARDS": str(SHARDS), "UN_TOY_N_SEQ": "300", "UN_TOY_MIX": "8k",
                "UN_INTERVENTION_VALUES": "0 3", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


# An sbatch that runs each job at once, in submission order (dependencies hold): every array task in
# turn, with SLURM_ARRAY_TASK_ID set; each (job, task, exit status) is appended to $SBATCH_RAN.
EXEC_SBATCH = """#!/usr/bin/env python3
import json, os, subprocess, sys
argv = sys.argv[1:]
k = next(i for i, a in enumerate(argv) if not a.startswith("-"))
opts = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in argv[:k])
tasks = [None]
if "array" in opts:
    tasks = []
    for part in opts["array"].split(","):
        lo, _, hi = part.partition("-")
        tasks += list(range(int(lo), int(hi or lo) + 1))
log = os.environ["SBATCH_RAN"]
n = sum(1 for _ in open(log)) if os.path.exists(log) else 0
for t in tasks:
    env = dict(os.environ, SLURM_JOB_ID=str(500 + n))
    if t is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(t)
    p = subprocess.run(["bash", argv[k], *argv[k + 1:]], env=env, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(json.dumps({"job": opts["job-name"], "task": t, "rc": p.returncode,
                            "tail": (p.stdout + p.stderr)[-1500:]}) + "\\n")
print(f"{500 + n};local")
"""


def _sbatch_env(tmp_path: Path, sbatch: str, folder: str, **extra) -> dict:
    """The driver's environment with `sbatch` (a script's text) first on PATH."""
    bin_dir = tmp_path / folder
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(sbatch)
    (bin_dir / "sbatch").chmod(0o755)
    env = base_env(**extra)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def fake_sbatch_env(tmp_path: Path, **extra) -> dict:
    """FAKE_SBATCH: records each submission in $SBATCH_LOG, runs nothing."""
    return {**_sbatch_env(tmp_path, FAKE_SBATCH, "fakebin", **extra), "SBATCH_LOG": str(tmp_path / "sbatch.log")}


def run_driver(family: str, env: dict, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
    # with EXEC_SBATCH the grid's 15 jobs run inside this call (about 110 s on 2 cores): a hang guard only
    timeout = 600 if "SBATCH_RAN" in env else 120
    out = subprocess.run(["bash", str(DRIVER), family, *flags], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def sbatch_calls(env: dict) -> list[dict]:
    """The fake sbatch's calls: [{'id', 'name', 'opts': {option: value}, 'script', 'args'}] in order."""
    log = Path(env["SBATCH_LOG"])
    calls = []
    for i, line in enumerate(log.read_text().splitlines() if log.exists() else []):
        argv = json.loads(line)
        k = next(j for j, a in enumerate(argv) if not a.startswith("-"))
        opts = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in argv[:k])
        calls.append({"id": str(101 + i), "name": opts["job-name"].removeprefix("un-"), "opts": opts,
                      "script": Path(argv[k]).name, "args": argv[k + 1:]})
    return calls


def by_name(calls: list[dict]) -> dict[str, list[dict]]:
    out = {}
    for c in calls:
        out.setdefault(c["name"], []).append(c)
    return out


def deps(call: dict) -> set[str]:
    d = call["opts"].get("dependency", "")
    assert d == "" or d.startswith("afterok:"), d
    return set(d.removeprefix("afterok:").split(":")) - {""}


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


# The driver, with a fake sbatch ----------------------------------------------------------------

def test_toy_tiny_grid_jobs_and_dependencies(tmp_path, tiny_zoo3):
    env = fake_sbatch_env(tmp_path)
    out = run_driver("toy-tiny", env)
    calls = by_name(sbatch_calls(env))
    a, b, c = tiny_zoo3
    assert list(calls) == ["dataset", "corr", "merge", "weights", "summary", "neuron-df", "explain",
                           "intervention", "intervention-summary"], out.stdout
    assert all(len(v) == 1 for v in calls.values())     # all pairs in one pass for the toy families
    (data,), (corr,), (merge,), (weights,), (summ,), (df,), (expl,), (interv,), (isum,) = calls.values()
    assert "zoo" not in calls                            # the zoo is trained: no job
    assert data["args"] == ["--model", a, "--hf_dataset", "python-stdlib", "--ctx_len", "32", "--n_seq", "300",
                            "--mix_tokens", "8k"]
    assert corr["opts"]["array"] == f"0-{SHARDS - 1}" and deps(corr) == {data["id"]}
    assert corr["args"] == ["--model_1_name", a, "--model_2_name", b, c, "--token_dataset",
                            "python-stdlib.all-8k.32", "--baseline", "none", "rotation", "--num_shards", str(SHARDS)]
    assert merge["args"] == corr["args"] and deps(merge) == {corr["id"]} and "array" not in merge["opts"]
    assert weights["args"] == ["--model", a] and deps(weights) == set()
    assert summ["opts"]["array"] == "0-2" and deps(summ) == {data["id"]}
    assert summ["args"][0] == "python-stdlib.prose.32 python-stdlib.code.32 python-stdlib.tests.32"
    assert deps(df) == {merge["id"], weights["id"], summ["id"]}
    assert df["args"][:6] == ["--model", a, "--others", b, c, "--dataset"]
    assert expl["opts"]["array"] == "0-1" and deps(expl) == {df["id"]}           # 2 layers
    assert interv["opts"]["array"] == "0-1" and deps(interv) == {df["id"]}       # values 0 and 3
    assert interv["args"][:2] == ["0 3", "--model"] and "auto" in interv["args"]
    assert isum["args"] == interv["args"] and deps(isum) == {interv["id"], df["id"]}
    for call in calls.values():      # ids are parsed from "<id>;<cluster>"; no GPU options on the toy
        assert ";" not in call[0]["opts"].get("dependency", "") and "gres" not in call[0]["opts"]
        assert (REPO / "slurm" / call[0]["script"]).is_file()
    assert re.search(r"^submitted 102 un-corr array 0-2 after 101$", out.stdout, re.M)
    assert "9 job(s) submitted" in out.stdout


def exec_sbatch_env(tmp_path: Path, **extra) -> dict:
    """EXEC_SBATCH: jobs run here, one after the other, logged in $SBATCH_RAN."""
    return {**_sbatch_env(tmp_path, EXEC_SBATCH, "execbin", **extra), "SBATCH_RAN": str(tmp_path / "ran.jsonl")}


def test_resubmission_asks_the_stages(tmp_path, tiny_zoo3):
    """The grid's jobs run (here, at once); asked again, the stages' records say what is done:
    - the same settings: nothing is submitted;
    - one summary removed: its array task and what reads it;
    - another setting (a summary flag, the dataset's rows): the grid stops with the stage's message
      and submits nothing, until UN_OVERWRITE=1, which passes --overwrite to the jobs;
    - a file touched where an artifact belongs (no record): stops too, never skipped as done."""
    a, b, c = tiny_zoo3
    corr_ds = "python-stdlib.all-8k.32"
    explain_csv = tmp_path / "explain.csv"
    explain_csv.write_text("layer,neuron\n1,3\n1,77\n")  # the tiny models have no universal neuron
    run = exec_sbatch_env(tmp_path, UN_EXPLAIN_NEURONS=str(explain_csv), UN_SHARDS="1")  # shards: test_toy_tiny_grid_on_slurm
    out = run_driver("toy-tiny", run)
    ran = [json.loads(line) for line in Path(run["SBATCH_RAN"]).read_text().splitlines()]
    assert [r for r in ran if r["rc"] != 0] == [], out.stdout
    assert [r["job"] for r in ran] == ["un-dataset", "un-corr", "un-merge", "un-weights"] + \
        ["un-summary"] * 3 + ["un-neuron-df"] + ["un-explain"] * 2 + ["un-intervention"] * 2 + ["un-intervention-summary"]

    env = fake_sbatch_env(tmp_path, UN_EXPLAIN_NEURONS=str(explain_csv), UN_SHARDS="1")
    out = run_driver("toy-tiny", env)
    assert sbatch_calls(env) == [], out.stdout
    assert "0 job(s) submitted" in out.stdout and re.search(r"interventions on toy-gpt2-tiny-a \d+\.\d+: done", out.stdout)

    subsets = [f"python-stdlib.{s}.32" for s in ("prose", "code", "tests")]
    shutil.rmtree(paths.activation_summary_path(a, subsets[1]))
    out = run_driver("toy-tiny", env)
    calls = by_name(sbatch_calls(env))
    assert list(calls) == ["summary", "neuron-df", "explain", "intervention", "intervention-summary"], out.stdout
    assert calls["summary"][0]["opts"]["array"] == "1"
    assert deps(calls["neuron-df"][0]) == {calls["summary"][0]["id"]}
    assert calls["explain"][0]["opts"]["array"] == "0-1"    # the dataframe is redone: so is what reads it
    assert "auto" in calls["intervention"][0]["args"] and "--overwrite" not in calls["summary"][0]["args"]
    Path(env["SBATCH_LOG"]).unlink()

    out = run_driver("toy-tiny", {**env, "UN_SUMMARY_ARGS": "--n_bins 100"}, check=False)
    assert out.returncode == 2 and not Path(env["SBATCH_LOG"]).exists(), out.stdout + out.stderr
    assert "n_bins 256 -> 100; pass --overwrite" in out.stderr and "UN_OVERWRITE=1" in out.stderr
    out = run_driver("toy-tiny", {**env, "UN_TOY_N_SEQ": "200"}, check=False)
    assert out.returncode == 2 and "n_seq 300 -> 200" in out.stderr and not Path(env["SBATCH_LOG"]).exists()

    out = run_driver("toy-tiny", {**env, "UN_SUMMARY_ARGS": "--n_bins 100", "UN_OVERWRITE": "1"})
    calls = by_name(sbatch_calls(env))
    assert calls["summary"][0]["opts"]["array"] == "0-2" and "--overwrite" in calls["summary"][0]["args"]
    assert all("--overwrite" in c["args"] for c in sum(calls.values(), []))
    Path(env["SBATCH_LOG"]).unlink()

    touch(paths.correlation_path(a, c, corr_ds, "pearson", "permutation") / "correlation_summary.pt")
    out = run_driver("toy-tiny", {**env, "UN_CORR_ARGS": "--baseline none rotation permutation"}, check=False)
    assert out.returncode == 2 and "pearson.permutation has no record of its settings" in out.stderr


def test_dry_run_prints_a_runnable_script(tmp_path, tiny_zoo3):
    env = fake_sbatch_env(tmp_path)
    out = run_driver("toy-tiny", env, "--dry-run")
    assert not Path(env["SBATCH_LOG"]).exists()             # nothing submitted
    assert out.stdout.startswith("#!/bin/bash") and "# 9 job(s)" in out.stdout
    assert "--dependency=afterok:$JOB2 " in out.stdout      # the merge waits for the shard array
    script = tmp_path / "grid.sh"
    script.write_text(out.stdout)
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=60)
    calls = sbatch_calls(env)
    assert len(calls) == 9 and deps(calls[2]) == {calls[1]["id"]}


@pytest.mark.parametrize("family,n_layers,others,neurons", [
    ("stanford-gpt2-small", 12, "bcde", ["11.3030", "11.2859"]),
    ("stanford-gpt2-medium", 24, "bcde", ["23.945"]),
    ("pythia-160m", 12, ["-seed1", "-seed2", "-seed3"], ["auto"]),
    ("pythia-70m", 6, [f"-seed{i}" for i in range(1, 10)], ["auto"]),     # PolyPythias: seed 0 against 1..9
])
def test_paper_families(tmp_path, family, n_layers, others, neurons):
    env = fake_sbatch_env(tmp_path, UN_N_SEEDS="", UN_SHARDS="", UN_INTERVENTION_VALUES="")
    out = run_driver(family, env, check=False)               # the Pile datasets are missing: stop, submit nothing
    assert out.returncode == 2 and "missing token datasets" in out.stderr and "UN_MAKE_DATASET=1" in out.stderr
    assert not Path(env["SBATCH_LOG"]).exists()

    dfamily = "pythia" if family.startswith("pythia") else "gpt2"
    pile = ["pile.test.all-100m.512", "pile.test.all-10m.512"] + [f"pile.test.{s}.512" for s in (
        "arxiv bookcorpus2 books3 dm_mathematics enron_emails europarl freelaw github gutenberg hackernews "
        "nih_exporter opensubtitles openwebtext2 philpapers pile_cc pubmed_abstracts pubmed_central stackexchange "
        "ubuntu_irc uspto_backgrounds wikipedia youtubesubtitles").split()]
    import numpy as np

    from universal_neurons.token_datasets import save_token_dataset
    from universal_neurons.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    for ds in pile:  # one-row stand-ins: the grid checks them (they exist, are datasets), the jobs would read them
        save_token_dataset(np.zeros((1, 512), dtype=np.int64), dfamily, ds, tok)
    out = run_driver(family, env)
    calls = by_name(sbatch_calls(env))
    model = family if family.startswith("pythia") else f"{family}-a"
    expected_others = [f"{family}{o}" if o.startswith("-seed") else f"{family}-{o}" for o in others]
    assert [c["args"][3] for c in calls["corr"]] == expected_others        # one pass per pair
    for corr, merge in zip(calls["corr"], calls["merge"]):
        assert corr["opts"]["array"] == "0-7" and corr["opts"]["gres"] == "gpu:1"
        assert corr["args"][:2] == ["--model_1_name", model] and "pile.test.all-100m.512" in corr["args"]
        assert deps(merge) == {corr["id"]}
    assert calls["summary"][0]["opts"]["array"] == "0-21"
    assert deps(calls["neuron-df"][0]) == {m["id"] for m in calls["merge"]} | {calls["weights"][0]["id"],
                                                                               calls["summary"][0]["id"]}
    assert "gres" not in calls["neuron-df"][0]["opts"]
    assert calls["explain"][0]["opts"]["array"] == f"0-{n_layers - 1}"
    assert [c["args"][c["args"].index("--neuron_subset") + 1] for c in calls["intervention"]] == neurons
    for c in calls["intervention"]:
        assert c["opts"]["array"] == "0-7" and c["args"][0] == "-0.17 0 1 2 3 4 5 6"
        assert c["args"][-2:] == ["--n_random_baselines", "20"]


def test_settings_reach_sbatch(tmp_path, tiny_zoo3):
    env = fake_sbatch_env(tmp_path, UN_PARTITION="gpu", UN_TIME="2:00:00", UN_MEM="32G", UN_GPU_OPTS="--gres=gpu:a100:1",
                          UN_SBATCH_OPTS="--account=lab --qos=high", UN_LOG_DIR="logs", UN_PAIRS_PER_PASS="1")
    run_driver("toy-tiny", env)
    calls = by_name(sbatch_calls(env))
    assert len(calls["corr"]) == SEEDS - 1                   # one pass per pair
    for c in sum(calls.values(), []):
        assert c["opts"]["partition"] == "gpu" and c["opts"]["time"] == "2:00:00" and c["opts"]["mem"] == "32G"
        assert c["opts"]["account"] == "lab" and c["opts"]["qos"] == "high" and c["opts"]["output"].startswith("logs/")
        assert ("gres" in c["opts"]) == (c["name"] not in ("dataset", "neuron-df"))
        assert (c["opts"].get("export") == "ALL,UN_REQUIRE_CUDA=1") == ("gres" in c["opts"])  # GPU jobs fail fast


def test_bad_usage(tmp_path):
    env = fake_sbatch_env(tmp_path)
    for args in ([], ["gpt5"], ["toy", "--fast"]):
        out = subprocess.run(["bash", str(DRIVER), *args], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "usage" in out.stderr, args
    out = run_driver("toy-tiny", {**env, "UN_N_SEEDS": "1"}, check=False)
    assert out.returncode == 2 and "at least 2" in out.stderr


# The job scripts, with stand-ins for the stage scripts -----------------------------------------

@pytest.fixture
def fake_repo(tmp_path):
    """A checkout whose stage scripts print their arguments as JSON (slurm/ and the package are real)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "slurm").symlink_to(REPO / "slurm")
    (repo / "universal_neurons").symlink_to(REPO / "universal_neurons")
    for script in ("correlations_fast.py", "summary.py", "explain.py", "entropy_intervention.py", "weights.py",
                   "make_dataset.py"):
        (repo / script).write_text("import json, sys\nprint('ARGS ' + json.dumps(sys.argv[1:]))\n")
    return repo


def run_job(repo: Path, script: str, *args: str, task: int | None = None) -> tuple[list[str] | None, str]:
    env = {**base_env(), "UN_REPO": str(repo)}
    if task is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(task)
    out = subprocess.run(["bash", str(repo / "slurm" / script), *args], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"^ARGS (.*)$", out.stdout, re.M)
    return (json.loads(m.group(1)) if m else None), out.stdout


def test_array_tasks_pick_their_item(fake_repo):
    args, log = run_job(fake_repo, "correlations.sbatch", "--model_1_name", "a", "--num_shards", "3", task=2)
    assert args == ["--model_1_name", "a", "--num_shards", "3", "--shard_index", "2"]
    assert "task 2" in log
    args, _ = run_job(fake_repo, "correlations.sbatch", "--model_1_name", "a")        # no array: one process
    assert args == ["--model_1_name", "a"]
    args, _ = run_job(fake_repo, "correlations_merge.sbatch", "--model_1_name", "a", "--num_shards", "3")
    assert args == ["--model_1_name", "a", "--num_shards", "3", "--merge"]
    args, _ = run_job(fake_repo, "summary.sbatch", "d0 d1 d2", "--model", "m", task=1)
    assert args == ["--model", "m", "--token_dataset", "d1"]
    args, _ = run_job(fake_repo, "intervention.sbatch", "-0.17 0 1", "--model", "m", "--neuron_subset", "1.2", task=0)
    assert args == ["--model", "m", "--neuron_subset", "1.2", "--no_summary", "--intervention_param", "-0.17"]  # runs only
    args, _ = run_job(fake_repo, "intervention.sbatch", "-0.17 0 1", "--model", "m", "--neuron_subset", "1.2")
    assert args == ["--model", "m", "--neuron_subset", "1.2", "--intervention_param", "-0.17", "0", "1"]
    with pytest.raises(AssertionError, match="only 3 item"):
        run_job(fake_repo, "summary.sbatch", "d0 d1 d2", "--model", "m", task=3)


def test_explain_task_without_neurons_succeeds(fake_repo, tmp_path):
    csv = tmp_path / "universal.csv"
    csv.write_text("neuron,layer,excess_corr\n4,0,0.7\n9,2,0.6\n")    # no neuron in layer 1
    args, _ = run_job(fake_repo, "explain.sbatch", "--model", "m", "--neuron_df_path", str(csv), task=2)
    assert args == ["--model", "m", "--neuron_df_path", str(csv), "--layer", "2"]
    args, log = run_job(fake_repo, "explain.sbatch", "--model", "m", "--neuron_df_path", str(csv), task=1)
    assert args is None and "no neuron in layer 1" in log


def test_intervention_auto_neuron(fake_repo):
    df = paths.neuron_df_path("m")
    df.parent.mkdir(parents=True)
    # the pipeline's rule: percentile ranks of w_out_norm and of -vocab_var summed in the last layer;
    # 1.1 wins (largest norm, lowest vocab_var of the last layer), not 0.3 (larger norm, another layer)
    df.write_text("layer,neuron,w_out_norm,vocab_var\n0,3,9.0,0.0\n1,0,1.5,0.03\n1,1,4.0,0.02\n1,2,-2.0,0.5\n")
    args, log = run_job(fake_repo, "intervention.sbatch", "5", "--model", "m", "--neuron_subset", "auto", task=0)
    assert args == ["--model", "m", "--neuron_subset", "1.1", "--no_summary", "--intervention_param", "5"]
    out = subprocess.run([sys.executable, str(REPO / "slurm" / "entropy_neuron.py"), "other"], env=base_env(),
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no neuron dataframe" in out.stderr


# A real Slurm cluster ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.mark.slurm
def test_cluster_runs_an_array_then_a_dependent_job(slurm_cluster, tmp_path):
    env = slurm_cluster.env(base_env())
    sb = ["sbatch", "--parsable", "--output", str(tmp_path / "%x-%A_%a.out")]
    array = subprocess.run(sb + ["-J", "arr", "--array=0-2", "--wrap", "echo $SLURM_ARRAY_TASK_ID > t$SLURM_ARRAY_TASK_ID"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    after = subprocess.run(sb + ["-J", "dep", f"--dependency=afterok:{array}", "--wrap", "cat t0 t1 t2 > all"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    states = slurm_cluster.wait(timeout=120)
    assert [states.get(f"{array}_{i}") for i in range(3)] == ["COMPLETED"] * 3 and states[after] == "COMPLETED"
    assert (tmp_path / "all").read_text().split() == ["0", "1", "2"]


FULL_MATRIX = ["--save_full_correlation_matrix", "--save_precision", "32"]


def assert_same_correlations(merged_root: Path, single_root: Path, model: str, others: list[str], ds: str) -> float:
    """The sharded run's artifacts against the single run's: float32 full matrices within 1e-5 (float32
    sums in another order; 4e-6 seen on the tiny zoo trained at lr 4e-2); the fp16
    summaries equal up to fp16 rounding (1/1024 relative, about one fp16 step), their max/min indices
    equal (the tail indices may swap values that are equal in fp16), their histograms equal but for
    similarities within float32 noise of a bin edge. Returns the largest
    full-matrix difference."""
    import torch

    worst = 0.0
    for other in others:
        for base in ("none", "rotation"):
            rel = paths.correlation_path(model, other, ds, "pearson", base).relative_to(paths.results_dir())
            full, ref = (torch.load(root / rel / "correlation.pt") for root in (merged_root, single_root))
            assert full.dtype == torch.float32 and full.shape == ref.shape == (2, 128, 2, 128)
            assert torch.equal(full.isnan(), ref.isnan())
            worst = max(worst, (full.double() - ref.double()).abs().nan_to_num(0.0).max().item())
            assert worst <= 1e-5, (other, base, worst)
            for f in ("correlation_summary.pt", "correlation_summary_T.pt"):
                got, want = (torch.load(root / rel / f) for root in (merged_root, single_root))
                assert got.keys() == want.keys()
                for k, w in want.items():
                    if not isinstance(w, torch.Tensor):
                        continue
                    g = got[k]
                    assert g.dtype == w.dtype and g.shape == w.shape, (f, k)
                    if w.is_floating_point():
                        assert torch.equal(g.isnan(), w.isnan()), (f, k)
                        err = ((g.double() - w.double()).abs() / w.double().abs().clamp_min(1)).nan_to_num(0.0)
                        assert err.max() <= 2 ** -10, (other, base, f, k, err.max().item())
                    elif k == "bin_counts":
                        # a similarity within float32 noise of a bin edge may land in the next bin: the
                        # cumulative counts may differ by at most the number of such values per row
                        m = ref.reshape(256, 256) if f == "correlation_summary.pt" else ref.reshape(256, 256).T
                        edges = torch.linspace(-1, 1, 100)
                        near = ((m[:, :, None] - edges).abs() <= 4 * max(worst, 1e-7)).sum((1, 2))
                        drift = (g.cumsum(1) - w.cumsum(1)).abs().amax(1)
                        assert torch.equal(g.sum(1), w.sum(1)) and bool((drift <= near).all()), (other, base, f, k)
                    elif k not in ("max_tail_corr_ix", "min_tail_corr_ix"):
                        assert torch.equal(g, w), (other, base, f, k)
    return worst


@pytest.mark.slurm
def test_toy_tiny_grid_on_slurm(slurm_cluster, tiny_zoo3, tmp_path, capsys):
    """The whole toy-tiny grid on CPUs, 3 correlation shards: merged = single-process run."""
    import pandas as pd

    from universal_neurons.explanations import read_vr_csv

    t0 = time.monotonic()
    a, b, c = tiny_zoo3
    ds = "python-stdlib.all-8k.32"
    # The tiny models have no universal neuron (excess_corr > 0.5): explain two chosen ones instead.
    explain_csv = tmp_path / "explain.csv"
    explain_csv.write_text("layer,neuron\n1,3\n1,77\n")
    env = slurm_cluster.env(base_env(UN_CORR_ARGS=" ".join(FULL_MATRIX), UN_EXPLAIN_NEURONS=str(explain_csv)))
    out = run_driver("toy-tiny", env)
    submitted = dict(re.findall(r"^submitted (\d+) un-(\S+)", out.stdout, re.M))
    ids = {name: i for i, name in submitted.items()}
    assert set(ids) == {"dataset", "corr", "merge", "weights", "summary", "neuron-df", "explain", "intervention",
                        "intervention-summary"}, out.stdout
    states = slurm_cluster.wait(timeout=600)
    grid_s = time.monotonic() - t0
    ours = {k: v for k, v in states.items() if k.split("_")[0] in submitted}
    bad = {k: v for k, v in ours.items() if v != "COMPLETED"}
    if bad:
        logs = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
                         for p in sorted((tmp_path / "slurm_logs").glob("*.out")))
        pytest.fail(f"jobs did not complete: {bad}\n{logs}")
    n_tasks = {name: sum(1 for k in ours if k.split("_")[0] == i) for i, name in submitted.items()}
    assert n_tasks == {"dataset": 1, "corr": SHARDS, "merge": 1, "weights": 1, "summary": 3, "neuron-df": 1,
                       "explain": 2, "intervention": 2, "intervention-summary": 1}

    single = subprocess.run([sys.executable, str(REPO / "correlations_fast.py"), "--model_1_name", a,
                             "--model_2_name", b, c, "--token_dataset", ds, "--baseline", "none", "rotation",
                             *FULL_MATRIX], env={**base_env(), "RESULTS_DIR": str(tmp_path / "single")},
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    worst = assert_same_correlations(tmp_path / paths.results_dir(), tmp_path / "single", a, [b, c], ds)

    df = pd.read_csv(paths.neuron_df_path(a))
    assert len(df) == 2 * 128 and df["max_corr"].notna().all() and df["mean_baseline"].notna().all()
    assert (paths.interpretable_neurons_path(a) / "universal.csv").is_file()
    vr = read_vr_csv(paths.explanation_dir() / a / ds / "token_feature" / "layer_1" / "variance_reduction.csv")
    assert list(vr.index) == ["1.3", "1.77"]
    assert not (paths.explanation_dir() / a / ds / "token_feature" / "layer_0").exists()   # nothing to explain
    runs = pd.read_csv(next(paths.intervention_dir().glob(f"{a}/{ds}/*/summary_fixed_activation.csv")))
    assert sorted(runs["value"].dropna()) == [0.0, 3.0]
    again = run_driver("toy-tiny", env)                       # everything is done: nothing to submit
    assert "0 job(s) submitted" in again.stdout, again.stdout
    with capsys.disabled():
        print(f"\n[slurm] toy-tiny grid: {len(submitted)} jobs submitted, {sum(n_tasks.values())} jobs/array tasks "
              f"COMPLETED {n_tasks} in {grid_s:.0f} s; {SHARDS} correlation shards merged = single-process run "
              f"(full float32 matrices max |diff| {worst:.1e}); neuron dataframe {len(df)} rows; resubmission: "
              f"0 jobs; test {time.monotonic() - t0:.0f} s")


def test_a_gpu_job_without_a_gpu_fails_fast(fake_repo):
    """UN_REQUIRE_CUDA=1 (set by the grid on jobs given a GPU): on this CPU machine the job stops before
    the stage starts, with one error naming the host."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the fail-fast path is not taken")
    env = {**base_env(), "UN_REPO": str(fake_repo), "UN_REQUIRE_CUDA": "1"}
    out = subprocess.run(["bash", str(fake_repo / "slurm" / "weights.sbatch"), "--model", "m"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "asked for a GPU but torch sees none" in out.stderr
    assert "ARGS" not in out.stdout                       # the stage never ran
