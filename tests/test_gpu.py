"""The CUDA paths: the same algorithm tests as on NumPy, run on CuPy arrays (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import TrainConfig, train
from model.layers import Embedding, EmbeddingDot, SigmoidCrossEntropy
from model.sampling import AliasSampler
from tests.conftest import neighbour_overlap

pytestmark = pytest.mark.gpu

SANITY = dict(negative=15, epochs=10, sample=0.0, alpha=0.05, window=5, min_count=5)


@pytest.fixture(scope="module")
def cp() -> Any:
    import cupy

    return cupy


def _rank(vectors: Any, query: str, expected: str) -> int:
    words = [w for w, _ in vectors.most_similar(query, topn=len(vectors))]
    return words.index(expected)


def test_embedding_backward_on_cupy_equals_add_at(cp: Any) -> None:
    rng = np.random.default_rng(0)
    W = rng.normal(size=(50, 16)).astype(np.float32)
    idx = rng.integers(0, 50, size=(64, 10))
    dout = rng.normal(size=(64, 10, 16)).astype(np.float32)
    expected = np.zeros_like(W)
    np.add.at(expected, idx, dout)
    emb = Embedding(cp.asarray(W))
    np.testing.assert_array_equal(emb.forward(cp.asarray(idx)).get(), W[idx])
    np.testing.assert_allclose(emb.backward(cp.asarray(dout)).get(), expected, rtol=1e-5, atol=1e-5)


def test_loss_and_gradients_on_cupy_equal_numpy(cp: Any) -> None:
    rng = np.random.default_rng(1)
    W_out = rng.normal(scale=0.5, size=(30, 8))
    h = rng.normal(scale=0.5, size=(20, 8))
    idx = rng.integers(0, 30, size=(20, 6))
    labels = np.zeros(idx.shape)
    labels[:, 0] = 1
    weights = np.ones(idx.shape)

    def run(xp: Any) -> tuple[float, np.ndarray, np.ndarray]:
        dot = EmbeddingDot(xp.asarray(W_out))
        layer = SigmoidCrossEntropy()
        scores = dot.forward(xp.asarray(h), xp.asarray(idx))
        loss = float(layer.forward(scores, xp.asarray(labels), xp.asarray(weights)))
        dh, d_rows = dot.backward(layer.backward())
        dW = dot.embed.backward(d_rows)
        to_np = (lambda a: a.get()) if xp is cp else np.asarray
        return loss, to_np(dh), to_np(dW)

    cpu, gpu = run(np), run(cp)
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-9)
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gpu[2], cpu[2], rtol=1e-9, atol=1e-12)


def test_alias_tables_sample_unigram_075_on_device(cp: Any) -> None:
    counts = np.array([1000, 500, 100, 50, 10, 5, 1])
    sampler = AliasSampler(counts)
    accept, alias = cp.asarray(sampler.accept), cp.asarray(sampler.alias)
    rs = cp.random.RandomState(7)
    n = 2_000_000
    draw = rs.randint(0, counts.size, size=n)
    picks = cp.where(rs.random_sample(n) < accept[draw], draw, alias[draw]).get()
    observed = np.bincount(picks, minlength=counts.size)
    expected = sampler.probabilities * n
    assert float(((observed - expected) ** 2 / expected).sum()) < 22.46


@pytest.mark.parametrize("engine", ["hogwild", "minibatch"])
def test_cuda_training_learns_related_words(engine: str, lee_sentences: list[list[str]]) -> None:
    cfg = TrainConfig(seed=1, device="cuda", engine=engine, batch_words=64 if engine == "minibatch" else None,
                      **SANITY)  # type: ignore[arg-type]
    model = train(lee_sentences, cfg)
    assert model.meta["training"]["device"] == "cuda"
    assert _rank(model.vectors, "attacks", "bombings") < (50 if engine == "hogwild" else 100)
    losses = model.meta["training"]["epoch_losses"]
    assert losses[-1] < losses[0] * 0.9


@pytest.mark.parametrize("engine", ["hogwild", "minibatch"])
def test_cuda_subwords_place_unseen_words_by_their_spelling(engine: str, lee_text: Path) -> None:
    cfg = TrainConfig(seed=1, device="cuda", engine=engine, epochs=5, max_n=6, min_n=3, buckets=1_000_000)
    model = train(lee_text, cfg)
    assert model.meta["training"]["engine"] == engine and model.meta["training"]["ngram_rows"] > 0
    v = model.vectors
    assert "governmentt" not in v and "government" in [w for w, _ in v.most_similar("governmentt", topn=5)]
    assert "bombings" in [w for w, _ in v.most_similar("bombingss", topn=5)]


@pytest.mark.parametrize("engine", ["hogwild", "minibatch"])
def test_numpy_and_cupy_agree_on_a_fixed_seed(engine: str, lee_text: Path) -> None:
    """Different random streams, same algorithm: losses and learned structure agree closely."""
    kwargs: dict[str, Any] = dict(seed=3, epochs=5, engine=engine, threads=1)
    if engine == "minibatch":
        kwargs["batch_words"] = 256
    cpu = train(lee_text, TrainConfig(device="cpu", **kwargs))
    gpu = train(lee_text, TrainConfig(device="cuda", **kwargs))
    assert cpu.vectors.words == gpu.vectors.words
    cpu_loss, gpu_loss = cpu.meta["training"]["final_loss"], gpu.meta["training"]["final_loss"]
    assert gpu_loss == pytest.approx(cpu_loss, rel=0.05)
    # Neighbourhoods of frequent words overlap well beyond chance.
    assert neighbour_overlap(cpu.vectors, gpu.vectors, cpu.vectors.words[50:80]) > 0.2


def test_auto_picks_cuda_and_records_it(lee_text: Path, cp: Any) -> None:
    model = train(lee_text, TrainConfig(device="auto", epochs=1))
    assert model.meta["training"]["device"] == "cuda"
    cp.get_default_memory_pool().free_all_blocks()
    assert cp.get_default_memory_pool().used_bytes() == 0
