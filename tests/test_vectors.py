"""Vectors queries must give gensim's answers: same words, same order, scores within 1e-5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gensim.models import KeyedVectors

import model.vectors as vectors_module
from model import vnni_search
from model.errors import ModelFormatError, ParameterError, UnknownWordError
from model.vectors import Vectors, _top_k

N_WORDS, DIM = 20000, 24  # big enough that the blocked top-k path is taken

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated `init_sims`:DeprecationWarning")


@pytest.fixture(scope="module")
def store() -> tuple[Vectors, KeyedVectors, np.ndarray]:
    rng = np.random.default_rng(42)
    arr = rng.standard_normal((N_WORDS, DIM)).astype(np.float32)
    arr *= rng.uniform(0.2, 5.0, size=(N_WORDS, 1)).astype(np.float32)  # norms must not matter
    words = [f"w{i}" for i in range(N_WORDS)]
    kv = KeyedVectors(DIM)
    kv.add_vectors(words, arr)
    return Vectors(words, arr), kv, arr


def assert_same_hits(ours: list[tuple[str, float]], theirs: list[tuple[str, float]]) -> None:
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], rtol=0, atol=1e-5)


QUERIES = [
    pytest.param({"positive": "w7"}, id="one-word"),
    pytest.param({"positive": ["w1", "w2", "w3"]}, id="positives"),
    pytest.param({"positive": ["w10", "w20"], "negative": ["w30"]}, id="analogy-shape"),
    pytest.param({"positive": ["w10"], "negative": ["w30", "w40"], "topn": 25}, id="two-negatives"),
    pytest.param({"positive": ["w5", "w6"], "negative": ["w9"], "restrict_vocab": 700}, id="restricted"),
    pytest.param({"positive": ["w15000"], "restrict_vocab": 1000}, id="query-outside-restriction"),
    pytest.param({"positive": ["w3"], "topn": 1}, id="topn-1"),
]


def use_int8_kernel(monkeypatch, kernel: str, *vecs: Vectors) -> None:
    """Make `vecs` build their int8 copy anew for `kernel`: "scan" (search.scan_int8, what CPUs
    without AVX-512 VNNI run) or "vnni" (vnni_search; skipped on CPUs without it)."""
    if kernel == "vnni" and not vnni_search.available():
        pytest.skip("needs a CPU with AVX-512 VNNI")
    if kernel == "scan":
        monkeypatch.setattr(vnni_search, "available", lambda: False)
    monkeypatch.setattr(vectors_module, "_INT8_MIN_VALUES", 0)  # these stores are small
    for v in vecs:
        monkeypatch.setattr(v, "_int8", None)
        monkeypatch.setattr(v, "_packed", None)


@pytest.fixture(params=["float32", "float32-heaps", "int8-scan", "int8-vnni"])
def search_path(request, store, monkeypatch) -> str:
    """Single queries take the float32 product until a Vectors has answered
    _INT8_AFTER_SEARCHES of them, an int8 kernel after (or, on a small store, the float32
    product into compiled heaps): all must give gensim's answers."""
    ours, _, _ = store
    if request.param.startswith("float32"):
        monkeypatch.setattr(vectors_module, "_INT8_AFTER_SEARCHES", 10**9 if request.param == "float32" else 0)
        monkeypatch.setattr(vectors_module, "_INT8_MIN_VALUES", 10**18)  # no store is big enough for int8
        monkeypatch.setattr(ours, "_int8", None)
    else:
        use_int8_kernel(monkeypatch, request.param.removeprefix("int8-"), ours)
        monkeypatch.setattr(vectors_module, "_INT8_AFTER_SEARCHES", 0)
    return str(request.param)


@pytest.mark.parametrize("kwargs", QUERIES)
def test_most_similar_matches_gensim(store, search_path, kwargs) -> None:
    ours, kv, _ = store
    assert_same_hits(ours.most_similar(**kwargs), kv.most_similar(**kwargs))
    assert (ours._int8 is not None) == (not search_path.startswith("float32"))
    assert (ours._packed is not None) == (search_path == "int8-vnni")


