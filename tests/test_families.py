"""Model families beyond GPT-2, every stage checked against Hugging Face's own modules (no
TransformerLens in the references) and float64 arithmetic:

    pythia  GPT-NeoX: rotary on a quarter of each head, parallel residual, untied unembedding, LayerNorm
    llama   SwiGLU MLP (post = silu(x W_gate) * (x W_in)), RMSNorm, no biases, rotary
    qwen2   the same MLP, RMSNorm, grouped-query attention (4 query heads share 2 key/value heads),
            biases on q / k / v only

Each family: two seeds built from a config, saved as local folders with a tokenizer, run through
`universal-neurons run --models <a> <b> --dataset <folder>`; then the stages' artifacts are compared
with references computed from the Hugging Face model's weights and forward hooks.
"""
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_correlations import ref_pearson

DIRS = ("DATASET_DIR", "RESULTS_DIR", "SUMMARY_DIR", "ACTIVATION_DIR", "INTERVENTION_DIR", "DATAFRAME_DIR",
        "EXPLANATION_DIR", "REPORT_DIR")
FAMILIES = ("pythia", "llama", "qwen2")
L, D, CTX = 2, 64, 32
MIX = "corpus.all-16k.32"


def build_folder(kind: str, folder: Path, tok, seed: int, n_layer=L, d_model=32, d_mlp=D, ctx=64) -> str:
    """A tiny model of `kind` with random weights (non-trivial norms and biases, so folding them is
    exercised)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=d_model, num_hidden_layers=n_layer, intermediate_size=d_mlp,
                  max_position_embeddings=ctx, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    if kind == "pythia":
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(num_attention_heads=2, rotary_pct=0.25,
                                                       use_parallel_residual=True, **common))
    elif kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(num_attention_heads=2, num_key_value_heads=2, **common))
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **common))
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
            if any(k in name for k in ("query_key_value.weight", "q_proj.weight", "k_proj.weight")):
                p.mul_(8)  # attention scores of order 1: patterns far from uniform
        model.get_output_embeddings().weight.mul_(25)  # logits of order 1: next-token metrics that can move
    model.eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def build_neox_folder(folder: Path, tok, seed: int, **kw) -> str:  # benchmarks and older tests
    return build_folder("pythia", folder, tok, seed, **kw)


# Hugging Face references ------------------------------------------------------------------------

def hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def hf_layers(hf):
    return hf.gpt_neox.layers if hasattr(hf, "gpt_neox") else hf.model.layers


def hf_mlp_hooks(hf, pre: list, post: list, set_post=None) -> list:
    """Forward hooks appending each layer's gate / GELU input ('pre', [B, P, D]) and MLP hidden unit
    ('post': the GELU output, or act(gate) * up, the input of the output projection); `set_post`
    (layer, post) -> new post replaces it."""
    handles = []
    for l, layer in enumerate(hf_layers(hf)):
        mlp = layer.mlp
        if hasattr(mlp, "dense_h_to_4h"):
            handles.append(mlp.dense_h_to_4h.register_forward_hook(lambda m, i, o: pre.append(o)))

            def on_act(m, i, o, l=l):
                o = set_post(l, o) if set_post else o
                post.append(o)
                return o
            handles.append(mlp.act.register_forward_hook(on_act))
        else:
            handles.append(mlp.gate_proj.register_forward_hook(lambda m, i, o: pre.append(o)))

            def on_down(m, i, l=l):
                x = set_post(l, i[0]) if set_post else i[0]
                post.append(x)
                return (x,)
            handles.append(mlp.down_proj.register_forward_pre_hook(on_down))
    return handles


@torch.no_grad()
def hf_activations(hf, tokens, batch=100):
    """(pre, post) [B, P, L, D] float32 from Hugging Face's modules."""
    pres, posts = [], []
    for lo in range(0, len(tokens), batch):
        pre, post = [], []
        handles = hf_mlp_hooks(hf, pre, post)
        hf(tokens[lo:lo + batch])
        for h in handles:
            h.remove()
        pres.append(torch.stack(pre, 2))
        posts.append(torch.stack(post, 2))
    return torch.cat(pres), torch.cat(posts)


