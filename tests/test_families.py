"""Model families beyond GPT-2: a tiny GPT-NeoX (the Pythia architecture: rotary on a quarter of each
head, parallel residual, untied unembedding) through the zoo-free pipeline, checked against Hugging
Face's own modules and a float64 brute force."""
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_correlations import ref_pearson

DIRS = ("DATASET_DIR", "RESULTS_DIR", "SUMMARY_DIR", "ACTIVATION_DIR", "INTERVENTION_DIR", "DATAFRAME_DIR",
        "EXPLANATION_DIR", "REPORT_DIR")


def build_neox_folder(folder: Path, tok, seed: int, n_layer=2, d_model=32, d_mlp=64, ctx=64) -> str:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=d_model, num_hidden_layers=n_layer, num_attention_heads=2,
                        intermediate_size=d_mlp, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
                        max_position_embeddings=ctx, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms, so folding them is exercised
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    """Two seeds of a tiny GPT-NeoX ('pythia-tiny-a', '-b': the name puts them in the pythia family) and a
    local corpus folder of 30 stdlib files."""
    from universal_neurons.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("neox")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:10]
    texts = [f.read_text(errors="replace") for f in files]
    tok = train_bpe(texts, 400)
    corpus = root / "corpus"
    corpus.mkdir()
    for i, t in enumerate(texts):
        (corpus / f"f{i:02d}.txt").write_text(t)
    return [build_neox_folder(root / f"pythia-tiny-{s}", tok, seed) for s, seed in (("a", 1), ("b", 2))], corpus


def test_dataset_prefix_names_what_make_dataset_writes(tmp_path):
    from universal_neurons.token_datasets import BUILTIN, PILE, dataset_prefix

    (tmp_path / "my corpus").mkdir()
    assert dataset_prefix(BUILTIN) == "python-stdlib"
    assert dataset_prefix(str(tmp_path / "my corpus")) == "my corpus"          # an absolute path: the folder's name
    assert dataset_prefix(PILE) == "pile.test" and dataset_prefix(PILE, "validation") == "pile.validation"
    assert dataset_prefix("pile") == "pile.train"                               # the 10k sample has only a train split
    assert dataset_prefix("someone/corpus", "test") == "corpus.test"


def test_pythia_architecture_through_the_pipeline(neox, tmp_path, monkeypatch):
    """`universal-neurons run --models <neox a> <neox b> --dataset <folder>` runs every stage; the
    activations are HF's own MLP activations, the correlations equal a float64 brute force of them,
    and the dataframe holds every neuron with the summaries' values."""
    from transformers import GPTNeoXForCausalLM

    from universal_neurons import paths, pipeline
    from universal_neurons.capture import keep_rows, mlp_activations, token_mask
    from universal_neurons.correlations import read_correlation_summary
    from universal_neurons.models import load_model, model_family
    from universal_neurons.token_datasets import load_token_dataset, token_tensor

    (a, b), corpus = neox
    for var in DIRS:
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    assert model_family(a) == model_family(b) == "pythia"
    report = pipeline.run(pipeline.PipelineConfig(models=[a, b], dataset=str(corpus), ctx_len=32, mix_tokens="16k"))
    assert Path(report).exists()

    ta = load_model(a)
    ds = load_token_dataset("corpus.all-16k.32", "pythia", ta.tokenizer)
    tokens = token_tensor(ds)                                                       # [n_seq, 32]
    keep = keep_rows(token_mask(tokens, ta.tokenizer))
    acts = {}
    for name in (a, b):  # HF's own modules, no TransformerLens: the GELU output of every layer's MLP
        hf = GPTNeoXForCausalLM.from_pretrained(name).eval()
        out = []
        hooks = [layer.mlp.act.register_forward_hook(lambda m, i, o: out.append(o)) for layer in hf.gpt_neox.layers]
        with torch.no_grad():
            for lo in range(0, len(tokens), 100):
                out.clear()
                hf(tokens[lo:lo + 100])
                acts.setdefault(name, []).append(torch.stack(out, 2).reshape(-1, 2 * 64))   # [B * P, L * D]
        for h in hooks:
            h.remove()
    x, y = (torch.cat(acts[n])[keep].double() for n in (a, b))
    ours = mlp_activations(ta, tokens[:8]).reshape(-1, 2 * 64).double()
    assert (ours - torch.cat(acts[a])[: 8 * 32].double()).abs().max() < 1e-4      # TL's hook_post == HF's act

    ref = ref_pearson(x, y)                                                         # [128, 128] float64
    summ = read_correlation_summary(paths.correlation_path(a, b, "corpus.all-16k.32", "pearson", "none"))
    alive = ~np.isnan(ref).all(1)
    assert alive.sum() > 100
    assert np.abs(summ["max_corr"].float().numpy()[alive] - np.nanmax(ref[alive], 1)).max() < 2e-3
    assert (summ["max_corr_ix"].numpy()[alive] == np.nanargmax(ref[alive], 1)).all()

    df = pd.read_csv(paths.neuron_df_path(a))
    assert len(df) == 128 and list(df[["layer", "neuron"]].iloc[65]) == [1, 1]
    np.testing.assert_allclose(df["max_corr"].to_numpy()[alive], summ["max_corr"].float().numpy()[alive], atol=1e-3)
    assert df["w_out_norm"].notna().all() and df["vocab_kurt"].notna().all()