def test_a_crowded_store_s_long_int8_shortlists_are_narrowed_and_stay_exact(monkeypatch) -> None:
    # Vectors sharing one direction put thousands of rows within the int8 scan's error of the
    # top; they are narrowed in float32 before the exact rescoring, with the same answers.
    rng = np.random.default_rng(8)
    arr = rng.standard_normal(16).astype(np.float32) * 4 + 0.05 * rng.standard_normal((20000, 16)).astype(np.float32)
    words = [f"c{i}" for i in range(20000)]
    plain, scanned = Vectors(words, arr), Vectors(words, arr)
    asked = [(word, topn) for word in words[::2000] for topn in (1, 10, 300)]
    expected = [plain.most_similar(word, topn=topn) for word, topn in asked]  # the float32 product
    assert plain._int8 is None
    use_int8_kernel(monkeypatch, "scan", scanned)
    monkeypatch.setattr(vectors_module, "_INT8_AFTER_SEARCHES", 0)
    long_lists: list[int] = []
    real = Vectors._narrowed

    def spy(self: Vectors, rows: np.ndarray, mean: np.ndarray, topn: int) -> np.ndarray:
        narrowed = real(self, rows, mean, topn)
        if len(rows) > vectors_module._INT8_NARROW_ROWS:
            long_lists.append(len(rows))
            assert len(narrowed) < len(rows)
        return narrowed

    monkeypatch.setattr(Vectors, "_narrowed", spy)
    assert [scanned.most_similar(word, topn=topn) for word, topn in asked] == expected
    assert scanned._int8 is not None and scanned._packed is None and long_lists


def test_int8_copy_is_built_only_after_enough_small_searches(monkeypatch) -> None:
    monkeypatch.setattr(vectors_module, "_INT8_MIN_VALUES", 0)
    rng = np.random.default_rng(1)
    vecs = Vectors([f"w{i}" for i in range(500)], rng.standard_normal((500, 8)).astype(np.float32))
    for i in range(vectors_module._INT8_AFTER_SEARCHES):
        vecs.most_similar(f"w{i}")
    assert vecs._int8 is None  # a one-shot user (the CLI) never pays for it
    vecs.most_similar("w0")
    assert vecs._int8 is not None


def test_small_stores_keep_the_float32_product_for_a_few_queries(monkeypatch) -> None:
    # On a small store the int8 routes' fixed costs outweigh the pass they save.
    rng = np.random.default_rng(2)
    vecs = Vectors([f"w{i}" for i in range(1000)], rng.standard_normal((1000, 8)).astype(np.float32))
    vecs.int8_rows  # noqa: B018 - built, as the API does at load
    monkeypatch.setattr(vecs, "_int8_shortlists", None)
    monkeypatch.setattr(vecs, "_vnni_shortlists", None)
    assert len(vecs.most_similar("w3", topn=5)) == 5
    monkeypatch.setattr(vectors_module, "_INT8_MIN_VALUES", 8000)  # the store is 8,000 values
    with pytest.raises(TypeError):  # the int8 route would be taken now
        vecs.most_similar("w3", topn=5)


def test_long_queries_match_gensim(store, search_path) -> None:
    # More query words than the shortlist margin, all close to each other: without excluding
    # them before the top-k, they would crowd out the real answers.
    ours, kv, _ = store
    cluster = ["w7"] + [w for w, _ in kv.most_similar("w7", topn=15)]
    assert_same_hits(ours.most_similar(cluster), kv.most_similar(cluster))
    assert_same_hits(ours.most_similar_cosmul(cluster), kv.most_similar_cosmul(cluster))


def test_raw_vector_queries_match_gensim(store, search_path) -> None:
    ours, kv, arr = store
    probe = arr[123] * 3 + arr[456]
    assert_same_hits(ours.most_similar(positive=[probe]), kv.most_similar(positive=[probe]))
    # A raw vector is added unnormalised, and a word next to it is still excluded.
    mixed = {"positive": [probe, "w9"], "negative": ["w11"]}
    assert_same_hits(ours.most_similar(**mixed), kv.most_similar(**mixed))


