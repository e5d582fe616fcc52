"""Job records (Redis and files) and the training-job lifecycle, without a Celery worker.

`run_job` is what the Celery task calls; running it in-process makes every path of the job
lifecycle (success, cancel, time limit, retry cap, shutdown hand-back, a second delivery,
a lost lease, an orphaned job) checkable in seconds.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from model import Model, TrainingCancelled, Vectors, load_model, save_model
from worker import runner
from worker.indexing import index_stored_model
from worker.jobs import FileJobStore, JobRecord, JobStore, RedisJobStore, utcnow
from worker.runner import JobContext, initial_progress, requeue_orphans, requeue_unqueued, run_job
from worker.settings import WorkerSettings
from worker.storage import StoreLayout, new_id

ROOT = Path(__file__).resolve().parents[1]

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


@pytest.fixture(params=["files", "redis"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "files":
        yield FileJobStore(tmp_path / "jobs")
        return
    if not redis_available():
        pytest.skip(f"no Redis server at {REDIS_URL}")
    namespace = f"w2vtest-{uuid.uuid4().hex[:12]}"
    store = RedisJobStore(REDIS_URL, namespace)
    try:
        yield store
    finally:
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(f"{namespace}:*"))
        if keys:
            r.delete(*keys)
        store.close()


def record(job_id: str | None = None, **kw: Any) -> JobRecord:
    values: dict[str, Any] = {
        "job_id": job_id or new_id(),
        "state": "queued",
        "corpus_id": new_id(),
        "corpus_file": "x.txt",
        "config": {"epochs": 2},
        "device": "cpu",
        "queue": "cpu",
        "target_model_id": new_id(),
        "created_at": utcnow(),
        **kw,
    }
    return JobRecord(**values)


# ------------------------------------------------------------------------------------ job records


def test_create_get_list_delete(jobs: JobStore) -> None:
    a = record(name="a")
    jobs.create(a)
    time.sleep(0.01)
    b = record(state="running")
    jobs.create(b)
    assert jobs.get(a.job_id) == a
    assert jobs.get(new_id()) is None
    assert [r.job_id for r in jobs.list()] == [b.job_id, a.job_id]
    assert [r.job_id for r in jobs.list(state="running")] == [b.job_id]
    assert [r.job_id for r in jobs.list(limit=1)] == [b.job_id]
    jobs.delete(a.job_id)
    assert jobs.get(a.job_id) is None
    assert [r.job_id for r in jobs.list()] == [b.job_id]
    # A late progress write (a worker that lost its lease) must not bring back a stub record.
    jobs.update(a.job_id, progress={"epoch": 3})
    assert jobs.get(a.job_id) is None
    jobs.update(b.job_id, progress={"epoch": 3})
    assert (jobs.get(b.job_id) or b).progress == {"epoch": 3}


def test_transition_is_a_compare_and_set(jobs: JobStore) -> None:
    rec = record()
    jobs.create(rec)
    assert jobs.transition(rec.job_id, {"running"}, state="failed") is None
    moved = jobs.transition(rec.job_id, {"queued"}, state="running", started_at="t0")
    assert moved is not None and moved.state == "running" and moved.started_at == "t0"
    assert jobs.transition(rec.job_id, {"queued"}, state="cancelled") is None
    assert jobs.transition(new_id(), {"queued"}, state="running") is None
    jobs.update(rec.job_id, progress={"epoch": 1})
    got = jobs.get(rec.job_id)
    assert got is not None and got.progress == {"epoch": 1} and got.state == "running"


def test_transition_can_require_that_nobody_holds_the_lease(jobs: JobStore) -> None:
    rec = record(state="running")
    jobs.create(rec)
    assert jobs.acquire_lease(rec.job_id, "w1", 30)
    assert jobs.transition(rec.job_id, {"running"}, require_no_lease=True, state="queued") is None
    jobs.release_lease(rec.job_id, "w1")
    assert jobs.transition(rec.job_id, {"running"}, require_no_lease=True, state="queued") is not None


def test_a_progress_write_can_require_that_its_writer_holds_the_lease(jobs: JobStore) -> None:
    rec = record(state="running")
    jobs.create(rec)
    assert not jobs.update(rec.job_id, lease_owner="w1", progress={"epoch": 1})  # nobody holds it
    assert jobs.acquire_lease(rec.job_id, "w1", 30)
    assert jobs.update(rec.job_id, lease_owner="w1", progress={"epoch": 2})
    assert not jobs.update(rec.job_id, lease_owner="w2", progress={"epoch": 9})  # a run that lost it
    assert (jobs.get(rec.job_id) or rec).progress == {"epoch": 2}
    assert jobs.update(rec.job_id, progress={"epoch": 3})  # no owner named: written regardless
    assert not jobs.update(new_id(), lease_owner="w1", progress={"epoch": 1})


def test_a_dead_worker_processs_leases_are_released_and_no_other(jobs: JobStore) -> None:
    import socket

    host = socket.gethostname()
    dead, alive = record(state="running", worker=f"{host}:4242:aaaa"), record(state="running", worker=f"{host}:42:bbbb")
    elsewhere = record(state="running", worker="other-host:4242:cccc")  # the same pid on another machine
    for rec in (dead, alive, elsewhere):
        jobs.create(rec)
        assert jobs.acquire_lease(rec.job_id, rec.worker or "", 60)
    assert runner.release_leases_of_process(jobs, 4242) == [dead.job_id]
    assert [jobs.lease_holder(r.job_id) for r in (dead, alive, elsewhere)] == [None, alive.worker, elsewhere.worker]


def test_lease_is_exclusive_renewable_and_expires(jobs: JobStore) -> None:
    rec = record()
    jobs.create(rec)
    assert jobs.acquire_lease(rec.job_id, "w1", 0.5)
    assert not jobs.acquire_lease(rec.job_id, "w2", 0.5)
    assert jobs.lease_holder(rec.job_id) == "w1"
    assert jobs.renew_lease(rec.job_id, "w1", 0.5)
    assert not jobs.renew_lease(rec.job_id, "w2", 0.5)
    jobs.release_lease(rec.job_id, "w2")  # not the holder: no effect
    assert jobs.lease_holder(rec.job_id) == "w1"
    time.sleep(0.7)
    assert jobs.lease_holder(rec.job_id) is None
    assert not jobs.renew_lease(rec.job_id, "w1", 0.5)  # lapsed: the holder has lost it
    assert jobs.acquire_lease(rec.job_id, "w2", 5)


def test_cancel_flag_and_attempts(jobs: JobStore) -> None:
    rec = record()
    jobs.create(rec)
    assert not jobs.cancel_requested(rec.job_id)
    assert jobs.incr_attempts(rec.job_id) == 1
    assert jobs.incr_attempts(rec.job_id) == 2
    jobs.transition(rec.job_id, {"queued"}, cancel_requested=True)
    assert jobs.cancel_requested(rec.job_id)
    got = jobs.get(rec.job_id)
    assert got is not None and got.attempts == 2


def test_idempotency_keys(jobs: JobStore) -> None:
    assert jobs.lookup_idempotency_key("k") is None
    assert jobs.reserve_idempotency_key("k", "job1", "fp1") is None
    assert jobs.reserve_idempotency_key("k", "job2", "fp2") == ("job1", "fp1")
    assert jobs.lookup_idempotency_key("k") == ("job1", "fp1")
    jobs.release_idempotency_key("k", "job2")  # not its owner
    assert jobs.lookup_idempotency_key("k") == ("job1", "fp1")
    jobs.release_idempotency_key("k", "job1")
    assert jobs.lookup_idempotency_key("k") is None


def test_concurrent_reservations_bind_one_job(jobs: JobStore) -> None:
    winners: list[tuple[str, str] | None] = []
    lock = threading.Lock()

    def reserve(i: int) -> None:
        result = jobs.reserve_idempotency_key("race", f"job{i}", "fp")
        with lock:
            winners.append(result)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert winners.count(None) == 1
    bound = jobs.lookup_idempotency_key("race")
    assert bound is not None and all(w in (None, bound) for w in winners)


# ------------------------------------------------------------------------------------ run_job


def synthetic_corpus(path: Path, lines: int, seed: int = 0) -> None:
    """Sentences over a small vocabulary with topical structure, so training has something to learn."""
    rng = random.Random(seed)
    topics = [[f"t{t}w{i}" for i in range(12)] for t in range(6)]
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(lines):
            topic = rng.choice(topics)
            fh.write(" ".join(rng.choice(topic) for _ in range(rng.randint(6, 14))) + "\n")


@pytest.fixture
def layout(tmp_path: Path) -> StoreLayout:
    layout = StoreLayout.at(tmp_path / "store")
    layout.ensure()
    return layout


@pytest.fixture
def ctx(layout: StoreLayout) -> JobContext:
    settings = WorkerSettings(store=layout.root, lease_ttl_s=2, progress_interval_s=0.2)
    requeued: list[JobRecord] = []
    context = JobContext(settings, layout, FileJobStore(layout.jobs), requeued.append)
    context.requeued = requeued  # type: ignore[attr-defined]
    return context


def submit(ctx: JobContext, lines: int = 300, name: str | None = None, **config: Any) -> JobRecord:
    corpus_id = new_id()
    synthetic_corpus(ctx.layout.corpora / f"{corpus_id}.txt", lines)
    cfg = {"vector_size": 16, "epochs": 3, "min_count": 1, "seed": 3, **config}
    rec = record(
        corpus_id=corpus_id,
        corpus_file=f"{corpus_id}.txt",
        config=cfg,
        name=name,
        progress=initial_progress(cfg["epochs"]),
    )
    ctx.jobs.create(rec)
    return rec


def state(ctx: JobContext, job_id: str) -> JobRecord:
    rec = ctx.jobs.get(job_id)
    assert rec is not None
    return rec


def when_running(
    ctx: JobContext, job_id: str, action: Any, min_epoch: int = 1, timeout: float = 60
) -> threading.Thread:
    """Do `action` from another thread once the job reports progress in `min_epoch` or later."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = ctx.jobs.get(job_id)
            if rec and rec.state == "running" and (rec.progress or {}).get("epoch", 0) >= min_epoch:
                action()
                return
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_job_succeeds_and_saves_the_model(ctx: JobContext) -> None:
    rec = submit(ctx, name="ok")
    assert run_job(ctx, rec.job_id) == "succeeded"
    done = state(ctx, rec.job_id)
    assert done.state == "succeeded" and done.model_id == rec.target_model_id and done.error is None
    assert done.attempts == 1 and done.started_at and done.finished_at
    assert done.progress is not None and done.progress["epoch"] == done.progress["epochs"] == 3
    assert done.progress["words_done"] == done.progress["words_total"] > 0
    model = load_model(ctx.layout.model_dir(rec.target_model_id))
    assert model.meta["job_id"] == rec.job_id and model.meta["corpus_id"] == rec.corpus_id
    assert model.meta["name"] == "ok" and model.meta["source"] == "trained"
    assert model.meta["config"]["vector_size"] == 16 and len(model.vectors) == 72
    # Saved with the neighbour table of every word, so one-word queries are lookups.
    table = model.vectors.neighbours
    assert table is not None and (table.n_words, table.k) == (72, 20)
    assert not ctx.layout.checkpoint_dir(rec.job_id).exists()
    assert ctx.jobs.lease_holder(rec.job_id) is None
    # A second delivery of the same message does nothing.
    assert run_job(ctx, rec.job_id) == "already succeeded"


