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

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.atomic import save_array
from model.errors import ModelFormatError, ParameterError, TrainingCancelled

if TYPE_CHECKING:
    from model.vectors import Vectors

# Words whose neighbours are gathered together while building, and vocabulary rows scored
# against them at a time: a 512 x 2048 block was the fastest of the sizes tried on 2 cores
# (256-2048 words x 1024-4096 rows), and a cancel is still noticed within a second or so.
_BUILD_CHUNK = 512
_BUILD_ROWS = 2048
# The int8 kernel hands back a query whose top k is a crowd of near-ties at its precision,
# to be scored again in float32. Models whose vectors share one dominant direction (text with
# little structure, or trained little) send most queries back, and then scanning twice costs
# more than the float32 route alone: past this share of one chunk, the build takes that route.
_CROWDED_SHARE = 0.15
_CROWD_PROBE = 128


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
        save_array(path, records)

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
    seconds: float | None = None,
) -> NeighbourTable | None:
    """The table for the `words` most frequent words (all when None), with the search's own
    exact rescoring and ranking, so it answers exactly what the search would.

    The cost grows with the indexed words times the vocabulary: a model of 2 M words takes
    20 times as long per indexed word as one of 100k. With `seconds`, the build stops
    scanning at the first chunk boundary past that time and keeps the words done so far,
    the most frequent ones: a shorter table, exact for every word it holds.

    Costs about one batched search per indexed word with AVX-512 VNNI, half of one elsewhere
    (each pair of indexed words scored once): on 2 cores, 8 s and 13-20 s for 100k x 100k x
    100. Returns None when there is nothing
    to index (fewer than two words, `words=0` or `k=0`). `should_stop` is polled between
    chunks (raising `TrainingCancelled`); `progress` gets (words done, words to do).
    """
    if k < 0 or (words is not None and words < 0):
        raise ParameterError(f"neighbour table size must be non-negative, got k={k}, words={words}")
    if seconds is not None and not seconds > 0:
        raise ParameterError(f"the neighbour table's time budget must be positive, got {seconds}")
    deadline = None if seconds is None else time.monotonic() + seconds
    vocab = len(vectors)
    n = vocab if words is None else min(words, vocab)
    k = min(k, vocab - 1)
    if n <= 0 or k <= 0:
        return None
    index = vectors.key_to_index
    shortlists = _shortlists(vectors, n, k, _Budget(should_stop, deadline), progress)
    n = len(shortlists)
    rows = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float64)
    for start in range(0, n, _BUILD_CHUNK):
        stop = min(start + _BUILD_CHUNK, n)
        hits = vectors._ranked_one_word(range(start, stop), shortlists[start:stop], k)
        for row, found in enumerate(hits, start):
            rows[row] = [index[w] for w, _ in found]
            scores[row] = [s for _, s in found]
    return NeighbourTable.checked(rows, scores, vocab, "built table")


@dataclass(frozen=True)
class _Budget:
    """When the build stops: on a cancel (raising), or at its deadline (keeping what is done)."""

    should_stop: Callable[[], bool] | None
    deadline: float | None

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("stopped while building the neighbour table")

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def _shortlists(
    vectors: Vectors,
    n: int,
    k: int,
    budget: _Budget,
    progress: Callable[[int, int], None] | None,
) -> list[np.ndarray]:
    """For each of the first `n` words (fewer when the budget runs out: the words of the
    chunks done), rows certain to hold its exact top `k` (then rescored exactly, as the
    search does). With AVX-512 VNNI, the int8 kernel takes the words until a chunk shows the
    model crowded (`_CROWDED_SHARE`); the float32 route takes the rest."""
    from model import vnni_search
    from model.vectors import _VNNI_MAX_TOPN

    found: list[np.ndarray] = []
    if k <= _VNNI_MAX_TOPN and vnni_search.serves(vectors.vector_size):
        found, crowded = _vnni_shortlists(vectors, n, k, budget, progress)
        if not crowded:
            return found
    return found + _float32_shortlists(vectors, len(found), n, k, budget, progress)