def test_raw_vectors_without_a_direction_are_refused_saying_why(store) -> None:
    """gensim answers these with NaN scores or a cast error; any ranking would be made up."""
    ours, _, arr = store
    for vector, message in [
        (np.zeros(arr.shape[1]), "has no direction"),
        (np.full(arr.shape[1], 1e35), "length must be at most"),  # 3CosMul's products would overflow
        (np.full(arr.shape[1], np.nan), "finite float32"),
        (np.full(arr.shape[1], 1e300), "finite float32"),  # infinite once in float32
        (np.full(arr.shape[1], "x"), "must hold numbers"),
        (arr[0][:-1], f"needs the model's {arr.shape[1]} numbers"),
    ]:
        with pytest.raises(ParameterError, match=message):
            ours.similar_by_vector(vector)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"positive": ["w10", "w20"], "negative": ["w30"]},
        {"positive": ["w10", "w20"]},
        {"positive": ["w1"], "negative": ["w2", "w3"], "topn": 15},
    ],
)
def test_most_similar_cosmul_matches_gensim(store, kwargs) -> None:
    ours, kv, _ = store
    assert_same_hits(ours.most_similar_cosmul(**kwargs), kv.most_similar_cosmul(**kwargs))


def test_cosmul_restrict_vocab_is_gensims_ranking_cut_to_the_first_words(store) -> None:
    # gensim accepts but ignores restrict_vocab in most_similar_cosmul; ours honours it.
    ours, kv, _ = store
    full = kv.most_similar_cosmul(positive=["w10", "w20"], negative=["w30"], topn=N_WORDS)
    expected = [(w, s) for w, s in full if int(w[1:]) < 2000][:10]
    got = ours.most_similar_cosmul(positive=["w10", "w20"], negative=["w30"], restrict_vocab=2000)
    assert_same_hits(got, expected)


def test_analogy_is_b_plus_c_minus_a(store, search_path) -> None:
    ours, kv, _ = store
    assert_same_hits(ours.analogy("w1", "w2", "w3"), kv.most_similar(positive=["w2", "w3"], negative=["w1"]))
    assert_same_hits(
        ours.analogy("w1", "w2", "w3", method="mul", topn=5),
        kv.most_similar_cosmul(positive=["w2", "w3"], negative=["w1"], topn=5),
    )


@pytest.mark.parametrize("kernel", ["scan", "vnni"])
@pytest.mark.parametrize("method", ["add", "mul"])
@pytest.mark.parametrize("restrict_vocab", [None, 5000])
def test_batch_equals_one_query_at_a_time(store, monkeypatch, method, restrict_vocab, kernel) -> None:
    ours, _, arr = store
    # scan: singles take the int8 scan, batches BLAS; vnni: both take the VNNI kernel
    use_int8_kernel(monkeypatch, kernel, ours)
    monkeypatch.setattr(vectors_module, "_INT8_AFTER_SEARCHES", 0)
    queries = [
        "w1",
        ["w2", "w3"],
        (["w4", "w5"], ["w6"]),
        ("w7", ["w8"]),
        {"positive": ["w9"], "negative": ["w10", "w11"]},
        [arr[12]],
        *[[f"w{i}"] for i in range(100, 160)],
    ]
    single_kwargs: list[dict[str, Any]] = [
        {"positive": "w1"},
        {"positive": ["w2", "w3"]},
        {"positive": ["w4", "w5"], "negative": ["w6"]},
        {"positive": "w7", "negative": ["w8"]},
        {"positive": ["w9"], "negative": ["w10", "w11"]},
        {"positive": [arr[12]]},
        *[{"positive": [f"w{i}"]} for i in range(100, 160)],
    ]
    call = ours.most_similar if method == "add" else ours.most_similar_cosmul
    one_by_one = [call(**kw, topn=7, restrict_vocab=restrict_vocab) for kw in single_kwargs]
    assert ours.most_similar_batch(queries, topn=7, restrict_vocab=restrict_vocab, method=method) == one_by_one
    # Splitting the batch into several matrix products (and ragged row blocks) must not
    # change anything either.
    monkeypatch.setattr(vectors_module, "_SCORE_CHUNK_BYTES", 4 * N_WORDS * 5)
    monkeypatch.setattr(vectors_module, "_ADD_QUERY_CHUNK", 9)
    monkeypatch.setattr(vectors_module, "_MIN_SCORE_BLOCK", 1)
    monkeypatch.setattr(vectors_module, "_SCORE_BLOCK_BYTES", 4 * 9 * 997)
    monkeypatch.setattr(vectors_module, "_EXACT_GROUP_ROWS", 7)  # rescored a few queries at a time
    assert ours.most_similar_batch(queries, topn=7, restrict_vocab=restrict_vocab, method=method) == one_by_one


