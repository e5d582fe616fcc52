"""The precomputed neighbour table answers exactly what the search answers, and only that."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gensim.models import KeyedVectors

import model.neighbours as neighbours_module
import model.vectors as vectors_module
from model import (
    Model,
    ModelFormatError,
    ParameterError,
    TrainingCancelled,
    Vectors,
    load_model,
    save_model,
    vnni_search,
)
from model.neighbours import NeighbourTable, build_neighbours
from model.store import NEIGHBOURS_FILE

K = 12


def _vectors(n: int = 3000, dim: int = 16, seed: int = 3) -> Vectors:
    rng = np.random.default_rng(seed)
    arr = rng.standard_normal((n, dim)).astype(np.float32)
    if n > 505:
        # Near-ties and exact duplicates, so the table must keep the search's tie order.
        arr[100:400] = arr[50] + 1e-4 * rng.standard_normal((300, dim)).astype(np.float32)
        arr[500:505] = arr[60]
    return Vectors([f"w{i}" for i in range(n)], arr, np.arange(n, 0, -1))


@pytest.fixture(scope="module")
def pair() -> tuple[Vectors, Vectors]:
    """The same vectors twice: one answering from a table of its first 2000 words, one searching."""
    searched = _vectors()
    indexed = Vectors(searched.words, searched.vectors, searched.counts)
    indexed.attach_neighbours(build_neighbours(indexed, k=K, words=2000))
    return indexed, searched


def _lookups(vectors: Vectors, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records each row the table is asked about."""
    assert vectors.neighbours is not None
    asked: list[int] = []
    original = NeighbourTable.lookup

    def spy(table: NeighbourTable, row: int, topn: int, limit: int) -> tuple[list[int], list[float]] | None:
        if table is vectors.neighbours:
            asked.append(row)
        return original(table, row, topn, limit)

    monkeypatch.setattr(NeighbourTable, "lookup", spy)
    return asked


def _mapped(arr: np.ndarray) -> bool:
    """Whether `arr` views a memory-mapped file rather than a copy in memory."""
    base = arr.base
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    return base is not None


@pytest.mark.parametrize(
    ("topn", "restrict_vocab"), [(1, None), (10, None), (K, None), (5, 2500), (3, 400), (10, 60), (K + 1, None)]
)
def test_table_answers_equal_the_search_bit_for_bit(pair, topn, restrict_vocab) -> None:
    indexed, searched = pair
    # Every word of the table, the tie clusters included, plus words past its end.
    for word in [*indexed.words[:2000:7], "w50", "w60", "w100", "w501", "w2001", "w2999"]:
        expected = searched.most_similar(word, topn=topn, restrict_vocab=restrict_vocab)
        assert indexed.most_similar(word, topn=topn, restrict_vocab=restrict_vocab) == expected
        direct = indexed.precomputed_neighbours(word, topn, restrict_vocab)
        assert direct is None or direct == expected


def test_batches_mix_table_answers_and_searches_in_order(pair) -> None:
    indexed, searched = pair
    queries = ["w5", ["w5", "w6"], ("w7", ["w8"]), "w2500", "w9", [searched.vectors[3]]]
    assert indexed.most_similar_batch(queries, topn=8) == searched.most_similar_batch(queries, topn=8)


def test_only_one_word_queries_within_the_table_read_it(pair, monkeypatch) -> None:
    indexed, _ = pair
    asked = _lookups(indexed, monkeypatch)
    indexed.most_similar("w5", topn=5)
    assert asked == [5]
    indexed.most_similar(["w5", "w6"])
    indexed.most_similar("w5", negative="w6")
    # Queries naming one word but asking something else.
    indexed.most_similar(["w5", "w5"])
    indexed.most_similar(["w5", indexed.vectors[9]])
    indexed.most_similar(negative="w5")
    indexed.most_similar([indexed.vectors[5]])
    indexed.most_similar_cosmul("w5")
    indexed.analogy("w1", "w2", "w3")
    assert asked == [5]
    # Outside the table, or beyond its k: searched (the lookup declines).
    assert indexed.precomputed_neighbours("w2500") is None
    assert indexed.precomputed_neighbours("w5", topn=K + 1) is None
    # Restricted to so few rows that fewer than topn of the listed neighbours remain: searched.
    assert indexed.precomputed_neighbours("w5", topn=10, restrict_vocab=20) is None


