"""Service settings from W2V_* environment variables (or a .env file); flags of `w2v serve` win."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from worker.settings import WorkerSettings

MiB = 1024 * 1024


class Settings(WorkerSettings):
    model_config = SettingsConfigDict(env_prefix="W2V_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=1024 * MiB, ge=1, description="Largest corpus or model upload.")
    max_inline_text_bytes: int = Field(
        default=1 * MiB, ge=1, description="Largest corpus sent inline as 'text' in POST /train."
    )
    max_request_bytes: int = Field(
        default=2 * MiB, ge=1024, description="Largest body of any other request (JSON); larger is a 413."
    )
    model_cache_size: int = Field(default=4, ge=1, le=1000, description="Models kept loaded in memory.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set (comma-separated), every endpoint except health checks needs one of these keys "
        "as 'Authorization: Bearer <key>' or 'X-API-Key'.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
