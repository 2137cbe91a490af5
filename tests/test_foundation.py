"""Foundation: tokenizer, model loader, token datasets, zoo, CLI errors."""
import json
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, build_gpt2_folder
from universal_neurons import paths, token_datasets, zoo
from universal_neurons.capture import check_same_tokenizer, mlp_activations, position_mask, token_mask
from universal_neurons.errors import UserError, parse_neuron
from universal_neurons.models import hub_id, load_model, load_tokenizer, model_family
from universal_neurons.tokenizer import gpt2_tokenizer, train_bpe


# Tokenizers --------------------------------------------------------------------------------------

def test_offline_gpt2_tokenizer_known_ids():
    tok = gpt2_tokenizer()
    assert len(tok) == 50257
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok(" the")["input_ids"] == [262]
    assert tok("\n")["input_ids"] == [198]
    assert tok("<|endoftext|>")["input_ids"] == [50256]
    assert tok.bos_token_id == tok.eos_token_id == 50256
    text = "Universal neurons 1999, naïve café!\n\tx = 2"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_train_bpe_roundtrip():
    tok = train_bpe(["hello world hello there\n"] * 10, 300)
    assert len(tok) <= 300 and tok.convert_ids_to_tokens(0) == "<|endoftext|>"
    ids = tok("hello there, unseen ünïcode")["input_ids"]
    assert tok.decode(ids) == "hello there, unseen ünïcode"


# Model loader ------------------------------------------------------------------------------------

def test_local_folder_loads_with_hooks_and_folded_weights(tmp_path):
    folder, hf = build_gpt2_folder(tmp_path / "m", n_layer=3, d_model=32, d_mlp=96, n_head=4)
    model = load_model(str(folder))
    assert model.family == "gpt2" and model.model_name == str(folder)
    L, D, d, V, H = 3, 96, 32, 50257, 4
    assert model.W_in.shape == (L, d, D) and model.W_out.shape == (L, D, d) and model.b_in.shape == (L, D)
    assert model.W_E.shape == (V, d) and model.W_U.shape == (d, V) and model.W_Q.shape == (L, H, d, d // H)
    assert model.QK.shape == (L, H, d, d) and model.OV.shape == (L, H, d, d)
    # compatibility mode: unembedding and writing weights centred
    assert model.W_U.mean(-1).abs().max() < 1e-5
    assert model.W_out.mean(-1).abs().max() < 1e-5
    tokens = torch.tensor([[50256, 15496, 995, 262, 198, 11, 13]])
    with torch.no_grad():
        ref = hf(tokens).logits.log_softmax(-1)
        lp = model(tokens).log_softmax(-1)
    assert (lp - ref).abs().max() < 1e-4, "folded/centred weights must reproduce the unfolded log-probs"
    _, cache = model.run_with_cache(tokens)
    for l in range(L):
        assert cache[f"blocks.{l}.mlp.hook_pre"].shape == (1, 7, D)
        assert cache[f"blocks.{l}.mlp.hook_post"].shape == (1, 7, D)
        assert cache[f"blocks.{l}.attn.hook_pattern"].shape == (1, H, 7, 7)
    assert cache["ln_final.hook_scale"].shape == (1, 7, 1)
    acts = mlp_activations(model, tokens)
    assert acts.shape == (1, 7, L, D)
    assert torch.allclose(acts[:, :, 1], cache["blocks.1.mlp.hook_post"])
    # post = GELU(pre) is what the model computes; check the hook pair is consistent
    pre = mlp_activations(model, tokens, "mlp.hook_pre")
    assert torch.allclose(acts, torch.nn.functional.gelu(pre, approximate="tanh"), atol=1e-5)


def test_unknown_model_fails_fast_with_clear_message():
    t = time.time()
    with pytest.raises(UserError) as e:
        load_model("no-such-org/no-such-model-xyz")
    assert time.time() - t < 10
    msg = str(e.value)
    assert "no-such-org/no-such-model-xyz" in msg and "tried" in msg and "local folder" in msg


def test_paper_aliases_and_families():
    assert hub_id("stanford-gpt2-small-a") == "stanford-crfm/alias-gpt2-small-x21"
    assert hub_id("stanford-gpt2-medium-e") == "stanford-crfm/eowyn-gpt2-medium-x777"
    assert hub_id("pythia-160m-seed2") == "EleutherAI/pythia-160m-seed2"
    # the PolyPythias suite: five sizes, seeds 1..9 (seed 0 is the original Pythia)
    assert hub_id("pythia-14m-seed9") == "EleutherAI/pythia-14m-seed9" and hub_id("pythia-410m") == "EleutherAI/pythia-410m"
    assert hub_id("pythia-70m-seed10") == "pythia-70m-seed10" and model_family("pythia-31m-seed4") == "pythia"
    import pytest as _pytest

    from universal_neurons.errors import UserError
    from universal_neurons.models import check_model_name
    with _pytest.raises(UserError, match="hub unreachable|unreachable and 'EleutherAI/pythia-14m-seed3' not in the local"):
        check_model_name("pythia-14m-seed3")    # a known name, offline and not cached: said so
    with _pytest.raises(UserError, match="unknown model 'pythia-70m-seed10'"):
        check_model_name("pythia-70m-seed10")   # no such seed: unknown, not a hub guess
    assert model_family("stanford-gpt2-small-c") == "gpt2"
    assert model_family("pythia-160m") == "pythia"
    assert model_family("toy-gpt2-tiny-a") == "toy"
    # the GPT-2 family's tokenizer is available without the network
    assert load_tokenizer("stanford-gpt2-small-b")("Hello world")["input_ids"] == [15496, 995]


def test_cuda_request_without_gpu_is_a_user_error(gpt2_folder):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="CUDA is not available"):
        load_model(str(gpt2_folder[0]), device="cuda")


