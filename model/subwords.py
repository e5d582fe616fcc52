"""Character n-grams of words (fastText's subwords), for vectors that share what words share.

With `max_n > 0` a word's input vector is the mean of its own row and one row per character
n-gram of "<word>" (n from `min_n` to `max_n`), each n-gram hashed into one of `buckets`
rows exactly as fastText hashes it (32-bit FNV-1a over the UTF-8 bytes, each byte
sign-extended, as fastText's C++ does). Inflections and compounds then share rows, which
helps rare words most, and a word never seen in training still gets a vector from its
n-grams.

Only rows that some vocabulary word uses are ever trained, so only those are kept: the
training matrix holds the vocabulary's rows and then one row per bucket in use
(`bucket_ids`, sorted), not all `buckets` of them. A word outside the vocabulary is the
mean over all its n-grams, the ones that no vocabulary word shares counting as zero (in
fastText they are never-trained random rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit, uint64

from model.errors import ParameterError

_FNV_OFFSET = 2166136261
_FNV_PRIME = 16777619


@njit(inline="always")
def _fnv_step(h: np.uint64, byte: np.uint8) -> np.uint64:
    # In 64 bits, kept to 32: numba widens 32-bit products instead of wrapping them. The byte
    # is sign-extended to 32 bits first, as fastText's `uint32_t(int8_t(c))`.
    signed = uint64(byte) | uint64(0xFFFFFF00) if byte >= 128 else uint64(byte)
    return ((h ^ signed) * uint64(_FNV_PRIME)) & uint64(0xFFFFFFFF)


@njit(cache=True)
def _hash_ngrams(
    data: np.ndarray, starts: np.ndarray, min_n: int, max_n: int, buckets: int, out: np.ndarray, count_only: bool
) -> np.ndarray:
    """Bucket of every n-gram of each "<word>" in `data` (concatenated UTF-8), in fastText's
    order (by start character, then length); returns each word's n-gram count."""
    n_words = starts.size - 1
    counts = np.zeros(n_words, dtype=np.int64)
    k = 0
    for w in range(n_words):
        lo, hi = starts[w], starts[w + 1]
        for i in range(lo, hi):
            if (data[i] & 0xC0) == 0x80:  # not the first byte of a character
                continue
            h = uint64(_FNV_OFFSET)
            j = i
            n = 1
            while j < hi and n <= max_n:
                # One character: its first byte and its continuation bytes.
                h = _fnv_step(h, data[j])
                j += 1
                while j < hi and (data[j] & 0xC0) == 0x80:
                    h = _fnv_step(h, data[j])
                    j += 1
                # fastText leaves out the lone "<" and ">".
                if n >= min_n and not (n == 1 and (i == lo or j == hi)):
                    if not count_only:
                        out[k] = h % uint64(buckets)
                    k += 1
                    counts[w] += 1
                n += 1
    return counts


def ngram_buckets(words: Sequence[str], min_n: int, max_n: int, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bucket ids): word i's n-grams are `ids[offsets[i]:offsets[i + 1]]`."""
    # surrogateescape: a word read from undecodable bytes hashes as those bytes, as in fastText.
    encoded = [f"<{w}>".encode("utf-8", "surrogateescape") for w in words]
    starts = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=starts[1:])
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    counts = _hash_ngrams(data, starts, min_n, max_n, buckets, np.empty(0, dtype=np.int64), True)
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int64)
    _hash_ngrams(data, starts, min_n, max_n, buckets, ids, False)
    return offsets, ids


@dataclass(frozen=True)
class TrainingRows:
    """Which input rows each vocabulary word trains: its own, then its n-grams' (CSR)."""

    offsets: np.ndarray  # int64, n_vocab + 1
    rows: np.ndarray  # int32 row ids into the (n_vocab + len(bucket_ids)) input matrix
    bucket_ids: np.ndarray  # int64, sorted: the bucket behind input row n_vocab + i

    @property
    def n_rows(self) -> int:
        return self.offsets.size - 1 + self.bucket_ids.size


def training_rows(words: Sequence[str], min_n: int, max_n: int, buckets: int) -> TrainingRows:
    n_vocab = len(words)
    ng_offsets, ng_ids = ngram_buckets(words, min_n, max_n, buckets)
    bucket_ids, compact = np.unique(ng_ids, return_inverse=True)
    per_word = np.diff(ng_offsets) + 1
    offsets = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(per_word, out=offsets[1:])
    rows = np.empty(int(offsets[-1]), dtype=np.int32)
    own = offsets[:-1]
    rows[own] = np.arange(n_vocab, dtype=np.int32)
    mask = np.ones(rows.size, dtype=bool)
    mask[own] = False
    rows[mask] = (n_vocab + compact).astype(np.int32)
    return TrainingRows(offsets, rows, bucket_ids.astype(np.int64))


def identity_rows(n_vocab: int) -> TrainingRows:
    """Each word trains its own row alone: plain word2vec."""
    return TrainingRows(np.arange(n_vocab + 1, dtype=np.int64), np.arange(n_vocab, dtype=np.int32),
                        np.empty(0, dtype=np.int64))


@njit(cache=True)
def _row_means(matrix: np.ndarray, offsets: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    for w in range(offsets.size - 1):
        lo, hi = offsets[w], offsets[w + 1]
        inv = np.float32(1.0 / (hi - lo))
        for k in range(matrix.shape[1]):
            acc = np.float32(0.0)
            for r in range(lo, hi):
                acc += matrix[rows[r], k]
            out[w, k] = acc * inv


def word_vectors(matrix: np.ndarray, layout: TrainingRows) -> np.ndarray:
    """Each vocabulary word's vector: the mean of the rows it trains (fastText's word vector)."""
    out = np.empty((layout.offsets.size - 1, matrix.shape[1]), dtype=np.float32)
    _row_means(matrix, layout.offsets, layout.rows, out)
    return out


@dataclass
class Subwords:
    """The n-gram rows of a trained model, for vectors of words outside its vocabulary."""

    min_n: int
    max_n: int
    buckets: int
    bucket_ids: np.ndarray  # int64, sorted
    vectors: np.ndarray  # float32, one row per bucket id

    def __post_init__(self) -> None:
        if self.bucket_ids.ndim != 1 or self.vectors.ndim != 2 or self.vectors.shape[0] != self.bucket_ids.size:
            raise ParameterError(
                f"{self.bucket_ids.size} n-gram buckets but an n-gram matrix of shape {self.vectors.shape}"
            )

    def vector(self, word: str) -> np.ndarray | None:
        """The word's vector from its n-grams, or None when none of them was trained."""
        _, ids = ngram_buckets([word], self.min_n, self.max_n, self.buckets)
        if ids.size == 0 or self.bucket_ids.size == 0:
            return None
        pos = np.searchsorted(self.bucket_ids, ids)
        pos[pos == self.bucket_ids.size] = 0
        found = pos[self.bucket_ids[pos] == ids]
        if found.size == 0:
            return None
        total = self.vectors[found].sum(axis=0, dtype=np.float32)
        return np.asarray(total / np.float32(ids.size), dtype=np.float32)

    def config(self) -> dict[str, int]:
        return {"min_n": self.min_n, "max_n": self.max_n, "buckets": self.buckets}
