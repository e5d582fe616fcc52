"""Which training jobs have a message waiting in the broker's queues.

A job record says `queued` from the moment the API creates it; its message reaches the
broker a moment later, and leaves it when a worker takes it, before that worker marks the
job `running`. A process killed inside either gap (the API before `send_task`, a worker
after taking the message) leaves a job that says `queued` with no message anywhere: no
worker would ever run it. The recovery sweep (`worker.runner.requeue_unqueued`) compares
the queued records with what this module finds waiting and sends the missing messages again.

Messages a worker has taken but not acknowledged (Redis keeps them in its `unacked` hash
until the visibility timeout, a day) are not counted as waiting: their job is running (it
has a lease) or lost with its worker.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from worker.settings import WorkerSettings
from worker.storage import StoreLayout, is_id

# kombu's Redis transport keeps a queue's messages of priority p > 0 under "<queue>\x06\x16<p>".
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITIES = (3, 6, 9)


def waiting_job_ids(settings: WorkerSettings, task: str, queues: Iterable[str]) -> set[str] | None:
    """The job ids of `task` messages waiting in `queues`, or None for a broker this cannot read."""
    if settings.uses_redis:
        return _from_redis(settings, task, queues)
    if not settings.broker_url:
        # The folder Celery's transport options name (worker.celery_app), resolved the same way.
        return _from_folder(StoreLayout.at(settings.store).queue / "messages", task, queues)
    return None


def _from_redis(settings: WorkerSettings, task: str, queues: Iterable[str]) -> set[str]:
    import redis

    assert settings.broker_url is not None
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=10)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in (queue, *(f"{queue}{_REDIS_PRIORITY_SEPARATOR}{p}" for p in _REDIS_PRIORITIES)):
                pipe.lrange(f"{settings.namespace}:{key}", 0, -1)
        found: set[str] = set()
        for raws in pipe.execute():
            found.update(job for raw in raws if (job := _job_of(raw, task)) is not None)
        return found
    finally:
        client.close()


def _from_folder(folder: Path, task: str, queues: Iterable[str]) -> set[str] | None:
    # kombu's filesystem transport names a message file "<time>_<uuid>.<queue>.msg".
    suffixes = tuple(f".{queue}.msg" for queue in queues)
    found: set[str] = set()
    try:
        paths = list(folder.iterdir())
    except OSError:  # not the folder the broker uses (it makes it at start-up): cannot tell
        return None
    for path in paths:
        if not path.name.endswith(suffixes):
            continue
        try:
            raw = path.read_bytes()
        except OSError:  # taken by a worker meanwhile
            continue
        if (job := _job_of(raw, task)) is not None:
            found.add(job)
    return found


def _job_of(raw: bytes | str, task: str) -> str | None:
    """The first argument of a Celery `task` message (kombu's JSON envelope), else None."""
    try:
        message: Any = json.loads(raw)
        if message.get("headers", {}).get("task") != task:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    job = args[0] if isinstance(args, list) and args else None
    return job if isinstance(job, str) and is_id(job) else None
