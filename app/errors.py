"""Mapping library errors to HTTP answers, and the request-size guard.

Bad input is never a 500: unknown words and ids are 404s that name what was not found, bad
parameters are 422s that say which parameter and why, too-large bodies are 413s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

import redis
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.corpora import CorpusNotFound, InvalidCorpus
from app.modelstore import ModelDamaged, ModelNotFound
from model import (
    CorpusError,
    DeviceError,
    EmptyVocabularyError,
    ModelFormatError,
    ParameterError,
    UnknownWordError,
)


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


def install_error_handlers(app: FastAPI) -> None:
    async def unknown_word(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UnknownWordError)
        return _detail(status.HTTP_404_NOT_FOUND, str(exc), unknown_words=exc.words)

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return _detail(status.HTTP_404_NOT_FOUND, str(exc))

    async def bad_parameter(_: Request, exc: Exception) -> JSONResponse:
        message = str(exc)
        # The library's messages start with the parameter's name; point `loc` at it when they do.
        m = re.match(r"^([a-z_]+) must", message)
        return _unprocessable(message, [m.group(1)] if m else None)

    async def bad_file(_: Request, exc: Exception) -> JSONResponse:
        return _unprocessable(str(exc), ["body"])

    async def store_down(_: Request, exc: Exception) -> JSONResponse:
        return _detail(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the job store (Redis) is unreachable, try again shortly: {type(exc).__name__}: {exc}",
        )

    async def damaged(_: Request, exc: Exception) -> JSONResponse:
        return _detail(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc))

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        UnknownWordError: unknown_word,
        ModelNotFound: not_found,
        ModelDamaged: damaged,
        redis.ConnectionError: store_down,
        redis.TimeoutError: store_down,
        CorpusNotFound: not_found,
        JobNotFound: not_found,
        ParameterError: bad_parameter,
        DeviceError: bad_parameter,
        InvalidCorpus: bad_file,
        ModelFormatError: bad_file,
        CorpusError: bad_file,
        EmptyVocabularyError: bad_file,
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
