"""The artifact registry (universal_neurons/artifacts.py) and `universal-neurons done`, on the artifacts
of one `universal-neurons run --quick`: every kind is found at its path and read by its one reader;
the stages asked in check mode answer done for the run's own settings, stale (naming the setting) for
others, todo for what is missing, and never compute or write anything."""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import QUICK_DATASET, QUICK_MODELS, REPO
from universal_neurons import artifacts, paths
from universal_neurons.flags import StageConfig

A, OTHERS, DS = QUICK_MODELS[0], QUICK_MODELS[1:], QUICK_DATASET
SUBSETS = [f"python-stdlib.{s}.32" for s in ("code", "prose", "tests")]


def test_every_kind_and_stage_resolves():
    for name, kind in artifacts.KINDS.items():
        assert callable(artifacts.resolve(kind.path)), name
        assert kind.reader is None or callable(artifacts.resolve(kind.reader)), name
        assert kind.stage in artifacts.STAGES, name   # written by a registered stage
    for script, spec in artifacts.STAGES.items():
        cls = artifacts.resolve(spec)
        assert dataclasses.is_dataclass(cls) and issubclass(cls, StageConfig) and callable(cls.run), script


@pytest.mark.parametrize("script,argv", [
    ("summary.py", ["--model", "m", "--token_dataset", "d", "--n_bins", "100"]),
    ("weights.py", ["--model", "m", "--overwrite"]),
    ("explain.py", ["--model", "m", "--dataset", "d", "--layer", "1", "--min_count", "30"]),
    ("entropy_intervention.py", ["--model", "m", "--token_dataset", "d", "--neuron_subset", "1.2",
                                 "--intervention_param", "0", "3", "--no_summary"]),
    ("make_dataset.py", ["--model", "m", "--hf_dataset", "python-stdlib", "--mix_tokens", "8k"]),
    ("attention_deactivation.py", ["--model", "m", "--token_dataset", "d", "--layer", "1", "--head", "0"]),
    ("correlations_fast.py", ["--model_1_name", "m", "--model_2_name", "n", "o", "--token_dataset", "d"]),
])
def test_a_stage_parses_as_its_script(script, argv):
    """The registry's parser of a stage is its script's: the same config from the same flags."""
    import sys

    mod = importlib.import_module(script[:-3])
    if hasattr(mod, "parse_args"):
        want = mod.parse_args(argv)
    else:  # correlations*.py: the library builds their parser
        from universal_neurons.correlations import FAST_DEFAULTS, CorrelationConfig, build_parser
        want = CorrelationConfig.from_args(build_parser(FAST_DEFAULTS).parse_args(argv))
    assert artifacts.stage_config(script, argv) == want
    assert sys.modules[mod.__name__] is mod


def test_bad_flags_are_one_error():
    with pytest.raises(artifacts.UserError, match="unrecognized arguments: --bogus"):
        artifacts.stage_config("summary.py", ["--model", "m", "--token_dataset", "d", "--bogus"])
    with pytest.raises(artifacts.UserError, match="unknown stage 'nope.py'"):
        artifacts.stage_config("nope.py", [])


def test_readme_names_every_reader():
    readme = (REPO / "README.md").read_text()
    for name, kind in artifacts.KINDS.items():
        if kind.reader:
            assert kind.reader.split(":")[1] in readme, (name, kind.reader)


@pytest.fixture
def in_quick_run(quick_artifacts, monkeypatch):
    monkeypatch.chdir(quick_artifacts)
    return quick_artifacts


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_every_kind_reads_back(in_quick_run):
    """Each kind at its registered path, through its registered reader, holds the run's content."""
    read = artifacts.read
    assert len(read("token_dataset", DS, "toy")) > 0
    s = read("correlation_summary", artifacts.path("correlation_summary", A, OTHERS[0], DS, "pearson", "none"))
    assert s["max_corr"].shape == (2 * 128,)
    w = read("weight_summaries", A)
    assert {"neuron_stats", "vocab_comps", "neuron_comps"} <= set(w)
    assert read("activation_summary", A, SUBSETS[0])["neuron_bin_counts"].shape[:2] == (2, 128)
    df = read("neuron_df", A)
    assert len(df) == 256 and list(read("universal_neurons", A).columns) == list(df.columns)
    chosen = pd.read_csv(paths.report_path(A) / "explained_neurons.csv")
    layer = int(chosen["layer"].iloc[0])
    vr = read("explanation", A, DS, "token", layer)
    assert f"{layer}.{int(chosen['neuron'].iloc[0])}" in vr.index
    folder = next(p for p in artifacts.path("intervention_run", A, DS).rglob("meta.json") if "clean" not in str(p)).parent
    assert set(read("intervention_run", folder)) >= {"loss", "entropy", "rank"}
    summary = next(artifacts.path("intervention_run", A, DS).rglob("summary_fixed_activation.csv"))
    assert set(read("entropy_summary", summary)["group"]) == {"target", "random", "clean"}
    att = next((paths.results_dir() / "attention_deactivation").rglob("meta.json")).parent
    run = read("attention_deactivation", att)
    assert set(run["corr_dict"]) == set(run["meta"]["neurons"])
    with pytest.raises(artifacts.UserError, match="has no reader"):
        artifacts.reader("report")


