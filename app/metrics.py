"""Prometheus metrics of one API process, served at GET /metrics.

Each app gets its own `CollectorRegistry`, so several apps in one process (tests, or an
embedding application) never register the same metric twice. Requests are labelled by route
template (`/models/{model_id}`), never by raw path: raw paths carry ids and would grow the
number of series without bound. Job and model figures are read from the store when scraped,
so every API replica reports the same job counts and its own loaded models and memory.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.jobs import STATES

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"

# From a cached query (about a millisecond) to an upload or export of a large model (minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# Scrapes must stay cheap even with a long job history: states are counted over at most this many records.
MAX_JOBS_SCANNED = 100_000


class ServiceCollector(Collector):
    """Figures read at scrape time: jobs by state, training speed, models stored and loaded."""

    def __init__(self, services: Callable[[], Services | None]) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        services = self._services()
        if services is None:  # scraped before the lifespan opened the store
            return
        yield from self._jobs(services)
        loaded = GaugeMetricFamily("w2v_models_loaded", "Models held in memory by this API process.")
        loaded.add_metric([], services.models.loaded_count())
        yield loaded
        stored = GaugeMetricFamily("w2v_models_stored", "Models in the store.")
        try:
            stored.add_metric([], len(services.models.ids()))
        except OSError:
            log.warning("metrics: cannot list the models folder", exc_info=True)
        else:
            yield stored

    @staticmethod
    def _jobs(services: Services) -> Iterator[Metric]:
        up = GaugeMetricFamily("w2v_job_store_up", "1 if the job records (Redis or files) could be read.")
        try:
            records = services.jobs.list(limit=MAX_JOBS_SCANNED)
        except Exception:
            # A scrape during a Redis outage still reports the process figures and says why the rest is missing.
            log.warning("metrics: cannot read job records", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        for rec in records:
            counts[rec.state] = counts.get(rec.state, 0) + 1
        jobs = GaugeMetricFamily("w2v_jobs", "Training jobs by state.", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs

        total = GaugeMetricFamily(
            "w2v_training_words_per_second", "Training speed summed over running jobs (raw corpus words per second)."
        )
        per_job = GaugeMetricFamily(
            "w2v_job_words_per_second", "Training speed of each running job.", labels=["job_id", "device"]
        )
        progress = GaugeMetricFamily(
            "w2v_job_progress_ratio", "Fraction of each running job's words trained so far.", labels=["job_id"]
        )
        speed_sum = 0.0
        for rec in records:
            if rec.state != "running":
                continue
            p = rec.progress or {}
            speed = float(p.get("words_per_sec") or 0.0)
            speed_sum += speed
            per_job.add_metric([rec.job_id, rec.device], speed)
            if p.get("words_total"):
                progress.add_metric([rec.job_id], min(1.0, float(p.get("words_done") or 0) / float(p["words_total"])))
        total.add_metric([], speed_sum)
        yield total
        yield per_job
        yield progress


class AppMetrics:
    """The registry of one app and the request metrics the middleware records into it."""

    def __init__(self, services: Callable[[], Services | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "w2v_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "w2v_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open fds
        PlatformCollector(registry=self.registry)
        self.registry.register(ServiceCollector(services))


class _OpenAPITemplates:
    """Route templates matched against a raw path, for requests answered before routing.

    Built once from the app's OpenAPI document: a public view of every API route, prefixes
    included, whatever shape the router keeps them in.
    """

    def __init__(self) -> None:
        self._patterns: list[tuple[re.Pattern[str], frozenset[str], str]] | None = None
        self._lock = threading.Lock()

    def _build(self, app: Any) -> list[tuple[re.Pattern[str], frozenset[str], str]]:
        patterns = []
        for template, operations in app.openapi().get("paths", {}).items():
            regex = re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template))
            methods = frozenset(m.upper() for m in operations)
            patterns.append((re.compile(regex), methods, template))
        # Literal segments win over parameters: POST /models/import is not /models/{model_id}.
        patterns.sort(key=lambda p: p[2].count("{"))
        return patterns

    def lookup(self, scope: Scope) -> str | None:
        app = scope.get("app")
        if app is None or not callable(getattr(app, "openapi", None)):
            return None
        with self._lock:
            if self._patterns is None:
                try:
                    self._patterns = self._build(app)
                except Exception:
                    log.warning("metrics: cannot read the route templates", exc_info=True)
                    self._patterns = []
        path, method = scope.get("path", ""), scope.get("method", "")
        for regex, methods, template in self._patterns:
            if method in methods and regex.fullmatch(path):
                return template
        return None


def route_template(scope: Scope, fallback: _OpenAPITemplates | None = None) -> str:
    """The path pattern of the route that handled the request, e.g. `/jobs/{job_id}`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path or "/"
    # Answered before routing (a 413 from the body-size guard): look the template up.
    template = fallback.lookup(scope) if fallback is not None else None
    return template or UNMATCHED


class RequestMetrics:
    """ASGI middleware: counts every HTTP request and times it until its response has been sent."""

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._templates = _OpenAPITemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500  # an exception that escapes the app becomes a 500 further out

        async def send_recording(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = route_template(scope, self._templates)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status_code)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
