"""The network's layers: embedding scatter-add backward and the loss gradient."""

from __future__ import annotations

import numpy as np

from model.layers import Embedding, EmbeddingDot, SigmoidCrossEntropy, sigmoid


def test_embedding_backward_accumulates_repeated_indices_like_add_at() -> None:
    rng = np.random.default_rng(0)
    W = rng.normal(size=(7, 4)).astype(np.float32)
    idx = np.array([[1, 3, 1], [1, 0, 6]])  # row 1 three times
    emb = Embedding(W)
    out = emb.forward(idx)
    np.testing.assert_array_equal(out, W[idx])
    dout = rng.normal(size=out.shape).astype(np.float32)
    expected = np.zeros_like(W)
    np.add.at(expected, idx, dout)
    np.testing.assert_allclose(emb.backward(dout), expected, rtol=1e-6)
    assert not np.allclose(expected[1], dout[0, 0])  # the repeats really were summed


def test_embedding_sgd_step_applies_summed_gradient() -> None:
    W = np.zeros((3, 2), dtype=np.float32)
    emb = Embedding(W)
    emb.forward(np.array([2, 2, 0]))
    emb.sgd_step(np.ones((3, 2), dtype=np.float32), lr=0.5)
    np.testing.assert_allclose(W, [[-0.5, -0.5], [0, 0], [-1.0, -1.0]])


def test_sigmoid_is_stable_for_large_inputs() -> None:
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(over="raise"):
        y = sigmoid(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[2], 0.5)
    assert y[0] == 0.0 and y[-1] == 1.0


def _loss(W_out: np.ndarray, h: np.ndarray, idx: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    dot = EmbeddingDot(W_out)
    return float(SigmoidCrossEntropy().forward(dot.forward(h, idx), labels, weights))


def test_loss_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    W_out = rng.normal(scale=0.5, size=(6, 5))
    h = rng.normal(scale=0.5, size=(3, 5))
    idx = np.array([[0, 2, 4], [1, 2, 2], [5, 0, 3]])  # repeats inside a row too
    labels = np.zeros(idx.shape)
    labels[:, 0] = 1
    weights = np.ones(idx.shape)
    weights[1, 2] = 0  # a dropped negative must not contribute

    dot = EmbeddingDot(W_out)
    loss_layer = SigmoidCrossEntropy()
    loss_layer.forward(dot.forward(h, idx), labels, weights)
    dh, d_rows = dot.backward(loss_layer.backward())
    dW = dot.embed.backward(d_rows)

    eps = 1e-6
    num_dh = np.zeros_like(h)
    for i in np.ndindex(h.shape):
        hp, hm = h.copy(), h.copy()
        hp[i] += eps
        hm[i] -= eps
        num_dh[i] = (_loss(W_out, hp, idx, labels, weights) - _loss(W_out, hm, idx, labels, weights)) / (2 * eps)
    num_dW = np.zeros_like(W_out)
    for i in np.ndindex(W_out.shape):
        wp, wm = W_out.copy(), W_out.copy()
        wp[i] += eps
        wm[i] -= eps
        num_dW[i] = (_loss(wp, h, idx, labels, weights) - _loss(wm, h, idx, labels, weights)) / (2 * eps)
    np.testing.assert_allclose(dh, num_dh, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dW, num_dW, rtol=1e-5, atol=1e-8)


def test_loss_value_is_binary_cross_entropy() -> None:
    scores = np.array([[2.0, -1.0, 0.5]])
    labels = np.array([[1.0, 0.0, 0.0]])
    loss = SigmoidCrossEntropy().forward(scores, labels, np.ones_like(scores))
    s = 1 / (1 + np.exp(-scores[0]))
    expected = -np.log(s[0]) - np.log(1 - s[1]) - np.log(1 - s[2])
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