def test_a_table_of_every_other_word_answers_any_topn() -> None:
    vectors = _vectors(n=30, dim=5)
    searched = Vectors(vectors.words, vectors.vectors)
    vectors.attach_neighbours(build_neighbours(vectors, k=100))
    assert vectors.neighbours is not None and vectors.neighbours.k == 29
    for topn, restrict in [(29, None), (50, None), (10, 5)]:
        hits = vectors.precomputed_neighbours("w3", topn, restrict)
        assert hits is not None and hits == searched.most_similar("w3", topn=topn, restrict_vocab=restrict)


def test_table_matches_gensim(pair) -> None:
    indexed, _ = pair
    kv = KeyedVectors(indexed.vector_size)
    kv.add_vectors(indexed.words, np.asarray(indexed.vectors))
    for word in ["w0", "w77", "w1999"]:
        ours = indexed.precomputed_neighbours(word, topn=10)
        theirs = kv.most_similar(word, topn=10)
        assert ours is not None
        assert [w for w, _ in ours] == [w for w, _ in theirs]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)


def test_saved_with_the_model_and_loaded_from_a_memory_map(pair, tmp_path: Path, monkeypatch) -> None:
    indexed, searched = pair
    save_model(tmp_path / "m", Model(indexed, {"name": "x"}))
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["neighbours"] == {"words": 2000, "k": K}
    assert NEIGHBOURS_FILE in meta["files"]
    loaded = load_model(tmp_path / "m").vectors
    assert loaded.neighbours is not None and _mapped(loaded.neighbours.rows) and _mapped(loaded.neighbours.scores)
    asked = _lookups(loaded, monkeypatch)
    assert loaded.most_similar("w42", topn=7) == searched.most_similar("w42", topn=7)
    assert asked == [42]
    # A model saved without a table loads without one, and meta.json says nothing of one.
    save_model(tmp_path / "plain", Model(searched, {"neighbours": {"words": 1, "k": 1}}))
    assert "neighbours" not in json.loads((tmp_path / "plain" / "meta.json").read_text())
    assert load_model(tmp_path / "plain").vectors.neighbours is None


