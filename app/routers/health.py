"""Liveness and readiness probes (no API key needed)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response, status

from app.deps import ServicesDep
from app.schemas import HealthPublic, ReadinessPublic

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> HealthPublic:
    """The process is up and serving requests."""
    return HealthPublic(status="ok")


@router.get("/readyz", responses={503: {"model": ReadinessPublic}})
def readyz(services: ServicesDep, response: Response) -> ReadinessPublic:
    """The store is readable and the broker (with the job records) is reachable."""
    checks: dict[str, str] = {}
    root = services.layout.root
    checks["store"] = (
        "ok"
        if os.access(services.layout.models, os.R_OK | os.X_OK) and os.access(root, os.W_OK)
        else f"store {root} is not readable and writable"
    )
    try:
        services.jobs.ping()
        if services.settings.broker_url and not services.settings.uses_redis:
            with services.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
        elif not services.settings.broker_url and not os.access(services.layout.queue / "messages", os.W_OK):
            raise OSError(f"queue folder {services.layout.queue} is not writable")
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}: {exc}"
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadinessPublic(status="ready" if ready else "unavailable", checks=checks)
