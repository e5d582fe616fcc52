"""The CUDA trainer (model/cuda_kernel.py) without a GPU: its source compiles under NVRTC,
CuPy's compiler, and the whole engine trains on the CPU simulator of tests/cuda_sim.py,
which also checks every launch's arguments, bounds and warp synchrony.

The simulator interleaves 128 warps in a fixed order, so these runs are deterministic; on
a GPU thousands of warps share the weights in no fixed order (Hogwild) and runs differ in
the last bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import model.backend as backend
import model.cuda_kernel as cuda_kernel
from model import Progress, TrainConfig, TrainingCancelled, train
from tests.conftest import TrackerUpdate, neighbour_overlap
from tests.cuda_sim import SimCupy, compiler
from tests.nvrtc import compile_cuda

needs_simulator = pytest.mark.skipif(compiler() is None, reason="the CUDA simulator needs g++ on x86-64 Linux")


@pytest.mark.parametrize("subwords", [False, True])
@pytest.mark.parametrize("arch", ["compute_75", "compute_90"])
def test_kernel_compiles_under_nvrtc_with_the_engines_options(arch: str, subwords: bool) -> None:
    compiled = compile_cuda(cuda_kernel.kernel_source(subwords), (f"-arch={arch}", *cuda_kernel.NVRTC_OPTIONS))
    assert compiled.ok, compiled.log
    assert ".entry cbow_hogwild" in compiled.ptx
    # nvcc's -O3 is what CuPy's compiler refuses: the check above would catch it coming back.
    assert not compile_cuda(cuda_kernel.CUDA_SOURCE, (f"-arch={arch}", "-O3")).ok


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> SimCupy:
    """device="cuda" served by the simulator (one multiprocessor: 16 blocks of 8 warps)."""
    if compiler() is None:
        pytest.skip("the CUDA simulator needs g++ on x86-64 Linux")
    cp = SimCupy(multiprocessors=1)
    monkeypatch.setattr(backend, "_cupy", lambda: cp)
    return cp


@needs_simulator
@pytest.mark.slow
def test_simulated_gpu_training_agrees_with_the_cpu_engine(gpu: SimCupy, lee_text: Path) -> None:
    cfg = dict(seed=3, epochs=2, threads=1)
    cpu = train(lee_text, TrainConfig(device="cpu", **cfg))  # type: ignore[arg-type]
    cuda = train(lee_text, TrainConfig(device="cuda", **cfg))  # type: ignore[arg-type]
    assert cuda.meta["training"]["device"] == "cuda" and cuda.meta["training"]["engine"] == "hogwild"
    assert gpu.kernels and gpu.kernels[0].launches == 2
    # Same algorithm, other random streams. The first epoch's loss runs a little higher:
    # 128 warps update at once, each from weights a few words stale (Hogwild); one warp
    # alone lands within 0.5 % of the CPU engine.
    gpu_losses, cpu_losses = cuda.meta["training"]["epoch_losses"], cpu.meta["training"]["epoch_losses"]
    assert gpu_losses[0] == pytest.approx(cpu_losses[0], rel=0.05)
    assert gpu_losses[-1] == pytest.approx(cpu_losses[-1], rel=0.01)
    assert neighbour_overlap(cpu.vectors, cuda.vectors, cpu.vectors.words[50:80]) > 0.2
    assert np.isfinite(cuda.vectors.vectors).all()


@needs_simulator
def test_long_sentences_are_trained_in_pieces_every_word_counted(
    gpu: SimCupy, tracker_updates: list[TrackerUpdate]
) -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    lengths = [2501, 2001, 7, 1, 1, 30]  # 2501 = 1000 + 1000 + 501; 2001 leaves a 1-word piece
    sentences = [list(rng.choice(words, size=n)) for n in lengths]
    train(sentences, TrainConfig(device="cuda", epochs=2, sample=0.0, min_count=1, window=3, seed=1))
    per_epoch = len(tracker_updates) // 2
    assert per_epoch >= 1 and len(tracker_updates) == 2 * per_epoch
    for epoch in (tracker_updates[:per_epoch], tracker_updates[per_epoch:]):
        assert sum(u.raw_words for u in epoch) == sum(lengths)
        # Without subsampling every word that has a context is trained: all but the two
        # one-word sentences and the one-word last piece of the 2001-word sentence.
        assert sum(u.trained for u in epoch) == sum(lengths) - 3


@needs_simulator
def test_progress_alpha_and_cancel_between_launches(
    gpu: SimCupy, monkeypatch: pytest.MonkeyPatch, tracker_updates: list[TrackerUpdate]
) -> None:
    monkeypatch.setattr(cuda_kernel, "WORDS_PER_LAUNCH", 700)
    rng = np.random.default_rng(1)
    sentences = [list(rng.choice([f"w{i}" for i in range(60)], size=50)) for _ in range(100)]  # 5,000 words
    seen: list[Progress] = []
    model = train(sentences, TrainConfig(device="cuda", epochs=2, seed=2), progress=seen.append, progress_interval=0.0)
    launches = gpu.kernels[-1].launches
    assert launches == 2 * 8  # 5,000 words in whole 50-word sentences: 7 launches of 700, one of 100
    alphas = [u.alpha for u in tracker_updates]
    assert alphas == sorted(alphas, reverse=True) and alphas[-1] == pytest.approx(model.meta["config"]["min_alpha"])
    done = [p.words_done for p in seen]
    assert done == sorted(done) and done[-1] == 10_000

    calls = 0

    def stop_after_three() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    before = len(gpu.kernels)
    with pytest.raises(TrainingCancelled):
        train(sentences, TrainConfig(device="cuda", epochs=2, seed=2), should_stop=stop_after_three)
    assert gpu.kernels[before].launches == 3


@needs_simulator
def test_resume_on_the_gpu_engine_equals_an_uninterrupted_run(
    gpu: SimCupy, lee_sentences: list[list[str]], tmp_path: Path
) -> None:
    sentences = lee_sentences[:60]
    cfg = TrainConfig(device="cuda", seed=5, epochs=3)
    reference = train(sentences, cfg)
    seen: list[Progress] = []
    with pytest.raises(TrainingCancelled):
        train(
            sentences,
            cfg,
            checkpoint_dir=tmp_path,
            progress=seen.append,
            progress_interval=0.0,
            should_stop=lambda: bool(seen) and seen[-1].epoch == 3,
        )
    resumed = train(sentences, cfg, checkpoint_dir=tmp_path)
    assert resumed.meta["training"]["resumed_from_epoch"] == 2
    # Only deterministic on the simulator; it shows the device weights reach the checkpoint
    # and the resumed run replays the same launches with the same seeds.
    np.testing.assert_array_equal(resumed.vectors.vectors, reference.vectors.vectors)


@needs_simulator
def test_a_corpus_too_large_for_the_gpu_streams_and_trains_the_same(
    monkeypatch: pytest.MonkeyPatch, lee_sentences: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cuda_kernel, "WORDS_PER_LAUNCH", 3000)
    sentences = lee_sentences[:60]
    cfg = TrainConfig(device="cuda", seed=6, epochs=2)
    roomy = SimCupy(multiprocessors=1)
    monkeypatch.setattr(backend, "_cupy", lambda: roomy)
    resident = train(sentences, cfg)

    full = SimCupy(multiprocessors=1, free_memory=0)  # nothing fits beside the model
    monkeypatch.setattr(backend, "_cupy", lambda: full)
    with caplog.at_level("INFO", logger="model.cuda_kernel"):
        streamed = train(sentences, cfg)
    assert "streaming it in" in caplog.text
    assert full.kernels[0].launches == roomy.kernels[0].launches > 2 * 2
    # Each launch reads only its own slice (the simulator bounds-checks it), with the same
    # sentences, draws and learning rates as the resident run.
    np.testing.assert_array_equal(streamed.vectors.vectors, resident.vectors.vectors)


@needs_simulator
@pytest.mark.parametrize(("vector_size", "window", "negative"), [(1, 1, 1), (33, 5, 40), (1000, 50, 5)])
def test_extreme_parameters_stay_inside_the_gpus_limits(
    gpu: SimCupy, lee_sentences: list[list[str]], vector_size: int, window: int, negative: int
) -> None:
    """The allowed extremes: shared memory per block (1000 dims leave 4 warps), lanes with no
    dimension of their own, more negatives than lanes, windows wider than most sentences."""
    cfg = TrainConfig(device="cuda", seed=4, epochs=2, vector_size=vector_size, window=window, negative=negative)
    model = train(lee_sentences[:20], cfg)
    vectors = model.vectors.vectors
    assert vectors.shape[1] == vector_size and np.isfinite(vectors).all()
    assert np.isfinite(model.meta["training"]["epoch_losses"]).all()


SUBWORDS = dict(max_n=6, min_n=3, buckets=1_000_000)


@needs_simulator
@pytest.mark.slow
def test_simulated_gpu_trains_subwords_as_the_cpu_engine_does(gpu: SimCupy, lee_sentences: list[list[str]]) -> None:
    """The kernel compiled with SUBWORDS: each context word stands for its own row and its
    n-grams' rows, as in the CPU kernel."""
    sentences = lee_sentences[:150]
    cfg = dict(seed=3, epochs=2, threads=1, **SUBWORDS)
    cpu = train(sentences, TrainConfig(device="cpu", **cfg))  # type: ignore[arg-type]
    cuda = train(sentences, TrainConfig(device="cuda", **cfg))  # type: ignore[arg-type]
    assert cuda.meta["training"]["engine"] == "hogwild"
    assert gpu.kernels and gpu.kernels[0].launches == 2
    # Counting context words instead of their rows, or skipping the n-grams' rows, puts
    # the loss far from the CPU engine's (tens of percent).
    gpu_losses, cpu_losses = cuda.meta["training"]["epoch_losses"], cpu.meta["training"]["epoch_losses"]
    assert gpu_losses[0] == pytest.approx(cpu_losses[0], rel=0.05)
    assert gpu_losses[-1] == pytest.approx(cpu_losses[-1], rel=0.02)
    sub_cpu, sub_gpu = cpu.vectors.subwords, cuda.vectors.subwords
    assert sub_cpu is not None and sub_gpu is not None
    np.testing.assert_array_equal(sub_gpu.bucket_ids, sub_cpu.bucket_ids)
    # Every n-gram row in use took updates, by about as much as on the CPU.
    n_vocab = len(cpu.vectors)
    init = np.random.default_rng(3).random((n_vocab + sub_cpu.bucket_ids.size, 100), dtype=np.float32)
    start = ((init - 0.5) / 100)[n_vocab:]  # the trainer's initial rows (word2vec.c's)
    moved_gpu = np.linalg.norm(sub_gpu.vectors - start, axis=1)
    moved_cpu = np.linalg.norm(sub_cpu.vectors - start, axis=1)
    assert (moved_gpu > 0).all()
    assert np.median(moved_gpu) == pytest.approx(np.median(moved_cpu), rel=0.1)
    assert neighbour_overlap(cpu.vectors, cuda.vectors, cpu.vectors.words[50:80]) > 0.2
    assert np.isfinite(cuda.vectors.vectors).all()


