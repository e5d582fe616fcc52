"""Mapping library errors to HTTP answers, and the request-size guard.

Bad input is never a 500: unknown words and ids are 404s that name what was not found, bad
parameters are 422s that say which parameter and why, too-large bodies are 413s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.corpora import CorpusNotFound, CorpusTooLarge, InvalidCorpus
from app.modelstore import ModelDamaged, ModelNotFound
from model import (
    CorpusError,
    DeviceError,
    EmptyVocabularyError,
    ModelFormatError,
    ParameterError,
    UnknownWordError,
)
from worker.jobs import LockBusy
from worker.storage import is_disk_full


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} not found")


def _detail(code: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=code)


def _unprocessable(message: str, loc: list[str | int] | None = None) -> JSONResponse:
    # Same shape as FastAPI's own validation errors, so clients parse one format.
    return JSONResponse(
        {"detail": [{"loc": loc or [], "msg": message, "type": "value_error"}]},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


def _encodable(value: Any) -> Any:
    """`value` made encodable as strict JSON in UTF-8.

    Lone surrogates become U+FFFD; NaN and infinities (Python's json reads `NaN`, `Infinity`
    and `1e400` in a body) become the strings that spell them, since JSON has no such numbers.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    return value


def _scrub_paths(request: Request, message: str) -> str:
    """Library messages name files by path; a client needs to know which file, not where the store lives."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return message
    root = re.escape(str(services.layout.root))
    message = re.sub(root + r"/tmp/upload-[0-9a-f]{32}\.part", "the uploaded file", message)
    return re.sub(root + "/", "", message)


def _parameter_loc(request: Request, message: str) -> list[str | int]:
    """Where a library message points: the uploaded file, or the parameter its first word names."""
    if message.startswith("the uploaded file"):
        return ["body"]
    # The library's messages start with the parameter's name ("alpha must be ...").
    m = re.match(r"^([a-z_]+) must", message)
    if m is None:
        return []
    name = m.group(1)
    if name in request.path_params:
        return ["path", name]
    if name in request.query_params or request.method in ("GET", "DELETE"):
        return ["query", name]
    return ["body", name]


# FastAPI's errors when the body is not a JSON object: read as something else or absent.
_NOT_A_JSON_OBJECT = {"model_attributes_type", "dict_type", "missing"}


def _json_body_hint(request: Request, error: dict[str, Any]) -> dict[str, Any]:
    """A body-shape error rewritten to say how to send JSON, which is what the client got wrong."""
    if tuple(error.get("loc", ())) != ("body",) or error.get("type") not in _NOT_A_JSON_OBJECT:
        return error
    content_type = request.headers.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() == "application/json":
        msg = "the body must be a JSON object"
    elif content_type:
        msg = f"the body must be a JSON object: send JSON with Content-Type: application/json (got {content_type})"
    else:
        msg = "the body must be a JSON object: send JSON with Content-Type: application/json"
    return {**error, "msg": msg}


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Methods the API documents for `path`, from its OpenAPI paths (templates as regexes)."""
    patterns: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allowed_methods", None)
    if patterns is None:
        patterns = [
            (
                re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"),
                {m.upper() for m in operations if m in _HTTP_METHODS},
            )
            for template, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.allowed_methods = patterns
    matching = [(pattern, found) for pattern, found in patterns if pattern.match(path)]
    # A literal path (/models/import) is a resource of its own, not an instance of /models/{model_id}.
    literal = [found for pattern, found in matching if "[^/]+" not in pattern.pattern]
    methods: set[str] = set().union(*(literal or [found for _, found in matching]))
    # HEAD is answered wherever GET is (app.main.HeadAsGet), without an operation of its own.
    return methods | {"HEAD"} if "GET" in methods else methods


def install_error_handlers(app: FastAPI) -> None:
    async def unknown_word(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UnknownWordError)
        extra: dict[str, Any] = {"suggestions": exc.suggestions} if exc.suggestions else {}
        if exc.model_id is not None:
            extra["model_id"] = exc.model_id
        return _detail(status.HTTP_404_NOT_FOUND, str(exc), unknown_words=exc.words, **extra)

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return _detail(status.HTTP_404_NOT_FOUND, str(exc))

    async def bad_parameter(request: Request, exc: Exception) -> JSONResponse:
        message = _scrub_paths(request, str(exc))
        return _unprocessable(message, _parameter_loc(request, message))

    async def bad_file(request: Request, exc: Exception) -> JSONResponse:
        return _unprocessable(_scrub_paths(request, str(exc)), ["body"])

    async def too_large(_: Request, exc: Exception) -> JSONResponse:
        return _detail(status.HTTP_413_CONTENT_TOO_LARGE, str(exc))

    async def store_down(_: Request, exc: Exception) -> JSONResponse:
        return _detail(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the job store (Redis) is unreachable, try again shortly: {type(exc).__name__}: {exc}",
        )

    async def busy(_: Request, exc: Exception) -> JSONResponse:
        response = _detail(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "another request holds the lock this one needs (a job submission or deletion on the "
            "same corpus or key); retry in a moment",
        )
        response.headers["Retry-After"] = "1"
        return response

    async def damaged(request: Request, exc: Exception) -> JSONResponse:
        return _detail(status.HTTP_500_INTERNAL_SERVER_ERROR, _scrub_paths(request, str(exc)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette's Allow names only the first route that matched the path; a path served by
            # several routes (GET and POST /corpora) supports the union of their methods.
            methods = _allowed_methods(request.app, request.url.path)
            if methods:
                allowed = ", ".join(sorted(methods))
                detail = f"{request.method} is not allowed on {request.url.path}; it takes {allowed}"
                if request.url.path == "/similar" and request.method == "POST":
                    detail += " (queries in a body go to POST /similar/batch)"
                exc = StarletteHTTPException(
                    exc.status_code, detail, headers={**(exc.headers or {}), "Allow": allowed}
                )
        return await http_exception_handler(request, exc)

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # FastAPI's own handler echoes the offending input, and neither a lone surrogate from a
        # JSON escape ("\\ud800") nor a NaN can be encoded as strict UTF-8 JSON: the 422 became a 500.
        errors = [_json_body_hint(request, e) for e in exc.errors()]
        return JSONResponse(
            {"detail": _encodable(jsonable_encoder(errors))},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    async def os_error(_: Request, exc: Exception) -> JSONResponse:
        if not is_disk_full(exc):
            raise exc  # to the catch-all below, which logs its traceback
        return _detail(
            status.HTTP_507_INSUFFICIENT_STORAGE,
            "the server's store is full (no space left on its disk): nothing was stored; "
            "retry once space is freed (delete models or corpora you no longer need)",
        )

    async def internal_error(_: Request, __: Exception) -> JSONResponse:
        # The traceback goes to the log (Starlette re-raises to the server); the client gets
        # JSON like every other error, without internals.
        return _detail(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            "internal server error: the request may not have completed; the server log has the details",
        )

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        StarletteHTTPException: http_error,
        RequestValidationError: invalid_request,
        UnknownWordError: unknown_word,
        ModelNotFound: not_found,
        ModelDamaged: damaged,
        redis.ConnectionError: store_down,
        redis.TimeoutError: store_down,
        LockBusy: busy,
        CorpusNotFound: not_found,
        JobNotFound: not_found,
        ParameterError: bad_parameter,
        DeviceError: bad_parameter,
        CorpusTooLarge: too_large,
        InvalidCorpus: bad_file,
        ModelFormatError: bad_file,
        CorpusError: bad_file,
        EmptyVocabularyError: bad_file,
        OSError: os_error,
        # Any other exception: Starlette runs this one in its outermost middleware.
        Exception: internal_error,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through as a 413 rather than a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"request body exceeds the limit of {limit} bytes")


class BodySizeLimit:
    """Refuse request bodies over a limit with 413, without reading them into memory first.

    Upload endpoints (`exempt`) stream to disk and enforce their own, larger, cap.
    """

    def __init__(self, app: ASGIApp, limit: Callable[[Scope], int], exempt: list[tuple[str, str]]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = [(method, re.compile(pattern)) for method, pattern in exempt]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(
            scope["method"] == method and pattern.fullmatch(scope["path"]) for method, pattern in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._reply(send, limit)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reply(send, limit)

    @staticmethod
    async def _reply(send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"request body exceeds the limit of {limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status.HTTP_413_CONTENT_TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