def test_a_subword_job_keeps_its_ngrams_beside_the_neighbour_table(ctx: JobContext) -> None:
    rec = submit(ctx, max_n=4, min_n=2, buckets=5000)
    assert run_job(ctx, rec.job_id) == "succeeded"
    model = load_model(ctx.layout.model_dir(rec.target_model_id))
    assert model.vectors.neighbours is not None  # the model was saved twice: trained, then indexed
    assert model.vectors.subwords is not None and model.meta["subwords"]["max_n"] == 4
    assert "t1w3x" not in model.vectors and model.vectors.has_vector("t1w3x")


def test_neighbour_table_size_follows_the_settings(ctx: JobContext, monkeypatch) -> None:
    update = {"neighbour_words": 10, "neighbour_topn": 4, "progress_interval_s": 0}
    ctx.settings = ctx.settings.model_copy(update=update)
    monkeypatch.setattr("model.neighbours._BUILD_CHUNK", 4)
    written: list[dict[str, Any]] = []
    real_update = ctx.jobs.update

    def recording_update(job_id: str, **kw: Any) -> Any:
        written.append(kw)
        return real_update(job_id, **kw)

    monkeypatch.setattr(ctx.jobs, "update", recording_update)
    rec = submit(ctx)
    assert run_job(ctx, rec.job_id) == "succeeded"
    table = load_model(ctx.layout.model_dir(rec.target_model_id)).vectors.neighbours
    assert table is not None and (table.n_words, table.k) == (10, 4)
    # Watchers see the job train, then index, then finish (the phase is for running jobs only).
    reported = [w["progress"] for w in written if "progress" in w]
    phases = [(p.get("phase"), p.get("neighbour_words_done")) for p in reported]
    assert phases[0] == ("training", None) and phases[-3:] == [("indexing", 4), ("indexing", 8), ("indexing", 10)]
    final = state(ctx, rec.job_id).progress
    assert final is not None and "phase" not in final and final["neighbour_words_done"] == 10
    assert final["epoch"] == final["epochs"] == 3
    ctx.settings = ctx.settings.model_copy(update={"neighbour_words": 0})
    rec = submit(ctx)
    assert run_job(ctx, rec.job_id) == "succeeded"
    assert load_model(ctx.layout.model_dir(rec.target_model_id)).vectors.neighbours is None


