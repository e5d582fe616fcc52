"""Every log line written while a job runs carries its id: in-process, from helper threads,
and in a real `w2v worker` process writing JSON lines."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker import runner
from worker.celery_app import TASK_TRAIN, create_celery
from worker.joblog import TEXT_FORMAT, JsonFormatter, install_record_factory, job_log_context
from worker.jobs import FileJobStore, JobRecord, open_job_store
from worker.runner import JobContext, run_job
from worker.settings import WorkerSettings
from worker.storage import StoreLayout

from .test_service_e2e import stop_group
from .test_worker import submit


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    layout = StoreLayout.at(tmp_path / "store")
    layout.ensure()
    settings = WorkerSettings(store=layout.root, lease_ttl_s=2, progress_interval_s=0.2)
    return JobContext(settings, layout, FileJobStore(layout.jobs), lambda rec: None)


def test_every_line_of_a_job_carries_its_id(ctx: JobContext, caplog: pytest.LogCaptureFixture) -> None:
    install_record_factory()
    rec = submit(ctx, lines=200)
    with caplog.at_level(logging.INFO):
        logging.getLogger("worker.test").info("before the job")
        assert run_job(ctx, rec.job_id) == "succeeded"
        logging.getLogger("worker.test").info("after the job")
    ours = [r for r in caplog.records if r.name.startswith(("worker.", "model."))]
    during = [r for r in ours if r.getMessage() not in {"before the job", "after the job"}]
    messages = " | ".join(r.getMessage() for r in during)
    assert "training on" in messages and "vocabulary:" in messages and "saved" in messages
    assert {r.job_id for r in during} == {rec.job_id}  # type: ignore[attr-defined]
    outside = [r for r in ours if r.getMessage() in {"before the job", "after the job"}]
    assert [(r.job_id, r.job) for r in outside] == [(None, ""), (None, "")]  # type: ignore[attr-defined]


def test_helper_threads_of_a_job_log_its_id(ctx: JobContext, caplog: pytest.LogCaptureFixture) -> None:
    """The lease thread reports a lost lease from its own thread."""
    install_record_factory()
    rec = submit(ctx)
    with caplog.at_level(logging.WARNING, logger="worker.runner"), job_log_context(rec.job_id):
        lease = runner._Lease(ctx.jobs, rec.job_id, "someone", ttl_s=2)  # never acquired: renewal fails
        lease.start()
        assert lease.lost.wait(5)
        lease.stop()
    lost = [r for r in caplog.records if "lease lost" in r.getMessage()]
    assert lost and lost[0].threadName.startswith("lease-")
    assert lost[0].job_id == rec.job_id  # type: ignore[attr-defined]


def test_formats_show_the_job_id() -> None:
    install_record_factory()
    logger = logging.getLogger("worker.format-test")
    with job_log_context("abc123"):
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "epoch %d done", (2,), None)
    line = logging.Formatter(TEXT_FORMAT).format(record)
    assert "worker.format-test: job=abc123 epoch 2 done" in line
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "crashed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["job_id"] == "abc123" and entry["message"] == "epoch 2 done" and entry["level"] == "INFO"
    assert entry["logger"] == "worker.format-test"
    crashed = json.loads(JsonFormatter().format(failed))
    assert crashed["job_id"] is None and "ValueError: boom" in crashed["exception"]


@pytest.mark.slow
def test_worker_process_writes_json_lines_with_the_job_id(tmp_path: Path) -> None:
    store = tmp_path / "store"
    settings = WorkerSettings(store=store)
    layout = StoreLayout.at(store)
    layout.ensure()
    jobs = open_job_store(settings, layout)
    ctx = JobContext(settings, layout, jobs, lambda rec: None)
    rec: JobRecord = submit(ctx, lines=200)
    create_celery(settings).send_task(TASK_TRAIN, args=[rec.job_id], queue=rec.queue)

    env = {k: v for k, v in os.environ.items() if not k.startswith("W2V_")}
    env.update(W2V_LOG_FORMAT="json", W2V_STORE=str(store))
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queues", "cpu"],
            cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                current = jobs.get(rec.job_id)
                if current is not None and current.state == "succeeded":
                    break
                assert proc.poll() is None, log_path.read_text(errors="replace")
                time.sleep(0.3)
            else:
                raise AssertionError("the job did not finish: " + log_path.read_text(errors="replace")[-3000:])
        finally:
            stop_group(proc, grace=20)
    entries = []
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    of_job = [e for e in entries if e.get("job_id") == rec.job_id]
    messages = " | ".join(e["message"] for e in of_job)
    assert "training on" in messages and "saved" in messages, messages
    assert any(e["logger"] == "model.trainer" for e in of_job)  # the library's lines too, not only ours