@pytest.mark.parametrize("method", ["add", "mul"])
def test_exact_ties_go_to_the_more_frequent_word_in_batches_too(method) -> None:
    # 40 copies of one vector tie exactly; float32 top-k alone would pick an arbitrary subset.
    rng = np.random.default_rng(5)
    arr = rng.standard_normal((N_WORDS, 16)).astype(np.float32)
    copies = np.sort(rng.choice(np.arange(1, N_WORDS), size=40, replace=False))
    arr[copies] = arr[0]
    vecs = Vectors([f"w{i}" for i in range(N_WORDS)], arr)
    expected = [f"w{i}" for i in copies[:5]]
    call = vecs.most_similar if method == "add" else vecs.most_similar_cosmul
    assert [w for w, _ in call("w0", topn=5)] == expected
    batch = vecs.most_similar_batch(["w0", "w1", "w0", "w2"], topn=5, method=method)
    assert [w for w, _ in batch[0]] == [w for w, _ in batch[2]] == expected


def test_query_words_are_never_returned(store) -> None:
    ours, _, _ = store
    hits = ours.most_similar(["w1", "w2"], ["w3"], topn=N_WORDS)
    assert len(hits) == N_WORDS - 3
    assert {"w1", "w2", "w3"}.isdisjoint(w for w, _ in hits)
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)


def test_topn_larger_than_the_vocabulary_returns_everything_else() -> None:
    arr = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0]], dtype=np.float32)
    vecs = Vectors(["a", "b", "c"], arr)
    assert [w for w, _ in vecs.most_similar("a", topn=50)] == ["b", "c"]
    assert [w for w, _ in vecs.most_similar("a", topn=50, restrict_vocab=2)] == ["b"]


def test_unknown_words_are_all_named(store) -> None:
    ours, _, _ = store
    with pytest.raises(UnknownWordError) as info:
        ours.most_similar(["w1", "nosuch"], negative=["alsomissing"])
    assert info.value.words == ["nosuch", "alsomissing"]
    assert "nosuch" in str(info.value) and "alsomissing" in str(info.value)
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownWordError) as info:
        ours.most_similar_batch(["w1", ["x1"], (["w2"], ["x2"])])
    assert info.value.words == ["x1", "x2"]
    with pytest.raises(UnknownWordError):
        ours.similarity("w1", "nosuch")


def test_unknown_words_in_another_casing_are_suggested() -> None:
    vecs = Vectors(["paris", "Berlin", "ROME", "x"], np.eye(4, dtype=np.float32))
    with pytest.raises(UnknownWordError) as info:
        vecs.most_similar(["Paris", "berlin", "rome", "nosuch"])
    assert info.value.suggestions == {"Paris": "paris", "berlin": "Berlin", "rome": "ROME"}
    assert str(info.value).endswith("(did you mean 'paris', 'Berlin', 'ROME'?)")
    with pytest.raises(UnknownWordError, match="did you mean 'paris'"):
        vecs["PARIS"]


@pytest.mark.parametrize(
    "kwargs",
    [{"topn": -3}, {"topn": 2.5}, {"restrict_vocab": 0}, {"restrict_vocab": 10.5},
     {"restrict_vocab": "10"}, {"positive": [], "negative": []}, {"positive": 5}, {"positive": [5]}],
)
def test_invalid_arguments_raise_parameter_error(store, kwargs) -> None:
    ours, _, _ = store
    kwargs = {"positive": ["w1"], **kwargs}
    with pytest.raises(ParameterError):
        ours.most_similar(**kwargs)


def test_topn_zero_answers_nothing_as_gensim_does(store) -> None:
    ours, theirs, _ = store
    assert ours.most_similar("w1", topn=0) == theirs.most_similar("w1", topn=0) == []
    assert ours.most_similar_batch(["w1", "w2"], topn=0) == [[], []]
    assert ours.precomputed_neighbours("w1", topn=0) == []


def test_wrong_sized_query_vector_is_rejected(store) -> None:
    ours, _, _ = store
    with pytest.raises(ParameterError):
        ours.most_similar(positive=[np.ones(DIM + 1, dtype=np.float32)])


