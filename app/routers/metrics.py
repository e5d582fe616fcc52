"""GET /metrics: the Prometheus text exposition of this API process."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.metrics import AppMetrics

router = APIRouter(tags=["operations"])


# A plain `def`: collecting reads job records and the models folder, which may block.
@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}},
)
def metrics(request: Request) -> Response:
    """Requests and latency per route, jobs by state, training words/s, models loaded, memory."""
    registry = request.app.state.metrics
    assert isinstance(registry, AppMetrics)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
