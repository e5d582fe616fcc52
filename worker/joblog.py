"""The job id on every log line written while a job runs, as text or as one JSON object a line.

`job_log_context(job_id)` marks the current context (thread or task) as working on a job; a
log-record factory copies that id onto every record as `job_id`, whichever logger made it
(ours, the trainer's, Celery's), so formatters can print it and log shippers can filter on it.
Threads do not inherit context variables: a thread that works for a job is started with
`contextvars.copy_context().run`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

current_job_id: ContextVar[str | None] = ContextVar("w2v_job_id", default=None)

# Celery's default worker format with the job in front of the message; `job` is "" outside jobs.
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(job)s%(message)s"

_install_lock = threading.Lock()
_installed = False


@contextlib.contextmanager
def job_log_context(job_id: str) -> Iterator[None]:
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


def install_record_factory() -> None:
    """Give every log record `job_id` (None outside a job) and `job` ("job=<id> " or ""); idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            job_id = current_job_id.get()
            record.job_id = job_id
            record.job = f"job={job_id} " if job_id else ""
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, process, thread (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def apply_format(logger: logging.Logger, log_format: LogFormat) -> None:
    """Put the chosen format on the handlers of `logger` (Celery's root logger once it set it up)."""
    install_record_factory()
    for handler in logger.handlers:
        handler.setFormatter(formatter(log_format))