def folded_weights(hf) -> dict:
    """float64 weights as the analysis reads them, folded here from the raw checkpoint: the norm's
    scale into the next weights; with LayerNorm also its bias into b_in, reading weights centred
    over d_model and writing weights centred; the unembedding centred over the vocabulary (and,
    after a LayerNorm, over d_model)."""
    hf = hf.double().requires_grad_(False)
    out = {k: [] for k in ("W_in", "W_gate", "b_in", "W_out", "W_Q", "W_K")}
    layer_norm = hasattr(hf, "gpt_neox")
    centre = (lambda w: w - w.mean(0)) if layer_norm else (lambda w: w)
    for layer in hf_layers(hf):
        g2, mlp = layer.post_attention_layernorm.weight, layer.mlp
        g1 = layer.input_layernorm.weight
        if layer_norm:
            W_in = mlp.dense_h_to_4h.weight.T                                       # [d_model, D]
            out["W_in"].append(centre(g2[:, None] * W_in))
            out["b_in"].append(mlp.dense_h_to_4h.bias + layer.post_attention_layernorm.bias @ W_in)
            W_out = mlp.dense_4h_to_h.weight.T                                      # [D, d_model]
            out["W_out"].append(W_out - W_out.mean(1, keepdim=True))
            attn = layer.attention
            H = hf.config.num_attention_heads
            qkv = attn.query_key_value.weight.view(H, 3, -1, hf.config.hidden_size)          # [H, q|k|v, d_head, d_model]
            out["W_Q"].append(torch.stack([centre(g1[:, None] * qkv[h, 0].T) for h in range(H)]))
            out["W_K"].append(torch.stack([centre(g1[:, None] * qkv[h, 1].T) for h in range(H)]))
        else:
            out["W_in"].append(g2[:, None] * mlp.up_proj.weight.T)
            out["W_gate"].append(g2[:, None] * mlp.gate_proj.weight.T)
            out["W_out"].append(mlp.down_proj.weight.T)
            attn, dh = layer.self_attn, hf.config.hidden_size // hf.config.num_attention_heads
            out["W_Q"].append(torch.stack([g1[:, None] * w.T for w in attn.q_proj.weight.split(dh)]))
            out["W_K"].append(torch.stack([g1[:, None] * w.T for w in attn.k_proj.weight.split(dh)]))
    norm = hf.gpt_neox.final_layer_norm if layer_norm else hf.model.norm
    W_U = centre(norm.weight[:, None] * hf.get_output_embeddings().weight.T)      # [d_model, V]
    out["W_U"] = W_U - W_U.mean(1, keepdim=True)
    return {k: (torch.stack(v) if isinstance(v, list) and v else v) for k, v in out.items() if not isinstance(v, list) or v}


def cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# The families, run through the pipeline once each ------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_and_corpus(tmp_path_factory):
    from universal_neurons.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("families")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:10]
    texts = [f.read_text(errors="replace") for f in files]
    corpus = root / "corpus"
    corpus.mkdir()
    for i, t in enumerate(texts):
        (corpus / f"f{i:02d}.txt").write_text(t)
    return train_bpe(texts, 400), corpus, root


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, tokenizer_and_corpus):
    """`universal-neurons run --models <kind>-tiny-a <kind>-tiny-b --dataset <corpus folder>`, with every
    artifact folder in this family's own directory (kept set while the family's tests run)."""
    from universal_neurons import pipeline

    tok, corpus, root = tokenizer_and_corpus
    kind = request.param
    home = root / kind
    a, b = (build_folder(kind, home / f"{kind}-tiny-{s}", tok, seed) for s, seed in (("a", 1), ("b", 2)))
    with pytest.MonkeyPatch.context() as mp:
        for var in DIRS:
            mp.setenv(var, str(home / var.lower()))
        report = pipeline.run(pipeline.PipelineConfig(models=[a, b], dataset=str(corpus), ctx_len=CTX, quick=True,
                                                      mix_tokens="16k"))
        yield type("Family", (), {"kind": kind, "a": a, "b": b, "report": Path(report), "home": home,
                                  "corpus": corpus})


@pytest.fixture
def family(family_run, monkeypatch):
    """The family's run, with its artifact folders set (conftest clears them for every test)."""
    for var in DIRS:
        monkeypatch.setenv(var, str(family_run.home / var.lower()))
    return family_run


