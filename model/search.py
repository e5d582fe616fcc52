"""Compiled kernels behind `Vectors`' 3CosAdd search (Numba).

Two regimes, two kernels:

* A single query (or a handful) is bound by memory bandwidth: a float32 matrix-vector
  product reads the whole 4-bytes-per-value unit matrix to do one multiply-add per value.
  `scan_int8` reads an int8 copy of it instead (a quarter of the bytes, per-row scales) and
  keeps an exact guarantee: each approximate score comes with a bound on its error, and
  every row that could reach the top `topn` is returned for exact rescoring.
* A large batch is bound by arithmetic, where BLAS's float32 matrix product wins. Its scores
  are produced a block of rows at a time and fed to `push_block`, which keeps a bounded heap
  per query, so the queries x vocabulary score matrix is never stored or partitioned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["Int8Rows", "new_heaps", "push_block", "quantize_query", "scan_int8", "sorted_heaps"]

# Scores are tested this many at a time; the test is a branch-free loop the compiler
# vectorises, so a block that holds nothing better than the heap's worst costs little.
_GROUP = 16


def new_heaps(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty heaps: values -inf and rows -1, so any finite score displaces a free slot."""
    return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)


@njit(inline="always")
def _worse(va: np.float32, ra: np.int64, vb: np.float32, rb: np.int64) -> bool:
    # Among equal scores the later (less frequent) row ranks lower, as in the final ranking.
    return bool(va < vb or (va == vb and ra > rb))


@njit(inline="always")
def _listed(row: int, rows: np.ndarray) -> bool:
    """Whether `row` is among `rows` (a query's own words: a handful, so a linear look)."""
    for listed in rows:  # noqa: SIM110 - Numba compiles a loop, not any() over a generator
        if listed == row:
            return True
    return False


@njit(inline="always")
def _replace_root(vals: np.ndarray, rows: np.ndarray, value: np.float32, row: np.int64) -> None:
    """Put (value, row) in place of the worst entry and restore the min-heap order."""
    k = vals.shape[0]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= k:
            break
        if child + 1 < k and _worse(vals[child + 1], rows[child + 1], vals[child], rows[child]):
            child += 1
        if not _worse(vals[child], rows[child], value, row):
            break
        vals[i] = vals[child]
        rows[i] = rows[child]
        i = child
    vals[i] = value
    rows[i] = row


# No "ninf": the heaps start at -inf and excluded rows are compared against it. "nnan" and
# "nsz" are what lets the group maximum below become vector instructions.
_FAST = {"nnan", "nsz", "reassoc", "contract"}


@njit(nogil=True, cache=True, fastmath=_FAST)
def push_block(
    scores: np.ndarray,
    first_row: int,
    excluded_ptr: np.ndarray,
    excluded_rows: np.ndarray,
    vals: np.ndarray,
    rows: np.ndarray,
) -> None:
    """Offer scores[q, c] (vocabulary row first_row + c) to query q's heap, for every q.

    Query q's own words, excluded_rows[excluded_ptr[q]:excluded_ptr[q + 1]], are never
    taken; rows must be offered in increasing order across calls so ties keep the lower row.
    """
    n_queries, width = scores.shape
    whole = width - width % _GROUP
    for q in range(n_queries):
        line = scores[q]
        qvals = vals[q]
        qrows = rows[q]
        lo = excluded_ptr[q]
        hi = excluded_ptr[q + 1]
        for start in range(0, width, _GROUP):
            if start < whole:
                best = line[start]
                for c in range(start + 1, start + _GROUP):
                    best = max(best, line[c])
                if not best > qvals[0]:
                    continue
                stop = start + _GROUP
            else:
                stop = width
            for c in range(start, stop):
                value = line[c]
                if value > qvals[0]:
                    row = first_row + c
                    if not _listed(row, excluded_rows[lo:hi]):
                        _replace_root(qvals, qrows, value, np.int64(row))


@njit(nogil=True, cache=True, fastmath=_FAST)
def push_block_mirrored(scores: np.ndarray, first_row: int, vals: np.ndarray, rows: np.ndarray) -> None:
    """Offer scores[r, q] (vocabulary row first_row + r) to query q's heap, for every r and q:
    `push_block` for the transposed block, read in its own row order instead of transposed
    first (a transposing copy cost more than the product). No query's own row may be among
    the offered rows."""
    n_rows, n_queries = scores.shape
    for r in range(n_rows):
        line = scores[r]
        row = np.int64(first_row + r)
        for q in range(n_queries):
            value = line[q]
            if value > vals[q, 0]:
                _replace_root(vals[q], rows[q], value, row)


