"""Settings the worker needs; the API's settings extend them so both sides agree on the store and broker."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["cpu", "cuda", "auto"]


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="W2V_", extra="ignore")

    store: Path = Field(
        default=Path("w2v-store"),
        description="Model store directory shared by the API and the workers (models, corpora, checkpoints).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker, e.g. redis://host:6379/0. Unset: a filesystem queue inside the store.",
    )
    namespace: str = Field(
        default="w2v",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Prefix of all Redis keys (job records, Celery's queues): deployments can share a Redis.",
    )
    device: Device = Field(default="auto", description="Device a worker uses for jobs that ask for 'auto'.")
    job_time_limit_s: float = Field(default=24 * 3600, gt=0, description="Longest one training attempt may run.")
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Deliveries of one job (e.g. after a worker died) before it fails.",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        ge=2,
        description="A running job whose worker has not renewed its lease for this long is orphaned.",
    )
    progress_interval_s: float = Field(default=1.0, gt=0, description="Least time between progress writes.")
    sweep_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often a worker re-queues orphaned jobs, and queued jobs whose message was lost.",
    )
    threads: int = Field(default=0, ge=0, le=256, description="Training threads per job; 0 means one per core.")
    neighbour_words: int = Field(
        default=100_000,
        ge=0,
        description="After training, precompute the nearest neighbours of this many most frequent words and "
        "save them with the model, so one-word /similar queries are a lookup. Costs about half a batched "
        "search per word (some 20 s for 100k words of a 100k x 100 model on 2 cores); 0 turns it off.",
    )
    neighbour_topn: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Neighbours kept per word in that table: queries with a larger topn search instead.",
    )
    neighbour_seconds: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="Time a worker spends on that table at most. Its cost grows with the vocabulary (a model "
        "of 2 M words takes 20 times as long per indexed word as one of 100k): when the time is up, the table "
        "keeps the most frequent words done by then, and the other words' queries search.",
    )
    nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="CPU priority a worker lowers itself by (as nice(1)): on a host shared with the API, "
        "training then yields the cores to queries instead of stalling them. `w2v serve` uses 10.",
    )
    cpu_idle: bool = Field(
        default=False,
        description="Run training under Linux's SCHED_IDLE policy: it gets only the CPU time nothing "
        "else wants, and a waking API thread preempts it at once (a niced task can still hold a core "
        "for a scheduler slice). For hosts shared with the API; `w2v serve` turns it on.",
    )
    visibility_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Redis broker: how long an unacknowledged message waits before it is delivered again. "
        "Must exceed the job time limit plus its grace period (checked at start-up); "
        "unset: that sum plus an hour.",
    )

    @property
    def hard_time_limit_s(self) -> float:
        """Celery's own kill limit: our deadline (checked between batches) fires first and records
        a clean failure; this one only catches a task stuck outside the trainer."""
        return self.job_time_limit_s + HARD_LIMIT_GRACE_S

    @property
    def effective_visibility_timeout_s(self) -> float:
        return self.visibility_timeout_s or self.hard_time_limit_s + 3600

    @model_validator(mode="after")
    def _limit_below_visibility(self) -> WorkerSettings:
        check_time_limits(self)
        return self

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Worker log lines as text, or as one JSON object per line; both carry the job id.",
    )
    gpu_slots_dir: Path | None = Field(
        default=None,
        description="With --device cuda: a folder shared by the workers of one host, where each claims a GPU "
        "of its own (a lock file per GPU), so N replicas spread over N GPUs.",
    )

    @property
    def uses_redis(self) -> bool:
        return bool(self.broker_url) and str(self.broker_url).startswith(("redis://", "rediss://"))


HARD_LIMIT_GRACE_S = 300.0


def check_time_limits(settings: WorkerSettings) -> None:
    """Refuse to start when a job could outlive its broker message's visibility timeout.

    Redis hands an unacknowledged message out again once the timeout passes; if a job may run
    longer, a second worker would start the same job while the first still trains it.
    """
    if settings.effective_visibility_timeout_s <= settings.hard_time_limit_s:
        raise ValueError(
            f"visibility_timeout_s ({settings.effective_visibility_timeout_s:g} s) must exceed the job time limit "
            f"plus its {HARD_LIMIT_GRACE_S:g} s grace ({settings.hard_time_limit_s:g} s), or a job still "
            "running would be delivered to a second worker; raise W2V_VISIBILITY_TIMEOUT_S or lower "
            "W2V_JOB_TIME_LIMIT_S"
        )