def _quick_checks() -> dict[str, str]:
    """The quick pipeline's own stage runs as `done` lines (settings as pipeline.py passes them)."""
    meta = json.loads(next(p for p in (paths.intervention_dir() / A / DS).rglob("meta.json")
                           if json.loads(p.read_text()).get("group") == "target").read_text())
    csv = pd.read_csv(next((paths.intervention_dir() / A / DS).rglob("summary_fixed_activation.csv")))
    values = " ".join(repr(float(v)) for v in sorted(csv["value"].dropna().unique()))
    att = json.loads(next((paths.results_dir() / "attention_deactivation").rglob("meta.json")).read_text())
    neurons = meta["neurons"][0]
    sel = paths.report_path(A) / "explained_neurons.csv"
    layer = int(pd.read_csv(sel)["layer"].iloc[0])
    return {
        "dataset": f"make_dataset.py --model {A} --hf_dataset python-stdlib --ctx_len 32 --n_seq 400 --mix_tokens 32000",
        "corr": f"correlations_fast.py --model_1_name {A} --model_2_name {' '.join(OTHERS)} --token_dataset {DS} "
                f"--baseline none rotation",
        "weights": f"weights.py --model {A}",
        "summary": f"summary.py --model {A} --token_dataset {' '.join(SUBSETS)}",
        "neuron-df": f"neuron-df --model {A} --others {' '.join(OTHERS)} --dataset {DS} "
                     f"--activation_datasets {' '.join(SUBSETS)}",
        "explain": f"explain.py --model {A} --dataset {DS} --neuron_df_path {sel} --min_count 30 --layer {layer}",
        "intervention": f"entropy_intervention.py --model {A} --token_dataset {DS} --neuron_subset {neurons} "
                        f"--intervention_param {values} --n_random_baselines 2 --n_seq 64",
        "attention": f"attention_deactivation.py --model {A} --token_dataset {DS} --layer {att['layer']} "
                     f"--head {att['head']} --top_k 5 --n_seq 32",
    }


def test_done_answers_from_the_records_and_writes_nothing(in_quick_run):
    checks = _quick_checks()
    changed = {  # one setting that changes the numbers, per stage: (flag added, the setting named)
        "dataset": ("--seed 3", "seed 0 -> 3"), "corr": ("--n_seq 16", "n_seq -1 -> 16"),
        "summary": ("--n_bins 100", "n_bins 256 -> 100"), "neuron-df": ("--threshold 0.3", "threshold 0.5 -> 0.3"),
        "explain": ("--exclude_special_tokens", "exclude_special_tokens False -> True"),
        "intervention": ("--activation_location mlp.hook_pre", "location 'mlp.hook_post' -> 'mlp.hook_pre'"),
        "attention": ("--n_seq 16", "n_seq 32 -> 16"),
    }
    lines = list(checks.values()) + [checks[k] + " " + flag for k, (flag, _) in changed.items()]
    lines += [checks["corr"].replace("rotation", "permutation"),            # a baseline never computed
              checks["summary"] + " --overwrite",                           # same record: still done
              checks["intervention"].replace("--intervention_param ", "--intervention_param 9.5 "),  # one value more
              f"summary.py --model {A} --token_dataset no-such-dataset",
              # a pair never computed first, then a pair made with other settings: stale outranks todo
              checks["corr"].replace(f"--model_2_name {' '.join(OTHERS)}", f"--model_2_name {A} {OTHERS[0]}") + " --n_seq 16",
              "\x1f".join(checks["weights"].split()),                      # the grid's separator
              checks["corr"] + " --gemm_dtype tf32",                        # a GPU-only flag, checked on a CPU
              f"neuron-df --model {A} --others {' '.join(OTHERS[::-1])} --dataset {DS} "
              f"--activation_datasets {' '.join(SUBSETS[::-1])}"]                # another order: the same dataframe
    before = _snapshot(in_quick_run)
    answers = artifacts.check_runs(lines)
    assert _snapshot(in_quick_run) == before          # check mode computes and writes nothing
    n = len(checks)
    assert answers[:n] == ["done"] * n, dict(zip(checks, answers))
    for (stage, (flag, why)), answer in zip(changed.items(), answers[n:n + len(changed)]):
        assert answer.startswith("stale ") and why in answer and "pass --overwrite" in answer, (stage, answer)
    tail = answers[n + len(changed):]
    assert tail[0].startswith("todo compute") and "pearson.permutation" in tail[0]
    assert tail[1] == "done"
    assert tail[2].startswith("todo compute") and "fixed_activation_9.5" in tail[2]
    assert tail[3].startswith("error token dataset 'no-such-dataset' not found")
    assert tail[4].startswith("stale ") and "n_seq -1 -> 16" in tail[4], tail[4]
    assert tail[5:] == ["done", "done", "done"], tail[5:]


