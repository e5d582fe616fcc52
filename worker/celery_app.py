"""Celery configuration, apart from the tasks so the API can enqueue by name without importing them.

Training jobs run for minutes to hours, which shapes every setting here: a message is
acknowledged only after the job ends (`acks_late`) and put back if the worker process dies
(`task_reject_on_worker_lost`); a worker reserves one job at a time (prefetch 1); and Redis
re-delivers an unacknowledged message only after `visibility_timeout`, which is therefore
longer than the hard time limit so a job still running is never handed out twice.

`celery -A worker.celery_app worker` finds `app` here, configured from W2V_* variables.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from worker.joblog import TEXT_FORMAT, install_record_factory
from worker.settings import WorkerSettings, check_time_limits
from worker.storage import StoreLayout

TASK_TRAIN = "w2v.train"
TASK_INDEX = "w2v.index_model"  # a neighbour table for a stored model that has none (worker.indexing)
QUEUES = ("gpu", "cpu")
# How hard the API tries to hand a message to the broker before it gives up on the request:
# a couple of quick retries ride out a broker restart without keeping a client waiting long.
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def queue_for_device(device: str) -> str:
    """Jobs that demand CUDA wait for a GPU worker; 'auto' goes wherever a worker is free to take it."""
    return "gpu" if device == "cuda" else "cpu"


class W2VCelery(Celery):
    """A Celery app that carries the settings its tasks need (store, job records)."""

    w2v_settings: WorkerSettings


def hard_time_limit_s(settings: WorkerSettings) -> float:
    return settings.hard_time_limit_s


def transport_options(settings: WorkerSettings) -> dict[str, Any]:
    if settings.uses_redis:
        return {
            "visibility_timeout": int(settings.effective_visibility_timeout_s),
            "global_keyprefix": f"{settings.namespace}:",
            "socket_connect_timeout": 5,
            "socket_timeout": 10,
        }
    queue = StoreLayout.at(settings.store).queue
    return {
        "data_folder_in": str(queue / "messages"),
        "data_folder_out": str(queue / "messages"),
        "control_folder": str(queue / "control"),
        "polling_interval": 0.5,
    }


def broker_url(settings: WorkerSettings) -> str:
    return settings.broker_url or "filesystem://localhost/"


def create_celery(settings: WorkerSettings) -> W2VCelery:
    # Checked here too: settings changed with model_copy() skip their validators.
    check_time_limits(settings)
    install_record_factory()  # the log format below names the `job` field every record must then have
    app = W2VCelery("w2v", set_as_current=False)
    app.w2v_settings = settings
    if not settings.uses_redis and not settings.broker_url:
        queue = StoreLayout.at(settings.store).queue
        (queue / "messages").mkdir(parents=True, exist_ok=True)
        (queue / "control").mkdir(parents=True, exist_ok=True)
    app.conf.update(
        broker_url=broker_url(settings),
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=hard_time_limit_s(settings),
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="cpu",
        task_routes={TASK_TRAIN: {"queue": "cpu"}, TASK_INDEX: {"queue": "cpu"}},
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Broadcast control needs fanout, which only the Redis transport does well.
        worker_enable_remote_control=settings.uses_redis,
        worker_send_task_events=False,
        # Lines logged while a job runs carry "job=<id>" (see worker.joblog).
        worker_log_format=TEXT_FORMAT,
        enable_utc=True,
        include=["worker.tasks"],
    )
    return app


def __getattr__(name: str) -> Any:
    # Built on first access, not at import, so importing this module reads no environment.
    if name in ("app", "celery"):
        global _default_app
        if _default_app is None:
            _default_app = create_celery(WorkerSettings())
        return _default_app
    raise AttributeError(name)


_default_app: W2VCelery | None = None
