"""Celery tasks: thin wrappers that hand a job id to `worker.runner`.

Messages carry ids only (JSON), never arrays; everything else is read from the job record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from celery import Celery, Task, shared_task, signals

from model import ModelFormatError, TrainingCancelled
from worker.broker import waiting_job_ids
from worker.celery_app import QUEUES, TASK_INDEX, TASK_TRAIN
from worker.indexing import index_stored_model
from worker.joblog import job_log_context
from worker.jobs import JobRecord, open_job_store
from worker.runner import JobContext, requeue_orphans, requeue_unqueued, run_job, shutdown_requested
from worker.settings import WorkerSettings
from worker.storage import StoreLayout

# Linux: this process's scheduler autogroup ("/autogroup-N nice K"); empty in the root group.
AUTOGROUP_FILE = "/proc/self/autogroup"

log = logging.getLogger(__name__)

_contexts: dict[int, JobContext] = {}
_contexts_lock = threading.Lock()


def job_context(app: Celery) -> JobContext:
    """One job-store connection per Celery app in this process."""
    with _contexts_lock:
        ctx = _contexts.get(id(app))
        if ctx is None:
            settings: WorkerSettings = getattr(app, "w2v_settings", None) or WorkerSettings()
            layout = StoreLayout.at(settings.store)
            layout.ensure()

            def requeue(rec: JobRecord) -> None:
                app.send_task(TASK_TRAIN, args=[rec.job_id], queue=rec.queue)

            ctx = JobContext(settings, layout, open_job_store(settings, layout), requeue)
            _contexts[id(app)] = ctx
        return ctx


@shared_task(name=TASK_TRAIN, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train_job(self: Task, job_id: str) -> str:
    outcome = run_job(job_context(self.app), job_id)
    with job_log_context(job_id):
        log.info("job %s: %s", job_id, outcome)
    return outcome


# Acknowledged on receipt, unlike training: a table whose build kills its worker (out of
# memory, say) must not come back for ever, and losing one costs only speed, as the model
# still answers by searching. A warm shutdown hands it back explicitly.
@shared_task(name=TASK_INDEX, bind=True, acks_late=False, ignore_result=True)
def index_model(self: Task, model_id: str) -> str:
    ctx = job_context(self.app)
    try:
        outcome = index_stored_model(ctx.settings, ctx.layout, model_id, should_stop=shutdown_requested.is_set)
    except TrainingCancelled:
        # Warm shutdown: the table is not worth holding the worker up for; hand it to the next one.
        self.app.send_task(TASK_INDEX, args=[model_id], queue="cpu")
        outcome = "handed back: this worker is shutting down"
    except Exception as exc:  # the model still answers every query by searching
        log.warning("model %s: no neighbour table: %s", model_id, exc, exc_info=not isinstance(exc, ModelFormatError))
        return "failed"
    log.info("model %s: neighbour table %s", model_id, outcome)
    return outcome


def _sweep_forever(app: Celery, stop: threading.Event) -> None:
    ctx = job_context(app)

    def waiting() -> set[str] | None:
        return waiting_job_ids(ctx.settings, TASK_TRAIN, QUEUES)

    while True:
        try:
            requeue_orphans(ctx)
        except Exception:
            log.warning("orphaned-job sweep failed", exc_info=True)
        try:
            requeue_unqueued(ctx, waiting)
        except Exception:
            log.warning("sweep for queued jobs without a message failed", exc_info=True)
        if stop.wait(ctx.settings.sweep_interval_s):
            return


_sweeper_stop = threading.Event()


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None:
        return
    threading.Thread(target=_sweep_forever, args=(app, _sweeper_stop), name="w2v-sweeper", daemon=True).start()


@signals.worker_init.connect
def _lower_priority(sender: Any = None, **_: Any) -> None:
    settings: WorkerSettings | None = getattr(getattr(sender, "app", None), "w2v_settings", None)
    if settings is None:
        return
    # Linux keeps both per thread. Threads started later (a job's training threads) inherit
    # them from this one; threads already running, such as the BLAS pool NumPy started at
    # import (used to build neighbour tables), must be lowered one by one.
    threads = _thread_ids()
    if settings.nice:
        for tid in threads:
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + settings.nice))
        log.info("running at nice %d", os.nice(0))
    if settings.cpu_idle:
        if hasattr(os, "SCHED_IDLE"):
            for tid in threads:
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            log.info("running under SCHED_IDLE: training uses only CPU time the API leaves")
        else:
            log.warning("W2V_CPU_IDLE is set but this platform has no SCHED_IDLE; ignored")
    if settings.nice or settings.cpu_idle:
        _lower_own_autogroup(19 if settings.cpu_idle else settings.nice)


def _lower_own_autogroup(nice: int) -> None:
    """Lower this worker's scheduler autogroup too, when the group is the worker's own.

    With autogroup (Linux's default on desktops and many servers), each session is a group
    that competes with other sessions as a whole, at its own nice value; a task's nice and
    SCHED_IDLE count only inside its group. A worker started in a session of its own
    (`setsid`, a supervisor) would then take half the cores' turns from an API in another
    session, and a woken API thread could wait a scheduler tick (4 ms at 250 Hz) behind a
    training thread. A worker that shares its session (under `w2v serve`, or one started
    from a shell) leaves the group alone: lowering it would lower its neighbours too.
    """
    if not hasattr(os, "getsid") or os.getsid(0) != os.getpid():
        return
    try:
        # Empty means the boot-time root group (the kernel refuses to reweight it).
        if not Path(AUTOGROUP_FILE).read_text().strip():
            return
        with open(AUTOGROUP_FILE, "w") as fh:
            fh.write(f"{nice}\n")
    except OSError:
        return  # a kernel without autogroups, or one that refuses the write
    log.info("lowered this worker's own session (scheduler autogroup) to nice %d", nice)


def _thread_ids() -> list[int]:
    """This process's threads (Linux), or just the calling one where /proc is absent."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    shutdown_requested.set()
    _sweeper_stop.set()