def test_neighbour_table_stops_at_its_time_budget(ctx: JobContext, monkeypatch) -> None:
    # Out of time after the first chunk: the model keeps a table of that chunk's words, the
    # most frequent, and the job succeeds.
    ctx.settings = ctx.settings.model_copy(update={"neighbour_words": 50, "neighbour_seconds": 1e-9})
    monkeypatch.setattr("model.neighbours._BUILD_CHUNK", 8)
    rec = submit(ctx)
    assert run_job(ctx, rec.job_id) == "succeeded"
    saved = load_model(ctx.layout.model_dir(rec.target_model_id))
    assert saved.meta["neighbours"] == {"words": 8, "k": 20}
    assert saved.vectors.neighbours is not None and saved.vectors.neighbours.n_words == 8


@pytest.mark.parametrize("interruption", ["cancel", "time_limit"])
def test_stopping_while_the_neighbour_table_is_built(ctx: JobContext, monkeypatch, interruption: str) -> None:
    real_build = runner.build_neighbours

    def interrupted(vectors: Any, **kw: Any) -> Any:
        stop = kw["should_stop"]
        if interruption == "cancel":
            ctx.jobs.update(rec.job_id, cancel_requested=True)
            stop._next_read = 0.0  # read the cancel flag on the next poll
        else:
            stop.deadline = 0.0
        return real_build(vectors, **kw)

    monkeypatch.setattr(runner, "build_neighbours", interrupted)
    rec = submit(ctx)
    if interruption == "cancel":
        # Cancelled means cancelled, even once training is over: no model.
        assert run_job(ctx, rec.job_id) == "cancelled"
        assert not ctx.layout.model_dir(rec.target_model_id).exists()
    else:
        # Out of time: the trained model is kept, without its table (its queries search).
        assert run_job(ctx, rec.job_id) == "succeeded"
        assert load_model(ctx.layout.model_dir(rec.target_model_id)).vectors.neighbours is None


