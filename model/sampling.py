"""Subsampling of frequent words and the unigram^0.75 negative sampler."""

from __future__ import annotations

import numpy as np
from numba import njit

# Keep probabilities are stored as thresholds on a 32-bit random integer so the hot
# loop compares integers; 2**32 means "always keep".
KEEP_SCALE = 1 << 32


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec.c's keep probability `(sqrt(f/s) + 1) * s / f`, clipped to 1; `sample=0` keeps all."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones(counts.size, dtype=np.float64)
    threshold = sample * counts.sum()
    prob = (np.sqrt(counts / threshold) + 1.0) * threshold / counts
    return np.minimum(prob, 1.0)


def keep_thresholds(counts: np.ndarray, sample: float) -> np.ndarray:
    return np.round(keep_probabilities(counts, sample) * KEEP_SCALE).astype(np.uint64)


def unigram_distribution(counts: np.ndarray, exponent: float) -> np.ndarray:
    weights = np.asarray(counts, dtype=np.float64) ** exponent
    return weights / weights.sum()


@njit(cache=True)
def _build_alias(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Vose's method: O(n) construction, O(1) draws with one index and one coin.
    n = prob.size
    scaled = prob * n
    accept = np.ones(n, dtype=np.float32)
    alias = np.arange(n).astype(np.int32)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        g = large[nl - 1]
        accept[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            nl -= 1
            small[ns] = g
            ns += 1
    # Leftovers are 1 up to rounding error: they always accept themselves.
    return accept, alias


class AliasSampler:
    """Draws word ids with probability proportional to count**exponent in O(1) per draw."""

    def __init__(self, counts: np.ndarray, exponent: float = 0.75):
        self.probabilities = unigram_distribution(counts, exponent)
        self.accept, self.alias = _build_alias(self.probabilities)

    def __len__(self) -> int:
        return int(self.accept.size)

    def sample(self, size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Vectorised draws on the host; the device engines draw from the same tables."""
        idx = rng.integers(0, self.accept.size, size=size, dtype=np.int64)
        coin = rng.random(size=size, dtype=np.float32)
        return np.where(coin < self.accept[idx], idx, self.alias[idx]).astype(np.int32)
