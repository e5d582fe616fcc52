"""Service settings from W2V_* environment variables (or a .env file); flags of `w2v serve` win."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from worker.settings import WorkerSettings

MiB = 1024 * 1024


class Settings(WorkerSettings):
    model_config = SettingsConfigDict(env_prefix="W2V_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=1024 * MiB, ge=1, description="Largest corpus or model upload.")
    max_corpus_text_bytes: int = Field(
        default=32 * 1024 * MiB,
        ge=1,
        description="Largest corpus once decompressed: a small compressed upload can hold a huge text, "
        "which a worker would tokenise to disk for hours.",
    )
    max_inline_text_bytes: int = Field(
        default=1 * MiB, ge=1, description="Largest corpus sent inline as 'text' in POST /train."
    )
    max_request_bytes: int = Field(
        default=2 * MiB, ge=1024, description="Largest body of any other request (JSON); larger is a 413."
    )
    model_cache_size: int = Field(default=4, ge=1, le=1000, description="Models kept loaded in memory.")
    query_blas_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="BLAS threads the API process searches with (0: the library's default, one per core). "
        "One keeps concurrent searches from spinning every core; see app/batching.py.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set (comma-separated), every endpoint except health checks needs one of these keys "
        "as 'Authorization: Bearer <key>' or 'X-API-Key'.",
    )

    api_keys_file: Path | None = Field(
        default=None,
        description="A file of API keys, one per line ('#' starts a comment); added to api_keys. "
        "Read at start-up, so a key can be kept out of the environment.",
    )
    rate_limit_per_s: float = Field(
        default=50.0,
        ge=0,
        description="Requests per second each API key may make on average (per API process); 0: no limit. "
        "Only applies when API keys are configured.",
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="Requests a key may make at once before the rate limit applies."
    )
    max_active_jobs_per_key: int = Field(
        default=4,
        ge=0,
        description="Queued plus running training jobs each API key may have; 0: no limit. "
        "Only applies when API keys are configured.",
    )

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins (comma-separated, e.g. https://app.example.com; * for any) whose pages may "
        "call the API from the browser. Unset: only pages the API serves itself.",
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        # A browser sends its origin as a lower-case scheme://host[:port], which is compared as
        # text: "HTTPS://App.Example.com/" would never match it, silently.
        written = []
        for origin in origins:
            normal = origin.lower().removesuffix("/")
            if normal != "*" and not re.fullmatch(r"https?://[^/\s]+", normal):
                raise ValueError(f"CORS origin {origin!r} must be scheme://host[:port] (no path), or *")
            written.append(normal)
        return written

    @model_validator(mode="after")
    def _read_keys_file(self) -> Settings:
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                # A configured but unreadable keys file must stop start-up: running open instead would be silent.
                raise ValueError(f"api_keys_file {str(self.api_keys_file)!r} cannot be read: {exc}") from exc
            from_file = [k for line in lines if (k := line.split("#", 1)[0].strip())]
            if not from_file:
                raise ValueError(f"api_keys_file {str(self.api_keys_file)!r} holds no keys")
            self.api_keys = list(dict.fromkeys([*self.api_keys, *from_file]))
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