@njit(nogil=True, cache=True)
def sorted_heaps(vals: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each heap's entries best first (ties to the lower row); empty slots stay last.

    Heapsort: popping a min-heap yields its worst entry first, so pops fill from the end.
    A free slot (-inf, row -1) is worse than every entry with a finite score.
    """
    n_queries, k = vals.shape
    out_vals = np.empty_like(vals)
    out_rows = np.empty_like(rows)
    for q in range(n_queries):
        heap_vals = vals[q].copy()
        heap_rows = rows[q].copy()
        for size in range(k, 0, -1):
            out_vals[q, size - 1] = heap_vals[0]
            out_rows[q, size - 1] = heap_rows[0]
            if size > 1:
                _replace_root(heap_vals[: size - 1], heap_rows[: size - 1], heap_vals[size - 1], heap_rows[size - 1])
    return out_vals, out_rows


# ---------------------------------------------------------------------- int8 scan

_INT8_MAX = 127
# Allowance for float32 rounding when an approximate score is formed from its integer dot
# product and two scales (a few units in the last place of a value below ~1).
ROUNDING_SLACK = 1e-6


@dataclass(frozen=True)
class Int8Rows:
    """An int8 copy of unit rows: row r is approximately `scales[r] * codes[r]`.

    `errors[r]` bounds the Euclidean norm of row r's approximation error (float32, rounded
    up), `max_error` all of them, and `max_norm` the norm of every approximated row. The
    searches turn them into a bound on the error of every approximate score: the int8 scan
    one bound for all rows, the VNNI kernel (`vnni_search`) one per row.
    """

    codes: np.ndarray  # (rows, dim) int8
    scales: np.ndarray  # (rows,) float32
    errors: np.ndarray  # (rows,) float32
    max_error: float
    max_norm: float

    @staticmethod
    def build(unit: np.ndarray, chunk_rows: int) -> Int8Rows:
        codes = np.empty(unit.shape, dtype=np.int8)
        scales = np.empty(len(unit), dtype=np.float32)
        errors = np.empty(len(unit), dtype=np.float32)
        max_norm = 0.0
        for start in range(0, len(unit), chunk_rows):
            x = np.asarray(unit[start : start + chunk_rows], dtype=np.float64)
            scale = (np.abs(x).max(axis=1) / _INT8_MAX).astype(np.float32)
            inverse = np.divide(1.0, scale, out=np.zeros(len(x)), where=scale > 0)
            block = np.rint(x * inverse[:, None])
            codes[start : start + len(x)] = block
            scales[start : start + len(x)] = scale
            approx = block * scale.astype(np.float64)[:, None]
            errors[start : start + len(x)] = _rounded_up(np.linalg.norm(x - approx, axis=1))
            max_norm = max(max_norm, float(_rounded_up(np.linalg.norm(approx, axis=1)).max(initial=0.0)))
        return Int8Rows(codes, scales, errors, float(errors.max(initial=0.0)), max_norm)

    def without_codes(self) -> Int8Rows:
        """These rows with the row-major codes dropped, once a packed copy serves instead."""
        return dataclasses.replace(self, codes=np.empty((0, self.codes.shape[1]), dtype=np.int8))


def _rounded_up(values: np.ndarray) -> np.ndarray:
    """float32 values at least as large as `values` (float64 norms of float32 data, exact to
    ~1e-16; the relative margin covers that)."""
    wide = values * (1 + 1e-9)
    narrow = wide.astype(np.float32)
    return np.where(narrow < wide, np.nextafter(narrow, np.float32(np.inf)), narrow)


def quantize_query(query: np.ndarray, dim: int) -> tuple[np.ndarray, float, float]:
    """The query as int16 codes, their scale, and the norm of what the codes miss.

    The codes use as many bits as an int32 dot product with int8 rows can hold without
    overflow (15 bits up to 516 dimensions), so their error is negligible next to the rows'.
    """
    q = np.asarray(query, dtype=np.float64)
    top = max(1, min(2**15 - 1, (2**31 - 1) // (_INT8_MAX * dim)))
    peak = float(np.abs(q).max(initial=0.0))
    scale = peak / top if peak > 0 else 0.0
    codes = np.rint(q / scale) if scale > 0 else np.zeros_like(q)
    residual = float(np.linalg.norm(q - codes * scale))
    return codes.astype(np.int16), scale, residual


@njit(nogil=True, cache=True, fastmath=_FAST)
def scan_int8(
    codes: np.ndarray,
    scales: np.ndarray,
    start: int,
    stop: int,
    query_codes: np.ndarray,
    query_scale: float,
    error_bound: float,
    excluded: np.ndarray,
    topn: int,
) -> np.ndarray:
    """Rows in start..stop-1 that may rank in the query's exact top `topn` among them.

    Every approximate score a is within `error_bound` (B) of its exact score. With T the
    topn-th largest approximate score over the rows not excluded, topn rows score at least
    T - B exactly, and a row with a < T - 2B scores below that, so all rows with a >= T - 2B
    are returned: about topn plus the rows within a few errors of the boundary. (Scanning a
    range in parts and joining the parts' rows gives a superset of scanning it whole.)
    """
    dim = codes.shape[1]
    flat = codes[start:stop].reshape(-1)
    n_rows = stop - start
    # The integer dot products get a loop of their own: with the float work beside them the
    # compiler stops turning them into packed multiply-adds, which costs about half the speed.
    dots = np.empty(n_rows, dtype=np.int32)
    for r in range(n_rows):
        base = r * dim
        dot = np.int32(0)
        for j in range(dim):
            dot += np.int32(flat[base + j]) * np.int32(query_codes[j])
        dots[r] = dot
    approx = np.empty(n_rows, dtype=np.float32)
    best = np.full(max(topn, 1), -np.inf, dtype=np.float32)  # min-heap of approximate scores
    no_rows = np.zeros(best.shape[0], dtype=np.int64)
    q_scale = np.float32(query_scale)
    for r in range(n_rows):
        a = np.float32(dots[r]) * (scales[start + r] * q_scale)
        approx[r] = a
        if a > best[0] and not _listed(start + r, excluded):
            _replace_root(best, no_rows, a, np.int64(0))
    cut = best[0] - np.float32(2 * error_bound)
    out = np.empty(n_rows, dtype=np.int64)
    count = 0
    for r in range(n_rows):
        if approx[r] >= cut and not _listed(start + r, excluded):
            out[count] = start + r
            count += 1
    return out[:count].copy()