def test_unknown_job_message_is_dropped(ctx: JobContext) -> None:
    assert run_job(ctx, new_id()) == "unknown"


def test_bad_input_fails_with_the_reason(ctx: JobContext) -> None:
    rec = submit(ctx, min_count=1_000_000)
    assert run_job(ctx, rec.job_id) == "failed"
    failed = state(ctx, rec.job_id)
    assert failed.state == "failed" and "min_count" in (failed.error or "")
    assert (failed.error or "").startswith("empty vocabulary: ")

    rec = submit(ctx)
    (ctx.layout.corpora / rec.corpus_file).unlink()
    assert run_job(ctx, rec.job_id) == "failed"
    assert "deleted" in (state(ctx, rec.job_id).error or "")

    # A learning rate the schema allows but the corpus cannot take: used to fail as
    # "internal error: ZeroDivisionError".
    rec = submit(ctx, alpha=1.0, min_count=1, epochs=3)
    assert run_job(ctx, rec.job_id) == "failed"
    error = state(ctx, rec.job_id).error or ""
    assert error.startswith("training diverged in epoch 1 of 3") and "lower the learning rate alpha" in error
    assert not any(ctx.layout.models.iterdir())


def test_cancel_before_start(ctx: JobContext) -> None:
    rec = submit(ctx)
    ctx.jobs.transition(rec.job_id, {"queued"}, state="cancelled", cancel_requested=True)
    assert run_job(ctx, rec.job_id) == "already cancelled"
    assert not ctx.layout.model_dir(rec.target_model_id).exists()


def test_cancel_while_running_stops_between_batches(ctx: JobContext) -> None:
    rec = submit(ctx, lines=20_000, epochs=100)
    when_running(ctx, rec.job_id, lambda: ctx.jobs.update(rec.job_id, cancel_requested=True))
    started = time.monotonic()
    assert run_job(ctx, rec.job_id) == "cancelled"
    assert time.monotonic() - started < 30
    done = state(ctx, rec.job_id)
    assert done.state == "cancelled" and done.finished_at and done.model_id is None
    assert not ctx.layout.model_dir(rec.target_model_id).exists()
    assert not ctx.layout.checkpoint_dir(rec.job_id).exists()


def test_time_limit_fails_the_job(ctx: JobContext) -> None:
    ctx.settings = ctx.settings.model_copy(update={"job_time_limit_s": 0.5})
    rec = submit(ctx, lines=20_000, epochs=100)
    assert run_job(ctx, rec.job_id) == "failed (time limit)"
    assert "time limit" in (state(ctx, rec.job_id).error or "")


def test_retry_cap(ctx: JobContext) -> None:
    rec = submit(ctx)
    ctx.jobs.update(rec.job_id, attempts=ctx.settings.max_attempts, state="running")
    assert run_job(ctx, rec.job_id) == "gave up"
    failed = state(ctx, rec.job_id)
    assert failed.state == "failed" and f"after {ctx.settings.max_attempts} attempts" in (failed.error or "")


def test_model_saved_by_an_earlier_attempt_is_adopted(ctx: JobContext) -> None:
    first = submit(ctx)
    assert run_job(ctx, first.job_id) == "succeeded"
    # A second job whose target directory already holds a complete model (its first attempt
    # died between saving and recording success).
    second = submit(ctx)
    target = ctx.layout.model_dir(second.target_model_id)
    ctx.layout.model_dir(first.target_model_id).rename(target)
    ctx.jobs.update(second.job_id, state="running", attempts=1)
    assert run_job(ctx, second.job_id) == "succeeded (saved by an earlier attempt)"
    assert state(ctx, second.job_id).model_id == second.target_model_id


