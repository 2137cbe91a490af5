"""Shared test setup.

- The tiny zoo (toy-gpt2-tiny-*) is trained once into a cache shared by the whole session (and by
  later local runs): $UNIVERSAL_NEURONS_ZOO, default .pytest_cache/zoo in the repository.
- Every test runs in its own empty working directory, so the artifact folders (token_datasets,
  correlation_results, summary_data, ...) of one test never leak into another.
- Tests never touch the network: HF_HUB_OFFLINE=1.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("UNIVERSAL_NEURONS_ZOO", str(REPO / ".pytest_cache" / "zoo"))
os.environ["HF_HUB_OFFLINE"] = "1"
QUICK_MODELS = [f"toy-gpt2-tiny-{s}" for s in "abcde"]  # universal-neurons run --quick
QUICK_DATASET = "python-stdlib.all-32k.32"
ARTIFACT_VARS = ("DATASET_DIR", "RESULTS_DIR", "SUMMARY_DIR", "ACTIVATION_DIR", "INTERVENTION_DIR",
                 "DATAFRAME_DIR", "EXPLANATION_DIR", "REPORT_DIR")


def pytest_configure(config):
    # The glyph warnings viewer_data filters at import: here too, for the whole session, because pytest
    # restores the filters after each test and the viewer's panel threads may draw between tests.
    import warnings

    warnings.filterwarnings("ignore", message=r"(?s)Glyph \d+ .*missing from font")


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    for var in ARTIFACT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def quick_artifacts(tmp_path_factory, tiny_zoo):
    """Folder with every artifact of `universal-neurons run --quick` (tiny zoo, a against b..e)."""
    root = tmp_path_factory.mktemp("quick_run")
    env = {k: v for k, v in os.environ.items() if k not in ARTIFACT_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "universal_neurons.cli", "run", "--quick"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (root / "dataframes" / "neuron_dfs" / f"{QUICK_MODELS[0]}.csv").exists()
    return root


@pytest.fixture(scope="session")
def tiny_zoo():
    """Names of two trained tiny zoo models (seeds a and b)."""
    from universal_neurons import zoo

    names = [zoo.zoo_name("tiny", s) for s in range(2)]
    zoo.ensure_models(names, progress=False)  # side by side on a multi-core machine
    return names


def build_gpt2_folder(folder: Path, n_layer=2, d_model=32, d_mlp=64, n_head=2, vocab=None, seed=0, ctx=64):
    """A random GPT-2-architecture model saved as a local Hugging Face folder (with the real GPT-2
    tokenizer by default, or a small trained BPE when `vocab` is an int). Returns (folder, hf_model)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from universal_neurons.tokenizer import gpt2_tokenizer, train_bpe

    tok = gpt2_tokenizer() if vocab is None else train_bpe(
        ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog.\n"] * 20, vocab)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=ctx, n_embd=d_model, n_layer=n_layer, n_head=n_head,
                     n_inner=d_mlp, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so folding them is really exercised
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder, model


@pytest.fixture
def gpt2_folder(tmp_path):
    return build_gpt2_folder(tmp_path / "tiny-gpt2")
