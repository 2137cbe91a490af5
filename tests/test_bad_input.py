"""Every CLI x the bad inputs users hit: one `error:` line naming the cause, exit 2, no traceback, and
nothing written. The scripts run in-process (`main(argv)`), against a tiny zoo model (context 32) and
token datasets made for it."""
from __future__ import annotations

import io
import socket
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from conftest import build_gpt2_folder

A, B = "toy-gpt2-tiny-a", "toy-gpt2-tiny-b"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_zoo):
    """$DATASET_DIR with toy datasets: ok.32 (fits), long.64 (rows longer than the model's 32), empty
    (a datasets folder with no rows), junk (an empty folder); a gpt2-family one for a damaged model."""
    from datasets import Dataset

    from universal_neurons import paths
    from universal_neurons.models import load_tokenizer
    from universal_neurons.token_datasets import save_token_dataset
    from universal_neurons.tokenizer import gpt2_tokenizer

    root = tmp_path_factory.mktemp("datasets")
    with paths.overriding(DATASET_DIR=root):
        tok = load_tokenizer(A)
        rng = np.random.default_rng(0)
        save_token_dataset(rng.integers(3, 500, (8, 32)), "toy", "ok.32", tok)
        save_token_dataset(rng.integers(3, 500, (8, 64)), "toy", "long.64", tok)
        Dataset.from_dict({"tokens": []}).save_to_disk(str(root / "toy" / "empty"))
        (root / "toy" / "junk").mkdir()
        save_token_dataset(rng.integers(3, 500, (2, 16)), "gpt2", "g.16", gpt2_tokenizer())
    return root


def _main(script: str):
    import importlib

    if script == "cli":
        from universal_neurons.cli import main
        return main
    if script == "correlations_fast":
        from universal_neurons.correlations import FAST_DEFAULTS, main
        return lambda argv: main(argv, defaults=FAST_DEFAULTS)
    return importlib.import_module(script).main


LONG = r"has rows of 64 tokens but toy-gpt2-tiny-a reads at most 32"
CASES = {
    # rows longer than the model's context, where the dataset is made and where it is used
    "make_dataset ctx > model": ("make_dataset", ["--model", A, "--hf_dataset", "python-stdlib", "--ctx_len", "64"],
                                 r"--ctx_len 64 is longer than toy-gpt2-tiny-a's context of 32"),
    "summary ctx": ("summary", ["--model", A, "--token_dataset", "long.64"], LONG),
    "explain ctx": ("explain", ["--model", A, "--dataset", "long.64", "--layer", "1"], LONG),
    "intervention ctx": ("intervention", ["--model", A, "--token_dataset", "long.64", "--neuron", "1.2"], LONG),
    "entropy ctx": ("entropy_intervention", ["--model", A, "--token_dataset", "long.64", "--neuron_subset", "1.2",
                                             "--intervention_param", "1"], LONG),
    "activations ctx": ("activations", ["--model", A, "--token_dataset", "long.64", "--neuron_subset", "1.2"], LONG),
    "attention ctx": ("attention_deactivation", ["--model", A, "--token_dataset", "long.64", "--layer", "1",
                                                 "--head", "0"], LONG),
    "correlations ctx": ("correlations_fast", ["--model_1_name", A, "--model_2_name", B, "--token_dataset", "long.64"],
                         LONG),
    # datasets nothing can load
    "make_dataset ctx 0": ("make_dataset", ["--model", A, "--hf_dataset", "python-stdlib", "--ctx_len", "0"],
                           r"--ctx_len must be >= 2"),
    "corpus shorter than a row": ("make_dataset", ["--model", A, "--hf_dataset", "{short}", "--ctx_len", "32"],
                                  r"would have no rows: its text is shorter than one row of 32 tokens"),
    "mix_tokens 0": ("make_dataset", ["--model", A, "--hf_dataset", "{long_text}", "--ctx_len", "8", "--mix_tokens", "0"],
                     r"--mix_tokens must be a positive number of tokens"),
    "malformed jsonl": ("make_dataset", ["--model", A, "--hf_dataset", "{bad_jsonl}", "--ctx_len", "8"],
                        r"docs\.jsonl:2: not a JSON object with a 'text' field"),
    "typo'd model": ("make_dataset", ["--model", "gpt2-typo", "--hf_dataset", "python-stdlib"],
                     r"unknown model 'gpt2-typo'"),
    "empty dataset": ("summary", ["--model", A, "--token_dataset", "empty"], r"empty is not a readable token dataset|token dataset 'empty' is empty"),
    "not a dataset": ("summary", ["--model", A, "--token_dataset", "junk"], r"junk is not a readable token dataset"),
    # numbers that would silently become other numbers
    "explain 1.999": ("explain", ["--model", A, "--dataset", "ok.32", "--neuron_df_path", "{csv_1999}"],
                      r"neuron 1\.999 \(row 2\) is not a whole number"),
    "jaccard nan": ("correlations_fast", ["--model_1_name", A, "--model_2_name", B, "--token_dataset", "ok.32",
                                          "--similarity_type", "jaccard", "--jaccard_threshold", "nan"],
                    r"--jaccard_threshold must be a finite number"),
    "run ctx 0": ("cli", ["run", "--quick", "--ctx_len", "0"], r"--ctx_len must be >= 2"),
    "superscript neuron": ("intervention", ["--model", A, "--token_dataset", "ok.32", "--neuron", "².1"],
                           r"malformed neuron spec '²\.1'"),
    "arabic-indic neuron": ("intervention", ["--model", A, "--token_dataset", "ok.32", "--neuron", "١.٢"],
                            r"malformed neuron spec '١\.٢'"),
    "zoo 27 seeds": ("cli", ["zoo", "--preset", "tiny", "--n_seeds", "27"], r"--n_seeds must be in \[1, 26\]"),
    # unknown models said as such, not as a missing dataset
    "summary unknown model": ("summary", ["--model", "no-such-model", "--token_dataset", "ok.32"],
                              r"unknown model 'no-such-model'"),
    "activations unknown model": ("activations", ["--model", "no-such-model", "--token_dataset", "ok.32"],
                                  r"unknown model 'no-such-model'"),
    "damaged safetensors": ("summary", ["--model", "{broken_model}", "--token_dataset", "g.16"],
                            r"cannot load model .*broken"),
    # outputs that cannot be written
    "output is a file": ("summary", ["--model", A, "--token_dataset", "ok.32", "--output_dir", "{a_file}"],
                         r"cannot write under .*a_file is a file, not a folder"),
    "viewer port out of range": ("cli", ["view", "--model", A, "--port", "99999"], r"--port must be in \[0, 65535\]"),
    "viewer port in use": ("cli", ["view", "--model", A, "--port", "{busy_port}"], r"cannot serve on 127\.0\.0\.1:\d+"),
}
for _script, _argv in [("summary", ["--token_dataset", "ok.32"]), ("explain", ["--dataset", "ok.32"]),
                       ("entropy_intervention", ["--token_dataset", "ok.32", "--neuron_subset", "1.2"]),
                       ("intervention", ["--token_dataset", "ok.32", "--neuron", "1.2"]),
                       ("attention_deactivation", ["--token_dataset", "ok.32", "--layer", "1", "--head", "0"]),
                       ("activations", ["--token_dataset", "ok.32"])]:
    CASES[f"{_script} batch 0"] = (_script, ["--model", A, *_argv, "--batch_size", "0"], r"--batch_size must be >= 1")
