"""benchmarks/zoo_search.py's null-space diagnostic: the effective null space of an unembedding and a
vector's share in it, against float64 references built with a known answer, and `late_families`'
null_space block on a model whose vocabulary is smaller than its residual stream."""
import numpy as np
import pytest
import torch

from benchmarks.zoo_search import NULL_REL, late_families, null_share, null_space
from conftest import build_gpt2_folder


def planted(d_model: int, V: int, small: list[float], scale: float = 1.0, seed: int = 0):
    """W_U [d_model, V] = A diag(s) B^T with the last len(small) singular values set to `small`, and A."""
    g = np.random.default_rng(seed)
    A, _ = np.linalg.qr(g.normal(size=(d_model, d_model)))
    B, _ = np.linalg.qr(g.normal(size=(V, V)))
    r = min(d_model, V)
    s = np.linspace(2.0, 1.0, r)
    s[r - len(small):] = small
    return scale * A[:, :r] @ np.diag(s) @ B[:, :r].T, A


def projector(basis: np.ndarray) -> np.ndarray:
    return basis @ basis.T


@pytest.mark.parametrize("scale", [1.0, 1e4])  # a relative threshold: the same space at any scale
def test_null_space_finds_planted_small_directions(scale):
    W, A = planted(12, 40, [1e-3, 5e-4], scale=scale)
    basis = null_space(torch.tensor(W, dtype=torch.float32)).numpy()
    assert basis.shape == (12, 2)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(projector(basis), projector(A[:, 10:]), atol=1e-6)


def test_null_space_includes_the_complement_of_a_small_vocabulary():
    W, A = planted(16, 10, [])  # V < d_model: 6 directions no token can read, every singular value ~1..2
    basis = null_space(torch.tensor(W)).numpy()
    assert basis.shape == (16, 6)
    np.testing.assert_allclose(W.T @ basis, 0, atol=1e-10)
    np.testing.assert_allclose(projector(basis), projector(A[:, 10:]), atol=1e-10)


def test_null_space_threshold_is_relative_to_the_median():
    # a singular value of 0.15 x the median is kept out, 0.05 x the median is in
    W, A = planted(8, 30, [0.15 * 1.5, 0.05 * 1.5])
    s = np.linalg.svd(W, compute_uv=False)
    assert (s < NULL_REL * np.median(s)).sum() == 1
    basis = null_space(torch.tensor(W)).numpy()
    np.testing.assert_allclose(projector(basis), projector(A[:, 7:]), atol=1e-10)


def test_null_share_against_known_mixtures():
    W, A = planted(16, 10, [])
    basis = null_space(torch.tensor(W))
    inside, outside = A[:, 12], A[:, 3]
    rows = np.stack([5.0 * inside, 1e3 * outside, 3.0 * inside + 4.0 * outside, np.zeros(16)])
    rho = null_share(torch.tensor(rows), basis).numpy()
    np.testing.assert_allclose(rho[:3], [1.0, 0.0, 9.0 / 25.0], atol=1e-12)
    assert np.isnan(rho[3])  # a dead neuron has no direction


def test_late_families_null_space_block(tmp_path):
    """A random GPT-2 whose 300-id vocabulary cannot span its 320-wide stream: the block's dimension, shares
    and ranking agree with numpy's SVD of the same (folded) unembedding, and each verdict with the bar."""
    from universal_neurons.models import load_model
    from universal_neurons.weights import extract_weights

    folder, _ = build_gpt2_folder(tmp_path / "narrow-vocab", n_layer=2, d_model=320, d_mlp=48, n_head=4, vocab=300,
                                  ctx=16)
    model = load_model(str(folder))
    V = model.cfg.d_vocab
    assert V < 320
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, V, (24, 16), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id
    fam = late_families(model, tokens, np.zeros((2, 48)))
    null = fam["null_space"]

    w = extract_weights(model)
    U, s, _ = np.linalg.svd(w.W_U.double().numpy(), full_matrices=True)
    keep = np.r_[s >= NULL_REL * np.median(s), np.zeros(320 - len(s), dtype=bool)]
    P = U[:, ~keep] @ U[:, ~keep].T
    W_out = w.W_out[1].double().numpy()  # the last layer, [d_mlp, d_model]
    rho = np.einsum("nd,nd->n", W_out @ P, W_out) / np.einsum("nd,nd->n", W_out, W_out)
    assert null["dims"] == (~keep).sum() >= 320 - V
    assert null["neuron_share_median"] == pytest.approx(np.median(rho), abs=1e-4)
    assert [t["neuron"] for t in null["top"]] == [f"1.{n}" for n in np.argsort(-rho, kind="stable")[:5]]
    for t in null["top"]:
        n = int(t["neuron"].split(".")[1])
        assert t["rho"] == pytest.approx(rho[n], abs=1e-3)
        assert t["above_bar"] == (t["delta_entropy"] > fam["entropy_bar"])
        assert np.isfinite(t["delta_entropy"]) and t["universal"] is False
    assert 0.0 < null["resid_share_median"] < 1.0