def test_neuron_spec_parsing():
    assert parse_neuron("11.3030") == (11, 3030)
    for bad in ("3.99999.1", "a.b", "3", "3.", "-1.2", "3.5e2"):
        with pytest.raises(UserError):
            parse_neuron(bad)


# Token datasets ----------------------------------------------------------------------------------

def test_tokenize_and_concatenate_rows_start_with_bos():
    tok = gpt2_tokenizer()
    rows = token_datasets.tokenize_and_concatenate(["Hello world. " * 50, "Another document."] * 3, tok, 16)
    assert rows.shape[1] == 16 and rows.dtype == np.int32 and len(rows) > 5
    assert (rows[:, 0] == tok.bos_token_id).all()
    flat = rows[:, 1:].reshape(-1)
    expected = tok("Hello world. " * 50, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert flat[: len(expected)].tolist() == expected  # document order and EOS separators kept


def test_local_folder_dataset_mix_and_fingerprint(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "alpha.txt").write_text("alpha beta gamma. " * 400)
    (src / "beta.jsonl").write_text("\n".join(json.dumps({"text": f"line {i} of json text"}) for i in range(300)))
    tok = gpt2_tokenizer()
    written = token_datasets.build_local_folder(src, tok, "gpt2", 32, [2000], seed=3)
    names = sorted(p.name for p in written)
    assert names == ["corpus.all-2k.32", "corpus.alpha.32", "corpus.beta.32"]
    mix = token_datasets.load_token_dataset("corpus.all-2k.32", "gpt2", tok)
    assert len(mix) == -(-2000 // 32) and set(mix["subset"]) == {"alpha", "beta"}  # ceil: >= 2000 tokens
    again, labels = token_datasets.make_mix({"alpha": np.asarray(token_datasets.load_token_dataset("corpus.alpha.32", "gpt2")["tokens"]),
                                             "beta": np.asarray(token_datasets.load_token_dataset("corpus.beta.32", "gpt2")["tokens"])}, 2000, 3)
    assert np.array_equal(again, np.asarray(mix["tokens"])), "mixes are seeded"
    other = train_bpe(["some other text"] * 5, 280)
    with pytest.raises(UserError, match="different tokenizer"):
        token_datasets.load_token_dataset("corpus.alpha.32", "gpt2", other)
    with pytest.raises(UserError, match="not found"):
        token_datasets.load_token_dataset("corpus.gamma.32", "gpt2")
    with pytest.raises(UserError, match="needs"):
        token_datasets.make_mix({"a": np.zeros((3, 32), dtype=np.int32)}, 10_000, 0)


def test_shard_rows_partition():
    for n, k in ((10, 3), (7, 7), (100, 8), (3, 5)):
        ranges = [token_datasets.shard_rows(n, k, i) for i in range(k)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
    with pytest.raises(UserError):
        token_datasets.shard_rows(10, 2, 2)


def test_builtin_corpus_subsets_and_split():
    from universal_neurons import corpus

    code_train = list(corpus.iter_documents("code", "train", max_docs=20))
    code_held = list(corpus.iter_documents("code", "heldout", max_docs=20))
    assert len(code_train) == 20 and len(code_held) == 20 and not set(code_train) & set(code_held)
    assert any("def " in d for d in code_train)
    prose = list(corpus.iter_documents("prose", "all", max_docs=5))
    assert len(prose) == 5 and all(len(p) > 20 for p in prose)
    assert all("site-packages" not in str(p) for p in corpus._source_files())


# Zoo and capture ---------------------------------------------------------------------------------

def test_zoo_models_load_by_name_and_share_tokenizer(tiny_zoo):
    a, b = (load_model(n) for n in tiny_zoo)
    assert a.family == "toy" and a.cfg.n_layers == zoo.PRESETS["tiny"].n_layer
    check_same_tokenizer(a, b)
    meta = zoo.model_meta(tiny_zoo[0])
    assert meta["heldout_loss"] < meta["unigram_entropy"], "the model must beat the unigram baseline"
    # different seeds, different weights
    assert not torch.allclose(a.W_in, b.W_in)
    check_position_masks(a.tokenizer)


def check_position_masks(tok):
    """position_mask / token_mask against token ids found independently, on any tokenizer."""
    text = "def f(x):\n    return x\n\n\nclass A:\n\n    pass\n"
    toks = torch.tensor([[tok.bos_token_id] + tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]])
    ids = toks[0].tolist()
    strings = [tok.decode([i]) for i in ids]
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} - {None}
    single = [i for i, s_ in zip(ids, strings) if s_ == "\n"]
    other_nl = [i for i, s_ in zip(ids, strings) if "\n" in s_ and not s_.strip() and s_ != "\n"]
    assert single and other_nl, "the text must hold the one-token newline and other newline tokens"
    # correlations (the original's): no BOS/EOS/PAD, no single '\n'; the other newline tokens stay
    expect = torch.tensor([[i not in special and i not in single for i in ids]])
    assert torch.equal(token_mask(toks, tok), expect)
    # --drop_newlines all: every whitespace-only token with a newline goes too
    expect_all = expect & torch.tensor([[i not in other_nl for i in ids]])
    assert torch.equal(token_mask(toks, tok, "all"), expect_all) and not torch.equal(expect_all, expect)
    # summaries / explanations: every position by default; without specials on request; last on request
    assert position_mask(toks, tok).all()
    assert torch.equal(position_mask(toks, tok, special=False), torch.tensor([[i not in special for i in ids]]))
    no_last = position_mask(toks, tok, last=False)
    assert not no_last[0, -1] and no_last[0, :-1].all()


def test_position_masks_on_the_gpt2_tokenizer():
    """GPT-2: the original drops exactly 50256 and 198, keeps 628 ('\\n\\n') and its kin."""
    from universal_neurons.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    check_position_masks(tok)
    toks = torch.tensor([[50256, 198, 628, 262, 198, 50256]])
    assert token_mask(toks, tok).tolist() == [[False, False, True, True, False, False]]
    assert token_mask(toks, tok, "all").tolist() == [[False, False, False, True, False, False]]


def test_mismatched_tokenizers_are_refused(tiny_zoo, gpt2_folder):
    with pytest.raises(UserError, match="different tokenizers"):
        check_same_tokenizer(load_model(tiny_zoo[0]), load_model(str(gpt2_folder[0])))


@pytest.mark.parametrize("tied", [True, False])
def test_zoo_training_loss_is_the_hf_model_loss(tied):
    """zoo.lm_loss (the fast training forward) == GPT2LMHeadModel(x, labels=x).loss, gradients included,
    with the tied unembedding and with a separate lm_head (Preset.tie_embeddings=False)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    cfg = GPT2Config(vocab_size=97, n_positions=16, n_embd=24, n_layer=3, n_head=4, n_inner=40,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied)
    model = GPT2LMHeadModel(cfg)
    assert ("lm_head.weight" in dict(model.named_parameters())) == (not tied)
    with torch.no_grad():  # LayerNorms and biases away from their init, so each term is exercised
        for name, q in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                q.add_(0.3 * torch.randn_like(q))
    x = torch.randint(0, 97, (5, 16))
    ref = model(x, labels=x).loss
    ref.backward()
    ref_grads = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    ours = zoo.lm_loss(dict(model.named_parameters()), x, cfg.n_layer, cfg.n_head)
    ours.backward()
    assert abs(ours.item() - ref.item()) < 1e-5
    for n, q in model.named_parameters():
        torch.testing.assert_close(q.grad, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_zoo_bf16_training_loss_matches_a_float64_reference():
    """Preset.precision "bf16" (the deep preset): lm_loss in mixed precision agrees with the HF model run in float64
    to bf16 precision, loss and every gradient, with its written-out causal attention; and it is bf16 (it differs
    from the fp32 path), so a dtype silently dropped would fail."""
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    cfg = GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, q in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                q.add_(0.3 * torch.randn_like(q))
            elif "c_attn.weight" in name:
                q.mul_(20.0)  # sharp attention patterns: a wrong mask or scale moves the loss by far more than bf16
    x = torch.randint(0, 97, (6, 16))
    ref_model = copy.deepcopy(model).double()
    ref = ref_model(x, labels=x).loss
    ref.backward()
    ref_grads = dict((n, q.grad) for n, q in ref_model.named_parameters())
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.zero_grad()
        loss = zoo.lm_loss(dict(model.named_parameters()), x, cfg.n_layer, cfg.n_head, dtype)
        loss.backward()
        losses[dtype] = loss.item()
    assert abs(losses[torch.bfloat16] - ref.item()) < 2e-2 * ref.item()
    assert losses[torch.bfloat16] != losses[torch.float32]
    for n, q in model.named_parameters():  # the bf16 gradients (the last pass), in float64
        g, r = q.grad.double().ravel(), ref_grads[n].ravel()
        assert torch.nn.functional.cosine_similarity(g, r, dim=0) > 0.99, n
        assert abs(g.norm() / r.norm() - 1) < 0.05, n
    with pytest.raises(ValueError, match="precision"):
        zoo.Preset(n_layer=1, d_model=8, d_mlp=8, n_head=1, vocab_size=10, ctx_len=8, train_tokens=10, precision="fp8")


def test_preset_keys_and_the_deep_preset():
    """Tied presets' keys carry no tie_embeddings field (zoos trained before it stay valid); an untied one's
    does (it retrains); likewise precision, present only in bf16 presets' keys; `run --preset deep` runs toy-gpt2-deep-a..e on its 250k mix, and bad presets are refused."""
    import dataclasses

    from universal_neurons.pipeline import PipelineConfig, settings

    for name, p in zoo.PRESETS.items():
        assert "tie_embeddings" not in json.loads(p.key()), name
        assert ("precision" in json.loads(p.key())) == (p.precision != "fp32"), name  # fp32 keys are unchanged
    assert json.loads(zoo.PRESETS["deep"].key())["precision"] == "bf16"
    untied = dataclasses.replace(zoo.PRESETS["default"], tie_embeddings=False)
    assert json.loads(untied.key())["tie_embeddings"] is False and untied.key() != zoo.PRESETS["default"].key()
    deep = settings(PipelineConfig(preset="deep"))
    assert deep.models == [f"toy-gpt2-deep-{s}" for s in "abcde"] and deep.mix_name == "python-stdlib.all-250k.64"
    assert settings(PipelineConfig(family="toy-gpt2-deep")).mix_name == deep.mix_name
    assert settings(PipelineConfig()).mix_name == "python-stdlib.all-1m.64"
    assert settings(PipelineConfig(preset="tiny")).models == settings(PipelineConfig(quick=True)).models
    for bad, msg in [(dict(preset="huge"), "unknown zoo preset"), (dict(preset="deep", quick=True), "--quick"),
                     (dict(preset="deep", models=["toy-gpt2-a", "toy-gpt2-b"]), "not both")]:
        with pytest.raises(UserError, match=msg):
            PipelineConfig(**bad)


def test_zoo_training_is_deterministic(tmp_path, monkeypatch, tiny_zoo):
    import dataclasses

    from safetensors.torch import load_file

    # the tiny preset, shortened: same code path, a fraction of the steps
    short = dataclasses.replace(zoo.PRESETS["tiny"], train_tokens=20_000)
    monkeypatch.setitem(zoo.PRESETS, "tiny", short)
    runs = [zoo.train_model("tiny", 1, tmp_path / f"run{i}", progress=False) for i in range(2)]
    a, b = (load_file(str(tmp_path / f"run{i}" / "model.safetensors")) for i in range(2))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0]["heldout_loss"] == runs[1]["heldout_loss"]
    other = zoo.train_model("tiny", 2, tmp_path / "seed2", progress=False)
    assert other["heldout_loss"] != runs[0]["heldout_loss"], "another seed gives another model"


