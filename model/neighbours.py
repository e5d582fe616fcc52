"""Precomputed neighbours: the exact top `k` of the most frequent words, answered by lookup.

"Which words are like this one?" is the question a word-vector service is asked most, and
for one word its answer never changes once the model is trained. A table of each frequent
word's best `k` neighbours (rows and exact scores, ranked as the search itself ranks them)
turns that question into an array read: microseconds instead of a pass over the whole
vocabulary, and no memory traffic to compete with a training job on the same host.

The table is built once, where the model is made (the worker, after training), from the
search itself, and saved with the model. Queries it cannot answer exactly (words outside
it, several words, negative words, vectors, 3CosMul, `topn` beyond `k` when the table is
not the whole vocabulary) still search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.errors import ModelFormatError, ParameterError, TrainingCancelled

if TYPE_CHECKING:
    from model.vectors import Vectors

# Queries per search call while building: enough for the BLAS batch path to run at full
# speed, few enough that a cancel is noticed within a second or so.
_BUILD_CHUNK = 512


def _dtype(k: int) -> np.dtype:
    return np.dtype([("row", "<i4", (k,)), ("score", "<f8", (k,))])


@dataclass(frozen=True)
class NeighbourTable:
    """Row `i` lists the `k` best neighbours of word `i` for `i < n_words` (words are ordered
    most frequent first), best first, with the query word itself left out."""

    rows: np.ndarray  # (n_words, k) int32
    scores: np.ndarray  # (n_words, k) float64, the exact scores the search returns
    vocab_size: int

    @property
    def n_words(self) -> int:
        return int(self.rows.shape[0])

    @property
    def k(self) -> int:
        return int(self.rows.shape[1])

    def lookup(self, row: int, topn: int, limit: int) -> tuple[list[int], list[float]] | None:
        """The `topn` best neighbours of `row` among rows `< limit`, or None when the table
        cannot tell them for certain.

        Filtering the full top `k` to rows below `limit` is exact: any row below `limit` that
        is missing from the list ranks after every row in it.
        """
        if row >= self.n_words:
            return None
        ids, scores = self.rows[row], self.scores[row]
        if limit < self.vocab_size:
            keep = ids < limit
            ids, scores = ids[keep], scores[keep]
        # With every other word listed, any shorter answer is the whole answer.
        if len(ids) < topn and self.k < self.vocab_size - 1:
            return None
        return ids[:topn].tolist(), scores[:topn].tolist()

    def save(self, path: Path) -> None:
        records = np.empty(self.n_words, dtype=_dtype(self.k))
        records["row"] = self.rows
        records["score"] = self.scores
        np.save(path, records, allow_pickle=False)

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> NeighbourTable:
        try:
            records = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot read {path}: {exc}") from exc
        names = records.dtype.names or ()
        if records.ndim != 1 or names != ("row", "score"):
            raise ModelFormatError(f"{path} is not a neighbour table")
        # Plain views of the mapped pages: np.memmap's subclass hooks cost more than a lookup.
        rows, scores = records["row"].view(np.ndarray), records["score"].view(np.ndarray)
        return cls.checked(rows, scores, vocab_size, str(path))

    @classmethod
    def checked(cls, rows: np.ndarray, scores: np.ndarray, vocab_size: int, what: str) -> NeighbourTable:
        """A table after checking that it fits a vocabulary of `vocab_size` words, so a
        mismatched file is refused at load instead of failing (or lying) at query time."""
        if rows.ndim != 2 or scores.shape != rows.shape:
            raise ModelFormatError(f"{what}: rows {rows.shape} and scores {scores.shape} must be equal 2-D shapes")
        n, k = rows.shape
        if n > vocab_size or k > max(vocab_size - 1, 0):
            raise ModelFormatError(f"{what}: {n} x {k} neighbours do not fit a vocabulary of {vocab_size} words")
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= vocab_size):
            raise ModelFormatError(f"{what}: neighbour rows outside the vocabulary")
        if not np.isfinite(scores).all():
            raise ModelFormatError(f"{what}: non-finite neighbour scores")
        return cls(rows, scores, vocab_size)


def build_neighbours(
    vectors: Vectors,
    *,
    k: int,
    words: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> NeighbourTable | None:
    """The table for the `words` most frequent words (all when None), from the search itself.

    Costs about one batched search per indexed word: on 2 cores, some 30 s for 100k x 100k
    x 100. Returns None when there is nothing to index (fewer than two words, `words=0` or
    `k=0`). `should_stop` is polled between chunks (raising `TrainingCancelled`); `progress`
    gets (words done, words to do).
    """
    if k < 0 or (words is not None and words < 0):
        raise ParameterError(f"neighbour table size must be non-negative, got k={k}, words={words}")
    vocab = len(vectors)
    n = vocab if words is None else min(words, vocab)
    k = min(k, vocab - 1)
    if n <= 0 or k <= 0:
        return None
    rows = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float64)
    index = vectors.key_to_index
    for start in range(0, n, _BUILD_CHUNK):
        if should_stop is not None and should_stop():
            raise TrainingCancelled("stopped while building the neighbour table")
        stop = min(start + _BUILD_CHUNK, n)
        hits = vectors.most_similar_batch(vectors.words[start:stop], topn=k)
        for row, found in enumerate(hits, start):
            rows[row] = [index[w] for w, _ in found]
            scores[row] = [s for _, s in found]
        if progress is not None:
            progress(stop, n)
    return NeighbourTable.checked(rows, scores, vocab, "built table")