def mix_tokens(name, n=None):
    from universal_neurons.models import load_tokenizer, model_family
    from universal_neurons.token_datasets import load_token_dataset, token_tensor

    ds = load_token_dataset(MIX, model_family(name), load_tokenizer(name))
    return token_tensor(ds, 0, n)                                                   # [n_seq, 32]


def test_dataset_prefix_names_what_make_dataset_writes(tmp_path):
    from universal_neurons.token_datasets import BUILTIN, PILE, dataset_prefix

    (tmp_path / "my corpus").mkdir()
    assert dataset_prefix(BUILTIN) == "python-stdlib"
    assert dataset_prefix(str(tmp_path / "my corpus")) == "my corpus"          # an absolute path: the folder's name
    assert dataset_prefix(PILE) == "pile.test" and dataset_prefix(PILE, "validation") == "pile.validation"
    assert dataset_prefix("pile") == "pile.train"                               # the 10k sample has only a train split
    assert dataset_prefix("someone/corpus", "test") == "corpus.test"


def test_seed_families(tmp_path):
    """--family: a named suite's seeds, seed a first, or a folder of model folders; bad ones refused."""
    from universal_neurons.errors import UserError
    from universal_neurons.models import family_members
    from universal_neurons.pipeline import PipelineConfig

    assert family_members("pythia-70m") == ["pythia-70m"] + [f"pythia-70m-seed{i}" for i in range(1, 10)]
    assert family_members("stanford-gpt2-small", 3) == ["stanford-gpt2-small-a", "stanford-gpt2-small-b",
                                                        "stanford-gpt2-small-c"]
    for seed in ("b", "a", "c"):
        (tmp_path / "suite" / f"m-{seed}").mkdir(parents=True)
        (tmp_path / "suite" / f"m-{seed}" / "config.json").write_text("{}")
    (tmp_path / "suite" / "notes").mkdir()                                          # not a model folder: ignored
    for seed in (10, 2):
        (tmp_path / "poly" / f"m-seed{seed}").mkdir(parents=True)
        (tmp_path / "poly" / f"m-seed{seed}" / "config.json").write_text("{}")
    assert [Path(m).name for m in family_members(str(tmp_path / "poly"))] == ["m-seed2", "m-seed10"]   # natural order
    assert PipelineConfig(family=str(tmp_path / "suite")).models == [str(tmp_path / "suite" / f"m-{s}") for s in "abc"]
    for bad in (dict(family="pythia-99m"), dict(family="pythia-70m", n_seeds=1), dict(family="toy-gpt2", models=["x", "y"]),
                dict(n_seeds=3), dict(family=str(tmp_path / "suite" / "notes")), dict(models=["toy-gpt2-a"]),
                dict(family=str(tmp_path / "suite" / "m-a"))):                    # one model folder, not a suite
        with pytest.raises(UserError):
            PipelineConfig(**bad)


def test_capture_and_correlations(family):
    """The neuron is the MLP hidden unit Hugging Face computes (the GELU output; act(gate) * up in a
    gated MLP, the input of down_proj), hook_pre the gate's / GELU's input; the pipeline's
    correlations equal a float64 brute force of Hugging Face's activations; the dataframe holds every
    neuron with them."""
    from universal_neurons import paths
    from universal_neurons.capture import keep_rows, mlp_activations, token_mask
    from universal_neurons.correlations import read_correlation_summary
    from universal_neurons.models import load_model

    a, b = family.a, family.b
    assert family.report.is_file() and "## How universal" in family.report.read_text()
    ta = load_model(a)
    tokens = mix_tokens(a)
    keep = keep_rows(token_mask(tokens, ta.tokenizer))
    acts = {n: hf_activations(hf_model(n), tokens) for n in (a, b)}
    pre_ours = mlp_activations(ta, tokens[:8], "mlp.hook_pre").double()
    post_ours = mlp_activations(ta, tokens[:8]).double()
    pre_hf, post_hf = (t[:8].double() for t in acts[a])
    assert (post_ours - post_hf).abs().max() < 1e-4 and (pre_ours - pre_hf).abs().max() < 1e-4
    assert (post_hf - pre_hf).abs().max() > 0.01                                     # post is not pre

    x, y = (acts[n][1].reshape(-1, L * D)[keep].double() for n in (a, b))
    ref = ref_pearson(x, y)                                                         # [128, 128] float64
    summ = read_correlation_summary(paths.correlation_path(a, b, MIX, "pearson", "none"))
    alive = ~np.isnan(ref).all(1)
    assert alive.sum() > 100
    assert np.abs(summ["max_corr"].float().numpy()[alive] - np.nanmax(ref[alive], 1)).max() < 2e-3
    assert (summ["max_corr_ix"].numpy()[alive] == np.nanargmax(ref[alive], 1)).all()

    df = pd.read_csv(paths.neuron_df_path(a))
    assert len(df) == L * D and list(df[["layer", "neuron"]].iloc[D + 1]) == [1, 1]
    np.testing.assert_allclose(df["max_corr"].to_numpy()[alive], summ["max_corr"].float().numpy()[alive], atol=1e-3)
    assert df["w_out_norm"].notna().all() and df["vocab_kurt"].notna().all()


