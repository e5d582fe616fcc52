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

# Words whose neighbours are gathered together while building, and vocabulary rows scored
# against them at a time: a 512 x 2048 block was the fastest of the sizes tried on 2 cores
# (256-2048 words x 1024-4096 rows), and a cancel is still noticed within a second or so.
_BUILD_CHUNK = 512
_BUILD_ROWS = 2048


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
    """The table for the `words` most frequent words (all when None), with the search's own
    exact rescoring and ranking, so it answers exactly what the search would.

    Costs about one batched search per indexed word with AVX-512 VNNI, half of one elsewhere
    (each pair of indexed words scored once): on 2 cores, 8 s and 13-20 s for 100k x 100k x
    100. Returns None when there is nothing
    to index (fewer than two words, `words=0` or `k=0`). `should_stop` is polled between
    chunks (raising `TrainingCancelled`); `progress` gets (words done, words to do).
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
    shortlists = _shortlists(vectors, n, k, should_stop, progress)
    for start in range(0, n, _BUILD_CHUNK):
        stop = min(start + _BUILD_CHUNK, n)
        hits = vectors._ranked_one_word(range(start, stop), shortlists[start:stop], k)
        for row, found in enumerate(hits, start):
            rows[row] = [index[w] for w, _ in found]
            scores[row] = [s for _, s in found]
    return NeighbourTable.checked(rows, scores, vocab, "built table")


def _shortlists(
    vectors: Vectors,
    n: int,
    k: int,
    should_stop: Callable[[], bool] | None,
    progress: Callable[[int, int], None] | None,
) -> list[np.ndarray]:
    """For each of the first `n` words, rows certain to hold its exact top `k` (then rescored
    exactly, as the search does).

    word a's score for row b and word b's score for row a are the same dot product up to
    rounding, so each pair is computed once, for the lower-numbered word's block, and offered
    to both heaps: half the multiply-adds of searching word by word. The offered scores are
    float32 products of one side's query direction (its unit row, normalised again exactly as
    a query is) with the other's unit row, so their error against the exact score they stand
    for is the float32 rounding bound plus twice the largest gap between a unit row and its
    query direction; the shortlist band is widened by that.
    """
    from model import search, vnni_search
    from model.vectors import _RESCORE_MARGIN, _VNNI_MAX_TOPN, _band_shortlists, _unit_rows

    if k <= _VNNI_MAX_TOPN and vnni_search.serves(vectors.vector_size):
        return _vnni_shortlists(vectors, n, k, should_stop, progress)
    unit = vectors.unit_vectors
    vocab = len(vectors)
    heap_k = min(k + _RESCORE_MARGIN, vocab)
    queries = np.empty((n, unit.shape[1]), dtype=np.float32)
    gap = 0.0
    for start in range(0, n, 4096):
        stop = min(start + 4096, n)
        block = _unit_rows(unit[start:stop])
        queries[start:stop] = block
        diff = block.astype(np.float64) - unit[start:stop]
        gap = max(gap, float(np.sqrt(np.einsum("ij,ij->i", diff, diff)).max(initial=0.0)))
    slack = vectors._dot_rounding_bound() + 2 * gap * (1 + 1e-6) + 1e-12
    vals, found = search.new_heaps(n, heap_k)
    for i0 in range(0, n, _BUILD_CHUNK):
        if should_stop is not None and should_stop():
            raise TrainingCancelled("stopped while building the neighbour table")
        i1 = min(i0 + _BUILD_CHUNK, n)
        own_ptr = np.arange(i1 - i0 + 1, dtype=np.int64)
        own_rows = np.arange(i0, i1, dtype=np.int64)
        for j0 in range(i0, vocab, _BUILD_ROWS):
            j1 = min(j0 + _BUILD_ROWS, vocab)
            block_scores = queries[i0:i1] @ unit[j0:j1].T
            search.push_block(block_scores, j0, own_ptr, own_rows, vals[i0:i1], found[i0:i1])
            # The same products for the words of rows [b0, b1), beyond this block of words.
            b0, b1 = max(j0, i1), min(j1, n)
            if b0 < b1:
                part = block_scores[:, b0 - j0 : b1 - j0]
                search.push_block_mirrored(part, i0, vals[b0:b1], found[b0:b1])
        if progress is not None:
            progress(i1, n)
    vals, found = search.sorted_heaps(vals, found)

    def score_in_full(word: int) -> np.ndarray:
        full = unit @ queries[word]
        full[word] = -np.inf
        return full

    return _band_shortlists(vals, found, k, vocab, slack, score_in_full)


def _vnni_shortlists(
    vectors: Vectors,
    n: int,
    k: int,
    should_stop: Callable[[], bool] | None,
    progress: Callable[[int, int], None] | None,
) -> list[np.ndarray]:
    """`_shortlists` on a CPU with AVX-512 VNNI: each word searched as a one-word query, a
    chunk at a time, by the kernel the search itself uses (`model.vnni_search`). It does
    every multiply-add twice where the float32 route shares them between two words, and is
    still faster: 8.4 s against 13.0 s for 100k x 100k x 100 on 2 cores."""
    vectors.int8_rows  # noqa: B018 - lays the rows out for the kernel
    unit = vectors.unit_vectors
    found: list[np.ndarray] = []
    for start in range(0, n, _BUILD_CHUNK):
        if should_stop is not None and should_stop():
            raise TrainingCancelled("stopped while building the neighbour table")
        stop = min(start + _BUILD_CHUNK, n)
        queries = [vectors._parse(vectors.words[row], None, unit, []) for row in range(start, stop)]
        means = vectors._mean_directions(queries)
        own = [[row] for row in range(start, stop)]
        found.extend(vectors._vnni_shortlists(means, queries, own, unit, len(vectors), k))
        if progress is not None:
            progress(stop, n)
    return found
