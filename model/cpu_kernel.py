"""Compiled per-word CBOW negative-sampling SGD (word2vec.c's algorithm) for the CPU.

Each call trains one job (a run of whole sentences) and releases the GIL, so several
Python threads train disjoint jobs at once on shared weights without locks ("Hogwild"),
as word2vec.c and gensim do. The random stream of a job depends only on its seed, so a
one-thread run is reproducible and a resumed run replays the same draws.
"""

# The kernel deliberately mixes float32 and numpy integer scalars so numba keeps the hot
# loops in single precision; mypy cannot follow those narrowing assignments.
# mypy: disable-error-code="assignment"

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, uint64

_MASK32 = (1 << 32) - 1


@njit(inline="always")
def _next(state: np.ndarray) -> np.uint64:
    # xorshift64*: far better low bits than word2vec.c's LCG at the same cost.
    x = state[0]
    x ^= x >> uint64(12)
    x ^= x << uint64(25)
    x ^= x >> uint64(27)
    state[0] = x
    return x * uint64(0x2545F4914F6CDD1D)


@njit(inline="always")
def _log1p_unit(e: float) -> float:
    """log(1 + e) for e in [0, 1], within 1.1e-8: 2·atanh(e / (2 + e)) by its series to the
    13th power. The loss only reports progress (the updates use the sigmoid alone), and libm's
    log1p took a tenth of the kernel's time; a NaN from a diverging run still comes out NaN."""
    s = e / (2.0 + e)
    z = s * s
    return 2.0 * s * (1.0 + z * (1.0 / 3 + z * (1.0 / 5 + z * (1.0 / 7 + z * (1.0 / 9 + z * (1.0 / 11 + z / 13))))))


@njit(cache=True)
def splitmix64(x: int) -> np.uint64:
    z = uint64(x) + uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    z = z ^ (z >> uint64(31))
    if z == 0:
        z = uint64(1)
    return z


def _cbow_kernel(subwords: bool) -> Any:
    """The kernel with `subwords` fixed when it is compiled: Numba takes the closure's value as
    a constant, so the plain kernel has no trace of the n-gram indirection."""

    # error_model="numpy": a diverging run (too high a learning rate) turns its weights into inf and
    # NaN, which the trainer reports as divergence; Python's error model would instead raise a bare
    # ZeroDivisionError from inside the kernel, and checks every division for it.
    @njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
    def train_cbow_job(
        syn0: np.ndarray,
        syn1neg: np.ndarray,
        in_offsets: np.ndarray,
        in_rows: np.ndarray,
        tokens: np.ndarray,
        offsets: np.ndarray,
        s_begin: int,
        s_end: int,
        keep_threshold: np.ndarray,
        alias_accept: np.ndarray,
        alias_index: np.ndarray,
        window: int,
        negative: int,
        alpha_start: float,
        alpha_end: float,
        seed: np.uint64,
        buf: np.ndarray,
        neu1: np.ndarray,
        neu1e: np.ndarray,
    ) -> tuple[int, float, int]:
        """Train sentences s_begin..s_end-1; return (trained words, summed loss, loss terms).

        With `subwords`, a context word's input is the rows `in_rows[in_offsets[w]:in_offsets[w + 1]]`
        (its own and its n-grams'), and the hidden layer is the mean of all the context words' rows,
        each of which takes the full error, as fastText's CBOW does; without, its own row alone
        (`in_offsets` and `in_rows` unread).
        """
        state = np.empty(1, dtype=np.uint64)
        state[0] = seed
        dim = syn0.shape[1]
        n_vocab = alias_accept.size
        job_words = offsets[s_end] - offsets[s_begin]
        if job_words <= 0:
            return 0, 0.0, 0
        alpha_step = (alpha_end - alpha_start) / job_words
        trained = 0
        loss = 0.0
        n_loss = 0
        for s in range(s_begin, s_end):
            start = offsets[s]
            stop = offsets[s + 1]
            alpha = np.float32(alpha_start + alpha_step * (start - offsets[s_begin]))
            # Subsample first, then window over what remains, as word2vec.c and gensim do.
            length = 0
            for i in range(start, stop):
                w = tokens[i]
                if keep_threshold[w] > ((_next(state) >> uint64(32)) & uint64(_MASK32)):
                    buf[length] = w
                    length += 1
            for pos in range(length):
                word = buf[pos]
                reduced = np.int64((_next(state) >> uint64(33)) % uint64(window))
                lo = pos - window + reduced
                hi = pos + window - reduced
                if lo < 0:
                    lo = 0
                if hi > length - 1:
                    hi = length - 1
                cw = 0
                for k in range(dim):
                    neu1[k] = 0.0
                for c in range(lo, hi + 1):
                    if c == pos:
                        continue
                    w = buf[c]
                    if not subwords:
                        for k in range(dim):
                            neu1[k] += syn0[w, k]
                        cw += 1
                        continue
                    for r in range(in_offsets[w], in_offsets[w + 1]):
                        row = in_rows[r]
                        for k in range(dim):
                            neu1[k] += syn0[row, k]
                        cw += 1
                if cw == 0:
                    continue
                inv = np.float32(1.0 / cw)
                for k in range(dim):
                    neu1[k] *= inv
                    neu1e[k] = 0.0
                for d in range(negative + 1):
                    if d == 0:
                        target = word
                        label = 1.0
                    else:
                        r = _next(state)
                        j = np.int64(((r >> uint64(32)) * uint64(n_vocab)) >> uint64(32))
                        coin = np.float32(np.float64(r & uint64(_MASK32)) * 2.3283064365386963e-10)
                        target = j if coin < alias_accept[j] else alias_index[j]
                        if target == word:
                            continue
                        label = 0.0
                    f = np.float32(0.0)
                    for k in range(dim):
                        f += neu1[k] * syn1neg[target, k]
                    # Numerically safe sigmoid and log-sigmoid from one exp.
                    if f >= 0:
                        e = math.exp(-f)
                        sig = 1.0 / (1.0 + e)
                        log_sig = -_log1p_unit(e)
                    else:
                        e = math.exp(f)
                        sig = e / (1.0 + e)
                        log_sig = f - _log1p_unit(e)
                    if label > 0:
                        loss -= log_sig
                    else:
                        loss -= log_sig - f
                    n_loss += 1
                    g = np.float32((label - sig) * alpha)
                    for k in range(dim):
                        neu1e[k] += g * syn1neg[target, k]
                        syn1neg[target, k] += g * neu1[k]
                # word2vec.c applies the full error to every context word (not divided by cw).
                for c in range(lo, hi + 1):
                    if c == pos:
                        continue
                    w = buf[c]
                    if not subwords:
                        for k in range(dim):
                            syn0[w, k] += neu1e[k]
                        continue
                    for r in range(in_offsets[w], in_offsets[w + 1]):
                        row = in_rows[r]
                        for k in range(dim):
                            syn0[row, k] += neu1e[k]
                trained += 1
        return trained, loss, n_loss

    return train_cbow_job


train_cbow_job = _cbow_kernel(False)
train_cbow_subword_job = _cbow_kernel(True)
