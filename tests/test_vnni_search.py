"""The AVX-512 VNNI search (model/vnni_search.py): the kernel's arithmetic is the documented
float32 arithmetic, its error bound holds for every row and query, and the shortlists always
hold each query's exact top `topn`. Skipped where the CPU has no AVX-512 VNNI; the Vectors
tests run the same queries through it there (tests/test_vectors.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import model.vectors as vectors_module
from model import search, vnni_search
from model.vectors import Vectors

pytestmark = pytest.mark.skipif(not vnni_search.available(), reason="needs a CPU with AVX-512 VNNI")


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    arr = rng.standard_normal((n, dim)).astype(np.float32)
    arr[::7] *= rng.uniform(1e-3, 1e3, size=(len(arr[::7]), 1)).astype(np.float32)
    return vectors_module._unit_rows(arr)


def kernel_inputs(unit: np.ndarray, means: np.ndarray, group: int = 8) -> dict[str, Any]:
    rows = search.Int8Rows.build(unit, chunk_rows=333)
    packed = vnni_search.PackedRows.build(rows)
    queries, q_scales, q_norms, q_constants = vnni_search._query_terms(means, packed, group)
    return {
        "rows": rows, "packed": packed, "queries": queries, "q_scales": q_scales, "q_norms": q_norms,
        "q_constants": q_constants, "n_padded": len(q_scales), "group": group,
    }  # fmt: skip


def run_kernel(k: dict[str, Any], cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper ends (blocks, queries, 16) where the kernel stored them (NaN elsewhere), and its hits."""
    packed: vnni_search.PackedRows = k["packed"]
    n_blocks, n_padded = packed.packed.shape[0], k["n_padded"]
    ends = np.full((n_blocks, n_padded, 16), np.nan, dtype=np.float32)
    hits = np.empty(n_blocks * n_padded + 1, dtype=np.int64)
    n_hits = np.zeros(1, dtype=np.int64)
    scratch = np.empty(16, dtype=np.float32)
    arrays = (
        packed.packed, k["queries"], packed.offsets, packed.scales, packed.errors, k["q_scales"], k["q_norms"],
        k["q_constants"], cuts, ends, hits, n_hits, scratch,
    )  # fmt: skip
    kernel = vnni_search._compiled()[1][k["group"]]  # type: ignore[index]
    kernel(*[a.ctypes.data for a in arrays], 0, n_blocks, packed.n_quads, n_padded // k["group"])
    return ends, hits[: n_hits[0]]


def reference_ends(k: dict[str, Any], n_queries: int) -> np.ndarray:
    """The kernel's documented arithmetic in NumPy, float32 operation by float32 operation."""
    packed: vnni_search.PackedRows = k["packed"]
    n_blocks = packed.packed.shape[0]
    codes = packed.packed.reshape(n_blocks, packed.n_quads, 16, 4).transpose(0, 2, 1, 3).reshape(n_blocks * 16, -1)
    by_query = np.ascontiguousarray(k["queries"].transpose(0, 2, 1)).reshape(-1, packed.n_quads)
    offset_codes = by_query.view(np.uint8)[:n_queries]
    sums = offset_codes.astype(np.int64) @ codes.astype(np.int64).T  # (queries, rows), exact
    approx = (sums - packed.offsets.astype(np.int64)).astype(np.float32) * (
        packed.scales[None, :] * k["q_scales"][:n_queries, None]
    )
    bounds = packed.errors[None, :] * k["q_norms"][:n_queries, None] + k["q_constants"][:n_queries, None]
    return approx + bounds


@pytest.mark.parametrize(
    ("n_rows", "dim", "n_queries"), [(1, 1, 1), (17, 3, 9), (100, 5, 8), (333, 100, 17), (40, 301, 3)]
)
@pytest.mark.parametrize("group", [8, 1])
def test_kernel_computes_the_documented_upper_ends_bit_for_bit(
    n_rows: int, dim: int, n_queries: int, group: int
) -> None:
    rng = np.random.default_rng(dim)
    unit = unit_rows(rng, n_rows, dim)
    means = unit_rows(rng, n_queries, dim)
    k = kernel_inputs(unit, means, group)
    cuts = np.full(k["n_padded"], -np.inf, dtype=np.float32)
    ends, hits = run_kernel(k, cuts)
    expected = reference_ends(k, n_queries)
    got = ends[:, :n_queries].transpose(1, 0, 2).reshape(n_queries, -1)
    np.testing.assert_array_equal(got, expected)
    assert len(hits) == ends.shape[0] * k["n_padded"]  # every block of every query reaches -inf


@pytest.mark.parametrize("group", [8, 1])
def test_kernel_stores_and_lists_exactly_the_blocks_that_reach_the_cut(group: int) -> None:
    rng = np.random.default_rng(7)
    unit = unit_rows(rng, 1000, 40)
    means = unit_rows(rng, 11, 40)
    k = kernel_inputs(unit, means, group)
    expected = reference_ends(k, 11)  # (queries, rows)
    cuts = np.full(k["n_padded"], np.inf, dtype=np.float32)
    cuts[:11] = np.quantile(expected, 0.97, axis=1)
    ends, hits = run_kernel(k, cuts)
    n_padded = k["n_padded"]
    by_block = expected.reshape(11, -1, 16)  # (queries, blocks, lanes)
    wanted = {(b, q) for q in range(11) for b in range(by_block.shape[1]) if (by_block[q, b] >= cuts[q]).any()}
    listed = {((h >> 16) // n_padded, (h >> 16) % n_padded) for h in hits.tolist()}
    assert listed == wanted and len(hits) == len(wanted)
    for h in hits.tolist():
        b, q = (h >> 16) // n_padded, (h >> 16) % n_padded
        np.testing.assert_array_equal(ends[b, q], by_block[q, b])
        lanes = [lane for lane in range(16) if (h >> lane) & 1]
        assert lanes == np.flatnonzero(by_block[q, b] >= cuts[q]).tolist()
    stored = ~np.isnan(ends[:, :11, 0])
    assert stored.sum() == len(wanted)  # nothing below the cut was written


@pytest.mark.parametrize("exact_rows", [False, True], ids=["rows-rounded", "rows-exact"])
@pytest.mark.parametrize("dim", [1, 7, 100, 300, 700])
def test_every_exact_score_lies_within_the_bound(dim: int, exact_rows: bool) -> None:
    rng = np.random.default_rng(dim)
    unit = unit_rows(rng, 2000, dim)
    if exact_rows:
        # Rows the int8 codes hold exactly leave only the query's rounding to the bound.
        codes = rng.integers(-127, 128, size=unit.shape)
        codes[:, 0] = 127
        unit = (codes / 127 / np.sqrt(dim)).astype(np.float32)
        assert np.abs(search.Int8Rows.build(unit, 333).errors).max() < 1e-6
    unit[3] = 0.0
    means = np.vstack([unit[5], unit[3], unit_rows(rng, 6, dim)])
    k = kernel_inputs(unit, means)
    upper = reference_ends(k, len(means)).astype(np.float64)[:, :2000]
    packed: vnni_search.PackedRows = k["packed"]
    bound = (packed.errors[None, :] * k["q_norms"][: len(means), None] + k["q_constants"][: len(means), None])[
        :, :2000
    ].astype(np.float64)
    exact = means.astype(np.float64) @ unit.astype(np.float64).T
    assert np.all(exact <= upper)
    assert np.all(exact >= upper - 2 * bound)
    assert bound.max() < 0.03 * max(1.0, dim / 100)  # tight enough to prune


def exact_top(unit: np.ndarray, mean: np.ndarray, topn: int, excluded: list[int], n: int) -> list[int]:
    scores = unit[:n].astype(np.float64) @ mean.astype(np.float64)
    order = [int(i) for i in np.lexsort((np.arange(n), -scores)) if int(i) not in excluded]
    return order[:topn]


def serial(fn: Any, parts: list[int]) -> None:
    for part in parts:
        fn(part)


def threaded(fn: Any, parts: list[int]) -> None:
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(fn, parts))


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
@pytest.mark.parametrize("run_parts", [serial, threaded])
def test_shortlists_hold_every_query_s_exact_top(parts: int, run_parts: Any) -> None:
    rng = np.random.default_rng(parts)
    unit = unit_rows(rng, 6000, 48)
    unit[4000:4040] = vectors_module._unit_rows(unit[100] + 1e-3 * rng.standard_normal((40, 48)).astype(np.float32))
    unit[4100:4103] = unit[100]  # exact duplicates
    packed = vnni_search.PackedRows.build(search.Int8Rows.build(unit, chunk_rows=1000))
    means = np.vstack([unit[100], unit[4000], unit_rows(rng, 20, 48)])
    excluded = [[100], [4000, 7], *[[] for _ in range(20)]]
    for topn, n in [(1, 6000), (10, 6000), (50, 6000), (10, 4050), (10, 30)]:
        found = vnni_search.shortlists(
            packed, means, [[i for i in e if i < n] for e in excluded], n, topn, parts, run_parts
        )
        # One query alone takes the one-query kernel.
        found += [
            vnni_search.shortlists(
                packed, means[q : q + 1], [[i for i in excluded[q] if i < n]], n, topn, parts, run_parts
            )[0]
            for q in range(4)
        ]
        for q, rows in enumerate(found):
            q %= len(means)
            assert rows is not None  # no crowd of near-ties bigger than the candidate lists here
            top = exact_top(unit, means[q], topn, excluded[q], n)
            assert set(top) <= set(rows.tolist())
            assert rows.max(initial=-1) < n and not set(rows.tolist()) & set(excluded[q])


def count_compactions(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Per chunk the selection takes from now on: whether it compacted a candidate list."""
    compactions: list[bool] = []
    select = vnni_search._select_chunk

    def counting_select(*args: Any) -> None:
        before = args[-2].copy()  # counts
        select(*args)
        compactions.append(bool((args[-2] < before).any()))

    monkeypatch.setattr(vnni_search, "_select_chunk", counting_select)
    return compactions


def test_compacting_full_candidate_lists_keeps_every_row_that_may_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # With little spare room, the lists fill and are compacted over and over on ordinary data.
    monkeypatch.setattr(vnni_search, "_SPARE_CANDIDATES", 64)
    compactions = count_compactions(monkeypatch)
    rng = np.random.default_rng(8)
    unit = unit_rows(rng, 6000, 24)
    order = np.argsort(unit @ unit[0])  # rows in rising score for query 0: each one a new best
    unit = unit[order]
    packed = vnni_search.PackedRows.build(search.Int8Rows.build(unit, chunk_rows=1000))
    means = np.vstack([unit[-1], unit_rows(rng, 30, 24)])
    handed_back = 0
    for topn in (1, 3, 10):
        found = vnni_search.shortlists(packed, means, [[] for _ in means], 6000, topn, 2, serial)
        for q, rows in enumerate(found):
            if rows is None:
                handed_back += 1
                continue
            assert set(exact_top(unit, means[q], topn, [], 6000)) <= set(rows.tolist())
    assert any(compactions)
    assert handed_back < len(means)  # most lists survive their compactions


def test_compacting_next_to_the_final_cut_keeps_the_near_ties_that_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # 80 rows within 1e-4 of the query's direction come last and overfill the list: the
    # compaction they cause happens with the cut at its final level, among rows the int8
    # copy cannot order.
    monkeypatch.setattr(vnni_search, "_SPARE_CANDIDATES", 90)
    compactions = count_compactions(monkeypatch)
    rng = np.random.default_rng(9)
    base = rng.standard_normal(32).astype(np.float32)
    arr = rng.standard_normal((5000, 32)).astype(np.float32)
    arr[4920:] = base + 1e-4 * rng.standard_normal((80, 32)).astype(np.float32)
    unit = vectors_module._unit_rows(arr)
    packed = vnni_search.PackedRows.build(search.Int8Rows.build(unit, chunk_rows=1000))
    query = vectors_module._unit_vector(base + 1e-4 * rng.standard_normal(32).astype(np.float32))
    for parts in (1, 2):
        (rows,) = vnni_search.shortlists(packed, query[None, :], [[]], 5000, 10, parts, serial)
        assert rows is not None
        assert set(exact_top(unit, query, 10, [], 5000)) <= set(rows.tolist())
    assert any(compactions)


def test_a_crowd_of_near_ties_is_handed_back_not_cut_short() -> None:
    # 3000 rows within ~1e-5 of one direction: the int8 copy cannot tell them apart, and the
    # candidate lists (2 topn + 256) cannot hold them all.
    rng = np.random.default_rng(2)
    base = rng.standard_normal(32).astype(np.float32)
    arr = rng.standard_normal((8000, 32)).astype(np.float32)
    arr[1000:4000] = base + 1e-5 * rng.standard_normal((3000, 32)).astype(np.float32)
    unit = vectors_module._unit_rows(arr)
    packed = vnni_search.PackedRows.build(search.Int8Rows.build(unit, chunk_rows=1000))
    away = vectors_module._unit_vector(-base + rng.standard_normal(32).astype(np.float32))  # crowd far below
    means = np.vstack([vectors_module._unit_vector(base), away])
    found = vnni_search.shortlists(packed, means, [[], []], 8000, 10, 2, serial)
    assert found[0] is None
    assert found[1] is not None and set(exact_top(unit, means[1], 10, [], 8000)) <= set(found[1].tolist())


def test_vectors_keep_only_the_packed_int8_copy_on_these_cpus() -> None:
    rng = np.random.default_rng(0)
    vecs = Vectors([f"w{i}" for i in range(3000)], rng.standard_normal((3000, 20)).astype(np.float32))
    rows = vecs.int8_rows
    assert vecs._packed is not None and vecs._packed.packed.shape == (188, 5, 64)  # 3000 rows: 188 blocks of 16
    assert rows.codes.size == 0  # the row-major copy is not kept beside it
    assert rows.errors.shape == (3000,)


def test_a_row_whose_approximation_errs_by_almost_twice_the_bound_is_kept() -> None:
    # Rows y and x round to codes whose scores differ by 1.5 error bounds in y's favour, while
    # exactly x scores higher: every rounding error lines up with the query (the worst case
    # the bound allows). Only a cut at the topn-th largest lower end (approximation minus
    # the bound), not at the approximation itself, keeps x.
    d = 64
    rng = np.random.default_rng(4)
    sign = rng.choice([-1.0, 1.0], size=d)
    query = (sign / np.sqrt(d)).astype(np.float32)
    s = 1 / 127
    codes = 60 * sign
    codes[0] = 127 * sign[0]  # fixes each row's scale at s, exactly
    moved = np.zeros(d, dtype=bool)
    moved[1 : 1 + 3 * (d - 1) // 4] = True
    y = s * (codes - 0.49 * sign)
    x = s * (codes - sign * moved + 0.49 * sign)
    y[0] = x[0] = s * codes[0]
    filler = 0.3 * unit_rows(rng, 500, d)
    rows = np.vstack([y, y, y, x, filler]).astype(np.float32)
    int8 = search.Int8Rows.build(rows, chunk_rows=100)
    packed = vnni_search.PackedRows.build(int8)
    exact = rows.astype(np.float64) @ query.astype(np.float64)
    assert int(np.argmax(exact)) == 3  # x
    _, _, q_norms, q_constants = vnni_search._query_terms(query[None, :], packed, 1)
    approx = int8.codes.astype(np.float64) @ (query.astype(np.float64)) * int8.scales
    bound = float(int8.errors[3]) * float(q_norms[0]) + float(q_constants[0])
    assert bound < approx[0] - approx[3] < 2 * bound  # the case this test is about
    for parts in (1, 2):
        (found,) = vnni_search.shortlists(packed, query[None, :], [[]], len(rows), 1, parts, serial)
        assert found is not None and 3 in found.tolist()


def test_kernel_buffers_are_reused_and_their_number_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every thread that searches (the API's pool has dozens) must not keep 2 MB for good.
    monkeypatch.setattr(vectors_module, "_INT8_MIN_VALUES", 0)
    rng = np.random.default_rng(1)
    vecs = Vectors([f"w{i}" for i in range(5000)], rng.standard_normal((5000, 16)).astype(np.float32))
    vecs.int8_rows  # noqa: B018
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda i: vecs.most_similar([f"w{i}", f"w{i + 1}"], topn=5), range(200)))
    assert answers[7] == vecs.most_similar(["w7", "w8"], topn=5)
    assert 1 <= len(vnni_search._spare_buffers) <= vnni_search._MAX_SPARE_BUFFERS