def test_shutdown_hands_the_job_back_and_it_resumes(ctx: JobContext) -> None:
    # Long enough that the flag, set once epoch 3 is reported, always lands mid-training.
    rec = submit(ctx, lines=40_000, epochs=100)
    when_running(ctx, rec.job_id, runner.shutdown_requested.set, min_epoch=3)
    try:
        assert run_job(ctx, rec.job_id) == "re-queued (worker shutting down)"
    finally:
        runner.shutdown_requested.clear()
    back = state(ctx, rec.job_id)
    assert back.state == "queued" and back.attempts == 0
    assert [r.job_id for r in ctx.requeued] == [rec.job_id]  # type: ignore[attr-defined]
    assert ctx.layout.checkpoint_dir(rec.job_id).exists()

    assert run_job(ctx, rec.job_id) == "succeeded"
    model = load_model(ctx.layout.model_dir(rec.target_model_id))
    assert model.meta["training"]["resumed_from_epoch"] >= 2


def test_a_second_delivery_waits_instead_of_training_in_parallel(ctx: JobContext) -> None:
    rec = submit(ctx, lines=20_000, epochs=10)
    outcomes: list[str] = []
    first = threading.Thread(target=lambda: outcomes.append(run_job(ctx, rec.job_id)))
    first.start()
    second: list[str] = []
    when_running(ctx, rec.job_id, lambda: second.append(run_job(ctx, rec.job_id))).join(timeout=60)
    # It waited for the first run's lease and found the job finished: no second training run.
    assert second in (["handled elsewhere"], ["already succeeded"])
    first.join(timeout=60)
    assert outcomes == ["succeeded"]
    assert state(ctx, rec.job_id).attempts == 1


def test_a_duplicate_delivery_does_not_hold_its_worker_for_the_other_run(ctx: JobContext) -> None:
    # Another worker runs the job and renews its lease: a second message (sent again by a
    # sweep while the first was reserved) waits two lease lifetimes, not the job's time limit.
    rec = submit(ctx)
    ctx.jobs.update(rec.job_id, state="running")
    assert ctx.jobs.acquire_lease(rec.job_id, "busy-worker", ctx.settings.lease_ttl_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.3):
            ctx.jobs.renew_lease(rec.job_id, "busy-worker", ctx.settings.lease_ttl_s)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    started = time.monotonic()
    try:
        assert run_job(ctx, rec.job_id) == "handled elsewhere"
    finally:
        stop.set()
        renewer.join()
    waited = time.monotonic() - started
    assert 2 * ctx.settings.lease_ttl_s <= waited < 2 * ctx.settings.lease_ttl_s + 3
    assert state(ctx, rec.job_id).attempts == 0  # it never ran


def test_a_run_that_lost_its_lease_stops_without_touching_the_job(ctx: JobContext) -> None:
    rec = submit(ctx, lines=20_000, epochs=100)

    def steal() -> None:
        holder = ctx.jobs.lease_holder(rec.job_id)
        assert holder is not None
        ctx.jobs.release_lease(rec.job_id, holder)
        assert ctx.jobs.acquire_lease(rec.job_id, "another-worker", 30)
        time.sleep(0.05)  # a write already past its check lands first
        ctx.jobs.update(rec.job_id, progress=theirs)

    theirs = {**initial_progress(100), "epoch": 57, "phase": "training"}
    when_running(ctx, rec.job_id, steal)
    assert run_job(ctx, rec.job_id) == "abandoned (lease lost)"
    after = state(ctx, rec.job_id)
    assert after.state == "running" and after.finished_at is None
    assert ctx.jobs.lease_holder(rec.job_id) == "another-worker"
    assert after.progress == theirs  # the new owner's progress, not the stale run's older one


def test_orphaned_running_jobs_are_requeued(ctx: JobContext) -> None:
    orphan = submit(ctx)
    alive = submit(ctx)
    waiting = submit(ctx)
    ctx.jobs.update(orphan.job_id, state="running")
    ctx.jobs.update(alive.job_id, state="running")
    ctx.jobs.acquire_lease(alive.job_id, "busy-worker", 30)
    assert requeue_orphans(ctx) == [orphan.job_id]
    assert state(ctx, orphan.job_id).state == "queued"
    assert state(ctx, alive.job_id).state == "running"
    assert state(ctx, waiting.job_id).state == "queued"
    assert [r.job_id for r in ctx.requeued] == [orphan.job_id]  # type: ignore[attr-defined]
    assert requeue_orphans(ctx) == []


@pytest.mark.parametrize("where", ["train", "save_model"])
def test_a_full_disk_fails_the_job_with_a_reason(ctx: JobContext, monkeypatch, where: str) -> None:
    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")  # a save is atomic: it leaves nothing behind

    monkeypatch.setattr(runner, where, disk_full)
    rec = submit(ctx)
    assert run_job(ctx, rec.job_id) == "failed"
    after = state(ctx, rec.job_id)
    assert after.state == "failed" and after.error is not None and after.error.startswith("the store's disk is full")
    assert not ctx.layout.checkpoint_dir(rec.job_id).exists()
    assert not ctx.layout.model_dir(rec.target_model_id).exists()