@needs_simulator
def test_the_subword_kernel_with_no_ngrams_is_the_plain_kernel(gpu: SimCupy, lee_sentences: list[list[str]]) -> None:
    """n-grams of 20 characters: no word here has one, so each word lists its own row alone
    and the subword kernel must compute exactly what the plain one does."""
    sentences = lee_sentences[:40]
    plain = train(sentences, TrainConfig(device="cuda", seed=7, epochs=2))
    sub = train(sentences, TrainConfig(device="cuda", seed=7, epochs=2, min_n=20, max_n=20))
    assert sub.meta["training"]["ngram_rows"] == 0
    assert "#define SUBWORDS 1" not in gpu.kernels[0].source and "#define SUBWORDS 1" in gpu.kernels[1].source
    np.testing.assert_array_equal(sub.vectors.vectors, plain.vectors.vectors)


def test_small_corpora_are_trained_by_fewer_warps() -> None:
    """The grid narrows with the square of a small corpus's size; from ~2.3 M words it is whole.
    The sizes are those measured on an H200 (bench/RESULTS.md, "Small corpora")."""
    full = 132 * cuda_kernel.GRID_WARPS_PER_SM // 8
    assert cuda_kernel.grid_blocks(132, 8, 58_152) == 1  # Lee: 11 warps, one block of 8
    assert cuda_kernel.grid_blocks(132, 8, 1_000_000) == 3_333 // 8
    assert cuda_kernel.grid_blocks(132, 8, 5_000_000) == full
    assert cuda_kernel.grid_blocks(132, 8, 50_000_000) == full
    assert cuda_kernel.grid_blocks(132, 8, 0) == 1
    sizes = range(0, 5_000_000, 50_000)
    blocks = [cuda_kernel.grid_blocks(132, 8, n) for n in sizes]
    assert blocks == sorted(blocks)  # never fewer warps for more words
