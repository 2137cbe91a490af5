"""Activation caches: quantisation, next-token statistics, neuron and layer modes, CLI errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from universal_neurons import activation_cache as ac
from universal_neurons.errors import UserError

BOS = 0
DATASET = "rand.test.c.32"


def test_quantisation_round_trip_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.randn(500, generator=g),                     # ordinary
                     1e4 + 1e-2 * torch.randn(500, generator=g),        # large mean, tiny spread
                     torch.full((500,), 0.3),                           # constant: exact
                     torch.where(torch.rand(500, generator=g) < 0.9, 0.0, 50.0),  # sparse, wide
                     torch.linspace(-3, 3, 500)], dim=1)                # hits every code
    q = ac.quantize_per_channel(x)
    assert q["codes"].dtype == torch.uint8 and q["codes"].shape == x.shape and q["shape"] == tuple(x.shape)
    assert q["scale"].shape == q["zero_point"].shape == (5,)
    back = ac.dequantize(q).double()
    err = (back - x.double()).abs()
    bound = q["scale"].double() / 2 + 1e-6 * x.double().abs().amax(0)  # + float32 rounding of codes*scale+zp
    assert (err <= bound).all()
    assert err[:, 2].max() == 0 and q["scale"][2] == 0
    assert q["codes"][:, 4].unique().numel() == 256
    assert err[:, 0].max() > 0.3 * q["scale"][0]  # really quantised (a no-op would pass the bound trivially)


def test_quantisation_ignores_nan_for_the_range():
    x = torch.tensor([[0.0], [1.0], [math.nan], [2.0]])
    q = ac.quantize_per_channel(x)
    assert q["zero_point"].item() == 0.0 and abs(q["scale"].item() - 2 / 255) < 1e-7
    assert torch.allclose(ac.dequantize(q)[[0, 1, 3]], x[[0, 1, 3]], atol=1 / 255)


def test_next_token_stats_match_direct_float64():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(3, 6, 17, generator=g)
    tokens = torch.randint(0, 17, (3, 6), generator=g)
    loss, ent, rank = ac.next_token_stats(logits, tokens)
    L = logits.double()
    for b in range(3):
        for p in range(6):
            logp = L[b, p] - torch.logsumexp(L[b, p], 0)
            assert abs(ent[b, p] - -(logp.exp() * logp).sum()) < 1e-5
            if p == 5:
                assert math.isnan(loss[b, p]) and rank[b, p] == -1
                continue
            t = tokens[b, p + 1]
            assert abs(loss[b, p] - -logp[t]) < 1e-5
            assert rank[b, p] == list(torch.argsort(L[b, p], descending=True)).index(t)
    assert rank.dtype == torch.int32


@pytest.fixture(scope="module")
def setup(tiny_zoo, tmp_path_factory):
    """A token dataset in a module folder, and the brute-force pre-activations and logits."""
    from universal_neurons.capture import mlp_activations
    from universal_neurons.models import load_model

    model = load_model(tiny_zoo[0])
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, model.cfg.d_vocab, (9, model.cfg.n_ctx))
    tokens[:, 0] = BOS
    tokens[1, 10] = BOS
    tokens = torch.as_tensor(tokens)
    with torch.no_grad():
        pre = mlp_activations(model, tokens, "mlp.hook_pre").double()  # [n, P, L, D]
        logits = model(tokens, return_type="logits").double()
    return tiny_zoo[0], model, tokens, pre, logits, tmp_path_factory.mktemp("data")


@pytest.fixture
def dataset(setup, monkeypatch):
    from universal_neurons.models import load_tokenizer, model_family
    from universal_neurons.token_datasets import save_token_dataset

    name, _, tokens, *_ = setup
    save_token_dataset(tokens.numpy(), model_family(name), DATASET, load_tokenizer(name))
    return setup


def test_neuron_mode_matches_model_and_feeds_explanations(dataset):
    from universal_neurons.explanations import cached_activation_batches

    name, model, tokens, pre, logits, _ = dataset
    n, P = tokens.shape
    written = ac.run_activations(name, DATASET, neuron_subset=["0.5", "1.17,1.3"], batch_size=4, progress=False)
    folder = ac.activation_folder(name, DATASET)
    assert {p.name for p in written} == {"0.5.pt", "1.17.pt", "1.3.pt", "loss.pt", "entropy.pt", "rank.pt"}
    for l, d in ((0, 5), (1, 17), (1, 3)):
        t = torch.load(folder / f"{l}.{d}.pt", weights_only=True)
        assert t.dtype == torch.float16 and t.shape == (n * P,)
        torch.testing.assert_close(t.double(), pre[:, :, l, d].reshape(-1), rtol=2e-3, atol=2e-3)
    loss = torch.load(folder / "loss.pt", weights_only=True)
    ent = torch.load(folder / "entropy.pt", weights_only=True)
    rank = torch.load(folder / "rank.pt", weights_only=True)
    assert loss.dtype == ent.dtype == torch.float16 and rank.dtype == torch.int32 and loss.shape == (n, P)
    logp = logits.log_softmax(-1)
    direct_loss = -logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(loss[:, :-1].double(), direct_loss, rtol=2e-3, atol=2e-3)
    assert torch.isnan(loss[:, -1]).all() and (rank[:, -1] == -1).all()
    torch.testing.assert_close(ent.double(), -(logp.exp() * logp).sum(-1), rtol=2e-3, atol=2e-3)
    # The float32 run may order logits within float32 error of the true token's either way (a trained
    # model's never-seen tokens collapse to near-identical logits, a hundred at once): the rank must lie
    # between the float64 counts of other tokens above the true one by more than that error, and by
    # more than minus that error.
    true = logits[:, :-1].gather(-1, tokens[:, 1:, None])
    err = 1e-5 * float(logits.abs().max())
    above_surely = (logits[:, :-1] > true + err).sum(-1)
    above_maybe = (logits[:, :-1] > true - err).sum(-1) - 1  # minus the true token itself
    r = rank[:, :-1].long()
    assert ((above_surely <= r) & (r <= above_maybe)).all()
    assert (above_maybe == above_surely).float().mean() > 0.5  # most positions have no tie: an off-by-one fails there
    # the explanation stage reads these files back
    assert ac.read_cache_config(folder)["location"] == "mlp.hook_pre"
    from universal_neurons.capture import activation_function

    batches = list(cached_activation_batches(ac.paths.activation_dir(), name, DATASET, {1: np.array([3, 17])}, n, P, 4,
                                             act_fn=activation_function(model)))
    got = torch.cat([b[1] for b in batches])  # [n, P, 2]: the cache's pre-activations through the model's GELU
    x = pre[:, :, 1, [3, 17]]
    gelu_new = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(got.double(), gelu_new, rtol=2e-3, atol=2e-3)
    # the folder holds pre-activations: caching post-activations into it is refused
    with pytest.raises(UserError, match="location"):
        ac.run_activations(name, DATASET, "mlp.hook_post", neuron_subset=["0.7"], progress=False)
    # a rerun computes only what is missing
    (folder / "1.3.pt").unlink()
    again = ac.run_activations(name, DATASET, neuron_subset=["0.5", "1.3"], progress=False)
    assert [p.name for p in again] == ["1.3.pt"]


@pytest.mark.parametrize("agg,exclude", [("none", False), ("mean", False), ("max", False), ("last", False),
                                         ("mean", True), ("max", True)])
def test_layer_mode_aggregations(dataset, agg, exclude):
    """mean / max over every position (the original's), or without BOS with --exclude_special_tokens."""
    name, model, tokens, pre, *_ = dataset
    n, P, L, D = pre.shape
    mask = (tokens != BOS if exclude else torch.ones_like(tokens, dtype=torch.bool))[..., None, None]
    brute = {"none": pre.reshape(n * P, L, D),
             "mean": (pre * mask).sum(1) / mask.sum(1),
             "max": pre.masked_fill(~mask, -math.inf).amax(1),
             "last": pre[:, -1]}[agg]
    for precision in (32, 8):
        out = ac.activation_folder(name, DATASET, f"cache{precision}")
        ac.run_activations(name, DATASET, aggregation=agg, save_precision=precision, output_dir=f"cache{precision}",
                           batch_size=4, exclude_special=exclude, progress=False)
        for l in range(L):
            obj = torch.load(out / f"{l}.all.{agg}.all.pt", weights_only=True)
            got = ac.load_activations(out / f"{l}.all.{agg}.all.pt").double()
            assert got.shape == brute[:, l].shape
            if precision == 32:
                assert obj.dtype == torch.float32
                torch.testing.assert_close(got, brute[:, l], rtol=1e-4, atol=1e-4)
            else:
                assert isinstance(obj, dict) and obj["codes"].dtype == torch.uint8
                err = (got - brute[:, l]).abs()
                assert (err <= obj["scale"].double() / 2 + 1e-4).all()


def test_neuron_subset_file_and_parsing(tmp_path):
    f = tmp_path / "u.csv"
    f.write_text("layer,neuron,excess_corr\n1,3,0.6\n0,5,0.7\n1,3,0.6\n")
    assert ac.parse_neuron_subset(["0.1"], f, 2, 128) == [(0, 1), (1, 3), (0, 5)]
    f.write_text("l,n\n1,3\n")
    with pytest.raises(UserError, match="columns"):
        ac.parse_neuron_subset(None, f, 2, 128)
    for bad in ("3.99999", "a.b", "1.5.3", "-1.2", "2.0"):
        with pytest.raises(UserError):
            ac.parse_neuron_subset([bad], None, 2, 128)


@pytest.mark.parametrize("extra", [["--neuron_subset", "3.99999"], ["--neuron_subset", "a.b"],
                                   ["--neuron_subset", "0.1", "--activation_aggregation", "mean"],
                                   ["--neuron_subset_file", "missing.csv"], ["--token_dataset", "no.such.set"],
                                   ["--save_precision", "4"]])
def test_cli_user_errors_exit_2(dataset, extra, capsys):
    import activations as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--model", dataset[0], "--token_dataset", DATASET, *extra])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip()
    assert not ac.activation_folder(dataset[0], DATASET).exists() or not any(
        ac.activation_folder(dataset[0], DATASET).iterdir())


def test_rerun_with_other_settings_is_never_served_stale(dataset, capsys):
    """Cached files are reused only for the same folder-wide settings (model, dataset, n_seq, location)
    and the same per-file settings (precision); otherwise one message until --overwrite."""
    name, _, tokens, pre, *_ = dataset
    folder = ac.activation_folder(name, DATASET)
    ac.run_activations(name, DATASET, neuron_subset=["0.5"], n_seq=4, progress=False)
    rec = ac.read_cache_config(folder)
    assert rec["n_seq"] == 4 and rec["files"]["0.5.pt"] == {"save_precision": 16} and rec["dataset_fingerprint"]
    assert ac.run_activations(name, DATASET, neuron_subset=["0.5"], n_seq=4, progress=False) == []  # same: reused
    with pytest.raises(UserError, match="n_seq 4 -> -1.*--overwrite"):  # all rows now: the 4-row file is stale
        ac.run_activations(name, DATASET, neuron_subset=["0.5"], progress=False)
    assert torch.load(folder / "0.5.pt", weights_only=True).numel() == 4 * tokens.shape[1]  # untouched
    ac.run_activations(name, DATASET, neuron_subset=["0.5"], overwrite=True, progress=False)
    assert torch.load(folder / "0.5.pt", weights_only=True).numel() == tokens.numel()
    with pytest.raises(UserError, match="save_precision 16 -> 32"):  # the fp16 file is not the fp32 asked for
        ac.run_activations(name, DATASET, neuron_subset=["0.5"], save_precision=32, progress=False)
    ac.run_activations(name, DATASET, neuron_subset=["0.5"], save_precision=32, overwrite=True, progress=False)
    got = torch.load(folder / "0.5.pt", weights_only=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), pre[:, :, 0, 5].reshape(-1), rtol=1e-5, atol=1e-5)
    # a file written by an interrupted run (on disk, not recorded) is recomputed, not trusted
    rec = ac.read_cache_config(folder)
    del rec["files"]["0.5.pt"]
    ac.runs.write_record(folder / ac.CONFIG_FILE, rec)
    assert [p.name for p in ac.run_activations(name, DATASET, neuron_subset=["0.5"], save_precision=32,
                                               progress=False)] == ["0.5.pt"]