def test_queued_jobs_without_a_message_are_sent_again_once(ctx: JobContext, monkeypatch) -> None:
    ctx.settings = ctx.settings.model_copy(update={"sweep_interval_s": 30})
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]  # the sweep's clock, moved by hand

    def tick(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)

    monkeypatch.setattr(runner, "utcnow", lambda: clock[0].isoformat(timespec="milliseconds"))
    lost, waiting, taken = submit(ctx), submit(ctx), submit(ctx)
    ctx.jobs.acquire_lease(taken.job_id, "busy-worker", 30)  # its worker took the message just now
    in_broker = {waiting.job_id}
    # First seen without a message: only marked, since its API may be about to send it.
    assert requeue_unqueued(ctx, lambda: in_broker) == []
    assert state(ctx, lost.job_id).unqueued_since is not None
    assert state(ctx, waiting.job_id).unqueued_since is None and state(ctx, taken.job_id).unqueued_since is None
    tick(29)
    assert requeue_unqueued(ctx, lambda: in_broker) == []  # not a whole sweep interval yet
    tick(1)
    assert requeue_unqueued(ctx, lambda: in_broker) == [lost.job_id]
    assert [r.job_id for r in ctx.requeued] == [lost.job_id]  # type: ignore[attr-defined]
    assert state(ctx, lost.job_id).unqueued_since is None
    in_broker.add(lost.job_id)  # the message sent again waits in the broker
    tick(60)
    assert requeue_unqueued(ctx, lambda: in_broker) == []
    assert requeue_unqueued(ctx, lambda: None) == []  # a broker it cannot read: nothing is sent
    # A mark is cleared when the message turns up, so a later loss waits its own interval.
    requeue_unqueued(ctx, lambda: set())
    assert state(ctx, lost.job_id).unqueued_since is not None
    requeue_unqueued(ctx, lambda: {lost.job_id})
    assert state(ctx, lost.job_id).unqueued_since is None
    assert len(ctx.requeued) == 1  # type: ignore[attr-defined]


def test_a_job_its_api_never_answered_for_is_not_run_twice(ctx: JobContext) -> None:
    # The API records a job, binds its Idempotency-Key to it, then sends its message. Killed
    # before the binding, its client got no answer, and a retry with the key makes a job of
    # its own: the unbound one is failed with the reason instead of trained a second time.
    ctx.settings = ctx.settings.model_copy(update={"sweep_interval_s": 0.01})
    unbound, retried, answered = submit(ctx), submit(ctx), submit(ctx)
    for rec, key in ((unbound, "key-a"), (retried, "key-b"), (answered, "key-c")):
        ctx.jobs.update(rec.job_id, idempotency_key=key)
    assert ctx.jobs.reserve_idempotency_key("key-b", new_id(), "fp") is None  # the retry's own job
    assert ctx.jobs.reserve_idempotency_key("key-c", answered.job_id, "fp") is None
    requeue_unqueued(ctx, set)
    time.sleep(0.02)
    assert requeue_unqueued(ctx, set) == [answered.job_id]
    for rec in (unbound, retried):
        after = state(ctx, rec.job_id)
        assert after.state == "failed" and (after.error or "").startswith("not run: the API stopped")
    assert state(ctx, answered.job_id).state == "queued"


def test_only_one_sweep_at_a_time_sends_a_lost_message(ctx: JobContext, monkeypatch) -> None:
    monkeypatch.setattr(runner, "_UNQUEUED_LOCK_S", 0.1)
    ctx.settings = ctx.settings.model_copy(update={"sweep_interval_s": 0.01})
    lost = submit(ctx)
    requeue_unqueued(ctx, set)  # marked
    time.sleep(0.02)
    with ctx.jobs.exclusive("sweep:unqueued"):  # another worker's sweep is at it: this one steps aside
        assert requeue_unqueued(ctx, set) == []
    assert ctx.requeued == []  # type: ignore[attr-defined]
    assert requeue_unqueued(ctx, set) == [lost.job_id]


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_the_sweep_reads_which_training_messages_wait_in_the_broker(tmp_path: Path, broker: str) -> None:
    from worker.broker import waiting_job_ids
    from worker.celery_app import QUEUES, TASK_INDEX, TASK_TRAIN, create_celery

    namespace = f"test-{uuid.uuid4().hex[:8]}"
    if broker == "redis":
        if not redis_available():
            pytest.skip(f"no Redis server at {REDIS_URL}")
        settings = WorkerSettings(store=tmp_path, broker_url=REDIS_URL, namespace=namespace)
    else:
        settings = WorkerSettings(store=tmp_path)
    app = create_celery(settings)
    trains = [new_id(), new_id()]
    try:
        assert waiting_job_ids(settings, TASK_TRAIN, QUEUES) == set()
        app.send_task(TASK_TRAIN, args=[trains[0]], queue="cpu")
        app.send_task(TASK_TRAIN, args=[trains[1]], queue="gpu", priority=6)
        app.send_task(TASK_INDEX, args=[new_id()], queue="cpu")  # a model id, not a job's
        assert waiting_job_ids(settings, TASK_TRAIN, QUEUES) == set(trains)
        assert waiting_job_ids(settings, TASK_TRAIN, ["cpu"]) == {trains[0]}
    finally:
        if broker == "redis":
            r = redis.Redis.from_url(REDIS_URL)
            for key in r.scan_iter(f"{namespace}:*"):
                r.delete(key)
    amqp = WorkerSettings(store=tmp_path, broker_url="amqp://guest@127.0.0.1//")
    assert waiting_job_ids(amqp, TASK_TRAIN, QUEUES) is None  # a broker it cannot read
    elsewhere = WorkerSettings(store=tmp_path / "no-broker-here")
    assert waiting_job_ids(elsewhere, TASK_TRAIN, QUEUES) is None  # no folder: cannot tell, not "none"