def test_zoo_trains_in_the_presets_precision(tmp_path, monkeypatch, tiny_zoo):
    """A bf16 preset reaches the training loop (its weights differ from the fp32 run of the same seed and data),
    trains as well (held-out loss within 3%), saves fp32 weights and records its precision in zoo.json."""
    import dataclasses

    from safetensors.torch import load_file

    short = dataclasses.replace(zoo.PRESETS["tiny"], train_tokens=200_000)
    monkeypatch.setitem(zoo.PRESETS, "tiny", short)
    monkeypatch.setitem(zoo.PRESETS, "tinybf", dataclasses.replace(short, precision="bf16"))
    f32 = zoo.train_model("tiny", 1, tmp_path / "f32", progress=False)
    b16 = zoo.train_model("tinybf", 1, tmp_path / "b16", progress=False)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("f32", "b16"))
    assert all(t.dtype == torch.float32 for t in b.values())
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], b["transformer.h.0.mlp.c_fc.weight"])
    assert b16["heldout_loss"] < b16["unigram_entropy"]  # it learned more than token frequencies
    assert abs(b16["heldout_loss"] - f32["heldout_loss"]) < 0.03 * f32["heldout_loss"]
    assert b16["preset_config"]["precision"] == "bf16" and "precision" not in f32["preset_config"]