def test_weights(family):
    """neuron_stats.csv, the gate's columns, U_out moments and k / q / o compositions from weights
    folded here from the raw checkpoint (float64); input_bias NaN without MLP biases; the o
    composition of a head with its own block's neuron is not causal in parallel-residual blocks."""
    from universal_neurons import paths
    from universal_neurons.weights import causal_compositions, read_weight_summaries

    ref = folded_weights(hf_model(family.a))
    w = read_weight_summaries(family.a)
    st = w["neuron_stats"]
    W_in, W_out = ref["W_in"].transpose(1, 2), ref["W_out"]                          # [L, D, d_model] each
    np.testing.assert_allclose(st["input_weight_norm"], W_in.norm(dim=-1).flatten(), rtol=1e-5)
    np.testing.assert_allclose(st["output_weight_norm"], W_out.norm(dim=-1).flatten(), rtol=1e-5)
    np.testing.assert_allclose(st["in_out_sim"], cos(W_in, W_out).flatten(), atol=1e-6)
    gated = family.kind != "pythia"
    if gated:
        W_gate = ref["W_gate"].transpose(1, 2)
        assert st["input_bias"].isna().all()
        np.testing.assert_allclose(st["gate_weight_norm"], W_gate.norm(dim=-1).flatten(), rtol=1e-5)
        np.testing.assert_allclose(st["gate_in_sim"], cos(W_gate, W_in).flatten(), atol=1e-6)
        np.testing.assert_allclose(st["gate_out_sim"], cos(W_gate, W_out).flatten(), atol=1e-6)
        df = pd.read_csv(paths.neuron_df_path(family.a))
        assert list(df.columns[-3:]) == ["w_gate_norm", "gate_in_sim", "gate_out_sim"]
        np.testing.assert_allclose(df["gate_in_sim"], st["gate_in_sim"])
    else:
        np.testing.assert_allclose(st["input_bias"], ref["b_in"].flatten(), atol=1e-6)
        assert "gate_weight_norm" not in st and "w_gate_norm" not in pd.read_csv(paths.neuron_df_path(family.a))

    U = ref["W_U"] / ref["W_U"].norm(dim=0)                                         # [d_model, V]
    c = (W_out / W_out.norm(dim=-1, keepdim=True)) @ U                             # [L, D, V]
    np.testing.assert_allclose(w["vocab_comps"]["U_out"]["comp_mean"], c.mean(-1), atol=1e-6)
    np.testing.assert_allclose(w["vocab_comps"]["U_out"]["comp_var"], c.var(-1, unbiased=False), rtol=1e-4)

    # k: ||W_QK w_out|| / (||W_QK||_F ||w_out||); q: ||w_out^T W_QK|| / ...; W_QK = W_Q[h] W_K[h // group]^T
    H, H_kv = ref["W_Q"].shape[1], ref["W_K"].shape[1]
    for (l, n), (la, h) in [((0, 5), (1, H - 1)), ((1, 17), (0, 1))]:
        qk = ref["W_Q"][la, h] @ ref["W_K"][la, h // (H // H_kv)].T                 # [d_model, d_model]
        wo = W_out[l, n]
        for kind, val in (("k", (qk @ wo).norm()), ("q", (wo @ qk).norm())):
            want = val / (qk.norm() * wo.norm())
            assert abs(float(w[f"{kind}_comps"][l, n, la, h]) - float(want)) < 2e-3, (kind, l, n, la, h)
    arch = w["architecture"]
    assert arch["parallel_attn_mlp"] == (family.kind == "pythia") and arch["gated_mlp"] == gated
    causal = causal_compositions(w)
    assert causal["o"][1, 3, 0].isfinite().all() and causal["q"][0, 3, 0].isnan().all()
    assert causal["o"][1, 3, 1].isnan().all() == (family.kind == "pythia")         # own block: parallel only


def test_summary(family):
    """summary.py's histograms bin Hugging Face's hook_pre values (the gate's pre-activation in a gated
    MLP) and its top activations are Hugging Face's largest hidden-unit values."""
    from universal_neurons.activation_summary import SummaryConfig, read_summary

    SummaryConfig(model=family.a, token_dataset=[MIX], batch_size=32).run(progress=False)
    s = read_summary(family.a, MIX)
    tokens = mix_tokens(family.a)
    pre, post = (t.reshape(-1, L, D) for t in hf_activations(hf_model(family.a), tokens))   # [T, L, D]
    edges = s["neuron_bin_edges"]
    counts = s["neuron_bin_counts"].long()                                          # [L, D, n_bins + 1]
    assert (counts.sum(-1) == len(pre)).all()
    ref = torch.zeros_like(counts)
    ref.scatter_add_(2, torch.bucketize(pre, edges).permute(1, 2, 0), torch.ones_like(ref[..., :1]).expand(-1, -1, len(pre)))
    near = (pre[..., None] - edges).abs().min(-1).values < 1e-5                    # on an edge: either side
    assert (counts - ref).abs().sum() <= 2 * int(near.sum())
    top = s["neuron_max_activating_value"].float()                                  # [L, D, k]
    np.testing.assert_allclose(top[..., 0], post.amax(0), rtol=2e-3, atol=1e-4)
    ix = s["neuron_max_activating_index"][..., 0]                                   # flat seq * ctx + pos
    np.testing.assert_allclose(post[ix.flatten(), torch.arange(L).repeat_interleave(D), torch.arange(D).repeat(L)],
                               post.amax(0).flatten(), rtol=1e-3)


def test_explanations(family):
    """The pipeline's token-feature variance reductions of the explained neurons: the squared
    point-biserial correlation of Hugging Face's hidden unit with two features computed here (BOS /
    EOS / padding; the token's text holding a newline), over every position of the mix."""
    import json

    from universal_neurons import paths
    from universal_neurons.explanations import read_layer
    from universal_neurons.models import load_tokenizer

    folder = paths.explanation_dir() / paths.model_dirname(family.a) / MIX / "token_feature" / "layer_1"
    cfg = json.loads((folder / "explain_config.json").read_text())
    assert cfg["activations"] == "mlp.hook_post" and cfg["n_seq"] == -1
    vr = read_layer(family.a, MIX, "token", 1)                                     # rows 'l.n', columns features
    tok = load_tokenizer(family.a)
    tokens = mix_tokens(family.a)
    _, post = hf_activations(hf_model(family.a), tokens)
    a = post[:, :, 1].reshape(-1, D).double()                                       # [T, D]
    ids = tokens.flatten()
    special = {t for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None}
    contains = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
    assert contains
    for name, feat in (("is_special_token", special), ("contains_newline", contains)):
        f = torch.tensor([int(i) in feat for i in ids], dtype=torch.float64)
        x, y = a - a.mean(0), f - f.mean()
        r2 = (x.T @ y) ** 2 / ((x * x).sum(0) * (y @ y))                           # [D]
        for row in vr.index:
            l, n = map(int, row.split("."))
            assert abs(vr.loc[row, name] - float(r2[n])) < 1e-4, (name, row)
    assert len(vr) >= 5


def test_activation_cache(family, tmp_path):
    """activations.py's neuron mode: Hugging Face's hidden unit and its next-token loss and entropy."""
    from universal_neurons.activation_cache import run_activations

    run_activations(family.a, MIX, "mlp.hook_post", neuron_subset=["1.3", "0.60"], n_seq=16, save_precision=32,
                    output_dir=tmp_path, progress=False)
    folder = next(tmp_path.rglob("1.3.pt")).parent
    tokens = mix_tokens(family.a, 16)
    hf = hf_model(family.a)
    _, post = hf_activations(hf, tokens)
    np.testing.assert_allclose(torch.load(folder / "1.3.pt").numpy(), post[:, :, 1, 3].flatten(), atol=1e-5)
    np.testing.assert_allclose(torch.load(folder / "0.60.pt").numpy(), post[:, :, 0, 60].flatten(), atol=1e-5)
    with torch.no_grad():
        logp = hf(tokens).logits.double().log_softmax(-1)                          # [16, 32, V]
    loss = -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    entropy = -(logp.exp() * logp).sum(-1)
    np.testing.assert_allclose(torch.load(folder / "loss.pt").float()[:, :-1], loss, rtol=1e-3, atol=5e-3)  # fp16
    np.testing.assert_allclose(torch.load(folder / "entropy.pt").float(), entropy, rtol=1e-3, atol=5e-3)


def test_entropy_intervention(family, tmp_path):
    """Fixing a last-layer hidden unit to a value: the loss and entropy Hugging Face computes with
    that unit fixed in its own forward (act output / down_proj input set)."""
    from universal_neurons.interventions import load_run, run_entropy_intervention

    out = run_entropy_intervention(family.a, MIX, "1.7", [3.0], n_seq=16, output_dir=tmp_path, progress=False)
    run = load_run(out["runs"][0])
    tokens = mix_tokens(family.a, 16)
    hf = hf_model(family.a)

    def fix(l, post):
        if l == 1:
            post = post.clone()
            post[..., 7] = 3.0
        return post

    handles = hf_mlp_hooks(hf, [], [], set_post=fix)
    with torch.no_grad():
        logp = hf(tokens).logits.double().log_softmax(-1)
    for h in handles:
        h.remove()
    loss = -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    np.testing.assert_allclose(run["loss"].float()[:, :-1], loss, rtol=1e-3, atol=5e-3)        # fp16 files
    np.testing.assert_allclose(run["entropy"].float(), -(logp.exp() * logp).sum(-1), rtol=1e-3, atol=5e-3)
    clean = load_run(out["clean"])
    assert (clean["entropy"].float() - run["entropy"].float()).abs().max() > 1e-2    # the fix changed something
    summary = pd.read_csv(out["summary"])
    assert set(summary["group"]) == {"clean", "target"}


def hf_patched_bos(hf, tokens, A, h, l, n):
    """Head (A, h)'s attention to position 0, clean and with neuron (l, n)'s direct contribution
    removed from the head's query input only: Hugging Face's own attention (rotary, GQA, softmax),
    its query projection fed input_layernorm(resid_pre[A] - a * w_out) for head h."""
    layers = hf_layers(hf)
    with torch.no_grad():
        _, post = hf_activations(hf, tokens)
        out = hf(tokens, output_hidden_states=True, output_attentions=True)
        resid = out.hidden_states[A]                                                # [B, P, d_model], block A's input
        mlp = layers[l].mlp
        w_out = (mlp.dense_4h_to_h if hasattr(mlp, "dense_4h_to_h") else mlp.down_proj).weight[:, n]
        ln_in = layers[A].input_layernorm(resid - post[:, :, l, n, None] * w_out)
        attn = layers[A].attention if hasattr(layers[A], "attention") else layers[A].self_attn
        if hasattr(attn, "query_key_value"):
            H = hf.config.num_attention_heads
            new = attn.query_key_value(ln_in).unflatten(-1, (H, -1))                # [B, P, H, 3 * d_head]
            d_head = new.shape[-1] // 3

            def patch(m, i, o):
                o = o.unflatten(-1, (H, -1)).clone()
                o[:, :, h, :d_head] = new[:, :, h, :d_head]
                return o.flatten(-2)
            handle = attn.query_key_value.register_forward_hook(patch)
        else:
            new = attn.q_proj(ln_in).unflatten(-1, (hf.config.num_attention_heads, -1))  # [B, P, H, d_head]

            def patch(m, i, o):
                o = o.unflatten(-1, new.shape[-2:]).clone()
                o[:, :, h] = new[:, :, h]
                return o.flatten(-2)
            handle = attn.q_proj.register_forward_hook(patch)
        patched = hf(tokens, output_attentions=True)
        handle.remove()
    return out.attentions[A][:, h, :, 0], patched.attentions[A][:, h, :, 0], post[:, :, l, n]


def test_attention_deactivation(family, tmp_path):
    """Path ablation through rotary queries (and grouped keys): the change of BOS attention equals
    Hugging Face's attention with the neuron's contribution removed from that head's query input."""
    from universal_neurons.attention_deactivation import read_run, run_attention_deactivation

    H = hf_model(family.a).config.num_attention_heads
    head = 1  # Qwen2: query head 1 reads key head 0 (1 // 2), which a head % n_kv mix-up would miss
    folder = run_attention_deactivation(family.a, MIX, 1, head, neurons=["0.5", "0.33"], n_seq=16,
                                        results_root=tmp_path, progress=False)
    run = read_run(folder)
    rec = run["records"]
    tokens = mix_tokens(family.a, 16)
    hf = hf_model(family.a)

    # the heuristic: (w_out . W_Q[1, h]) . k_BOS / sqrt(d_head), k_BOS the key of head h's key head at
    # position 0 (no rotation there), from Hugging Face's projection of the first batch's position 0
    ref = folded_weights(hf_model(family.a))
    with torch.no_grad():
        x = hf_layers(hf)[1].input_layernorm(hf(tokens[:, :1], output_hidden_states=True).hidden_states[1])
        attn = hf_layers(hf)[1].attention if family.kind == "pythia" else hf_layers(hf)[1].self_attn
        H_kv = getattr(hf.config, "num_key_value_heads", H)
        if family.kind == "pythia":
            d_head = hf.config.hidden_size // H
            k = attn.query_key_value(x).unflatten(-1, (H, -1))[..., d_head:2 * d_head]   # [B, 1, H, d_head]
        else:
            k = attn.k_proj(x).unflatten(-1, (H_kv, -1))
        k_bos = k[:, 0, head // (H // H_kv)].double().mean(0)
    want = ref["W_out"][0] @ ref["W_Q"][1, head] @ k_bos / k_bos.shape[0] ** 0.5     # [D]
    got = run["heuristic_ranking"].sort_values(["layer", "neuron"])["score"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * float(want.abs().max()))
    for n in (5, 33):
        clean, patched, act = hf_patched_bos(hf, tokens, 1, head, 0, n)
        np.testing.assert_allclose(rec[f"0.{n}"]["activation"].float(), act[:, 1:], atol=2e-3)
        d = (patched - clean)[:, 1:]
        assert d.abs().max() > 1e-4                                                 # the ablation does something
        np.testing.assert_allclose(rec[f"0.{n}"]["bos_attn"].float(), d, atol=1e-3)


def test_viewer_neuron_page(family):
    """The viewer serves a neuron page and the attention-composition panel of every family."""
    from universal_neurons import paths
    from universal_neurons.viewer import ViewerApp

    app = ViewerApp(family.a)
    status, _, body = app.handle("/neuron/1/3")
    assert status == 200
    df = pd.read_csv(paths.neuron_df_path(family.a))
    assert f"{df.loc[D + 3, 'w_out_norm']:.4g}" in body.decode()
    status, ctype, png = app.handle("/plot/attention_composition/1/3.png")
    assert status == 200 and png[:4] == b"\x89PNG"
    # the heatmaps blank exactly the heads that cannot compose: for a layer-1 neuron, q/k/v of every
    # head (no later layer) and o of layer 1's heads only in parallel-residual blocks
    from universal_neurons.viewer_data import panel_attention_composition
    from universal_neurons.weights import read_weight_summaries

    w = read_weight_summaries(family.a)
    fig = panel_attention_composition(w, 1, 3)
    shown = {ax.get_title().split()[0]: np.ma.filled(ax.images[0].get_array(), np.nan) for ax in fig.axes if ax.images}
    assert set(shown) == {"k", "q", "v", "o"}
    for kind in "kqv":
        assert np.isnan(shown[kind]).all()
    o = w["o_comps"][1, 3].float().numpy()                                          # [L_attn, H]
    np.testing.assert_array_equal(shown["o"][0], o[0])
    assert np.isnan(shown["o"][1]).all() == (family.kind == "pythia")
    if family.kind != "pythia":
        np.testing.assert_array_equal(shown["o"][1], o[1])