def test_a_damaged_or_missing_table_refuses_the_model(pair, tmp_path: Path) -> None:
    indexed, _ = pair
    save_model(tmp_path / "m", Model(indexed))
    table = tmp_path / "m" / NEIGHBOURS_FILE
    blob = bytearray(table.read_bytes())
    blob[-3] ^= 0xFF
    table.write_bytes(bytes(blob))
    with pytest.raises(ModelFormatError, match=r"neighbours\.npy does not match"):
        load_model(tmp_path / "m")
    table.unlink()
    with pytest.raises(ModelFormatError, match=r"neighbours\.npy is missing"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(
    ("rows", "vocab", "message"),
    [
        (np.array([[1, 2], [0, 7]]), 5, "outside the vocabulary"),
        (np.array([[1, -1]]), 5, "outside the vocabulary"),
        (np.zeros((6, 2), dtype=np.int32), 5, "do not fit"),
        (np.zeros((2, 5), dtype=np.int32), 5, "do not fit"),
    ],
)
def test_a_table_that_does_not_fit_its_vocabulary_is_refused(rows, vocab, message) -> None:
    with pytest.raises(ModelFormatError, match=message):
        NeighbourTable.checked(rows, np.zeros(rows.shape), vocab, "t")


def test_a_table_for_other_vectors_cannot_be_attached(pair) -> None:
    indexed, _ = pair
    with pytest.raises(ModelFormatError, match="does not fit"):
        _vectors(n=100).attach_neighbours(indexed.neighbours)


def float32_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build tables by the float32 route, as on CPUs without AVX-512 VNNI."""
    monkeypatch.setattr(vnni_search, "available", lambda: False)


@pytest.fixture(params=["float32", "vnni"])
def each_route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test once per route that builds tables (the VNNI one where the CPU has it)."""
    if request.param == "float32":
        float32_route(monkeypatch)
    elif not vnni_search.available():
        pytest.skip("needs a CPU with AVX-512 VNNI")
    return str(request.param)


@pytest.mark.usefixtures("each_route")
def test_build_reports_progress_and_stops_when_asked(monkeypatch) -> None:
    monkeypatch.setattr("model.neighbours._BUILD_CHUNK", 100)
    vectors = _vectors(n=500, dim=8)
    seen: list[tuple[int, int]] = []
    table = build_neighbours(vectors, k=5, words=350, progress=lambda done, total: seen.append((done, total)))
    assert table is not None and table.rows.shape == (350, 5)
    assert seen == [(100, 350), (200, 350), (300, 350), (350, 350)]
    polls = iter([False, False, True])
    with pytest.raises(TrainingCancelled):
        build_neighbours(vectors, k=5, should_stop=lambda: next(polls))
    assert build_neighbours(vectors, k=0) is None
    assert build_neighbours(vectors, k=5, words=0) is None
    assert build_neighbours(Vectors(["only"], np.ones((1, 3), np.float32)), k=5) is None


def test_lookup_reads_no_more_than_one_row(pair, monkeypatch) -> None:
    # One-word queries must not touch the search at all: no unit-matrix product, no scan.
    indexed, _ = pair
    monkeypatch.setattr(indexed, "_add_shortlist", None)
    monkeypatch.setattr(vectors_module, "_INT8_AFTER_SEARCHES", 0)
    assert len(indexed.most_similar("w10", topn=K)) == K


def test_table_answers_need_no_unit_matrix(pair) -> None:
    # A one-shot `w2v similar` on a large model answers without normalising every vector.
    indexed, searched = pair
    fresh = Vectors(indexed.words, indexed.vectors)
    fresh.attach_neighbours(indexed.neighbours)
    assert fresh.most_similar("w8", topn=5) == searched.most_similar("w8", topn=5)
    assert fresh._unit is None
    fresh.most_similar(["w8", "w9"])
    assert fresh._unit is not None


def test_uneven_blocks_build_the_same_table(pair, monkeypatch) -> None:
    # Each pair of words is scored once and offered to both words' heaps; blocks that do not
    # divide the vocabulary (and words split from their near-duplicates) must not matter.
    indexed, searched = pair
    float32_route(monkeypatch)  # the route that shares each pair between two words
    monkeypatch.setattr("model.neighbours._BUILD_CHUNK", 37)
    monkeypatch.setattr("model.neighbours._BUILD_ROWS", 53)
    rebuilt = build_neighbours(searched, k=K, words=2000)
    assert rebuilt is not None and indexed.neighbours is not None
    np.testing.assert_array_equal(rebuilt.rows, indexed.neighbours.rows)
    np.testing.assert_array_equal(rebuilt.scores, indexed.neighbours.scores)
    everything = build_neighbours(searched, k=K)  # every word indexed: all pairs mirrored
    assert everything is not None
    for row in [*range(0, 3000, 101), 50, 60, 150, 502, 2999]:
        expected = searched.most_similar(searched.words[row], topn=K)
        assert [searched.words[i] for i in everything.rows[row]] == [w for w, _ in expected]
        assert everything.scores[row].tolist() == [s for _, s in expected]


def _vnni_route_spy(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[int, bool]], list[int]]:
    """Records where each build left the VNNI route (words done by it, and whether it left at
    a crowded chunk), and how many queries the kernel handed back (crowds of near-ties) to be
    scored again in float32."""
    kept: list[tuple[int, bool]] = []
    crowds: list[int] = []
    real_route, real_shortlists = neighbours_module._vnni_shortlists, Vectors._vnni_shortlists

    def route(*args: Any) -> Any:
        found, crowded = real_route(*args)
        kept.append((len(found), crowded))
        return found, crowded

    def shortlists(self: Vectors, *args: Any) -> Any:
        counted: list[int] = []
        found = real_shortlists(self, *args[:6], counted)
        crowds.extend(counted)
        if len(args) > 6:
            args[6].extend(counted)
        return found

    monkeypatch.setattr(neighbours_module, "_vnni_shortlists", route)
    monkeypatch.setattr(Vectors, "_vnni_shortlists", shortlists)
    return kept, crowds


@pytest.mark.skipif(not vnni_search.available(), reason="needs a CPU with AVX-512 VNNI")
def test_both_build_routes_give_the_same_table(monkeypatch) -> None:
    # The VNNI route kept to the end, whatever the crowd: it meets the near-ties, and scores
    # the queries its kernel hands back again together in float32.
    base = _vectors()
    vectors = Vectors(base.words, np.roll(base.vectors, 700, axis=0), base.counts)
    monkeypatch.setattr("model.neighbours._CROWDED_SHARE", float("inf"))
    kept, crowds = _vnni_route_spy(monkeypatch)
    by_vnni = build_neighbours(vectors, k=K, words=2500)
    assert kept == [(2500, False)] and sum(crowds) > 1
    float32_route(monkeypatch)
    by_float32 = build_neighbours(Vectors(vectors.words, vectors.vectors, vectors.counts), k=K, words=2500)
    assert by_vnni is not None and by_float32 is not None
    np.testing.assert_array_equal(by_vnni.rows, by_float32.rows)
    np.testing.assert_array_equal(by_vnni.scores, by_float32.scores)