def test_zoo_seeds_trained_side_by_side_equal_seeds_trained_alone(tmp_path, monkeypatch, tiny_zoo):
    from safetensors.torch import load_file

    monkeypatch.setenv("UNIVERSAL_NEURONS_ZOO", str(tmp_path / "zoo"))
    names = [zoo.zoo_name("tiny", s) for s in (2, 3)]
    metas = zoo.ensure_models(names, workers=2, progress=False)
    assert [m["name"] for m in metas] == names and all(zoo.is_trained(n) for n in names)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, zoo.cores() // 2))  # what the first worker used
    try:
        alone = zoo.train_model("tiny", 2, tmp_path / "alone", progress=False)
    finally:
        torch.set_num_threads(threads)
    a = load_file(str(zoo.model_dir(names[0]) / "model.safetensors"))
    b = load_file(str(tmp_path / "alone" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metas[0]["heldout_loss"] == alone["heldout_loss"] != metas[1]["heldout_loss"]


# Command lines -----------------------------------------------------------------------------------

def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_make_dataset_builtin_cli(tmp_path, tiny_zoo):
    r = _run([str(REPO / "make_dataset.py"), "--model", tiny_zoo[0], "--hf_dataset", "python-stdlib",
              "--ctx_len", "32", "--n_seq", "50", "--mix_tokens", "3k"], tmp_path)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "token_datasets" / "toy"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"python-stdlib.{s}.32" for s in ("prose", "code", "tests")] + ["python-stdlib.all-3k.32"])
    ds = token_datasets.load_token_dataset("python-stdlib.code.32", "toy", load_tokenizer(tiny_zoo[0]))
    assert len(ds) == 50 and len(ds[0]["tokens"]) == 32