def test_similarity_distance_and_n_similarity_match_gensim(store) -> None:
    ours, kv, _ = store
    for a, b in [("w1", "w2"), ("w3", "w3"), ("w100", "w19999")]:
        assert ours.similarity(a, b) == pytest.approx(float(kv.similarity(a, b)), abs=1e-7)
        assert ours.distance(a, b) == pytest.approx(float(kv.distance(a, b)), abs=1e-7)
    assert ours.n_similarity(["w1", "w2"], ["w3", "w4", "w5"]) == pytest.approx(
        float(kv.n_similarity(["w1", "w2"], ["w3", "w4", "w5"])), abs=1e-6
    )


def test_doesnt_match_matches_gensim(store) -> None:
    ours, kv, _ = store
    rng = np.random.default_rng(0)
    for _ in range(20):
        words = [f"w{i}" for i in rng.choice(N_WORDS, size=5, replace=False)]
        assert ours.doesnt_match(words) == kv.doesnt_match(words)
    # Unknown words are ignored, as in gensim; all unknown is an error.
    assert ours.doesnt_match(["w1", "w2", "w3", "zzz"]) == kv.doesnt_match(["w1", "w2", "w3", "zzz"])
    with pytest.raises(UnknownWordError):
        ours.doesnt_match(["zzz", "yyy"])


def test_doesnt_match_finds_the_outlier() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal(16).astype(np.float32)
    arr = np.vstack([base + 0.05 * rng.standard_normal(16) for _ in range(4)] + [-base]).astype(np.float32)
    vecs = Vectors(["cat", "dog", "cow", "pig", "car"], arr)
    assert vecs.doesnt_match(["cat", "dog", "car", "cow", "pig"]) == "car"


def test_read_only_memory_map(store, tmp_path: Path) -> None:
    ours, _, arr = store
    np.save(tmp_path / "v.npy", arr)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    vecs = Vectors(ours.words, mapped)
    assert isinstance(vecs.vectors, np.memmap)  # kept as is, not copied
    assert vecs.most_similar(["w1", "w2"], ["w3"]) == ours.most_similar(["w1", "w2"], ["w3"])
    assert vecs.most_similar_batch(["w1", "w4"]) == ours.most_similar_batch(["w1", "w4"])
    assert vecs.similarity("w5", "w6") == ours.similarity("w5", "w6")
    np.testing.assert_array_equal(vecs["w7"], arr[7])


def test_returned_vectors_cannot_corrupt_the_store(store) -> None:
    ours, _, arr = store
    for vec in (ours["w1"], ours.get_vector("w1", norm=True), ours.unit_vectors):
        with pytest.raises(ValueError):
            vec[0] = 123.0
    np.testing.assert_array_equal(ours.vectors[1], arr[1])


def test_unit_vectors_have_unit_length_and_zero_rows_stay_zero() -> None:
    arr = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    vecs = Vectors(["a", "zero", "b"], arr)
    expected = np.array([[0.6, 0.8], [0.0, 0.0], [2**-0.5, 2**-0.5]])
    np.testing.assert_allclose(vecs.unit_vectors, expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vecs.get_vector("a", norm=True)), 1.0, rtol=1e-6)
    hits = vecs.most_similar("a")
    assert [w for w, _ in hits] == ["b", "zero"]
    assert hits[1][1] == 0.0


def test_counts_and_lookup() -> None:
    vecs = Vectors(["a", "b"], np.ones((2, 3), dtype=np.float64), counts=np.array([5, 2]))
    assert vecs.vectors.dtype == np.float32
    assert len(vecs) == 2 and vecs.vector_size == 3
    assert "a" in vecs and "c" not in vecs
    assert vecs.index("b") == 1 and vecs.key_to_index == {"a": 0, "b": 1}
    assert vecs.counts is not None and vecs.counts.tolist() == [5, 2]
    with pytest.raises(UnknownWordError):
        vecs.index("c")


@pytest.mark.parametrize(
    ("words", "shape", "counts", "message"),
    [
        (["a", "b", "a"], (3, 2), None, "duplicate words: 'a'"),
        (["a", "b"], (3, 2), None, "2 words but 3 vector rows"),
        (["a", "b"], (2,), None, "2-D"),
        (["a", "b"], (2, 2), np.array([1, 2, 3]), "counts"),
    ],
)
def test_constructor_validates(words, shape, counts, message) -> None:
    with pytest.raises(ModelFormatError, match=message):
        Vectors(words, np.zeros(shape, dtype=np.float32), counts)


