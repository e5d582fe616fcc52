"""The FastAPI application: `create_app(settings)`, or `app` for `uvicorn app.main:app` (W2V_* variables)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.batching import limit_blas_threads
from app.deps import check_query_params, require_api_key
from app.errors import BodySizeLimit, install_error_handlers
from app.fastpath import SimilarFromTable
from app.metrics import AppMetrics, RequestMetrics
from app.routers import corpora, docs, health, metrics, models, query, train, web
from app.services import Services, open_services
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Uploads stream to disk under their own (larger) cap; every other body is small JSON.
_STREAMED_UPLOADS = [
    ("POST", r"/corpora"),
    ("POST", r"/models/import"),
    ("POST", r"/models/[^/]+/evaluate"),
]

DESCRIPTION = """
Train word2vec (CBOW, negative sampling) embeddings on your corpora and query them.

1. `POST /corpora` a UTF-8 text corpus (one sentence per line; gzip, bzip2 or xz welcome).
2. `POST /train` with its `corpus_id` (or small corpora inline as `text`).
3. Watch `GET /jobs/{job_id}` (or stream `GET /jobs/{job_id}/events`) until `succeeded`.
4. Ask `GET /similar?word=...`, `GET /analogy?a=...&b=...&c=...`: the newest model answers unless
   you name one with `model=`.

Errors are JSON, except a URL over 64 KiB, which the HTTP server refuses with a plain-text 400
before the app sees it: send long queries in the body of `POST /similar/batch`.
"""


def _resolve_settings(app: FastAPI) -> Settings:
    settings: Settings | None = getattr(app.state, "settings", None)
    return settings if settings is not None else get_settings()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = _resolve_settings(app)
    services: Services = await run_in_threadpool(open_services, settings)
    app.state.services = services
    restore_blas = limit_blas_threads(settings.query_blas_threads)
    # A request crosses three threads (event loop, batcher, scan pool), and each crossing may
    # wait for the GIL up to the switch interval (5 ms by default) while another thread runs
    # Python code. 1 ms cut p99 at 200 /similar per second from 39 to 24 ms on 2 cores.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.001))
    log.info("store %s, broker %s", services.layout.root, settings.broker_url or "filesystem (embedded)")
    try:
        yield
    finally:
        restore_blas()
        sys.setswitchinterval(switch_interval)
        await run_in_threadpool(services.close)


class CrossOrigin:
    """CORS for the origins in `W2V_CORS_ORIGINS`, read from the settings the app starts with
    (`app = create_app()` learns them only at start-up); without any, requests pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors: ASGIApp | None = None
        self._configured = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._configured:
            services: Services | None = getattr(scope["app"].state, "services", None)
            if services is None:
                await self.app(scope, receive, send)
                return
            origins = services.settings.cors_origins
            if origins:
                self._cors = CORSMiddleware(
                    self.app,
                    allow_origins=origins,
                    allow_methods=["GET", "HEAD", "POST", "DELETE"],
                    allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
                    expose_headers=["Location", "Retry-After"],
                    max_age=600,
                )
            self._configured = True
        await (self._cors or self.app)(scope, receive, send)


class HeadAsGet:
    """HEAD on a GET route answers as GET would, with the same status and headers and no body.

    FastAPI routes match only the methods they declare, and declaring HEAD on each would also
    list a HEAD operation per route in the OpenAPI document.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def receive_until_finished() -> Message:
            # A stream (Server-Sent Events) learns that its client is gone once the headers went out.
            if finished:
                return {"type": "http.disconnect"}
            return await receive()

        async def headers_only(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not finished:
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive_until_finished, headers_only)
        finally:
            # Routing notes the route on the scope it is given; the request metrics read it from this one.
            if "route" in as_get:
                scope["route"] = as_get["route"]


def _request_limit(scope: Scope) -> int:
    services: Services = scope["app"].state.services
    return services.settings.max_request_bytes


def create_app(settings: Settings | None = None) -> FastAPI:
    # The OpenAPI document and its viewers are served by app/routers/docs.py, behind the keys.
    app = FastAPI(
        title="word2vec service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    # Kept on the app rather than as a dependency override: FastAPI re-analyses the signature
    # of every dependency on every request while any override is set (0.3 ms per /similar).
    app.state.settings = settings
    # Innermost: one-word /similar queries answered from a neighbour table skip FastAPI's routing.
    app.add_middleware(SimilarFromTable)
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodySizeLimit, limit=_request_limit, exempt=_STREAMED_UPLOADS)
    # Outside the size limit and the routes, so that their 4xx refusals carry the CORS headers
    # too (a browser hides an answer without them), and preflights need no API key.
    app.add_middleware(CrossOrigin)
    # Added last, so outermost: it also counts and times what the inner middleware answers (413s).
    app.state.metrics = AppMetrics(lambda: getattr(app.state, "services", None))
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(web.router)
    # Before /static, which would otherwise take these paths.
    app.mount(docs.ASSETS_URL, docs.assets(), name="docs-assets")
    app.mount("/static", web.static_files(), name="static")
    protected = [Depends(require_api_key), Depends(check_query_params)]
    # Routes are matched in order; the query routes, by far the most requested, come first.
    for module in (query, models, train, corpora, metrics, docs):
        app.include_router(module.router, dependencies=protected)
    return app


app = create_app()
