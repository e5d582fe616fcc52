"""Read-only word-vector queries with gensim `KeyedVectors` semantics.

The numbers this module returns are meant to be interchangeable with gensim's, so that
results from this service can be compared with published gensim baselines; where the code
looks more elaborate than a plain cosine search, it is usually to reproduce gensim's exact
arithmetic or tie handling.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeGuard, overload

import numpy as np
import numpy.typing as npt

from model.corpus import check_storable_words
from model.errors import ModelFormatError, ParameterError, UnknownWordError

if TYPE_CHECKING:
    from model import search, vnni_search
    from model.neighbours import NeighbourTable
    from model.subwords import Subwords

__all__ = ["Method", "Query", "Term", "Terms", "Vectors"]

logger = logging.getLogger(__name__)

FloatArray: TypeAlias = npt.NDArray[np.float32]
IntArray: TypeAlias = npt.NDArray[np.intp]

#: One query term: a vocabulary word or a raw vector of length `vector_size`, alone (weight 1)
#: or as a `(term, weight)` pair, as gensim accepts in `most_similar`.
Term: TypeAlias = str | np.ndarray | tuple[str | np.ndarray, float]
#: One term, several terms, or nothing; a 2-D array counts as one raw vector per row (as in gensim).
Terms: TypeAlias = Term | Sequence[Term] | None
#: A batch query: positive terms alone, a `(positive, negative)` pair, or a mapping with those keys.
Query: TypeAlias = Terms | tuple[Terms, Terms] | Mapping[str, Terms]
#: "add" is 3CosAdd (`most_similar`), "mul" is 3CosMul (`most_similar_cosmul`).
Method: TypeAlias = Literal["add", "mul"]

# Bounds on temporaries, so a query over millions of words never allocates more than this.
_SCORE_CHUNK_BYTES = 64 * 2**20
# 3CosAdd batches score this many bytes of (queries x rows) at a time: about an L2 cache, so
# the selection reads what the matrix product has just written while it is hot, and blocks
# are still wide enough (4,096 rows for 64 queries) for BLAS to run near full speed.
_SCORE_BLOCK_BYTES = 2**20
_MIN_SCORE_BLOCK = 1024
_ADD_QUERY_CHUNK = 256
# Below this many queries the int8 scan (one pass per query over a quarter of the bytes) beats
# one float32 matrix product for the whole batch; measured with bench/query_vs_gensim.py.
_BLAS_MIN_QUERIES = 8
# The int8 copy takes about as long to build as 80 float32 searches save (1M x 100: 1.6 s
# against ~20 ms saved per query), so it is built only once a Vectors has answered this many
# small searches; until then they use the float32 path. (The service builds it at load.)
_INT8_AFTER_SEARCHES = 32
# Over fewer values than this (rows searched x dimensions), a few queries take the float32
# matrix-vector product even once the int8 copy exists: its pass is then shorter than the
# int8 routes' fixed costs (quantising the query, the kernel calls). The crossover on 2 cores
# was near 50k x 100 (0.26 ms either way; 0.09 against 0.13 ms at 5k x 100).
_INT8_MIN_VALUES = 4_000_000
# An int8 shortlist longer than this is narrowed in float32 before the exact rescoring (a
# float32 product per row costs half a float64 one, and drops all but a few rows).
_INT8_NARROW_ROWS = 4096
# Larger topn take the float32 product: the VNNI search's candidate lists grow with topn.
_VNNI_MAX_TOPN = 1000
# A scan split over threads gives each at least this many rows; below it, thread hand-off
# costs more than the split saves.
_MIN_SCAN_PART = 16384
_NORM_CHUNK_ROWS = 16384
# Block size of the two-level top-k search: small enough that the k best blocks are cheap to
# partition, large enough that the block-max pass runs at memory speed.
_TOPK_BLOCK = 128
# gensim's 3CosMul denominator guard (Levy & Goldberg use the same epsilon).
_COSMUL_EPS = 1e-6
# Candidate rows rescored together (float64, 800 bytes each at 100 dimensions): enough to
# spread the per-call costs, few enough to stay in cache.
_EXACT_GROUP_ROWS = 2048
# Extra candidates taken into the exact rescoring, so that it rarely needs more.
_RESCORE_MARGIN = 8
_EPS32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff
# Relative allowance for float32 rounding in 3CosMul's products and quotient.
_COSMUL_REL_SLACK = 1e-4

_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but none of its threads.
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _scan_pool() -> ThreadPoolExecutor:
    """One pool for every `Vectors`: the scans release the GIL, so its threads run them in
    parallel, and a process holding many models still starts only one thread per core."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="w2v-scan")
        return _POOL


def _unit_rows(block: np.ndarray) -> FloatArray:
    """Unit-normalise rows the way gensim's `matutils.unitvec` does (float64 norm and scale).

    Doing the arithmetic in float64 and rounding once makes `similarity` bit-identical to
    gensim's, which is what lets word-pair correlations agree with gensim to ~1e-12.
    """
    x = np.asarray(block, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    # Zero rows stay zero (gensim's unitvec returns them unchanged) instead of becoming NaN.
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    x *= scale[:, None]
    return x.astype(np.float32)


def _unit_vector(vec: np.ndarray) -> FloatArray:
    return _unit_rows(vec.reshape(1, -1))[0]


def _as_terms(terms: Terms) -> list[Term]:
    """Accept a single word or vector wherever a list is expected, as gensim does."""
    if terms is None:
        return []
    if isinstance(terms, str):
        return [terms]
    if isinstance(terms, np.ndarray):
        if terms.ndim == 1:
            return [terms]
        if terms.ndim == 2:
            return list(terms)
        raise ParameterError(f"a query vector must be 1-D (or 2-D for several), got {terms.ndim}-D")
    if isinstance(terms, tuple) and len(terms) == 2 and _is_weight(terms[1]):
        return [terms]  # type: ignore[list-item]  # one (term, weight) pair
    if not isinstance(terms, Iterable):
        return [terms]  # a lone term of another type, which the caller refuses by name
    return list(terms)  # type: ignore[arg-type]


def _split_query(query: Query) -> tuple[Terms, Terms]:
    if isinstance(query, Mapping):
        unexpected = set(query) - {"positive", "negative"}
        if unexpected:
            raise ParameterError(f"unexpected query keys: {sorted(unexpected)}; use 'positive'/'negative'")
        return query.get("positive"), query.get("negative")
    # A pair is (positive, negative) unless both items are single words or vectors, so
    # ("king", "queen") stays two positive words while ("king", ["man"]) is a full query.
    if (
        isinstance(query, tuple | list)
        and len(query) == 2
        and not all(isinstance(item, str | np.ndarray) for item in query)
        and not _is_weight(query[1])  # ("king", 2.0) is one weighted term
        and not any(_is_weighted_term(item) for item in query)  # [("king", 2.0), "queen"]: two terms
    ):
        return query[0], query[1]  # type: ignore[return-value]
    return query, None  # type: ignore[return-value]


def _is_weighted_term(value: object) -> TypeGuard[tuple[str | np.ndarray, float]]:
    return (
        isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str | np.ndarray) and _is_weight(value[1])
    )