@pytest.mark.parametrize("k", [1, 5, 18, 40])
def test_blocked_top_k_returns_the_k_largest_values_even_with_ties(monkeypatch, k) -> None:
    monkeypatch.setattr(vectors_module, "_TOPK_BLOCK", 8)  # force the blocked path on small rows
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 50, size=(6, 5003)).astype(np.float32)  # many ties, ragged tail
    idx = _top_k(scores, k)
    assert idx.shape == (6, k)
    for row in range(6):
        assert len(set(idx[row].tolist())) == k
        np.testing.assert_array_equal(np.sort(scores[row, idx[row]]), np.sort(scores[row])[-k:])


def exact_top(arr: np.ndarray, query: np.ndarray, topn: int, exclude: set[int], limit: int | None = None):
    """Brute force in float64 on the float32 unit rows: best first, ties to the lower row."""
    unit = vectors_module._unit_rows(arr).astype(np.float64)[:limit]
    scores = unit @ vectors_module._unit_vector(query).astype(np.float64)
    order = [int(i) for i in np.lexsort((np.arange(len(scores)), -scores)) if int(i) not in exclude]
    return [(f"w{i}", float(scores[i])) for i in order[:topn]]


@pytest.mark.parametrize(
    "regime",
    [
        "int8-scan", "int8-scan-in-parts", "int8-vnni", "int8-vnni-in-parts", "float32-single", "float32-heaps",
        "blas-batch",
    ],
)  # fmt: skip
def test_near_ties_below_the_int8_resolution_are_ranked_exactly(monkeypatch, regime) -> None:
    # 3000 rows within ~1e-4 of one direction: their scores differ far less than the int8
    # copy can resolve, so only the error bound and the exact rescoring can order them.
    rng = np.random.default_rng(11)
    base = rng.standard_normal(48).astype(np.float32)
    arr = rng.standard_normal((20000, 48)).astype(np.float32)
    arr[5000:8000] = base + 1e-4 * rng.standard_normal((3000, 48)).astype(np.float32)
    arr[9000:9005] = arr[5000]  # exact duplicates too
    # In parts: 7 uneven row ranges (some with fewer rows than topn), scanned by a pool.
    vecs = Vectors([f"w{i}" for i in range(len(arr))], arr, search_threads=7 if regime.endswith("parts") else 1)
    use_int8_kernel(monkeypatch, "vnni" if "vnni" in regime else "scan", vecs)
    monkeypatch.setattr(vectors_module, "_MIN_SCAN_PART", 1)
    monkeypatch.setattr(vectors_module, "_INT8_AFTER_SEARCHES", 10**9 if regime == "float32-single" else 0)
    monkeypatch.setattr(vectors_module, "_BLAS_MIN_QUERIES", 1 if regime == "blas-batch" else 10**9)
    if regime == "float32-heaps":  # a store too small for the int8 copy, searched often
        monkeypatch.setattr(vectors_module, "_INT8_MIN_VALUES", 10**18)
    probe = base + 1e-4 * rng.standard_normal(48).astype(np.float32)
    for topn, restrict in [(10, None), (50, None), (10, 7000), (10, 40)]:
        ours = vecs.most_similar([probe], topn=topn, restrict_vocab=restrict)
        expected = exact_top(arr, probe, topn, set(), restrict)
        assert [w for w, _ in ours] == [w for w, _ in expected]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in expected], rtol=0, atol=1e-12)
    ours = vecs.most_similar("w5000", topn=20)
    assert [w for w, _ in ours] == [w for w, _ in exact_top(arr, arr[5000], 20, {5000})]
    words = ["w5000", "w5001", "w9000"]
    assert vecs.most_similar_batch(words, topn=15) == [vecs.most_similar(w, topn=15) for w in words]