@pytest.mark.skipif(not vnni_search.available(), reason="needs a CPU with AVX-512 VNNI")
def test_a_crowded_model_takes_the_float32_route_and_stays_exact(monkeypatch) -> None:
    # Vectors sharing one dominant direction, as a little-trained model on text with little
    # structure has them: every top k is a crowd at int8 precision, which the kernel hands
    # back. Scanning twice for every word cost a 490k-word model half an hour; after the
    # first chunk shows the crowd, the build takes the float32 route alone.
    rng = np.random.default_rng(11)
    arr = rng.standard_normal(24).astype(np.float32) + 0.02 * rng.standard_normal((4000, 24)).astype(np.float32)
    vectors = Vectors([f"c{i}" for i in range(4000)], arr, np.arange(4000, 0, -1))
    kept, crowds = _vnni_route_spy(monkeypatch)
    table = build_neighbours(vectors, k=K, words=1500)
    assert kept == [(128, True)] and crowds == [128]
    assert table is not None and table.n_words == 1500
    searched = Vectors(vectors.words, vectors.vectors)
    for row in range(0, 1500, 97):
        expected = searched.most_similar(vectors.words[row], topn=K)
        assert [vectors.words[i] for i in table.rows[row]] == [w for w, _ in expected]
        assert table.scores[row].tolist() == [s for _, s in expected]
    # A batch on the same model goes through the kernel and its float32 second pass: the same answers.
    vectors.int8_rows  # noqa: B018
    batch = vectors.most_similar_batch(vectors.words[:64], topn=K)
    assert crowds[-1] > 32
    assert batch == [searched.most_similar(w, topn=K) for w in vectors.words[:64]]


@pytest.mark.usefixtures("each_route")
def test_a_time_budget_keeps_the_most_frequent_words_done(monkeypatch) -> None:
    monkeypatch.setattr("model.neighbours._BUILD_CHUNK", 100)
    base = _vectors()
    vectors = Vectors(base.words, np.roll(base.vectors, 700, axis=0), base.counts)
    whole = build_neighbours(vectors, k=K, words=1000)
    seen: list[tuple[int, int]] = []
    # Past its time at once: the first chunk is done, and its words are exact.
    part = build_neighbours(vectors, k=K, words=1000, seconds=1e-9, progress=lambda *p: seen.append(p))
    assert whole is not None and part is not None
    assert part.n_words == 100 and seen == [(100, 1000)]
    np.testing.assert_array_equal(part.rows, whole.rows[:100])
    np.testing.assert_array_equal(part.scores, whole.scores[:100])
    indexed = Vectors(vectors.words, vectors.vectors, vectors.counts)
    indexed.attach_neighbours(part)
    assert indexed.most_similar("w150", topn=K) == vectors.most_similar("w150", topn=K)  # beyond it: searched
    for bad in [0, -1.0, float("nan")]:
        with pytest.raises(ParameterError, match="time budget"):
            build_neighbours(vectors, k=K, seconds=bad)


@pytest.mark.skipif(not vnni_search.available(), reason="needs a CPU with AVX-512 VNNI")
def test_a_model_crowded_further_down_switches_route_midway(monkeypatch) -> None:
    # The frequent words are spread out, the rarer ones crowded: the kernel takes the first
    # chunks, the float32 route the rest (scoring the rows the kernel's words took on its own),
    # and the table is the one the float32 route builds alone, bit for bit.
    rng = np.random.default_rng(5)
    arr = rng.standard_normal((3000, 24)).astype(np.float32)
    arr[1000:] = arr[0] * 4 + 0.05 * rng.standard_normal((2000, 24)).astype(np.float32)
    vectors = Vectors([f"m{i}" for i in range(3000)], arr, np.arange(3000, 0, -1))
    monkeypatch.setattr("model.neighbours._BUILD_CHUNK", 100)
    kept, _ = _vnni_route_spy(monkeypatch)
    seen: list[tuple[int, int]] = []
    mixed = build_neighbours(vectors, k=K, words=2000, progress=lambda *p: seen.append(p))
    assert kept == [(1100, True)]
    assert [done for done, _ in seen] == list(range(100, 2001, 100))
    float32_route(monkeypatch)
    alone = build_neighbours(Vectors(vectors.words, vectors.vectors, vectors.counts), k=K, words=2000)
    assert mixed is not None and alone is not None
    np.testing.assert_array_equal(mixed.rows, alone.rows)
    np.testing.assert_array_equal(mixed.scores, alone.scores)
    searched = Vectors(vectors.words, vectors.vectors)
    for row in [0, 999, 1000, 1099, 1100, 1500, 1999]:
        expected = searched.most_similar(vectors.words[row], topn=K)
        assert [vectors.words[i] for i in mixed.rows[row]] == [w for w, _ in expected]
        assert mixed.scores[row].tolist() == [s for _, s in expected]