def test_cli_errors_exit_2_with_one_message(tmp_path):
    r = _run([str(REPO / "make_dataset.py"), "--model", "no-such-model-xyz", "--hf_dataset", "python-stdlib"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: unknown model 'no-such-model-xyz'") and "Traceback" not in r.stderr
    assert not (tmp_path / "token_datasets").exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "artifact.pt"
    with pytest.raises(RuntimeError):
        with paths.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []
    paths.torch_save_atomic({"x": 1}, target)
    assert torch.load(target)["x"] == 1


# The original's Pile names (ORIGINAL_SPEC.md), from the Pile's meta.pile_set_name values
PILE_SET_NAMES = {
    "ArXiv": "arxiv", "BookCorpus2": "bookcorpus2", "Books3": "books3", "DM Mathematics": "dm_mathematics",
    "Enron Emails": "enron_emails", "EuroParl": "europarl", "FreeLaw": "freelaw", "Github": "github",
    "Gutenberg (PG-19)": "gutenberg", "HackerNews": "hackernews", "NIH ExPorter": "nih_exporter",
    "OpenSubtitles": "opensubtitles", "OpenWebText2": "openwebtext2", "PhilPapers": "philpapers",
    "Pile-CC": "pile_cc", "PubMed Abstracts": "pubmed_abstracts", "PubMed Central": "pubmed_central",
    "StackExchange": "stackexchange", "Ubuntu IRC": "ubuntu_irc", "USPTO Backgrounds": "uspto_backgrounds",
    "Wikipedia (en)": "wikipedia", "YoutubeSubtitles": "youtubesubtitles"}


def test_pile_subset_names_are_the_originals():
    assert {k: token_datasets.pile_subset_key(k) for k in PILE_SET_NAMES} == PILE_SET_NAMES


def test_hub_path_pile_filter_and_alias_split(monkeypatch):
    """The Pile path (offline: load_dataset replaced): the original's subset names, documents of <= 50
    characters dropped, mixes; an alias (10k sample sets: train split only) is read from 'train'."""
    import datasets

    docs = [("Gutenberg (PG-19)", "short"),  # <= 50 characters: dropped on the Pile path
            ("Gutenberg (PG-19)", "It was the best of times, it was the worst of times. " * 20),
            ("Wikipedia (en)", "x" * 50),  # exactly 50: dropped too (the original kept > 50)
            ("Wikipedia (en)", "Anarchism is a political philosophy and movement. " * 20)]
    asked = []

    def fake_load_dataset(repo, split):
        asked.append((repo, split))
        return datasets.Dataset.from_dict({"text": [t for _, t in docs],
                                           "meta": [{"pile_set_name": n} for n, _ in docs]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    tok = gpt2_tokenizer()
    written = token_datasets.build_hub(token_datasets.PILE, "test", tok, "gpt2", 32, [320], seed=0)
    assert sorted(p.name for p in written) == ["pile.test.all-320.32", "pile.test.gutenberg.32", "pile.test.wikipedia.32"]
    for name, text in (("gutenberg", docs[1][1]), ("wikipedia", docs[3][1])):
        rows = np.asarray(token_datasets.load_token_dataset(f"pile.test.{name}.32", "gpt2", tok)["tokens"])
        expected = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(expected) // 31  # the short document came first: kept, it would open the first row
        assert rows.shape == (n, 32) and rows[:, 1:].reshape(-1).tolist() == expected[: n * 31]
    assert asked == [(token_datasets.PILE, "test")]
    token_datasets.build_hub("owt", "test", tok, "gpt2", 32, [], seed=0)
    assert asked[-1] == ("stas/openwebtext-10k", "train")


def test_make_dataset_never_replaces_a_dataset_made_otherwise(tmp_path, capsys):
    """make_dataset.py records its settings (dataset_config.json): the same settings leave the dataset
    as it is, others stop with the differences until --overwrite."""
    import make_dataset

    src = tmp_path / "corpus"
    src.mkdir()
    (src / "alpha.txt").write_text("alpha beta gamma. " * 400)
    argv = ["--model", "gpt2", "--hf_dataset", str(src), "--ctx_len", "32", "--mix_tokens"]
    make_dataset.main(argv)
    folder = token_datasets.paths.token_dataset_path("gpt2", "corpus.alpha.32")
    record = json.loads((folder / token_datasets.RECORD_FILE).read_text())
    assert record["ctx_len"] == 32 and record["n_seq"] == -1 and record["name"] == "corpus.alpha.32"
    stamp = (folder / token_datasets.CONTENT_FILE).stat().st_mtime_ns
    make_dataset.main(argv)  # the same settings: the same rows, left in place
    assert (folder / token_datasets.CONTENT_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit) as e:
        make_dataset.main(argv + ["--n_seq", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "n_seq -1 -> 3" in err and "--overwrite" in err
    assert len(token_datasets.load_token_dataset("corpus.alpha.32", "gpt2")) > 3  # untouched
    make_dataset.main(argv + ["--n_seq", "3", "--overwrite"])
    assert len(token_datasets.load_token_dataset("corpus.alpha.32", "gpt2")) == 3


def test_make_dataset_output_dir_does_not_leak(tmp_path, monkeypatch):
    """--output_dir places the datasets there for that call only: os.environ and later calls are untouched."""
    import os

    import make_dataset

    monkeypatch.delenv("DATASET_DIR", raising=False)
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "alpha.txt").write_text("alpha beta gamma. " * 200)
    make_dataset.main(["--model", "gpt2", "--hf_dataset", str(src), "--ctx_len", "32", "--mix_tokens",
                       "--output_dir", str(tmp_path / "elsewhere")])
    assert (tmp_path / "elsewhere" / "gpt2" / "corpus.alpha.32").is_dir()
    assert "DATASET_DIR" not in os.environ and token_datasets.paths.dataset_dir() == Path("token_datasets")