def test_exclusive_lock_serialises_check_then_act(jobs: JobStore) -> None:
    """Read-pause-write under the lock from several threads loses no update."""
    counter = [0]

    def bump() -> None:
        for _ in range(5):
            with jobs.exclusive("counter"):
                seen = counter[0]
                time.sleep(0.001)
                counter[0] = seen + 1

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter[0] == 30
    # Held (by this thread): a second taker gives up after its timeout instead of hanging.
    with jobs.exclusive("counter"), pytest.raises(TimeoutError), jobs.exclusive("counter", timeout_s=0.2):
        pass


def test_a_save_killed_mid_way_leaves_nothing_for_the_next_attempt(ctx: JobContext) -> None:
    """A staging directory left by a killed save of this job's model is removed by its next attempt."""
    rec = submit(ctx)
    stale = ctx.layout.models / f".{rec.target_model_id}.k1ll3d.tmp"
    stale.mkdir()
    (stale / "vectors.npy").write_bytes(b"half a file")
    other = ctx.layout.models / f".{new_id()}.busy.tmp"  # another job's save in progress: not ours to touch
    other.mkdir()
    assert run_job(ctx, rec.job_id) == "succeeded"
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in ctx.layout.models.iterdir()) == sorted([rec.target_model_id, other.name])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
@pytest.mark.parametrize("cpu_idle", [True, False])
def test_worker_priority_settings_reach_every_thread(tmp_path: Path, cpu_idle: bool) -> None:
    # In a child process: the policy and nice value cannot be raised back once lowered.
    code = f"""
import os, threading, types
from worker.settings import WorkerSettings
from worker.tasks import _lower_priority
settings = WorkerSettings(store={str(tmp_path)!r}, nice=3, cpu_idle={cpu_idle})
seen = {{}}
def report(name):
    seen[name] = (os.sched_getscheduler(0) == os.SCHED_IDLE, os.nice(0))
go = threading.Event()
# A thread already running when the worker lowers itself, as the BLAS pool is.
early = threading.Thread(target=lambda: (go.wait(), report("early")))
early.start()
_lower_priority(sender=types.SimpleNamespace(app=types.SimpleNamespace(w2v_settings=settings)))
go.set(); early.join()
later = threading.Thread(target=report, args=("later",))
later.start(); later.join()
print(*seen["early"], *seen["later"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.split() == [str(cpu_idle), "3"] * 2


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="needs Linux's scheduler autogroups")
@pytest.mark.parametrize("own_session", [True, False])
def test_worker_lowers_its_autogroup_only_when_the_session_is_its_own(tmp_path: Path, own_session: bool) -> None:
    # Without this, a worker in a session of its own competes with the API's session as an equal,
    # whatever its nice value and policy say.
    worker = f"""
import types
from pathlib import Path
from worker.settings import WorkerSettings
from worker.tasks import _lower_priority
settings = WorkerSettings(store={str(tmp_path)!r}, nice=10, cpu_idle=True)
_lower_priority(sender=types.SimpleNamespace(app=types.SimpleNamespace(w2v_settings=settings)))
print(Path("/proc/self/autogroup").read_text())
"""
    # The "API" leads a session of its own, so it has an autogroup even where the test runner
    # sits in the boot-time root group (which the kernel shows as an empty file).
    api = f"""
import subprocess, sys
from pathlib import Path
before = Path("/proc/self/autogroup").read_text()
done = subprocess.run([sys.executable, "-c", {worker!r}], capture_output=True, text=True, check=True,
                      start_new_session={own_session})
print(before.strip(), "|", done.stdout.strip(), "|", Path("/proc/self/autogroup").read_text().strip())
"""
    done = subprocess.run(
        [sys.executable, "-c", api], capture_output=True, text=True, cwd=ROOT, check=True, start_new_session=True
    )
    api_before, worker_group, api_after = (part.split() for part in done.stdout.split("|"))
    assert api_before[0].startswith("/autogroup-") and api_before[-1] == "0"
    if own_session:
        assert worker_group[0] != api_before[0] and worker_group[-1] == "19"
    else:  # the session of whoever started it is left as it was
        assert worker_group == api_before
    assert api_after == api_before


@pytest.mark.parametrize(
    ("before", "own_session", "after"),
    [
        ("/autogroup-7 nice 0\n", True, "19\n"),
        ("/autogroup-7 nice 0\n", False, "/autogroup-7 nice 0\n"),
        ("", True, ""),  # the boot-time root group: nothing of its own to lower
    ],
)
def test_worker_writes_its_autogroup_only_where_one_applies(
    tmp_path: Path, before: str, own_session: bool, after: str
) -> None:
    # The same decision as above on any machine, with the kernel's file stood in for.
    fake = tmp_path / "autogroup"
    fake.write_text(before)
    code = f"""