def _float32_shortlists(
    vectors: Vectors,
    first: int,
    n: int,
    k: int,
    budget: _Budget,
    progress: Callable[[int, int], None] | None,
) -> list[np.ndarray]:
    """`_shortlists` for words `first` to `n` by float32 products.

    word a's score for row b and word b's score for row a are the same dot product up to
    rounding, so each pair of words from `first` on is computed once, for the lower-numbered
    word's block, and offered to both heaps: half the multiply-adds of searching word by
    word. The offered scores are float32 products of one side's query direction (its unit
    row, normalised again exactly as a query is) with the other's unit row, so their error
    against the exact score they stand for is the float32 rounding bound plus twice the
    largest gap between a unit row and its query direction; the shortlist band is widened by
    that. Rows before `first` (words another route took) are scored for each block of words
    on its own.
    """
    from model import search
    from model.vectors import _RESCORE_MARGIN, _band_shortlists, _unit_rows

    unit = vectors.unit_vectors
    vocab = len(vectors)
    heap_k = min(k + _RESCORE_MARGIN, vocab)
    queries = np.empty((n - first, unit.shape[1]), dtype=np.float32)  # row i: word first + i
    gap = 0.0
    for start in range(first, n, 4096):
        stop = min(start + 4096, n)
        block = _unit_rows(unit[start:stop])
        queries[start - first : stop - first] = block
        diff = block.astype(np.float64) - unit[start:stop]
        gap = max(gap, float(np.sqrt(np.einsum("ij,ij->i", diff, diff)).max(initial=0.0)))
    slack = vectors._dot_rounding_bound() + 2 * gap * (1 + 1e-6) + 1e-12
    vals, found = search.new_heaps(n - first, heap_k)
    # Rows before `first` go in first: a heap must be offered its rows in increasing order,
    # so that among equal scores it keeps the lower row, as the search does.
    no_own_ptr, no_own_rows = np.zeros(_BUILD_CHUNK + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
    for i0 in range(first, n, _BUILD_CHUNK) if first else ():
        budget.check()
        if budget.spent():
            return []
        q0, q1 = i0 - first, min(i0 + _BUILD_CHUNK, n) - first
        for j0 in range(0, first, _BUILD_ROWS):
            block_scores = queries[q0:q1] @ unit[j0 : min(j0 + _BUILD_ROWS, first)].T
            search.push_block(block_scores, j0, no_own_ptr[: q1 - q0 + 1], no_own_rows, vals[q0:q1], found[q0:q1])
    done = n
    for i0 in range(first, n, _BUILD_CHUNK):
        budget.check()
        if i0 > first and budget.spent():
            # A word's heap is complete once its own chunk has scanned the rows after it: the
            # rows before it were offered by the earlier chunks.
            done = i0
            break
        i1 = min(i0 + _BUILD_CHUNK, n)
        q0, q1 = i0 - first, i1 - first
        own_ptr = np.arange(q1 - q0 + 1, dtype=np.int64)
        own_rows = np.arange(i0, i1, dtype=np.int64)
        for j0 in range(i0, vocab, _BUILD_ROWS):
            j1 = min(j0 + _BUILD_ROWS, vocab)
            block_scores = queries[q0:q1] @ unit[j0:j1].T
            search.push_block(block_scores, j0, own_ptr, own_rows, vals[q0:q1], found[q0:q1])
            # The same products for the words of rows [b0, b1), beyond this block of words.
            b0, b1 = max(j0, i1), min(j1, n)
            if b0 < b1:
                part = block_scores[:, b0 - j0 : b1 - j0]
                search.push_block_mirrored(part, i0, vals[b0 - first : b1 - first], found[b0 - first : b1 - first])
        if progress is not None:
            progress(i1, n)
    vals, found = search.sorted_heaps(vals[: done - first], found[: done - first])

    def score_in_full(q: int) -> np.ndarray:
        full = unit @ queries[q]
        full[first + q] = -np.inf
        return full

    return _band_shortlists(vals, found, k, vocab, slack, score_in_full)


def _vnni_shortlists(
    vectors: Vectors,
    n: int,
    k: int,
    budget: _Budget,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[np.ndarray], bool]:
    """`_shortlists` on a CPU with AVX-512 VNNI: each word searched as a one-word query, a
    chunk at a time, by the kernel the search itself uses (`model.vnni_search`). It does
    every multiply-add twice where the float32 route shares them between two words, and is
    still faster: 8.4 s against 13.0 s for 100k x 100k x 100 on 2 cores, unless the model is
    crowded. Returns the shortlists of the chunks done, and whether it stopped at a crowded
    chunk (see `_CROWDED_SHARE`), leaving the other words to the float32 route."""
    vectors.int8_rows  # noqa: B018 - lays the rows out for the kernel
    unit = vectors.unit_vectors
    found: list[np.ndarray] = []
    start = 0
    while start < n:
        budget.check()
        if start and budget.spent():
            break
        # A short first chunk tells whether the model is crowded at little cost.
        stop = min(start + (min(_CROWD_PROBE, _BUILD_CHUNK) if not start else _BUILD_CHUNK), n)
        queries = [vectors._parse(vectors.words[row], None, unit, []) for row in range(start, stop)]
        means = vectors._mean_directions(queries)
        own = [[row] for row in range(start, stop)]
        crowds: list[int] = []
        found.extend(vectors._vnni_shortlists(means, queries, own, unit, len(vectors), k, crowds))
        if progress is not None:
            progress(stop, n)
        if sum(crowds) > _CROWDED_SHARE * (stop - start) and stop < n:
            return found, True
        start = stop
    return found, False
