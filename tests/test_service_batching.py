"""The query batcher: concurrent neighbour queries share a matrix product and get their own answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from app.batching import QueryBatcher
from model import UnknownWordError, Vectors


@pytest.fixture(scope="module")
def vectors() -> Vectors:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(2000)]
    return Vectors(words, rng.standard_normal((2000, 32)).astype(np.float32))


@pytest.fixture
def batcher(vectors: Vectors) -> Iterator[QueryBatcher]:
    b = QueryBatcher(vectors, max_batch=64)
    yield b
    b.close()


def same_hits(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    return [w for w, _ in got] == [w for w, _ in expected] and np.allclose(
        [s for _, s in got], [s for _, s in expected], atol=1e-5
    )


def test_concurrent_queries_each_get_their_own_answer(vectors: Vectors, batcher: QueryBatcher) -> None:
    rng = np.random.default_rng(2)
    queries = []
    for _ in range(300):
        pos = [f"w{i}" for i in rng.integers(0, 2000, rng.integers(1, 3))]
        neg = [f"w{i}" for i in rng.integers(0, 2000, rng.integers(0, 2))]
        topn = int(rng.integers(1, 20))
        restrict = None if rng.random() < 0.5 else int(rng.integers(100, 2000))
        method = "add" if rng.random() < 0.8 else "mul"
        queries.append((pos, neg, topn, restrict, method))
    start = threading.Barrier(16)

    def ask(q: tuple[Any, ...]) -> list[tuple[str, float]]:
        pos, neg, topn, restrict, method = q
        return batcher.submit(pos, neg, topn=topn, restrict_vocab=restrict, method=method).result(timeout=30)

    def ask_all(chunk: list[tuple[Any, ...]]) -> list[list[tuple[str, float]]]:
        start.wait()
        return [ask(q) for q in chunk]

    chunks = [queries[i::16] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask_all, chunks))
    for chunk, got in zip(chunks, answers, strict=True):
        for (pos, neg, topn, restrict, method), hits in zip(chunk, got, strict=True):
            if method == "add":
                expected = vectors.most_similar(pos, neg, topn=topn, restrict_vocab=restrict)
            else:
                expected = vectors.most_similar_cosmul(pos, neg, topn=topn, restrict_vocab=restrict)
            assert same_hits(hits, expected)


def test_a_bad_query_fails_alone(vectors: Vectors, batcher: QueryBatcher) -> None:
    futures = [
        batcher.submit(["w1"], [], topn=3),
        batcher.submit(["nope"], [], topn=3),
        batcher.submit(["w2"], ["w3"], topn=3),
    ]
    with pytest.raises(UnknownWordError) as err:
        futures[1].result(timeout=10)
    assert err.value.words == ["nope"]
    assert same_hits(futures[0].result(timeout=10), vectors.most_similar("w1", topn=3))
    assert same_hits(futures[2].result(timeout=10), vectors.most_similar("w2", "w3", topn=3))


def test_a_closed_batcher_still_answers(vectors: Vectors) -> None:
    # A request may still hold a model that the cache evicted (and whose batcher it closed).
    b = QueryBatcher(vectors)
    b.close()
    assert same_hits(b.submit(["w1"], [], topn=4).result(timeout=10), vectors.most_similar("w1", topn=4))