import worker.tasks as tasks
tasks.AUTOGROUP_FILE = {str(fake)!r}
tasks._lower_own_autogroup(19)
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, start_new_session=own_session)
    assert fake.read_text() == after


# ------------------------------------------------------------------------- indexing stored models


def imported_model(layout: StoreLayout, n_words: int = 60) -> str:
    rng = np.random.default_rng(3)
    vectors = Vectors([f"v{i}" for i in range(n_words)], rng.standard_normal((n_words, 8), dtype=np.float32))
    model_id = new_id()
    meta = {"model_id": model_id, "name": "mine", "source": "imported", "owner": "ab" * 32, "created_at": utcnow()}
    save_model(layout.model_dir(model_id), Model(vectors, meta))
    return model_id


def test_indexing_a_stored_model_keeps_everything_else(layout: StoreLayout) -> None:
    model_id = imported_model(layout)
    before = load_model(layout.model_dir(model_id))
    settings = WorkerSettings(store=layout.root, neighbour_words=40, neighbour_topn=6)
    assert index_stored_model(settings, layout, model_id).startswith("indexed: 40 words x 6 neighbours")
    after = load_model(layout.model_dir(model_id))  # checksums verified
    assert after.vectors.neighbours is not None and after.meta["neighbours"] == {"words": 40, "k": 6}
    assert {k: v for k, v in after.meta.items() if k not in ("neighbours", "files")} == {
        k: v for k, v in before.meta.items() if k != "files"
    }
    np.testing.assert_array_equal(after.vectors.vectors, before.vectors.vectors)
    assert after.vectors.precomputed_neighbours("v3", 6) == before.vectors.most_similar("v3", topn=6)
    assert index_stored_model(settings, layout, model_id) == "already indexed"
    assert sorted(p.name for p in layout.models.iterdir()) == [model_id]  # no staging left behind


def test_indexing_leaves_a_model_alone_when_told_to(layout: StoreLayout, tmp_path: Path) -> None:
    model_id = imported_model(layout)
    off = WorkerSettings(store=layout.root, neighbour_words=0)
    assert index_stored_model(off, layout, model_id).startswith("not wanted")
    settings = WorkerSettings(store=layout.root)
    with pytest.raises(TrainingCancelled):  # a worker shutting down: nothing is written
        index_stored_model(settings, layout, model_id, should_stop=lambda: True)
    assert "neighbours" not in load_model(layout.model_dir(model_id)).meta
    assert index_stored_model(settings, layout, "../" + model_id) == "not a model id"
    assert index_stored_model(settings, layout, new_id()) == "model gone"
    # A model directory that is a symlink planted in the store is neither followed nor rewritten.
    outside = tmp_path / "outside"
    shutil.copytree(layout.model_dir(model_id), outside)
    planted = new_id()
    layout.model_dir(planted).symlink_to(outside)
    assert index_stored_model(settings, layout, planted) == "model gone"
    assert "neighbours" not in load_model(outside).meta


def test_a_model_deleted_while_indexed_stays_deleted(layout: StoreLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = imported_model(layout)
    from worker import indexing

    real_build = indexing.build_neighbours

    def build_then_delete(*args: Any, **kwargs: Any) -> Any:
        table = real_build(*args, **kwargs)
        shutil.rmtree(layout.model_dir(model_id))  # DELETE /models/{id} meanwhile
        return table

    monkeypatch.setattr(indexing, "build_neighbours", build_then_delete)
    outcome = index_stored_model(WorkerSettings(store=layout.root), layout, model_id)
    assert outcome == "model deleted while indexing; nothing written"
    assert list(layout.models.iterdir()) == []


def test_an_index_message_that_kills_its_worker_does_not_come_back(tmp_path: Path) -> None:
    # A training job is redelivered after a crash and capped by its attempts counter; an index
    # message has no record to count in, so it is acknowledged on receipt instead: a build that
    # kills its worker (out of memory) costs that model its table, never a redelivery loop.
    from worker.celery_app import TASK_INDEX, TASK_TRAIN, create_celery

    app = create_celery(WorkerSettings(store=tmp_path / "store"))
    app.loader.import_default_modules()
    assert app.tasks[TASK_INDEX].acks_late is False
    assert app.tasks[TASK_TRAIN].acks_late is True and app.tasks[TASK_TRAIN].reject_on_worker_lost is True
