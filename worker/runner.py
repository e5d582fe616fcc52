"""Running one training job: from its record to a model in the store.

Kept free of Celery so the lifecycle reads top to bottom: take the job's lease, count the
attempt, train with progress and a cooperative stop, save the model directory atomically,
and only then mark the job succeeded. Whatever happens, the lease is given back.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from model import (
    EmptyVocabularyError,
    Model,
    Progress,
    TrainConfig,
    TrainingCancelled,
    W2VError,
    load_model,
    save_model,
    train,
)
from model.backend import free_device_memory
from model.neighbours import build_neighbours
from worker.joblog import job_log_context
from worker.jobs import ACTIVE, IDEMPOTENCY_TTL_S, TERMINAL, JobRecord, JobStore, LockBusy, utcnow
from worker.settings import WorkerSettings
from worker.storage import StoreLayout, is_disk_full

log = logging.getLogger(__name__)

PROGRESS_KEYS = (
    "epoch",
    "epochs",
    "words_done",
    "words_total",
    "words_per_sec",
    "loss",
    "eta_s",
    "alpha",
    "elapsed_s",
)

# Set from Celery's shutdown signal: a running job hands itself back to the queue instead of
# holding a terminating worker for hours.
shutdown_requested = threading.Event()


@dataclass
class JobContext:
    settings: WorkerSettings
    layout: StoreLayout
    jobs: JobStore
    requeue: Callable[[JobRecord], None]  # sends the job's message again


def owner_id() -> str:
    return f"{_process_prefix(socket.gethostname(), os.getpid())}{uuid.uuid4().hex[:8]}"


def _process_prefix(host: str, pid: int) -> str:
    return f"{host}:{pid}:"


def release_leases_of_process(jobs: JobStore, pid: int) -> list[str]:
    """Give up the leases a worker process of this host held when it died, so that its running
    jobs show as stalled and the next sweep re-queues them at once, not a lease lifetime later.
    For a supervisor that saw the process exit (`w2v serve`); returns the jobs freed."""
    prefix = _process_prefix(socket.gethostname(), pid)
    freed = []
    for rec in jobs.list(state="running", limit=10_000):
        if rec.worker is not None and rec.worker.startswith(prefix):
            jobs.release_lease(rec.job_id, rec.worker)
            freed.append(rec.job_id)
    return freed


def initial_progress(epochs: int) -> dict[str, Any]:
    return {
        "epoch": 0,
        "epochs": epochs,
        "words_done": 0,
        "words_total": None,
        "words_per_sec": None,
        "loss": None,
        "eta_s": None,
    }


def progress_dict(p: Progress) -> dict[str, Any]:
    d = p.to_dict()
    return {k: d.get(k) for k in PROGRESS_KEYS}


class _Lease:
    """Renews the job's lease from a thread and from the trainer's own calls.

    The thread keeps the lease alive while the trainer is busy outside Python code; the
    renewals from `should_stop` keep it alive if that thread is starved. If a renewal finds
    the lease taken by someone else, this run has been declared dead and must stop.
    """

    def __init__(self, jobs: JobStore, job_id: str, owner: str, ttl_s: float) -> None:
        self.jobs, self.job_id, self.owner, self.ttl_s = jobs, job_id, owner, ttl_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last = time.monotonic()
        # Run in a copy of the caller's context, so the thread's log lines carry the job id too.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._loop,), name=f"lease-{job_id[:8]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def renew(self, *, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.ttl_s / 4:
                return
            self._last = now
        try:
            if not self.jobs.renew_lease(self.job_id, self.owner, self.ttl_s):
                log.warning("job %s: lease lost; another worker owns the job now", self.job_id)
                self.lost.set()
        except Exception:
            log.warning("job %s: lease renewal failed", self.job_id, exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            self.renew(force=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.jobs.release_lease(self.job_id, self.owner)


class _StopCheck:
    """`should_stop` for the trainer: cancel flag, time limit, shutdown or lost lease.

    The trainer polls it between batches, possibly from several threads, so the job record
    is read at most every half second.
    """

    def __init__(self, jobs: JobStore, job_id: str, deadline: float, lease: _Lease) -> None:
        self.jobs, self.job_id, self.deadline, self.lease = jobs, job_id, deadline, lease
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._next_read = 0.0

    def __call__(self) -> bool:
        if self.reason is not None:
            return True
        self.lease.renew()
        now = time.monotonic()
        reason = None
        if self.lease.lost.is_set():
            reason = "lease_lost"
        elif shutdown_requested.is_set():
            reason = "shutdown"
        elif now > self.deadline:
            reason = "time_limit"
        else:
            with self._lock:
                if now >= self._next_read:
                    self._next_read = now + 0.5
                    try:
                        if self.jobs.cancel_requested(self.job_id):
                            reason = "cancel"
                    except Exception:
                        log.warning("job %s: cannot read the cancel flag", self.job_id, exc_info=True)
        if reason is not None:
            self.reason = reason
            return True
        return False


class _ProgressWriter:
    """Writes the trainer's progress into the job record, at most once per interval.

    Small corpora finish an epoch every few milliseconds; the record (and every watcher
    polling it) needs no more than about one update a second. The final state is written
    with the job's outcome.
    """

    def __init__(self, jobs: JobStore, job_id: str, min_interval_s: float, lease: _Lease) -> None:
        self.jobs, self.job_id, self.min_interval_s, self.lease = jobs, job_id, min_interval_s, lease
        self.last: dict[str, Any] | None = None
        self._written_at = -float("inf")
        self._lock = threading.Lock()

    def __call__(self, p: Progress) -> None:
        self.record({**progress_dict(p), "phase": "training"})

    def record(self, d: dict[str, Any]) -> None:
        with self._lock:
            self.last = d
            now = time.monotonic()
            if now - self._written_at < self.min_interval_s:
                return
            self._written_at = now
        self._write(d)

    def flush(self) -> None:
        """Write the last progress seen, however recent the previous write."""
        if self.last is not None:
            self._write(self.last)

    def _write(self, d: dict[str, Any]) -> None:
        try:
            # A run that lost its lease (stopped for longer than its lease, then woken) must not
            # write its older progress over the new owner's before it notices.
            if not self.lease.lost.is_set():
                self.jobs.update(self.job_id, lease_owner=self.lease.owner, progress=d)
        except Exception:
            log.warning("job %s: progress write failed", self.job_id, exc_info=True)


def _wait_for_lease(ctx: JobContext, job_id: str, owner: str) -> bool:
    """Take the job's lease; if another worker holds it, wait a while for it to finish or lapse.

    A second delivery of a message whose first run is alive (visibility timeout, a message
    sent again by a sweep while a worker held the first one reserved, or the recovery sweep
    racing a slow heartbeat) must not start a parallel run. Nor may it hold its worker for
    the whole of the other run: after two lease lifetimes with the lease renewed all along,
    the other run is alive and this delivery is dropped. Should that run die later, the
    orphan sweep queues the job again.
    """
    deadline = time.monotonic() + 2 * ctx.settings.lease_ttl_s
    while True:
        if ctx.jobs.acquire_lease(job_id, owner, ctx.settings.lease_ttl_s):
            return True
        rec = ctx.jobs.get(job_id)
        if rec is None or rec.state in TERMINAL or time.monotonic() > deadline:
            return False
        time.sleep(min(5.0, ctx.settings.lease_ttl_s / 4))


def run_job(ctx: JobContext, job_id: str) -> str:
    """Run one delivery of a job; returns what became of it (for the log)."""
    with job_log_context(job_id):
        return _run_delivery(ctx, job_id)


def _run_delivery(ctx: JobContext, job_id: str) -> str:
    rec = ctx.jobs.get(job_id)
    if rec is None:
        log.warning("job %s: no such job record; dropping the message", job_id)
        return "unknown"
    if rec.state in TERMINAL:
        return f"already {rec.state}"
    owner = owner_id()
    if not _wait_for_lease(ctx, job_id, owner):
        return "handled elsewhere"
    lease = _Lease(ctx.jobs, job_id, owner, ctx.settings.lease_ttl_s)
    lease.start()
    try:
        return _run_owned(ctx, job_id, owner, lease)
    finally:
        lease.stop()
        free_device_memory()


def _finish(ctx: JobContext, job_id: str, state: str, **values: Any) -> JobRecord | None:
    rec = ctx.jobs.transition(job_id, ACTIVE, state=state, finished_at=utcnow(), **values)
    shutil.rmtree(ctx.layout.checkpoint_dir(job_id), ignore_errors=True)
    return rec


def _run_owned(ctx: JobContext, job_id: str, owner: str, lease: _Lease) -> str:
    current = ctx.jobs.get(job_id)
    if current is None:
        return "unknown"
    if current.state in TERMINAL:  # finished by whoever held the lease before us
        return f"already {current.state}"
    attempts = ctx.jobs.incr_attempts(job_id)
    if attempts > ctx.settings.max_attempts:
        _finish(
            ctx,
            job_id,
            "failed",
            error=f"gave up after {ctx.settings.max_attempts} attempts: the worker running it was lost "
            "each time (killed, out of memory, or shut down)",
        )
        return "gave up"
    started_at = current.started_at or utcnow()
    rec = ctx.jobs.transition(
        job_id, ACTIVE, state="running", started_at=started_at, worker=owner, unqueued_since=None
    )
    if rec is None:
        return "cancelled before start"
    if rec.cancel_requested:
        _finish(ctx, job_id, "cancelled")
        return "cancelled"

    model_dir = ctx.layout.model_dir(rec.target_model_id)
    # A save killed mid-way leaves its staging directory behind (never listed as a model); this
    # run holds the job's lease, so nobody else can be writing to this target now.
    for stale in ctx.layout.models.glob(f".{rec.target_model_id}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if model_dir.exists():
        # An earlier attempt saved the model and died before recording it.
        with contextlib.suppress(W2VError, OSError):
            load_model(model_dir, mmap=True, verify=True)
            _finish(ctx, job_id, "succeeded", model_id=rec.target_model_id)
            return "succeeded (saved by an earlier attempt)"
        shutil.rmtree(model_dir, ignore_errors=True)

    device = rec.device if rec.device != "auto" else ctx.settings.device
    progress = _ProgressWriter(ctx.jobs, job_id, ctx.settings.progress_interval_s, lease)
    stop = _StopCheck(ctx.jobs, job_id, time.monotonic() + ctx.settings.job_time_limit_s, lease)
    try:
        config = TrainConfig.from_dict({**rec.config, "device": device, "threads": ctx.settings.threads})
        corpus = ctx.layout.corpus_file(rec.corpus_file)
        if not ctx.layout.is_plain_file(corpus):  # a symlink planted in the store is not followed
            raise FileNotFoundError(f"corpus {rec.corpus_id} was deleted before the job ran")
        log.info("job %s: training on %s (attempt %d, device %s)", job_id, rec.corpus_id, attempts, device)
        trained = train(
            corpus,
            config,
            progress=progress,
            progress_interval=ctx.settings.progress_interval_s,
            checkpoint_dir=ctx.layout.checkpoint_dir(job_id),
            should_stop=stop,
        )
    except TrainingCancelled:
        progress.flush()
        return _stopped(ctx, rec, stop.reason)
    except EmptyVocabularyError as exc:
        _finish(ctx, job_id, "failed", error=f"empty vocabulary: {exc}")
        return "failed"
    except (W2VError, FileNotFoundError) as exc:
        _finish(ctx, job_id, "failed", error=str(exc))
        return "failed"
    except Exception as exc:
        if is_disk_full(exc):
            return _fail_disk_full(ctx, job_id, exc)
        log.exception("job %s: training crashed", job_id)
        _finish(ctx, job_id, "failed", error=f"internal error: {type(exc).__name__}: {exc}")
        return "failed"

    if not _index_neighbours(ctx, job_id, trained, stop, progress):
        return _stopped(ctx, rec, stop.reason)
    if lease.lost.is_set():
        return "abandoned (lease lost)"
    if ctx.jobs.cancel_requested(job_id):
        _finish(ctx, job_id, "cancelled")
        return "cancelled"
    trained.meta.update(
        model_id=rec.target_model_id,
        name=rec.name,
        job_id=job_id,
        corpus_id=rec.corpus_id,
        created_at=utcnow(),
        source="trained",
        owner=rec.owner,
    )
    try:
        save_model(model_dir, trained)
    except FileExistsError:
        log.info("job %s: model %s was saved by a concurrent delivery", job_id, rec.target_model_id)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        return _fail_disk_full(ctx, job_id, exc)
    final = {k: v for k, v in (progress.last or initial_progress(config.epochs)).items() if k != "phase"}
    _finish(ctx, job_id, "succeeded", model_id=rec.target_model_id, progress=final)
    log.info("job %s: model %s saved", job_id, rec.target_model_id)
    return "succeeded"


def _fail_disk_full(ctx: JobContext, job_id: str, exc: OSError) -> str:
    log.error("job %s: the store's disk is full: %s", job_id, exc)
    _finish(
        ctx, job_id, "failed",
        error="the store's disk is full (no space left for the job's checkpoint or model): free space and "
        "submit it again",
    )  # fmt: skip
    return "failed"


def _index_neighbours(
    ctx: JobContext, job_id: str, trained: Model, stop: _StopCheck, progress: _ProgressWriter
) -> bool:
    """Attach the neighbour table to a trained model; False when the job must stop instead.

    The job's progress says so meanwhile (phase "indexing"). Running out of time here costs
    only the table: the model is trained, so it is saved without one (its queries search),
    rather than thrown away.
    """
    settings = ctx.settings
    if not settings.neighbour_words or not settings.neighbour_topn:
        return True
    started = time.monotonic()
    trained_progress = progress.last or {}

    def report(done: int, total: int) -> None:
        progress.record(
            {**trained_progress, "phase": "indexing", "neighbour_words_done": done, "neighbour_words_total": total}
        )

    try:
        table = build_neighbours(
            trained.vectors,
            k=settings.neighbour_topn,
            words=settings.neighbour_words,
            seconds=settings.neighbour_seconds,
            should_stop=stop,
            progress=report,
        )
    except TrainingCancelled:
        if stop.reason == "time_limit":
            log.warning("job %s: time limit reached while building the neighbour table; saving without it", job_id)
            return True
        return False
    trained.vectors.attach_neighbours(table)
    if table is not None:
        log.info(
            "job %s: neighbour table of %d words x %d built in %.1f s",
            job_id, table.n_words, table.k, time.monotonic() - started,
        )  # fmt: skip
    return True


def _stopped(ctx: JobContext, rec: JobRecord, reason: str | None) -> str:
    job_id = rec.job_id
    if reason == "cancel":
        _finish(ctx, job_id, "cancelled")
        return "cancelled"
    if reason == "time_limit":
        _finish(ctx, job_id, "failed", error=f"exceeded the time limit of {ctx.settings.job_time_limit_s:g} s")
        return "failed (time limit)"
    if reason == "shutdown":
        # Hand the job back with its checkpoints; the attempt is not held against it.
        back = ctx.jobs.transition(
            job_id, {"running"}, state="queued", attempts=max(0, rec.attempts - 1), unqueued_since=None
        )
        if back is not None:
            ctx.requeue(back)
        return "re-queued (worker shutting down)"
    return "abandoned (lease lost)"


def requeue_orphans(ctx: JobContext) -> list[str]:
    """Put back on the queue every running job whose worker stopped renewing its lease.

    Covers a worker killed outright: Redis would re-deliver its message only after the
    visibility timeout (hours), and the filesystem transport never would.
    """
    requeued = []
    for rec in ctx.jobs.list(state="running", limit=10_000):
        with job_log_context(rec.job_id):
            back = ctx.jobs.transition(
                rec.job_id, {"running"}, require_no_lease=True, state="queued", unqueued_since=None
            )
            if back is not None:
                log.warning("job %s: its worker is gone; re-queued to resume from its last checkpoint", rec.job_id)
                ctx.requeue(back)
                requeued.append(rec.job_id)
    return requeued


_NEVER_ANSWERED_ERROR = (
    "not run: the API stopped between recording this job and answering for it, so its client was never "
    "told of it; a retry with the same Idempotency-Key makes a job of its own"
)


def _never_answered(ctx: JobContext, rec: JobRecord, now: datetime) -> bool:
    """Whether the API stopped after recording the job and before binding its Idempotency-Key
    to it: running it too would train twice for a client whose retry made its own job."""
    if rec.idempotency_key is None:
        return False
    bound = ctx.jobs.lookup_idempotency_key(rec.idempotency_key)
    if bound is not None:
        return bound[0] != rec.job_id
    # No binding: never made, or expired with age, which says nothing about this job.
    return (now - datetime.fromisoformat(rec.created_at)).total_seconds() < IDEMPOTENCY_TTL_S


# The lock's wait, and its expiry should its holder die: well beyond what a sweep takes (a
# broker read of up to 10 s, a read per queued job), so two sweeps never overlap.
_UNQUEUED_LOCK_S = 60.0


def requeue_unqueued(ctx: JobContext, waiting: Callable[[], Collection[str] | None]) -> list[str]:
    """Send again the message of every queued job that has none waiting in the broker.

    Covers a process killed between a job's record and its message: the API before it sent
    the message, or a worker after it took the message and before it marked the job running
    (`worker.broker`). `waiting()` reads the job ids whose messages wait in the broker (None:
    a broker it cannot read). A job is sent again only once a whole sweep interval has passed
    since a sweep first found it without a message: by then an API that had just created it
    has sent the message, and a worker that had just taken it holds its lease. The sweeps of
    all workers take turns under one lock, so a lost message is sent again once.
    """
    requeued: list[str] = []
    try:
        with ctx.jobs.exclusive("sweep:unqueued", timeout_s=_UNQUEUED_LOCK_S):
            found = waiting()  # before the records: a message taken meanwhile shows as a lease
            if found is None:
                return requeued
            stamp = utcnow()
            now = datetime.fromisoformat(stamp)
            for rec in ctx.jobs.list(state="queued", limit=10_000):
                if rec.job_id in found or ctx.jobs.lease_holder(rec.job_id) is not None:
                    if rec.unqueued_since is not None:
                        ctx.jobs.update(rec.job_id, unqueued_since=None)
                    continue
                if rec.unqueued_since is None:
                    ctx.jobs.update(rec.job_id, unqueued_since=stamp)
                    continue
                missing_s = (now - datetime.fromisoformat(rec.unqueued_since)).total_seconds()
                if missing_s < ctx.settings.sweep_interval_s:
                    continue
                if _never_answered(ctx, rec, now):
                    with job_log_context(rec.job_id):
                        log.warning("job %s: its API stopped before answering for it; not run", rec.job_id)
                    _finish(ctx, rec.job_id, "failed", error=_NEVER_ANSWERED_ERROR)
                    continue
                with job_log_context(rec.job_id):
                    log.warning(
                        "job %s: queued for %.0f s with no message in the broker (a process died before "
                        "sending it, or after taking it); sending it again", rec.job_id, missing_s,
                    )  # fmt: skip
                ctx.requeue(rec)
                ctx.jobs.update(rec.job_id, unqueued_since=None)
                requeued.append(rec.job_id)
    except LockBusy:
        pass  # another worker's sweep is at it
    return requeued