CASES["correlations batch 0"] = ("correlations_fast", ["--model_1_name", A, "--model_2_name", B, "--token_dataset",
                                                       "ok.32", "--batch_size", "0"], r"--batch_size must be >= 1")


def _inputs(tmp: Path) -> dict:
    """The files some cases point at (outside the working directory, which must stay empty)."""
    short = tmp / "short"
    short.mkdir()
    (short / "a.txt").write_text("hi")
    long_text = tmp / "long_text"
    long_text.mkdir()
    (long_text / "a.txt").write_text("def f(x):\n    return x + 1\n" * 200)
    bad = tmp / "bad_jsonl"
    bad.mkdir()
    (bad / "docs.jsonl").write_text('{"text": "fine"}\n{"txt": 1}\n')
    csv = tmp / "n.csv"
    csv.write_text("layer,neuron\n1,1.999\n")
    folder, _ = build_gpt2_folder(tmp / "broken", n_layer=1, d_model=8, d_mlp=16, n_head=1)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    return {"short": short, "long_text": long_text, "bad_jsonl": bad, "csv_1999": csv, "broken_model": folder,
            "a_file": a_file}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_and_writes_nothing(case, data_root, tmp_path_factory, tmp_path, monkeypatch):
    script, argv, expected = CASES[case]
    monkeypatch.setenv("DATASET_DIR", str(data_root))
    inputs = _inputs(tmp_path_factory.mktemp("inputs"))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    inputs["busy_port"] = busy.getsockname()[1]
    argv = [a.format(**inputs) for a in argv]
    before = sorted(p for p in data_root.rglob("*"))
    err, out = io.StringIO(), io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(out), pytest.raises(SystemExit) as e:
            _main(script)(argv)
    finally:
        busy.close()
    lines = [l for l in err.getvalue().splitlines() if l.strip() and not l.startswith("note:")]
    assert e.value.code == 2, err.getvalue()[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()[-2000:]
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in err.getvalue() + out.getvalue()
    assert list(tmp_path.rglob("*")) == [], list(tmp_path.rglob("*"))        # nothing written here
    assert sorted(p for p in data_root.rglob("*")) == before                 # nor among the datasets


def test_matrix_covers_every_cli():
    scripts = {s for s, _, _ in CASES.values()}
    assert scripts >= {"make_dataset", "summary", "explain", "intervention", "entropy_intervention", "activations",
                       "attention_deactivation", "correlations_fast", "cli"}
    assert len(CASES) >= 30
