"""Training: it learns, it is reproducible, it resumes, it reports progress, it refuses bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from model import (
    CorpusError,
    DeviceError,
    EmptyVocabularyError,
    ParameterError,
    Progress,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    Vectors,
    train,
)
from model.checkpoint import CHECKPOINT_FILE
from tests.conftest import TrackerUpdate

# gensim's own CBOW sanity settings (test_word2vec.py: test_cbow_neg).
SANITY = dict(negative=15, epochs=10, sample=0.0, alpha=0.05, window=5, min_count=5)


def _rank(vectors: Vectors, query: str, expected: str) -> int:
    words = [w for w, _ in vectors.most_similar(query, topn=len(vectors))]
    return words.index(expected)


def test_hogwild_learns_related_words(lee_sentences: list[list[str]]) -> None:
    model = train(lee_sentences, TrainConfig(seed=1, threads=1, **SANITY))  # type: ignore[arg-type]
    assert _rank(model.vectors, "attacks", "bombings") < 50
    neighbours = [w for w, _ in model.vectors.most_similar([model.vectors.get_vector("attacks")], topn=51)]
    assert "attacks" in neighbours and "bombings" in neighbours


@pytest.mark.slow
def test_minibatch_engine_on_numpy_learns_related_words(lee_sentences: list[list[str]]) -> None:
    cfg = TrainConfig(seed=1, engine="minibatch", batch_words=64, **SANITY)  # type: ignore[arg-type]
    model = train(lee_sentences, cfg)
    assert model.meta["training"]["engine"] == "minibatch"
    # The array engine (the CuPy path) learns the same relation; a random model puts it near rank 2000.
    assert _rank(model.vectors, "attacks", "bombings") < 100
    losses = model.meta["training"]["epoch_losses"]
    assert losses[-1] < losses[0] * 0.9


def test_minibatch_engine_reads_loss_and_counts_back_about_twice_a_second_not_per_step(
    lee_sentences: list[list[str]], monkeypatch: pytest.MonkeyPatch, tracker_updates: list[TrackerUpdate]
) -> None:
    """On CuPy every read-back waits for the GPU; the engine keeps its sums on the device between them."""
    import model.minibatch as minibatch

    cfg = TrainConfig(seed=1, engine="minibatch", batch_words=64, epochs=2, threads=1)
    sentences = lee_sentences[:60]
    monkeypatch.setattr(minibatch, "READBACK_SECONDS", 0.0)
    every_step = train(sentences, cfg)
    per_step = list(tracker_updates)
    tracker_updates.clear()
    monkeypatch.setattr(minibatch, "READBACK_SECONDS", 3600.0)
    once = train(sentences, cfg)
    assert len(tracker_updates) == 2 < len(per_step)  # one read-back per epoch, at its end
    raw_words = every_step.meta["corpus"]["raw_words"]
    assert [u.raw_words for u in tracker_updates] == [raw_words, raw_words]
    assert sum(u.trained for u in tracker_updates) == sum(u.trained for u in per_step)
    assert sum(u.loss for u in tracker_updates) == pytest.approx(sum(u.loss for u in per_step), rel=1e-9)
    np.testing.assert_array_equal(once.vectors.vectors, every_step.vectors.vectors)


def test_one_thread_run_is_reproducible(lee_sentences: list[list[str]]) -> None:
    cfg = TrainConfig(seed=7, threads=1, epochs=1)
    a = train(lee_sentences, cfg)
    b = train(lee_sentences, cfg)
    c = train(lee_sentences, TrainConfig(seed=8, threads=1, epochs=1))
    np.testing.assert_array_equal(a.vectors.vectors, b.vectors.vectors)
    assert not np.array_equal(a.vectors.vectors, c.vectors.vectors)


def test_resume_from_checkpoint_equals_uninterrupted_run(lee_text: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(seed=3, threads=1, epochs=4)
    reference = train(lee_text, cfg)

    ckpt = tmp_path / "ckpt"
    seen: list[Progress] = []

    def stop_in_third_epoch() -> bool:
        return bool(seen) and seen[-1].epoch == 3

    with pytest.raises(TrainingCancelled):
        train(lee_text, cfg, checkpoint_dir=ckpt, progress=seen.append, progress_interval=0.0,
              should_stop=stop_in_third_epoch)
    assert (ckpt / CHECKPOINT_FILE).is_file()

    resumed = train(lee_text, cfg, checkpoint_dir=ckpt)
    assert resumed.meta["training"]["resumed_from_epoch"] == 2
    np.testing.assert_array_equal(resumed.vectors.vectors, reference.vectors.vectors)
    assert resumed.meta["training"]["epoch_losses"] == pytest.approx(reference.meta["training"]["epoch_losses"])
    # The last epoch leaves a checkpoint too: killed after training (building the neighbour
    # table, saving), a rerun trains nothing and gives the same model.
    reported: list[Progress] = []
    again = train(lee_text, cfg, checkpoint_dir=ckpt, progress=reported.append)
    assert again.meta["training"]["resumed_from_epoch"] == 4
    assert [(p.epoch, p.words_done == p.words_total) for p in reported] == [(4, True)]
    assert reported[0].loss == resumed.meta["training"]["final_loss"]
    np.testing.assert_array_equal(again.vectors.vectors, reference.vectors.vectors)
    assert again.meta["training"]["epoch_losses"] == resumed.meta["training"]["epoch_losses"]
    assert again.meta["training"]["words_per_sec"] > 0


def test_checkpoint_of_another_run_is_ignored(lee_text: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    train(lee_text, TrainConfig(seed=1, threads=1, epochs=2), checkpoint_dir=ckpt)
    other = train(lee_text, TrainConfig(seed=1, threads=1, epochs=2, vector_size=20), checkpoint_dir=ckpt)
    assert other.meta["training"]["resumed_from_epoch"] is None
    assert other.vectors.vector_size == 20


def test_progress_reports_words_loss_and_eta(lee_text: Path) -> None:
    reports: list[Progress] = []
    model = train(lee_text, TrainConfig(epochs=3, threads=2), progress=reports.append, progress_interval=0.0)
    assert reports, "no progress reported"
    done = [p.words_done for p in reports]
    assert done == sorted(done)
    last = reports[-1]
    assert last.words_done == last.words_total == model.meta["corpus"]["raw_words"] * 3
    assert last.epoch == last.epochs == 3
    assert {p.epoch for p in reports} == {1, 2, 3}
    assert all(p.loss is None or p.loss > 0 for p in reports)
    assert last.eta_s == pytest.approx(0.0, abs=1e-6)
    assert last.words_per_sec > 0
    assert last.alpha < TrainConfig().alpha


def test_meta_describes_the_run(lee_text: Path) -> None:
    model = train(lee_text, TrainConfig(epochs=1, min_count=3))
    meta = model.meta
    assert meta["config"]["min_count"] == 3
    assert meta["corpus"]["raw_words"] == sum(len(line.split()) for line in lee_text.open())
    assert meta["training"]["device"] == "cpu" and meta["training"]["engine"] == "hogwild"
    assert meta["training"]["final_loss"] > 0
    counts = model.vectors.counts
    assert counts is not None and np.all(np.diff(counts) <= 0) and counts.min() >= 3


def test_max_vocab_keeps_most_frequent_words(lee_text: Path) -> None:
    model = train(lee_text, TrainConfig(epochs=1, max_vocab=50, min_count=1))
    assert len(model.vectors) == 50
    assert "the" in model.vectors


def test_lowercase_and_long_lines(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(("Apple apple APPLE pear " * 6000) + "\n", encoding="utf-8")
    model = train(corpus, TrainConfig(epochs=1, min_count=1, lowercase=True))
    assert set(model.vectors.words) == {"apple", "pear"}
    assert model.meta["corpus"]["sentences"] == 3  # 24 000 tokens cut into 10 000-word chunks


def test_compressed_corpora_train(tmp_path: Path, lee_text: Path) -> None:
    import bz2
    import gzip

    text = lee_text.read_bytes()
    for name, data in (("c.txt.gz", gzip.compress(text)), ("c.bz2", bz2.compress(text))):
        (tmp_path / name).write_bytes(data)
        model = train(tmp_path / name, TrainConfig(epochs=1))
        assert model.meta["corpus"]["raw_words"] == len(text.split())


@pytest.mark.parametrize(
    ("content", "error"),
    [("", CorpusError), ("\n\n   \n", CorpusError), ("a b c\n", EmptyVocabularyError)],
)
def test_bad_corpora_raise_clear_errors(tmp_path: Path, content: str, error: type[Exception]) -> None:
    path = tmp_path / "c.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(error):
        train(path, TrainConfig(epochs=1))


def test_missing_corpus(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        train(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    "kwargs",
    [dict(vector_size=0), dict(window=0), dict(negative=-1), dict(epochs=0), dict(alpha=0.0),
     dict(sample=-0.1), dict(min_alpha=0.5), dict(device="tpu"), dict(engine="magic"), dict(min_count=True),
     dict(seed=True), dict(epochs=2.0), dict(vector_size=np.float64(10))],
)
def test_out_of_range_parameters(kwargs: dict[str, object], lee_text: Path) -> None:
    with pytest.raises(ParameterError):
        train(lee_text, TrainConfig(**kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("engine", "alpha", "reason"),
    [
        # NaN within the first epoch (the kernel used to die of a bare ZeroDivisionError there).
        ("hogwild", 1.0, "in epoch 1 of 3: the loss became nan"),
        # Finite but blown up to 1e9 and more.
        ("hogwild", 0.7, "in epoch 1 of 3: the mean loss per word is .* over 20 times"),
        ("minibatch", 1.0, "in epoch 1 of 3: the mean loss per word is .* over 20 times"),
        # Climbs to ~100 and stays far worse than an untrained model to the end.
        ("hogwild", 0.55, "after the last epoch: the mean loss per word is .* over 1.25 times"),
    ],
)
def test_a_learning_rate_that_blows_up_training_is_a_clear_error(
    lee_sentences: list[list[str]], engine: str, alpha: float, reason: str
) -> None:
    with pytest.raises(TrainingDiverged, match=rf"diverged {reason}.*lower the learning rate alpha \(now {alpha};"):
        train(lee_sentences, TrainConfig(alpha=alpha, epochs=3, seed=1, threads=1, engine=engine))


def test_a_high_learning_rate_that_recovers_is_not_called_divergence(lee_sentences: list[list[str]]) -> None:
    # alpha 0.45 climbs to nearly twice an untrained model's loss (4.16) mid-run, then learns.
    model = train(lee_sentences, TrainConfig(alpha=0.45, epochs=5, seed=1, threads=1))
    losses = model.meta["training"]["epoch_losses"]
    assert max(losses) > 6 and losses[-1] < 3.5
    assert np.isfinite(model.vectors.vectors).all()


def test_numpy_integers_are_taken_as_ints(lee_text: Path) -> None:
    cfg = TrainConfig(vector_size=np.int64(12), epochs=np.int32(1), seed=np.uint32(3), max_vocab=np.int64(500))
    model = train(lee_text, cfg)
    assert model.vectors.vector_size == 12 and len(model.vectors) == 500
    assert model.meta["config"]["seed"] == 3 and type(model.meta["config"]["vector_size"]) is int


def test_a_run_with_next_to_nothing_to_learn_is_not_called_divergence() -> None:
    # Random words, nearly all subsampled away: the loss stays at an untrained model's,
    # (k+1)·ln 2, give or take the rounding of its sum (it ended 1e-6 below it here).
    rng = np.random.default_rng(0)
    sentences = [[f"w{x}" for x in rng.integers(0, 45, 15)] for _ in range(180)]
    model = train(sentences, TrainConfig(min_count=1, epochs=3, sample=1e-5, seed=3, threads=1, window=6))
    assert model.meta["training"]["final_loss"] == pytest.approx(6 * np.log(2), rel=1e-4)

    from model.trainer import _Tracker

    tracker = _Tracker(TrainConfig(negative=5), 100, None, 1.0, 0)
    for per_word, diverged in ((6 * np.log(2) * (1 + 1e-9), False), (6 * np.log(2) * 1.3, True)):
        tracker.epoch_loss_sum, tracker.epoch_loss_words = per_word * 1000, 1000
        if diverged:
            with pytest.raises(TrainingDiverged):
                tracker.check_epoch_loss(last=True)
        else:
            tracker.check_epoch_loss(last=True)


def test_the_kernels_log1p_is_within_2e_8_and_keeps_nan() -> None:
    # The reported loss uses it for log(1 + e^-|f|): e in [0, 1].
    from model.cpu_kernel import _log1p_unit

    grid = np.concatenate([np.linspace(0.0, 1.0, 20_001), np.geomspace(1e-300, 1.0, 2_001)])
    ours = np.array([_log1p_unit(float(e)) for e in grid])
    assert np.max(np.abs(ours - np.log1p(grid))) < 2e-8
    assert np.all(np.abs(ours - np.log1p(grid)) <= 2e-8 * np.log1p(grid) + 1e-300)  # relative, near 0 too
    assert math.isnan(_log1p_unit(float("nan")))


def test_cuda_without_gpu_is_a_clear_error(lee_text: Path) -> None:
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    with pytest.raises(DeviceError, match="cuda"):
        train(lee_text, TrainConfig(device="cuda"))
    assert train(lee_text, TrainConfig(device="auto", epochs=1)).meta["training"]["device"] == "cpu"