def test_done_command_and_a_real_rerun_agree(in_quick_run):
    """The CLI (what the Slurm grid runs) gives the same answers; a real run with another setting stops
    with the same message, and a real rerun with the same settings skips."""
    import subprocess
    import sys

    from universal_neurons.errors import UserError
    from universal_neurons.neuron_df import NeuronDfConfig

    checks = _quick_checks()
    lines = [checks["neuron-df"], checks["neuron-df"] + " --threshold 0.3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "universal_neurons.cli", "done"], input="\n".join(lines),
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == artifacts.check_runs(lines)
    cfg = artifacts.stage_config("neuron-df", checks["neuron-df"].split()[1:])
    before = _snapshot(in_quick_run)
    df = cfg.run(progress=False)
    assert _snapshot(in_quick_run) == before and len(df) == 256     # the same record: skipped
    with pytest.raises(UserError, match=r"threshold 0.5 -> 0.3; pass --overwrite"):
        dataclasses.replace(cfg, threshold=0.3).run(progress=False)
    assert _snapshot(in_quick_run) == before


def test_neuron_df_record_follows_its_inputs(tmp_path, monkeypatch):
    """A changed input record (an upstream stage rerun with other settings) makes the dataframe stale;
    a missing input is 'todo' in check mode and one clear error in a run."""
    from test_neuron_df import _fake_artifacts

    import universal_neurons.models as models
    from universal_neurons import runs
    from universal_neurons.errors import Pending, UserError
    from universal_neurons.neuron_df import NeuronDfConfig, record_path

    _fake_artifacts()
    inputs = [paths.correlation_path("m-a", o, "ds", "pearson", b) for o in ("m-b", "m-c") for b in ("none", "rotation")]
    inputs += [paths.weights_summary_path("m-a")] + [paths.activation_summary_path("m-a", d) for d in ("ds.x", "ds.y")]
    for folder in inputs:
        (folder / "run.json").write_text(json.dumps({"n_seq": -1}))
    shape = type("Cfg", (), {"n_layers": 2, "d_mlp": 5})
    monkeypatch.setattr(models, "load_model", lambda *a, **k: type("M", (), {"cfg": shape})())
    cfg = NeuronDfConfig(model="m-a", others=["m-b", "m-c"], dataset="ds")
    df = cfg.run(progress=False)
    assert len(df) == 10 and json.loads(record_path("m-a").read_text())["activation_datasets"] == ["ds.x", "ds.y"]
    mtime = paths.neuron_df_path("m-a").stat().st_mtime_ns
    assert len(cfg.run(progress=False)) == 10 and paths.neuron_df_path("m-a").stat().st_mtime_ns == mtime  # skipped
    (paths.activation_summary_path("m-a", "ds.y") / "run.json").write_text(json.dumps({"n_seq": 16}))
    with pytest.raises(UserError, match=r"inputs\.summary ds\.y '[0-9a-f]+' -> '[0-9a-f]+'; pass --overwrite"):
        cfg.run(progress=False)
    assert paths.neuron_df_path("m-a").stat().st_mtime_ns == mtime                                 # untouched
    dataclasses.replace(cfg, overwrite=True).run(progress=False)
    assert paths.neuron_df_path("m-a").stat().st_mtime_ns != mtime
    cfg.run(progress=False)                                                                        # the new record
    (paths.weights_summary_path("m-a") / "run.json").unlink()                                    # an old version's
    with pytest.raises(UserError, match=r"input weights .* has no record of its settings"):
        cfg.run(progress=False)
    import shutil

    shutil.rmtree(paths.weights_summary_path("m-a"))                                              # not made yet
    with runs.checking(), pytest.raises(Pending, match=r"once its inputs exist \(weights\)"):
        cfg.run(progress=False)
    with runs.checking(), pytest.raises(UserError, match=r"others \['m-b', 'm-c'\] -> \['m-b'\]"):
        dataclasses.replace(cfg, others=["m-b"]).run(progress=False)  # settings still compared: stale, not todo
