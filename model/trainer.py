"""CBOW with negative sampling: the training lifecycle.

`train()` reads the corpus once, builds the vocabulary, then runs epochs on one of two
engines that implement the same algorithm (word2vec.c's): random window shrink, frequent
word subsampling, unigram^0.75 negatives, linear learning-rate decay.

- "hogwild": per-word SGD on shared weights: Numba-compiled CPU threads (model/cpu_kernel.py)
  or one CUDA warp per sentence (model/cuda_kernel.py).
- "minibatch": the network as array operations on NumPy or CuPy (model/minibatch.py, layers.py).

With `max_n > 0` a word's input also takes its character n-grams' rows (fastText's subwords,
model/subwords.py), on every engine and device.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.atomic import unwritable_reason
from model.backend import resolve_device
from model.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from model.config import Progress, TrainConfig
from model.corpus import Source, encode
from model.cpu_kernel import train_cbow_job, train_cbow_subword_job
from model.errors import ParameterError, TrainingCancelled, TrainingDiverged
from model.sampling import AliasSampler, keep_thresholds
from model.store import Model
from model.subwords import Subwords, TrainingRows, identity_rows, training_rows, word_vectors
from model.vectors import Vectors
from model.vocab import TrainingCorpus, Vocab, apply_vocab, build_vocab

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DEFAULT_HOGWILD_BATCH = 10_000
_M64 = (1 << 64) - 1

ProgressCallback = Callable[[Progress], None]
_LOWER_ALPHA = "lower the learning rate alpha (now {alpha}; word2vec's default is 0.05) and train again"


def job_seed(seed: int, epoch: int, job: int) -> int:
    """A well-mixed 64-bit seed per (run, epoch, job): results do not depend on thread timing."""
    z = ((seed << 40) ^ (epoch << 24) ^ job) & _M64
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return z or 1


class _Tracker:
    """Aggregates word and loss counts from worker threads; reports at most every `interval`."""

    def __init__(
        self, cfg: TrainConfig, raw_per_epoch: int, callback: ProgressCallback | None, interval: float,
        start_epoch: int,
    ):
        self.cfg = cfg
        self.words_total = raw_per_epoch * cfg.epochs
        self.words_done = raw_per_epoch * start_epoch
        self.session_start_words = self.words_done
        self.callback = callback
        self.interval = interval
        self.lock = threading.Lock()
        self.t_start = time.perf_counter()
        self.last_report = self.t_start
        self.loss_sum = 0.0
        self.loss_words = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_words = 0
        self.epoch = start_epoch + 1
        self.alpha = cfg.alpha

    def add(self, raw_words: int, trained: int, loss: float, alpha: float) -> None:
        # Raised in the engine's own thread, so a blown-up run stops within one job or launch
        # instead of finishing the epoch on NaN.
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged in epoch {self.epoch} of {self.cfg.epochs}: the loss became "
                f"{loss}; {_LOWER_ALPHA.format(alpha=self.cfg.alpha)}"
            )
        with self.lock:
            self.words_done += raw_words
            self.loss_sum += loss
            self.loss_words += trained
            self.epoch_loss_sum += loss
            self.epoch_loss_words += trained
            self.alpha = alpha

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch + 1
        self.epoch_loss_sum = 0.0
        self.epoch_loss_words = 0

    def epoch_loss(self) -> float:
        return self.epoch_loss_sum / max(self.epoch_loss_words, 1)

    def check_epoch_loss(self, *, last: bool) -> None:
        """Stop a run whose loss climbed far above where it started: its vectors are noise.

        An untrained model (zero output vectors) scores every word at (negative + 1)·ln 2. A run
        whose learning rate overshoots can climb well above that and still recover (alpha 0.45
        on the Lee corpus peaks at 1.9 times it and ends at 0.7 times it), so mid-run only twenty
        times it stops a run. After the last epoch 1.25 times it does: a run with next to nothing
        to learn (a few words, most subsampled away) ends at the untrained loss itself, give or
        take rounding, and must not be called diverged.
        """
        untrained = (self.cfg.negative + 1) * math.log(2)
        loss = self.epoch_loss()
        factor = 1.25 if last else 20
        if loss > factor * untrained:
            where = "after the last epoch" if last else f"in epoch {self.epoch} of {self.cfg.epochs}"
            raise TrainingDiverged(
                f"training diverged {where}: the mean loss per word is {loss:.4g}, over {factor:g} "
                f"times an untrained model's {untrained:.3g}; {_LOWER_ALPHA.format(alpha=self.cfg.alpha)}"
            )

    def report_finished(self, loss: float | None) -> None:
        """The one report of a run resumed after its last epoch: nothing is left to train."""
        if self.callback is not None:
            self.callback(
                Progress(
                    epoch=self.cfg.epochs, epochs=self.cfg.epochs, words_done=self.words_total,
                    words_total=self.words_total, words_per_sec=0.0, loss=loss, alpha=self.cfg.min_alpha,
                    eta_s=0.0, elapsed_s=0.0,
                )
            )

    def words_per_sec(self) -> float:
        elapsed = time.perf_counter() - self.t_start
        return (self.words_done - self.session_start_words) / elapsed if elapsed > 0 else 0.0

    def report(self, *, force: bool = False) -> None:
        now = time.perf_counter()
        if self.callback is None or (not force and now - self.last_report < self.interval):
            return
        with self.lock:
            loss = self.loss_sum / self.loss_words if self.loss_words else None
            self.loss_sum = 0.0
            self.loss_words = 0
            done = self.words_done
        rate = self.words_per_sec()
        eta = (self.words_total - done) / rate if rate > 0 else None
        self.last_report = now
        self.callback(
            Progress(
                epoch=self.epoch, epochs=self.cfg.epochs, words_done=done, words_total=self.words_total,
                words_per_sec=rate, loss=loss, alpha=self.alpha, eta_s=eta, elapsed_s=now - self.t_start,
            )
        )


@dataclass
class _Run:
    cfg: TrainConfig
    corpus: TrainingCorpus
    vocab: Vocab
    syn0: np.ndarray
    syn1neg: np.ndarray
    keep: np.ndarray
    sampler: AliasSampler
    threads: int
    inputs: TrainingRows  # the input rows each word trains (its own; with subwords, its n-grams' too)

    def alpha_at(self, epoch: int, words_before: int) -> float:
        total = self.cfg.epochs * self.corpus.n_words
        p = (epoch * self.corpus.n_words + words_before) / total
        return self.cfg.alpha - (self.cfg.alpha - self.cfg.min_alpha) * p


def _job_bounds(offsets: np.ndarray, batch_words: int) -> np.ndarray:
    """Sentence indices that split the corpus into runs of about `batch_words` words."""
    total = int(offsets[-1])
    targets = np.arange(batch_words, total, batch_words, dtype=np.int64)
    cuts = np.searchsorted(offsets, targets, side="left")
    n_sent = offsets.size - 1
    return np.unique(np.concatenate(([0], cuts, [n_sent]))).astype(np.int64)


def _hogwild_epoch(
    run: _Run, epoch: int, tracker: _Tracker, should_stop: Callable[[], bool] | None
) -> None:
    bounds = _job_bounds(run.corpus.offsets, run.cfg.batch_words or DEFAULT_HOGWILD_BATCH)
    n_jobs = bounds.size - 1
    offsets = run.corpus.offsets
    raw = run.corpus.raw_offsets
    jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    for j in range(n_jobs):
        jobs.put(j)
    for _ in range(run.threads):
        jobs.put(None)
    stop = threading.Event()
    failures: list[BaseException] = []
    max_len = int(np.diff(offsets).max(initial=0)) + 1
    dim = run.cfg.vector_size

    kernel = train_cbow_subword_job if run.cfg.subwords else train_cbow_job

    def work() -> None:
        buf = np.empty(max_len, dtype=np.int32)
        neu1 = np.empty(dim, dtype=np.float32)
        neu1e = np.empty(dim, dtype=np.float32)
        try:
            while not stop.is_set():
                j = jobs.get()
                if j is None:
                    return
                s0, s1 = int(bounds[j]), int(bounds[j + 1])
                a0 = run.alpha_at(epoch, int(offsets[s0]))
                a1 = run.alpha_at(epoch, int(offsets[s1]))
                trained, loss, _ = kernel(
                    run.syn0, run.syn1neg, run.inputs.offsets, run.inputs.rows, run.corpus.tokens,
                    offsets, s0, s1, run.keep,
                    run.sampler.accept, run.sampler.alias, run.cfg.window, run.cfg.negative,
                    a0, a1, np.uint64(job_seed(run.cfg.seed, epoch, j)), buf, neu1, neu1e,
                )
                tracker.add(int(raw[s1] - raw[s0]), trained, loss, a1)
        except BaseException as exc:  # surfaced in the calling thread below
            failures.append(exc)
            stop.set()

    workers = [threading.Thread(target=work, name=f"w2v-train-{i}", daemon=True) for i in range(run.threads)]
    for t in workers:
        t.start()
    cancelled = False
    while alive := [t for t in workers if t.is_alive()]:
        alive[0].join(timeout=0.05)
        tracker.report()
        if not cancelled and should_stop is not None and should_stop():
            cancelled = True
            stop.set()
    for t in workers:
        t.join()
    if failures:
        raise failures[0]
    if cancelled:
        raise TrainingCancelled("training was cancelled")


class _Engine(Protocol):
    """An engine that keeps its own (device) copy of the weights between epochs."""

    def run_epoch(self, epoch: int, tracker: _Tracker, should_stop: Callable[[], bool] | None) -> None: ...
    def sync_to_host(self) -> None: ...
    def close(self) -> None: ...


def _device_engine(run: _Run, engine: str, device: str) -> _Engine | None:
    """None for the CPU Hogwild engine, which trains the host arrays in place."""
    if engine == "hogwild" and device == "cpu":
        return None
    if engine == "hogwild":
        from model.cuda_kernel import CudaHogwildEngine

        return CudaHogwildEngine(run, device)
    from model.minibatch import MinibatchEngine

    return MinibatchEngine(run, device)


def train(
    corpus: Source,
    config: TrainConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
    checkpoint_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Model:
    """Train CBOW negative-sampling vectors on `corpus` (a text file path or token lists)."""
    cfg = (config or TrainConfig()).validate()
    device = resolve_device(cfg.device)
    engine = "hogwild" if cfg.engine == "auto" else cfg.engine
    threads = cfg.threads or os.cpu_count() or 1
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        if ckpt_dir.exists() and not ckpt_dir.is_dir():
            raise ParameterError(f"checkpoint_dir {ckpt_dir} exists and is not a folder")
        problem = unwritable_reason(ckpt_dir / CHECKPOINT_FILE) if ckpt_dir.is_dir() else unwritable_reason(ckpt_dir)
        if problem is not None:
            raise ParameterError(f"checkpoint_dir {ckpt_dir}: {problem}")
    t0 = time.perf_counter()

    encoded = encode(corpus, lowercase=cfg.lowercase, workers=threads)
    # One word has nothing to be compared with: every query would answer nothing.
    vocab, source_ids = build_vocab(encoded, min_count=cfg.min_count, max_vocab=cfg.max_vocab, min_words=2)
    corpus_stats = {
        "raw_words": encoded.n_words,
        "sentences": int(encoded.lengths.size),
        "lines": encoded.n_lines,
        "distinct_words": len(encoded.words),
    }
    # In place: the corpus is never held twice (its token array becomes the training one).
    tc = apply_vocab(encoded, source_ids, in_place=True)
    corpus_stats["vocab_words"] = tc.n_words
    del encoded, source_ids
    corpus_seconds = time.perf_counter() - t0
    log.info(
        "vocabulary: %d words (%d of %d corpus words in vocabulary); engine=%s device=%s threads=%d",
        len(vocab), tc.n_words, tc.n_raw_words, engine, device, threads,
    )

    inputs = (
        training_rows(vocab.words, cfg.min_n, cfg.max_n, cfg.buckets) if cfg.subwords else identity_rows(len(vocab))
    )
    if cfg.subwords:
        log.info("subwords: %d n-gram rows in use of %d buckets", inputs.bucket_ids.size, cfg.buckets)
    fingerprint = f"{cfg.fingerprint()}:{vocab.fingerprint()}:{tc.n_words}:{tc.offsets.size}"
    resumed = load_checkpoint(ckpt_dir, fingerprint) if ckpt_dir is not None else None
    if resumed is not None:
        syn0, syn1neg = resumed.syn0, resumed.syn1neg
        start_epoch, prior_elapsed, epoch_losses = resumed.epochs_done, resumed.elapsed_s, resumed.epoch_losses
        log.info("resuming from checkpoint after epoch %d", start_epoch)
    else:
        rng = np.random.default_rng(cfg.seed)
        # word2vec.c's initialisation: small uniform input vectors, zero output vectors.
        syn0 = ((rng.random((inputs.n_rows, cfg.vector_size), dtype=np.float32) - 0.5) / cfg.vector_size)
        syn1neg = np.zeros((len(vocab), cfg.vector_size), dtype=np.float32)
        start_epoch, prior_elapsed, epoch_losses = 0, 0.0, []

    run = _Run(
        cfg=cfg, corpus=tc, vocab=vocab, syn0=syn0, syn1neg=syn1neg,
        keep=keep_thresholds(vocab.counts, cfg.sample), sampler=AliasSampler(vocab.counts, cfg.ns_exponent),
        threads=threads, inputs=inputs,
    )
    tracker = _Tracker(cfg, tc.n_raw_words, progress, progress_interval, start_epoch)
    dev = _device_engine(run, engine, device)
    try:
        if start_epoch >= cfg.epochs:
            tracker.report_finished(epoch_losses[-1] if epoch_losses else None)
        for epoch in range(start_epoch, cfg.epochs):
            tracker.start_epoch(epoch)
            if dev is None:
                _hogwild_epoch(run, epoch, tracker, should_stop)
            else:
                dev.run_epoch(epoch, tracker, should_stop)
            tracker.check_epoch_loss(last=epoch + 1 == cfg.epochs)
            epoch_losses.append(tracker.epoch_loss())
            tracker.report(force=True)
            done = epoch + 1
            # The last epoch too: a process killed after training (building the neighbour table,
            # saving the model) then resumes with nothing left to train instead of a whole epoch.
            due = cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.epochs)
            if ckpt_dir is not None and due:
                if dev is not None:
                    dev.sync_to_host()
                save_checkpoint(
                    ckpt_dir,
                    Checkpoint(fingerprint, done, run.syn0, run.syn1neg,
                               prior_elapsed + time.perf_counter() - t0, epoch_losses),
                )
        if dev is not None:
            dev.sync_to_host()
    finally:
        if dev is not None:
            dev.close()

    seconds = prior_elapsed + time.perf_counter() - t0
    trained_raw = tc.n_raw_words * (cfg.epochs - start_epoch)
    session_seconds = time.perf_counter() - t0
    # Resumed after the last epoch, nothing was trained here: the rate of the whole run instead.
    rate_words, rate_seconds = (trained_raw, session_seconds) if trained_raw else (tc.n_raw_words * cfg.epochs, seconds)
    meta: dict[str, Any] = {
        "version": VERSION,
        "config": cfg.to_dict(),
        "corpus": corpus_stats,
        "training": {
            "seconds": round(seconds, 3),
            "words_per_sec": round(rate_words / rate_seconds, 1) if rate_seconds > 0 else None,
            # Reading, tokenising and counting the corpus, included in the figures above.
            "corpus_seconds": round(corpus_seconds, 3),
            "final_loss": epoch_losses[-1] if epoch_losses else None,
            "epoch_losses": epoch_losses,
            "device": device,
            "engine": engine,
            "threads": threads,
            "resumed_from_epoch": start_epoch if resumed is not None else None,
        },
    }
    if not cfg.subwords:
        return Model(Vectors(vocab.words, run.syn0, vocab.counts), meta)
    n_vocab = len(vocab)
    meta["training"]["ngram_rows"] = int(inputs.bucket_ids.size)
    vectors = Vectors(vocab.words, word_vectors(run.syn0, inputs), vocab.counts)
    vectors.subwords = Subwords(cfg.min_n, cfg.max_n, cfg.buckets, inputs.bucket_ids, run.syn0[n_vocab:].copy())
    return Model(vectors, meta)
