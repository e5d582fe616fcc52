"""Dependencies as `Annotated` aliases, so endpoints declare what they use in their signatures."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.corpora import CorpusStore
from app.modelstore import ModelStore
from app.services import Services
from app.settings import Settings, get_settings
from worker.jobs import JobStore

SettingsDep = Annotated[Settings, Depends(get_settings)]


# Dependencies are `async def` because they never block: a plain `def` would cost each
# request a round trip through the thread pool.


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_models(services: ServicesDep) -> ModelStore:
    return services.models


async def get_corpora(services: ServicesDep) -> CorpusStore:
    return services.corpora


async def get_jobs(services: ServicesDep) -> JobStore:
    return services.jobs


ModelsDep = Annotated[ModelStore, Depends(get_models)]
CorporaDep = Annotated[CorpusStore, Depends(get_corpora)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]


async def require_api_key(request: Request, services: ServicesDep) -> None:
    """With API keys configured, every request must present one (Bearer token or X-API-Key)."""
    keys = services.settings.api_keys
    if not keys:
        return
    supplied = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if supplied is None and auth.lower().startswith("bearer "):
        supplied = auth[7:].strip()
    if supplied:
        given = supplied.encode()
        # Every key is compared, in constant time, so timing does not reveal which prefix matched.
        matches = [secrets.compare_digest(given, key.encode()) for key in keys]
        if any(matches):
            return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key",
        headers={"WWW-Authenticate": "Bearer"},
    )