def test_heaps_come_out_best_first_with_ties_to_the_lower_row() -> None:
    from model import search

    rng = np.random.default_rng(4)
    for _ in range(500):
        n_queries, k, n = int(rng.integers(1, 5)), int(rng.integers(1, 30)), int(rng.integers(0, 80))
        vals, rows = search.new_heaps(n_queries, k)
        scores = rng.integers(0, 6, size=(n_queries, n)).astype(np.float32) / 4  # many ties
        first_row = int(rng.integers(0, 100))
        no_rows = np.zeros(0, dtype=np.int64)
        search.push_block(scores, first_row, np.zeros(n_queries + 1, dtype=np.int64), no_rows, vals, rows)
        got_vals, got_rows = search.sorted_heaps(vals, rows)
        for q in range(n_queries):
            best = sorted(zip(-scores[q], range(first_row, first_row + n), strict=True))[:k]
            expected_rows = [r for _, r in best] + [-1] * (k - len(best))  # free slots last
            assert got_rows[q].tolist() == expected_rows
            assert got_vals[q].tolist() == [-v for v, _ in best] + [-np.inf] * (k - len(best))


def test_int8_error_bound_holds_for_every_row() -> None:
    from model import search

    rng = np.random.default_rng(3)
    for dim in (1, 7, 100, 300, 700):  # 700: the query codes must shrink to avoid overflow
        arr = rng.standard_normal((2000, dim)).astype(np.float32)
        arr[::7] *= rng.uniform(1e-3, 1e3, size=(len(arr[::7]), 1)).astype(np.float32)
        arr[3] = 0.0
        unit = vectors_module._unit_rows(arr)
        rows = search.Int8Rows.build(unit, chunk_rows=333)
        for query in (unit[5], unit[3], vectors_module._unit_vector(rng.standard_normal(dim))):
            codes, scale, residual = search.quantize_query(query, dim)
            dots = rows.codes.astype(np.int64) @ codes.astype(np.int64)
            assert np.abs(dots).max() < 2**31
            approx = dots * (rows.scales.astype(np.float64) * scale)
            exact = unit.astype(np.float64) @ query.astype(np.float64)
            bound = np.linalg.norm(query.astype(np.float64)) * rows.max_error + residual * rows.max_norm
            assert np.all(np.abs(approx - exact) <= bound)
            assert bound < 0.02 * max(1.0, dim / 100)  # tight enough to prune (~topn candidates)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_a_format_error_naming_the_word(bad: float) -> None:
    arr = np.ones((40000, 4), dtype=np.float32)  # the bad row sits in the second norm chunk
    arr[20000, 2] = bad
    vecs = Vectors([f"w{i}" for i in range(len(arr))], arr)
    with pytest.raises(ModelFormatError, match=r"'w20000'.*NaN or infinity"):
        vecs.most_similar("w1")


# ---------------------------------------------------------------------- gensim's other names


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"positive": [("w1", 2.0), ("w2", 0.5)]}, id="weighted-positives"),
        pytest.param({"positive": [("w10", 1.5), "w20"], "negative": [("w30", 0.25)]}, id="weighted-negative"),
        pytest.param({"positive": [("w4", -1.0), ("w5", 3)]}, id="negative-weight"),
    ],
)
def test_weighted_terms_match_gensim(store, search_path, kwargs) -> None:
    ours, kv, arr = store
    assert_same_hits(ours.most_similar(**kwargs), kv.most_similar(**kwargs))
    raw = [(arr[7], 2.0), "w8"]
    assert_same_hits(ours.most_similar(positive=raw), kv.most_similar(positive=raw))


def test_a_lone_weighted_term_and_batches_take_weights(store) -> None:
    ours, _, _ = store
    expected = ours.most_similar(positive=[("w1", 2.0)], negative=["w2"])
    assert ours.most_similar(positive=("w1", 2.0), negative="w2") == expected
    assert ours.most_similar_batch([([("w1", 2.0)], ["w2"]), ("w1", 2.0)])[0] == expected
    assert ours.most_similar_batch([("w1", 2.0)])[0] == ours.most_similar("w1")  # w1 alone, scaled
    # A two-item list with a weighted term is two positive terms, not (positive, negative).
    for terms in ([("w1", 2.0), "w2"], ["w1", ("w2", 2.0)], (("w1", 2.0), ("w2", 0.5))):
        assert ours.most_similar_batch([terms])[0] == ours.most_similar(positive=list(terms))
    with pytest.raises(ParameterError, match="3CosAdd"):
        ours.most_similar_cosmul(positive=[("w1", 2.0)])
    with pytest.raises(ParameterError, match="finite"):
        ours.most_similar(positive=[("w1", float("nan"))])


