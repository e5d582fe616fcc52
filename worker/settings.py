"""Settings the worker needs; the API's settings extend them so both sides agree on the store and broker."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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
    sweep_interval_s: float = Field(default=30.0, gt=0, description="How often a worker re-queues orphaned jobs.")
    threads: int = Field(default=0, ge=0, le=256, description="Training threads per job; 0 means one per core.")

    @property
    def uses_redis(self) -> bool:
        return bool(self.broker_url) and str(self.broker_url).startswith(("redis://", "rediss://"))