def _is_weight(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass
class _Parsed:
    """A query resolved to vectors; `excluded` holds the rows of its own words."""

    positive: list[FloatArray]
    negative: list[FloatArray]
    excluded: set[int]
    weighted: bool = False  # some term came with a weight: its vector is weight x the unit vector
    zero_words: list[str] = field(default_factory=list)  # words whose vector is all zeros


def _check_parsed(query: _Parsed, method: Method) -> None:
    if query.zero_words:
        raise _no_direction(query.zero_words)
    if query.weighted and method == "mul":
        raise ParameterError("term weights apply to most_similar (3CosAdd) only, not to 3CosMul")
    if not query.positive and (method == "mul" or not query.negative):
        needed = "positive term" if method == "mul" else "word or vector"
        raise ParameterError(f"a query needs at least one {needed}")


# Far above any trained vector's length, far below where float32 products with it overflow.
_MAX_QUERY_NORM = 1e30


def _query_vector(term: np.ndarray, dim: int) -> FloatArray:
    """A raw query vector in float32, or the ParameterError that says why it cannot be searched."""
    if term.shape != (dim,):
        raise ParameterError(f"a query vector needs the model's {dim} numbers, got one of shape {term.shape}")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            vec = term.astype(np.float32, copy=False)
    except (TypeError, ValueError):
        raise ParameterError(f"a query vector must hold numbers, got dtype {term.dtype}") from None
    # Checked in float32, the precision it is searched in: 1e300 is infinite there.
    if not np.isfinite(vec).all():
        raise ParameterError(
            "a query vector must hold finite float32 numbers only (no NaN, infinity, or beyond 3.4e38)"
        )
    if not vec.any():
        raise ParameterError(
            "a query vector of zeros (in float32) has no direction: no word is more similar to it than another"
        )
    if not float(np.linalg.norm(vec.astype(np.float64))) <= _MAX_QUERY_NORM:
        raise ParameterError(
            f"a query vector's length must be at most {_MAX_QUERY_NORM:g}, so that its products with the words "
            "stay finite in float32; scale it down"
        )
    return vec


def _cancelled_out() -> ParameterError:
    return ParameterError(
        "the query's terms cancel out (the same word positive and negative, say): their mean has no direction "
        "to compare words with"
    )


def _no_direction(words: Sequence[str]) -> ParameterError:
    # gensim answers such queries with NaN scores; any ranking of them would be made up.
    return ParameterError(
        f"the vector of {', '.join(repr(w) for w in words)} is all zeros: it has no direction, so no word "
        "is more similar to it than another"
    )


def _top_k(scores: FloatArray, k: int) -> IntArray:
    """Columns of the best `k` scores of each row, in no particular order.

    A full `argpartition` of every row dominates batch cost, so rows are first reduced to
    block maxima: the k blocks with the largest maxima hold k values at least as large as the
    k-th largest of the blocked part, so only those blocks (plus the short unblocked tail)
    need partitioning. This reads the scores once at memory speed.
    """
    n_rows, n = scores.shape
    k = min(k, n)
    # Aim for at least 8k blocks so the chosen blocks are a small fraction of the row.
    block = min(_TOPK_BLOCK, n // (8 * k))
    if block < 8:
        if k == n:
            return np.broadcast_to(np.arange(n), (n_rows, n)).copy()
        return np.argpartition(scores, n - k, axis=1)[:, n - k :]
    n_full = n // block
    blocked = scores[:, : n_full * block].reshape(n_rows, n_full, block)
    best = np.argpartition(blocked.max(axis=2), n_full - k, axis=1)[:, n_full - k :]
    cand_scores = blocked[np.arange(n_rows)[:, None], best].reshape(n_rows, -1)
    cand = (best[:, :, None] * block + np.arange(block)).reshape(n_rows, -1)
    if n > n_full * block:
        tail = np.arange(n_full * block, n)
        cand_scores = np.concatenate([cand_scores, scores[:, n_full * block :]], axis=1)
        cand = np.concatenate([cand, np.broadcast_to(tail, (n_rows, len(tail)))], axis=1)
    m = cand.shape[1]
    pick = np.argpartition(cand_scores, m - k, axis=1)[:, m - k :]
    return np.take_along_axis(cand, pick, axis=1)


def _band_shortlists(
    vals: np.ndarray, rows: np.ndarray, topn: int, n: int, slack: float, score_in_full: Callable[[int], FloatArray]
) -> list[IntArray]:
    """Rows per query certain to hold its exact top `topn`, from its heap of the best float32
    scores among `n` rows (sorted, best first; each score within `slack` of the exact score
    it stands for).

    Rows whose score is within twice the slack of the topn-th best may outrank it exactly; if
    the heap's worst is still inside that band, some such rows may have missed the heap, so
    that (rare) query is scored again in full by `score_in_full(q)` (its own rows at -inf).
    """
    k = vals.shape[1]
    shortlists: list[IntArray] = []
    for q in range(len(vals)):
        taken = rows[q][rows[q] >= 0]
        if len(taken) < k or k == n:
            shortlists.append(taken)  # the heap holds every row the query may return
            continue
        floor = vals[q, topn - 1] - 2 * slack
        if vals[q, k - 1] < floor:
            shortlists.append(taken)
            continue
        shortlists.append(np.flatnonzero(score_in_full(q) >= floor))
    return shortlists


def _check_limits(topn: int, restrict_vocab: int | None) -> None:
    if isinstance(topn, bool) or not isinstance(topn, int | np.integer) or topn < 0:
        raise ParameterError(f"topn must be a non-negative integer, got {topn!r}")
    if restrict_vocab is not None and (
        isinstance(restrict_vocab, bool) or not isinstance(restrict_vocab, int | np.integer) or restrict_vocab < 1
    ):
        raise ParameterError(f"restrict_vocab must be a positive integer or None, got {restrict_vocab!r}")


class Vectors:
    """Word vectors plus the similarity queries the service answers.

    `vectors` may be a read-only memory map: it is never written to and never copied, except
    for one lazily built unit-normalised float32 matrix that every cosine query reuses.
    Words must be ordered most frequent first, because `restrict_vocab=N` means "the first N
    rows" (gensim's convention).
    """

    def __init__(
        self,
        words: Sequence[str],
        vectors: np.ndarray,
        counts: np.ndarray | None = None,
        *,
        search_threads: int | None = None,
    ) -> None:
        """`search_threads`: threads a single query's scan may be split over (default: one
        per core); batches of many queries use BLAS and its own thread setting."""
        words = list(words)
        if vectors.ndim != 2:
            raise ModelFormatError(f"vectors must be a 2-D (words x dimensions) array, got {vectors.ndim}-D")
        if vectors.shape[0] != len(words):
            raise ModelFormatError(f"{len(words)} words but {vectors.shape[0]} vector rows")
        if vectors.shape[1] < 1:
            raise ModelFormatError("vectors must have at least one dimension")
        if not np.issubdtype(vectors.dtype, np.floating):
            raise ModelFormatError(f"vectors must be floating point, got {vectors.dtype}")
        check_storable_words(words, ModelFormatError)
        key_to_index = {w: i for i, w in enumerate(words)}
        if len(key_to_index) != len(words):
            seen: set[str] = set()
            dupes = [w for w in words if w in seen or seen.add(w)]  # type: ignore[func-returns-value]
            raise ModelFormatError(f"duplicate words: {', '.join(repr(w) for w in dict.fromkeys(dupes))}")
        if counts is not None:
            counts = np.asarray(counts)
            if counts.shape != (len(words),):
                raise ModelFormatError(f"counts must have shape ({len(words)},), got {counts.shape}")

        self.words: list[str] = words
        self.key_to_index: dict[str, int] = key_to_index
        # float32 input (including a memmap) is kept as is; anything else is converted once.
        self.vectors: np.ndarray = vectors if vectors.dtype == np.float32 else vectors.astype(np.float32)
        self.counts: np.ndarray | None = counts
        self._unit: FloatArray | None = None
        self._int8: search.Int8Rows | None = None
        self._packed: vnni_search.PackedRows | None = None  # on CPUs with AVX-512 VNNI
        self._small_searches = 0
        #: Precomputed top neighbours of the most frequent words (`model.neighbours`), if any.
        self.neighbours: NeighbourTable | None = None
        #: The n-gram rows of a model trained with subwords: vectors for words outside the
        #: vocabulary, which queries then accept like any word (they are never in the results).
        self.subwords: Subwords | None = None
        self.search_threads: int = max(1, search_threads if search_threads is not None else os.cpu_count() or 1)
        self._unit_lock = threading.Lock()

    # ------------------------------------------------------------------ container protocol

    @property
    def vector_size(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.key_to_index

    def __repr__(self) -> str:
        return f"Vectors({len(self)} words x {self.vector_size} dimensions)"

    def index(self, word: str) -> int:
        try:
            return self.key_to_index[word]
        except KeyError:
            raise UnknownWordError([word], self.key_to_index) from None

    def has_vector(self, word: str) -> bool:
        """In the vocabulary, or, with subwords, sharing an n-gram with it."""
        return word in self.key_to_index or self._subword_vector(word) is not None

    def _subword_vector(self, word: str) -> FloatArray | None:
        return self.subwords.vector(word) if self.subwords is not None else None

    def get_vector(self, word: str, norm: bool = False) -> FloatArray:
        """The word's vector, read-only so callers cannot silently invalidate the unit cache.

        With subwords, a word outside the vocabulary gets the vector of its n-grams."""
        if word not in self.key_to_index and (oov := self._subword_vector(word)) is not None:
            oov = _unit_vector(oov) if norm else oov
            oov.flags.writeable = False
            return oov
        i = self.index(word)
        vec = self.vectors[i]
        if norm:
            # Building the whole unit matrix for one word would be wasteful; both give equal bits.
            vec = self._unit[i] if self._unit is not None else _unit_vector(vec)
        view = vec.view()
        view.flags.writeable = False
        return view

    def __getitem__(self, words: str | Sequence[str]) -> FloatArray:
        """One word's vector, or a matrix with one row per word of a list (as gensim)."""
        if isinstance(words, str):
            return self.get_vector(words)
        self._check_known(words)
        return np.vstack([self.get_vector(w) for w in words]) if words else np.zeros((0, self.vector_size), np.float32)

    # ------------------------------------------------------------------ gensim KeyedVectors names

    @property
    def index_to_key(self) -> list[str]:
        """The words by row, most frequent first: gensim's name for `words`."""
        return self.words

    def get_index(self, word: str, default: int | None = None) -> int:
        """The word's row; `default` if it is unknown and one is given, else UnknownWordError."""
        row = self.key_to_index.get(word)
        if row is not None:
            return row
        if default is not None:
            return default
        raise UnknownWordError([word], self.key_to_index)

    def has_index_for(self, word: str) -> bool:
        return word in self.key_to_index

    def similar_by_word(self, word: str, topn: int = 10, restrict_vocab: int | None = None) -> list[tuple[str, float]]:
        return self.most_similar(word, topn=topn, restrict_vocab=restrict_vocab)

    similar_by_key = similar_by_word

    def similar_by_vector(
        self, vector: npt.ArrayLike, topn: int = 10, restrict_vocab: int | None = None
    ) -> list[tuple[str, float]]:
        """Words closest to a raw vector (no word is excluded, as gensim)."""
        return self.most_similar(positive=[np.asarray(vector)], topn=topn, restrict_vocab=restrict_vocab)

    def distances(self, word_or_vector: str | npt.ArrayLike, other_words: Sequence[str] = ()) -> FloatArray:
        """Cosine distances (1 - similarity) from a word or vector to `other_words`, or to every
        word when none are given, in gensim's float32 arithmetic (so ties fall alike)."""
        v = self.get_vector(word_or_vector) if isinstance(word_or_vector, str) else np.asarray(word_or_vector)
        if other_words:
            self._check_known(other_words)
            # With subwords, words outside the vocabulary take their n-grams' vectors.
            others = np.vstack([self.get_vector(w) for w in other_words])
        else:
            others = self.vectors
        sims = others @ v / (np.linalg.norm(v) * np.linalg.norm(others, axis=1))
        return np.asarray(1 - sims)

    def closer_than(self, w1: str, w2: str) -> list[str]:
        """Words closer to `w1` than `w2` is, most frequent first (`w1` itself left out). With
        subwords either may be outside the vocabulary; the answers are vocabulary words."""
        dists = self.distances(w1)
        i2 = self.key_to_index.get(w2)
        # A vocabulary word's distance read from the same product, so that it never counts as
        # closer than itself by a rounding difference.
        limit = dists[i2] if i2 is not None else self.distances(w1, [w2])[0]
        own = self.key_to_index.get(w1)
        return [self.words[i] for i in np.flatnonzero(dists < limit) if i != own]

    def rank(self, w1: str, w2: str) -> int:
        """1 + how many words are closer to `w1` than `w2` is."""
        return len(self.closer_than(w1, w2)) + 1

    @property
    def unit_vectors(self) -> FloatArray:
        """All vectors scaled to unit length; built once, on first use, in bounded chunks."""
        if self._unit is None:
            with self._unit_lock:  # concurrent first queries must not each build a copy
                if self._unit is None:
                    unit = np.empty(self.vectors.shape, dtype=np.float32)
                    for start in range(0, len(self), _NORM_CHUNK_ROWS):
                        stop = start + _NORM_CHUNK_ROWS
                        block = self.vectors[start:stop]
                        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
                        if len(bad):
                            raise ModelFormatError(
                                f"the vector of {self.words[start + bad[0]]!r} holds NaN or infinity; "
                                "no similarity can be computed from it"
                            )
                        unit[start:stop] = _unit_rows(block)
                    unit.flags.writeable = False
                    self._unit = unit
        return self._unit

    @property
    def int8_rows(self) -> search.Int8Rows:
        """An int8 copy of `unit_vectors` for the int8 searches; built once, on first use (the
        33rd small search builds it, or a caller that expects many queries, up front).

        On a CPU with AVX-512 VNNI the copy is laid out for that kernel (`vnni_search`), which
        then answers single queries and batches alike, and the row-major codes are dropped.
        """
        if self._int8 is None:
            unit = self.unit_vectors
            with self._unit_lock:
                if self._int8 is None:
                    # Numba and llvmlite: loaded only once a search needs them
                    from model import search, vnni_search

                    rows = search.Int8Rows.build(unit, _NORM_CHUNK_ROWS)
                    if vnni_search.serves(self.vector_size):
                        self._packed = vnni_search.PackedRows.build(rows)
                        rows = rows.without_codes()
                    self._int8 = rows
        return self._int8

    # ------------------------------------------------------------------ pairwise similarity

    def similarity(self, w1: str, w2: str) -> float:
        """Cosine similarity, computed exactly as gensim does (float64 norm, float32 dot)."""
        return float(np.dot(self.get_vector(w1, norm=True), self.get_vector(w2, norm=True)))

    def distance(self, w1: str, w2: str) -> float:
        return 1.0 - self.similarity(w1, w2)

    def n_similarity(self, ws1: Sequence[str], ws2: Sequence[str]) -> float:
        """Cosine between the means of two word sets (raw, not unit, vectors, as gensim).

        Unlike gensim, which silently drops unknown words, unknown words are an error: a
        similarity computed from a different set than the caller asked about is misleading.
        """
        if not ws1 or not ws2:
            raise ParameterError("n_similarity needs at least one word on each side")
        self._check_known([*ws1, *ws2])
        mean1 = np.mean([self.get_vector(w) for w in ws1], axis=0)
        mean2 = np.mean([self.get_vector(w) for w in ws2], axis=0)
        return float(np.dot(_unit_vector(mean1), _unit_vector(mean2)))

    def doesnt_match(self, words: Sequence[str]) -> str:
        """The word furthest from the mean of the others' unit vectors (gensim semantics).

        As in gensim, unknown words are ignored (with a warning) so one rare word does not
        spoil the question; only if none is known is that an error.
        """
        words = [words] if isinstance(words, str) else list(words)
        if not words:
            raise ParameterError("doesnt_match needs at least one word")
        used = [w for w in words if self.has_vector(w)]
        if not used:
            raise UnknownWordError(words, self.key_to_index)
        if len(used) != len(words):
            logger.warning("doesnt_match ignores unknown words %s", sorted(set(words) - set(used)))
        unit = np.vstack([self.get_vector(w, norm=True) for w in used])
        mean = _unit_vector(unit.sum(axis=0, dtype=np.float32) / np.float32(len(used)))
        dists = unit @ mean
        # gensim sorts (distance, word) pairs and takes the last of the reversed order, i.e.
        # the smallest distance, ties going to the smallest word.
        return min(zip(dists.tolist(), used, strict=True))[1]

    # ------------------------------------------------------------------ nearest neighbours

    @overload
    def most_similar(
        self,
        positive: Terms = None,
        negative: Terms = (),
        topn: int = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]]: ...

    @overload
    def most_similar(
        self, positive: Terms = None, negative: Terms = (), *, topn: None, restrict_vocab: int | None = None
    ) -> FloatArray: ...

    def most_similar(
        self,
        positive: Terms = None,
        negative: Terms = (),
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | FloatArray:
        """Words closest to the normalised mean of the unit query vectors (3CosAdd).

        Negative terms enter the mean with weight -1. Raw vectors are added unnormalised, and
        the query's own words are never returned — both exactly as gensim. `topn=None`
        returns, as gensim does, the cosine of every word (of the first `restrict_vocab`) to
        that mean, in vocabulary order, the query's own words included.
        """
        if topn is None:
            return self._all_scores(positive, negative, restrict_vocab)
        return self._search([(positive, negative)], topn, restrict_vocab, "add")[0]

    def _all_scores(self, positive: Terms, negative: Terms, restrict_vocab: int | None) -> FloatArray:
        _check_limits(0, restrict_vocab)
        mean = self.check_query(positive, negative)
        return np.asarray(self.unit_vectors[: self._rows_searched(restrict_vocab)] @ mean)

    def check_query(self, positive: Terms = None, negative: Terms = (), method: Method = "add") -> FloatArray:
        """Raise what a search of this query would raise (UnknownWordError, ParameterError),
        without searching; returns its mean direction. A server checks each query so before
        batching it with others, whose search one bad query would otherwise fail."""
        [query] = self._checked([(positive, negative)], method)
        mean = self._mean_directions([query])[0]
        if method == "add" and not mean.any():
            raise _cancelled_out()
        return mean

    def precomputed_neighbours(
        self, word: str, topn: int = 10, restrict_vocab: int | None = None
    ) -> list[tuple[str, float]] | None:
        """`most_similar(word, topn=topn, restrict_vocab=restrict_vocab)` read from the
        neighbour table without searching, or None when the table cannot answer it exactly
        (no table, a word outside it, or a `topn` beyond it). Costs microseconds, so a server
        can answer it where it stands instead of queueing it for a search thread."""
        _check_limits(topn, restrict_vocab)
        if topn == 0:
            return []
        if word not in self.key_to_index and self.has_vector(word):
            return None  # a vector from its n-grams, searched for
        row = self.index(word)
        if not self.vectors[row].any():
            raise _no_direction([word])
        return self._table_hits(row, topn, self._rows_searched(restrict_vocab))

    def most_similar_cosmul(
        self,
        positive: Terms = None,
        negative: Terms = (),
        topn: int = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]]:
        """3CosMul (Levy & Goldberg): product of positive over negative shifted cosines.

        Unlike gensim, which ignores `restrict_vocab` here, the search honours it.
        """
        return self._search([(positive, negative)], topn, restrict_vocab, "mul")[0]

    def most_similar_batch(
        self,
        queries: Sequence[Query],
        topn: int = 10,
        restrict_vocab: int | None = None,
        *,
        method: Method = "add",
    ) -> list[list[tuple[str, float]]]:
        """Answer many queries with one matrix product; same results as one call per query.

        Each query is a word, a list of positive terms, a `(positive, negative)` pair or a
        `{"positive": ..., "negative": ...}` mapping. All unknown words of the whole batch are
        reported together in one `UnknownWordError`.
        """
        return self._search([_split_query(q) for q in queries], topn, restrict_vocab, method)

    def analogy(
        self,
        a: str,
        b: str,
        c: str,
        topn: int = 10,
        method: Method = "add",
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]]:
        """Answer "a is to b as c is to ?", i.e. the words most similar to b + c - a."""
        return self._search([([b, c], [a])], topn, restrict_vocab, method)[0]

    # ------------------------------------------------------------------ search internals

    def _check_known(self, words: Sequence[str]) -> None:
        unknown = [w for w in words if not self.has_vector(w)]
        if unknown:
            raise UnknownWordError(unknown, self.key_to_index)

    def _parse(self, positive: Terms, negative: Terms, unit: FloatArray, unknown: list[str]) -> _Parsed:
        """Resolve terms to vectors; unknown words are collected, not raised, so a batch can
        report all of them at once."""
        sides: list[list[FloatArray]] = [[], []]
        excluded: set[int] = set()
        zero_words: list[str] = []
        weighted = False
        for side, terms in zip(sides, (positive, negative), strict=True):
            for item in _as_terms(terms):
                term, weight = item, None
                if _is_weighted_term(item):
                    term, weight = item
                    if not math.isfinite(weight):
                        raise ParameterError(f"a term's weight must be a finite number, got {weight!r}")
                    weighted = True
                start = len(side)
                if isinstance(term, str):
                    i = self.key_to_index.get(term)
                    if i is not None:
                        side.append(unit[i])
                        excluded.add(i)
                        if not unit[i].any():
                            zero_words.append(term)
                    elif (oov := self._subword_vector(term)) is not None:
                        side.append(_unit_vector(oov))
                        if not oov.any():
                            zero_words.append(term)
                    else:
                        unknown.append(term)
                        continue
                elif isinstance(term, np.ndarray):
                    side.append(_query_vector(term, self.vector_size))
                else:
                    raise ParameterError(
                        f"query terms must be words, vectors or (word or vector, weight) pairs, got {item!r:.80}"
                    )
                if weight is not None and len(side) > start:
                    # In float64, rounded once when added up, as gensim's get_mean_vector does.
                    # A negative term's weight is its signed share, as in gensim: ("w", 0.5) in
                    # `negative` adds half of w, ("w", -0.5) subtracts it; the side subtracts.
                    signed = weight if side is sides[0] else -weight
                    side[-1] = np.float64(signed) * side[-1]  # type: ignore[assignment]
        return _Parsed(sides[0], sides[1], excluded, weighted, zero_words)

    def _checked(self, raw_queries: Sequence[tuple[Terms, Terms]], method: Method) -> list[_Parsed]:
        """The queries resolved, or what a search of them must raise: every unknown word of
        them all in one UnknownWordError, else the first query's ParameterError."""
        unknown: list[str] = []
        unit = self.unit_vectors
        parsed = [self._parse(pos, neg, unit, unknown) for pos, neg in raw_queries]
        if unknown:
            raise UnknownWordError(unknown, self.key_to_index)
        for query in parsed:
            _check_parsed(query, method)
        return parsed

    def _mean_directions(self, queries: list[_Parsed]) -> FloatArray:
        """gensim's `get_mean_vector(..., pre_normalize=True, post_normalize=True)` per query:
        accumulate in float32 in term order, then unit-normalise. (gensim also divides by the
        term count first, which the normalisation cancels.)"""
        acc = np.zeros((len(queries), self.vector_size), dtype=np.float32)
        for row, query in zip(acc, queries, strict=True):
            for vec in query.positive:
                row += vec
            for vec in query.negative:
                row -= vec
        return _unit_rows(acc)

    def _search(
        self,
        raw_queries: Sequence[tuple[Terms, Terms]],
        topn: int,
        restrict_vocab: int | None,
        method: Method,
    ) -> list[list[tuple[str, float]]]:
        _check_limits(topn, restrict_vocab)
        if method not in ("add", "mul"):
            raise ParameterError(f"method must be 'add' or 'mul', got {method!r}")
        if topn == 0:
            return [[] for _ in raw_queries]  # as gensim: no neighbours asked, none given
        n = self._rows_searched(restrict_vocab)
        # One-word queries the neighbour table answers need neither the unit matrix nor a search.
        looked_up = [self._from_table(pos, neg, topn, n) if method == "add" else None for pos, neg in raw_queries]
        pending = [query for query, hits in zip(raw_queries, looked_up, strict=True) if hits is None]
        found = iter(self._search_all(pending, topn, n, method) if pending else [])
        return [hits if hits is not None else next(found) for hits in looked_up]

    def _rows_searched(self, restrict_vocab: int | None) -> int:
        """How many of the most frequent rows a query may return."""
        return len(self) if restrict_vocab is None else min(restrict_vocab, len(self))

    def _search_all(
        self, raw_queries: Sequence[tuple[Terms, Terms]], topn: int, n: int, method: Method
    ) -> list[list[tuple[str, float]]]:
        parsed = self._checked(raw_queries, method)
        unit = self.unit_vectors
        results: list[list[tuple[str, float]]] = []
        if n == 0:
            return [[] for _ in parsed]
        candidates = unit[:n]
        if method == "add":
            for start in range(0, len(parsed), _ADD_QUERY_CHUNK):
                part = parsed[start : start + _ADD_QUERY_CHUNK]
                means = self._mean_directions(part)
                if not means.any(axis=1).all():
                    raise _cancelled_out()
                shortlists = self._add_shortlist(means, part, candidates, topn)
                results.extend(self._rank(shortlists, self._add_exact(means, shortlists), part, topn))
            return results
        terms_per_query = max(len(q.positive) + len(q.negative) for q in parsed)
        chunk = max(1, _SCORE_CHUNK_BYTES // (4 * n * terms_per_query))
        for start in range(0, len(parsed), chunk):
            part = parsed[start : start + chunk]
            shortlists = self._shortlist(self._mul_scores(part, candidates), part, topn, method)
            results.extend(self._rank(shortlists, self._mul_exact(part, shortlists), part, topn))
        return results

    def _from_table(self, positive: Terms, negative: Terms, topn: int, n: int) -> list[tuple[str, float]] | None:
        """The answer from the neighbour table, for a query of one known word and nothing else."""
        if self.neighbours is None or _as_terms(negative):
            return None
        terms = _as_terms(positive)
        if len(terms) != 1 or not isinstance(terms[0], str):
            return None
        row = self.key_to_index.get(terms[0])
        if row is None or not self.vectors[row].any():
            return None  # the search reports these
        return self._table_hits(row, topn, n)

    def _table_hits(self, row: int, topn: int, n: int) -> list[tuple[str, float]] | None:
        found = self.neighbours.lookup(row, topn, n) if self.neighbours is not None else None
        if found is None:
            return None
        words = self.words
        return [(words[i], s) for i, s in zip(*found, strict=True)]

    def _ranked_one_word(
        self, rows: Sequence[int], shortlists: list[IntArray], topn: int
    ) -> list[list[tuple[str, float]]]:
        """The one-word queries `rows` answered from candidate shortlists known to hold their
        top `topn`: the same exact rescoring and ranking as a search (model.neighbours)."""
        parsed = [self._parse(self.words[row], None, self.unit_vectors, []) for row in rows]
        means = self._mean_directions(parsed)
        return self._rank(shortlists, self._add_exact(means, shortlists), parsed, topn)

    def attach_neighbours(self, table: NeighbourTable | None) -> None:
        """Answer one-word 3CosAdd queries from `table` (built for these vectors) from now on."""
        if table is not None and table.vocab_size != len(self):
            raise ModelFormatError(f"a neighbour table for {table.vocab_size} words does not fit {len(self)} words")
        self.neighbours = table

    def _add_shortlist(
        self, means: FloatArray, queries: list[_Parsed], candidates: FloatArray, topn: int
    ) -> list[IntArray]:
        """Rows per query guaranteed to hold its exact 3CosAdd top `topn` (see `_shortlist`).

        A few queries are answered by the int8 scan (memory-bound: a quarter of the bytes of
        the unit matrix) once the int8 copy exists. Otherwise the scores are float32 products,
        for a batch computed a block of vocabulary rows at a time so the scores stay in cache,
        each block going straight into per-query heaps; the queries x vocabulary score matrix
        is never stored.
        """
        n_queries, n = len(queries), candidates.shape[0]
        k = min(topn + _RESCORE_MARGIN, n)
        excluded = [sorted(i for i in query.excluded if i < n) for query in queries]
        if n_queries < _BLAS_MIN_QUERIES:
            self._small_searches += 1
            big = n * self.vector_size >= _INT8_MIN_VALUES
            if big and (self._int8 is not None or self._small_searches > _INT8_AFTER_SEARCHES):
                self.int8_rows  # noqa: B018 - built here, once
                if self._packed is None:
                    return self._int8_shortlists(means, excluded, n, topn)
                if topn <= _VNNI_MAX_TOPN:
                    return self._vnni_shortlists(means, queries, excluded, candidates, n, topn)
            # A matrix-vector product is what one query needs; a one-row gemm is slower.
            scores = (candidates @ means[0])[None, :] if n_queries == 1 else means @ candidates.T
            if self._small_searches <= _INT8_AFTER_SEARCHES:
                # Plain NumPy, so a one-shot caller (the CLI) loads no compiled kernel at all.
                return self._shortlist(scores, queries, topn, "add")
            # Later ones keep their best rows in compiled heaps: a few NumPy calls
            # instead of the dozens of a partition, which dominate on small stores.
            return self._heap_shortlists([(scores, 0)], excluded, candidates, means, n, k, topn)
        if self._packed is not None and topn <= _VNNI_MAX_TOPN:
            return self._vnni_shortlists(means, queries, excluded, candidates, n, topn)
        return self._blocked_shortlists(means, excluded, candidates, n, topn)

    def _blocked_shortlists(
        self, means: FloatArray, excluded: list[list[int]], candidates: FloatArray, n: int, topn: int
    ) -> list[IntArray]:
        """Shortlists for a batch from float32 products computed a block of vocabulary rows at
        a time, so the scores stay in cache on their way into the per-query heaps."""
        n_queries = len(means)
        k = min(topn + _RESCORE_MARGIN, n)
        block = max(_MIN_SCORE_BLOCK, _SCORE_BLOCK_BYTES // (4 * n_queries))
        buffer = np.empty((n_queries, block), dtype=np.float32)

        def blocks() -> Iterator[tuple[FloatArray, int]]:
            for start in range(0, n, block):
                part = candidates[start : start + block]
                scores = buffer if len(part) == block else np.empty((n_queries, len(part)), dtype=np.float32)
                np.matmul(means, part.T, out=scores)
                yield scores, start

        return self._heap_shortlists(blocks(), excluded, candidates, means, n, k, topn)

    def _heap_shortlists(
        self, blocks: Iterable[tuple[FloatArray, int]], excluded: list[list[int]], candidates: FloatArray,
        means: FloatArray, n: int, k: int, topn: int,
    ) -> list[IntArray]:  # fmt: skip
        """Shortlists from float32 score blocks (queries x rows, first row) pushed through
        per-query heaps of the best `k`: the score matrix is never stored or partitioned."""
        from model import search

        excluded_ptr = np.array([0, *itertools.accumulate(len(rows) for rows in excluded)], dtype=np.int64)
        excluded_rows = np.array([i for rows in excluded for i in rows], dtype=np.int64)
        vals, rows = search.new_heaps(len(means), k)
        for scores, start in blocks:
            search.push_block(scores, start, excluded_ptr, excluded_rows, vals, rows)
        vals, rows = search.sorted_heaps(vals, rows)

        def score_in_full(q: int) -> FloatArray:
            full = candidates @ means[q]
            full[excluded[q]] = -np.inf
            return full

        return _band_shortlists(vals, rows, topn, n, self._dot_rounding_bound(), score_in_full)

    def _vnni_shortlists(
        self, means: FloatArray, queries: list[_Parsed], excluded: list[list[int]], candidates: FloatArray, n: int,
        topn: int, crowds: list[int] | None = None,
    ) -> list[IntArray]:  # fmt: skip
        """`vnni_search.shortlists`, its rows split over `search_threads` threads; a query it
        hands back (a crowd of near-ties) is scored in full in float32 instead. `crowds`, if
        given, gets the number of queries handed back."""
        from model import vnni_search

        assert self._packed is not None
        parts = max(1, min(self.search_threads, n // _MIN_SCAN_PART))

        def run_parts(fn: Callable[[int], None], parts_: list[int]) -> None:
            # This thread takes the first part itself rather than wait idle for the pool.
            futures = [_scan_pool().submit(fn, part) for part in parts_[1:]]
            fn(parts_[0])
            for future in futures:
                future.result()

        found = vnni_search.shortlists(self._packed, means, excluded, n, topn, parts, run_parts)
        crowded = [q for q, rows in enumerate(found) if rows is None]
        if crowds is not None:
            crowds.append(len(crowded))
        if len(crowded) == 1:
            q = crowded[0]
            found[q] = self._shortlist((candidates @ means[q])[None, :], [queries[q]], topn, "add")[0]
        elif crowded:
            # Together, as one blocked product: a matrix-vector product per query reads the
            # whole float32 matrix each time, and models whose vectors share one dominant
            # direction (text with little structure, or little trained) send most queries here.
            redone = self._blocked_shortlists(means[crowded], [excluded[q] for q in crowded], candidates, n, topn)
            for q, again in zip(crowded, redone, strict=True):
                found[q] = again
        shortlists: list[IntArray] = []
        for listed in found:
            assert listed is not None
            shortlists.append(listed)
        return shortlists

    @staticmethod
    def _mul_scores(queries: list[_Parsed], candidates: FloatArray) -> FloatArray:
        """gensim's 3CosMul in float32: prod((1 + cos) / 2 over positives) divided by
        (prod over negatives + 1e-6), for all query terms in one matrix product."""
        terms = np.vstack([v for q in queries for v in (*q.positive, *q.negative)])
        shifted = terms @ candidates.T
        shifted += 1.0
        shifted *= 0.5
        scores = np.empty((len(queries), candidates.shape[0]), dtype=np.float32)
        row = 0
        for out, query in zip(scores, queries, strict=True):
            n_pos, n_neg = len(query.positive), len(query.negative)
            np.prod(shifted[row : row + n_pos], axis=0, out=out)
            if n_neg:
                denom = np.prod(shifted[row + n_pos : row + n_pos + n_neg], axis=0)
                denom += np.float32(_COSMUL_EPS)
                out /= denom
            # Without negatives gensim divides by prod([]) + 1e-6: a constant factor that cannot
            # change the shortlist, and which the exact rescoring applies.
            row += n_pos + n_neg
        return scores

    def _dot_rounding_bound(self) -> float:
        """|float32 dot - exact dot| <= gamma_d for unit vectors (Higham's bound, any summation
        order), d the vector size."""
        return self.vector_size * _EPS32 / (1 - self.vector_size * _EPS32)

    def _shortlist(self, scores: FloatArray, queries: list[_Parsed], topn: int, method: Method) -> list[IntArray]:
        """Candidate rows per query, guaranteed to contain its exact top `topn`.

        float32 matrix products round differently depending on the batch shape, so a near-tie
        could rank differently in a batch than alone. Every candidate whose float32 score is
        within twice the float32 error bound of the topn-th best is therefore rescored exactly
        (float64); that makes batched and single results identical, even with duplicate rows.
        """
        n = scores.shape[1]
        # Masking a query's own words (rather than asking for topn + len(words) and filtering,
        # as gensim does) keeps the top-k cost independent of the query length.
        rows = [row for row, query in enumerate(queries) for i in query.excluded if i < n]
        cols = [i for query in queries for i in query.excluded if i < n]
        scores[rows, cols] = -np.inf
        k = min(topn + _RESCORE_MARGIN, n)
        idx = _top_k(scores, k)
        shortlists = list(idx)
        if k == n:
            return shortlists
        ascending = np.sort(np.take_along_axis(scores, idx, axis=1), axis=1)
        threshold = ascending[:, k - min(topn, k)]  # the topn-th best float32 score
        # 3CosMul's products and quotient get a relative allowance on top of the dot products'.
        slack = 2 * self._dot_rounding_bound() + (np.abs(threshold) * _COSMUL_REL_SLACK if method == "mul" else 0.0)
        floor = threshold - slack
        for row in np.flatnonzero(ascending[:, 0] >= floor):
            # Rare: the band reaches past the shortlist (near-duplicate vectors, or a topn close
            # to the vocabulary size), so take every candidate in it.
            shortlists[row] = np.flatnonzero(scores[row] >= floor[row])
        return shortlists

    def _add_exact(self, means: FloatArray, shortlists: list[IntArray]) -> list[np.ndarray]:
        unit = self.unit_vectors
        # A row-wise sum over a contiguous float64 copy adds each row's products in the same
        # order whichever search produced the row and whatever else was in the batch, so a
        # word's score has the same bits on every path. The rows of several queries go
        # through one gather and one product, about _EXACT_GROUP_ROWS at a time: a product
        # per query costs more in calls than in arithmetic, and one for a whole
        # table-building chunk would not fit in cache.
        sizes = [len(rows) for rows in shortlists]
        bounds, rows_in = [0], 0
        for i, size in enumerate(sizes):
            if rows_in and rows_in + size > _EXACT_GROUP_ROWS:
                bounds.append(i)
                rows_in = 0
            rows_in += size
        bounds.append(len(sizes))
        out: list[np.ndarray] = []
        for lo, hi in itertools.pairwise(bounds):
            if lo == hi:
                continue
            if hi - lo == 1:  # the same products and sums, without the batch's bookkeeping calls
                gathered = unit[shortlists[lo]].astype(np.float64)
                gathered *= means[lo].astype(np.float64)
                out.append(gathered.sum(axis=1))
                continue
            gathered = unit[np.concatenate(shortlists[lo:hi])].astype(np.float64)
            gathered *= np.repeat(means[lo:hi].astype(np.float64), sizes[lo:hi], axis=0)
            out.extend(np.split(gathered.sum(axis=1), np.cumsum(sizes[lo:hi])[:-1]))
        return out

    def _int8_shortlists(self, means: FloatArray, excluded: list[list[int]], n: int, topn: int) -> list[IntArray]:
        """The int8 scan for each query, spread over `search_threads` threads: whole queries
        per thread when there are enough of them, otherwise each query's rows in parts."""
        from model import search

        rows = self.int8_rows
        jobs: list[tuple[int, int, int, np.ndarray, float, float, np.ndarray]] = []
        parts = max(1, min(self.search_threads, n // _MIN_SCAN_PART) // len(means))
        spans = list(itertools.pairwise(int(edge) for edge in np.linspace(0, n, parts + 1)))
        for q, mean in enumerate(means):
            codes, scale, residual = search.quantize_query(mean, self.vector_size)
            # |exact - approximate| <= |q . row error| + |query error . approximated row|,
            # plus float32 rounding in forming the approximate score.
            query_norm = float(np.linalg.norm(mean.astype(np.float64)))
            bound = query_norm * rows.max_error + residual * rows.max_norm + search.ROUNDING_SLACK
            skip = np.asarray(excluded[q], dtype=np.int64)
            jobs.extend((q, lo, hi, codes, scale, bound, skip) for lo, hi in spans)

        def run(job: tuple[int, int, int, np.ndarray, float, float, np.ndarray]) -> IntArray:
            _, lo, hi, codes, scale, bound, skip = job
            return search.scan_int8(rows.codes, rows.scales, lo, hi, codes, scale, bound, skip, topn)

        found = list(_scan_pool().map(run, jobs)) if len(jobs) > 1 and self.search_threads > 1 else map(run, jobs)
        shortlists: list[list[IntArray]] = [[] for _ in means]
        for job, rows_found in zip(jobs, found):  # noqa: B905 (map of the same list)
            shortlists[job[0]].append(rows_found)
        joined = [parts_[0] if len(parts_) == 1 else np.concatenate(parts_) for parts_ in shortlists]
        return [self._narrowed(rows, mean, topn) for rows, mean in zip(joined, means, strict=True)]

    def _narrowed(self, rows: IntArray, mean: FloatArray, topn: int) -> IntArray:
        """An int8 shortlist that came back long, narrowed by float32 scores of its own rows.

        Vectors sharing one dominant direction put tens of thousands of rows within the int8
        error of a query's top: rescoring them all exactly cost 90 ms a query on a 490k-word
        model. The exact top `topn` is among `rows`, so it is among the rows whose float32
        score is within twice the float32 error bound of the topn-th best of them, as
        `_shortlist` selects from the whole vocabulary.
        """
        if len(rows) <= max(_INT8_NARROW_ROWS, topn):
            return rows
        scores = self.unit_vectors[rows] @ mean
        best = np.partition(scores, len(scores) - topn)[len(scores) - topn]  # the topn-th largest
        return rows[scores >= best - 2 * self._dot_rounding_bound()]

    def _mul_exact(self, queries: list[_Parsed], shortlists: list[IntArray]) -> list[np.ndarray]:
        out = []
        for query, cand in zip(queries, shortlists, strict=True):
            rows = self.unit_vectors[cand].astype(np.float64)
            pos = np.prod((1.0 + rows @ np.asarray(query.positive, np.float64).T) / 2.0, axis=1)
            if query.negative:
                neg = np.prod((1.0 + rows @ np.asarray(query.negative, np.float64).T) / 2.0, axis=1)
            else:
                neg = np.ones(len(rows))  # gensim divides by prod([]) + 1e-6
            out.append(pos / (neg + _COSMUL_EPS))
        return out

    def _rank(
        self, shortlists: list[IntArray], exact: list[np.ndarray], queries: list[_Parsed], topn: int
    ) -> list[list[tuple[str, float]]]:
        words = self.words
        out: list[list[tuple[str, float]]] = []
        for query, cand, score in zip(queries, shortlists, exact, strict=True):
            # Best first, ties to the lower (more frequent) row; the query's own rows can only
            # be among the first topn + len(own).
            order = np.lexsort((cand, -score))[: topn + len(query.excluded)]
            own = query.excluded
            hits = [
                (words[i], s)
                for i, s in zip(cand[order].tolist(), score[order].tolist())  # noqa: B905
                if i not in own
            ]
            out.append(hits[:topn])
        return out