def test_similar_by_word_and_by_vector_match_gensim(store) -> None:
    ours, kv, arr = store
    assert_same_hits(ours.similar_by_word("w3", topn=7), kv.similar_by_word("w3", topn=7))
    assert_same_hits(ours.similar_by_key("w3", restrict_vocab=500), kv.similar_by_key("w3", restrict_vocab=500))
    assert_same_hits(ours.similar_by_vector(arr[11] * 3, topn=5), kv.similar_by_vector(arr[11] * 3, topn=5))
    assert ours.similar_by_vector(list(arr[11]))[0][0] == "w11"  # any array-like, the word itself kept


def test_distances_closer_than_and_rank_match_gensim(store) -> None:
    ours, kv, arr = store
    np.testing.assert_array_equal(ours.distances("w5"), kv.distances("w5"))
    np.testing.assert_array_equal(ours.distances(arr[5], ["w1", "w9"]), kv.distances(arr[5], ["w1", "w9"]))
    near = ours.most_similar("w5", topn=30)[29][0]
    assert ours.closer_than("w5", near) == kv.closer_than("w5", near)
    assert len(ours.closer_than("w5", near)) == 29
    for other in (near, "w1", "w19999"):
        assert ours.rank("w5", other) == kv.rank("w5", other)
    with pytest.raises(UnknownWordError):
        ours.rank("w5", "nosuch")


def test_index_names_and_lists_of_words(store) -> None:
    ours, kv, _ = store
    assert ours.index_to_key == kv.index_to_key
    assert ours.get_index("w17") == kv.get_index("w17") == 17
    assert ours.get_index("nosuch", -1) == -1 and ours.has_index_for("w1") and not ours.has_index_for("x")
    with pytest.raises(UnknownWordError):
        ours.get_index("nosuch")
    np.testing.assert_array_equal(ours[["w3", "w1"]], kv[["w3", "w1"]])
    assert ours[[]].shape == (0, DIM)
    with pytest.raises(UnknownWordError, match="'nosuch'"):
        ours[["w1", "nosuch"]]


def test_a_word_with_no_direction_is_a_clear_error_not_a_made_up_ranking() -> None:
    from model.neighbours import build_neighbours

    rng = np.random.default_rng(5)
    arr = rng.standard_normal((50, 8)).astype(np.float32)
    arr[3] = 0.0  # an imported file can hold all-zero vectors
    words = [f"w{i}" for i in range(50)]
    v = Vectors(words, arr)
    for query in (
        lambda: v.most_similar("w3"),
        lambda: v.most_similar(["w1", "w3"]),
        lambda: v.most_similar_cosmul("w3"),
        lambda: v.analogy("w1", "w2", "w3"),
        lambda: v.most_similar_batch(["w1", "w3"]),
    ):
        with pytest.raises(ParameterError, match="'w3' is all zeros"):
            query()
    with pytest.raises(ParameterError, match="cancel out"):
        v.most_similar("w1", negative="w1")
    # Other words still answer, the zero row scoring 0; the neighbour table builds, and its
    # row for the zero word is never served.
    assert ("w3", 0.0) in v.most_similar("w1", topn=50)
    v.attach_neighbours(build_neighbours(v, k=5))
    assert v.most_similar("w1", topn=5) == v.precomputed_neighbours("w1", topn=5)
    with pytest.raises(ParameterError, match="'w3' is all zeros"):
        v.precomputed_neighbours("w3")
    with pytest.raises(ParameterError, match="'w3' is all zeros"):
        v.most_similar("w3")


def test_topn_none_gives_every_words_score_as_gensim_does(store) -> None:
    ours, theirs, _ = store
    for positive, negative, restrict in ((["w1"], [], None), (["w1", "w2"], ["w3"], None), (["w1"], [], 50)):
        mine = ours.most_similar(positive, negative, topn=None, restrict_vocab=restrict)
        gensim = theirs.most_similar(positive, negative, topn=None, restrict_vocab=restrict)
        assert mine.shape == gensim.shape
        np.testing.assert_allclose(mine, gensim, atol=1e-5)
        # The same scores the ranked answer gives, for the words it gives.
        ranked = ours.most_similar(positive, negative, topn=5, restrict_vocab=restrict)
        np.testing.assert_allclose([mine[ours.get_index(w)] for w, _ in ranked], [s for _, s in ranked], atol=1e-6)
    with pytest.raises(UnknownWordError):
        ours.most_similar("nosuchword", topn=None)
