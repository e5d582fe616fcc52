"""The CBOW negative-sampling network as layers over NumPy or CuPy arrays.

Each layer works on whatever array module its inputs come from (`get_array_module`), so
one implementation serves the CPU and the GPU. Backward passes return gradients; the
minibatch engine turns them into SGD steps.
"""

from __future__ import annotations

from typing import Any

from model.backend import get_array_module

Array = Any  # numpy.ndarray or cupy.ndarray


def scatter_add(target: Array, index: Array, values: Array) -> None:
    """target[index] += values, accumulating repeated indices (unlike fancy-index assignment)."""
    xp = get_array_module(target)
    if xp.__name__ == "cupy":
        # CuPy 14 deprecates cupyx.scatter_add (a warning per call) for ufunc.at, which older
        # releases lack.
        if hasattr(xp.add, "at"):
            xp.add.at(target, index, values)
        else:
            import cupyx

            cupyx.scatter_add(target, index, values)
        return
    # np.add.at loops element by element; sorting the rows and summing runs of equal
    # indices with reduceat gives the same sums an order of magnitude faster.
    flat = xp.asarray(index).ravel()
    if flat.size == 0:  # a step whose centre words had no context at all
        return
    rows = xp.asarray(values).reshape(flat.size, -1)
    order = xp.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = xp.flatnonzero(xp.r_[True, ordered[1:] != ordered[:-1]])
    sums = xp.add.reduceat(rows[order], starts, axis=0)
    target[ordered[starts]] += sums.reshape((starts.size, *target.shape[1:]))


class Embedding:
    """Row lookup; its gradient adds each output row's gradient back into the looked-up row."""

    def __init__(self, weight: Array):
        self.W = weight
        self.idx: Array | None = None

    def forward(self, idx: Array) -> Array:
        self.idx = idx
        return self.W[idx]

    def backward(self, dout: Array) -> Array:
        """Dense gradient of W; tests use it, training calls `sgd_step` to avoid a V x d buffer."""
        xp = get_array_module(self.W)
        dW = xp.zeros_like(self.W)
        scatter_add(dW, self.idx, dout)
        return dW

    def sgd_step(self, dout: Array, lr: float) -> None:
        scatter_add(self.W, self.idx, -lr * dout)


class EmbeddingDot:
    """Score of a hidden vector against each of several output rows (1 positive + k negatives)."""

    def __init__(self, weight: Array):
        self.embed = Embedding(weight)
        self.h: Array | None = None
        self.rows: Array | None = None

    def forward(self, h: Array, idx: Array) -> Array:
        xp = get_array_module(h)
        self.h = h
        self.rows = self.embed.forward(idx)  # (B, K, d)
        return xp.einsum("bkd,bd->bk", self.rows, h)

    def backward(self, dscore: Array) -> tuple[Array, Array]:
        """Return (dh, d_rows); d_rows feeds `self.embed`."""
        assert self.rows is not None and self.h is not None, "forward() must run first"
        xp = get_array_module(dscore)
        dh = xp.einsum("bk,bkd->bd", dscore, self.rows)
        d_rows = dscore[:, :, None] * self.h[:, None, :]
        return dh, d_rows


def sigmoid(x: Array) -> Array:
    """Overflow-free logistic function: never evaluates exp of a large positive number."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class SigmoidCrossEntropy:
    """Binary cross-entropy of sigmoid(scores) against 0/1 labels, with per-score weights."""

    def __init__(self) -> None:
        self.y: Array | None = None
        self.labels: Array | None = None
        self.weights: Array | None = None

    def forward(self, scores: Array, labels: Array, weights: Array) -> Array:
        """Return the summed loss; `weights` of 0 drop a score (a negative that hit the positive)."""
        xp = get_array_module(scores)
        self.y = sigmoid(scores)
        self.labels = labels
        self.weights = weights
        # log(1 + exp(-|s|)) + max(-s, 0) is -log sigmoid(s), stable for any s.
        softplus = xp.log1p(xp.exp(-xp.abs(scores)))
        log_sig = -(softplus + xp.maximum(-scores, 0))
        log_one_minus = log_sig - scores
        loss = -(labels * log_sig + (1 - labels) * log_one_minus) * weights
        return loss.sum()

    def backward(self) -> Array:
        assert self.y is not None, "forward() must run first"
        return (self.y - self.labels) * self.weights
