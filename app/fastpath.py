"""`GET /similar?word=...` answered from a loaded model's neighbour table, before FastAPI.

A one-word query whose answer is in the model's neighbour table (`model.neighbours`) costs
a few microseconds to answer, but some 0.3 ms to route, resolve dependencies for and
validate in FastAPI, more than the rest of the request together (0.1-0.2 ms in-process). This ASGI
middleware answers exactly those requests itself, with the same checks (API key, rate
limit, model ownership) and the same body, and hands every other request, including every
one it is unsure about, to the app unchanged. It never answers an error: requests that
would fail are the app's to refuse, with its messages.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from app.services import Services
from model.errors import W2VError

_PATH = "/similar"
_KEYS = frozenset({"word", "topn", "model", "restrict_vocab"})
# Canonical integers only; anything else ("+5", "05", "1e3") goes to the app's validation.
_TOPN = re.compile(r"[1-9][0-9]{0,2}|1000")
_POSITIVE = re.compile(r"[1-9][0-9]{0,17}")
_MAX_WORD_CHARS = 1000  # app.schemas.Word
_ROUTE = SimpleNamespace(path=_PATH)


class SimilarFromTable:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == _PATH and scope["method"] == "GET":
            answer = self._answer(scope)
            if answer is not None:
                scope["route"] = _ROUTE  # what the request metrics label it with
                headers = [(b"content-length", str(len(answer)).encode()), (b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": answer})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> bytes | None:
        services: Services | None = getattr(scope["app"].state, "services", None)
        if services is None:
            return None
        params = QueryParams(scope["query_string"])
        keys = [k for k, _ in params.multi_items()]
        if len(keys) != len(set(keys)) or not set(keys) <= _KEYS:
            return None
        word = params.get("word")
        topn, restrict = params.get("topn", "10"), params.get("restrict_vocab")
        if not word or len(word) > _MAX_WORD_CHARS or not _TOPN.fullmatch(topn):
            return None
        if restrict is not None and not _POSITIVE.fullmatch(restrict):
            return None
        owner = None
        if services.keys.enabled:
            owner = services.keys.owner_of(_api_key(scope["headers"]) or "")
            if owner is None:  # missing or invalid: the app answers 401
                return None
        loaded = services.models.cached(params.get("model"), owner)
        if loaded is None:
            return None
        vectors = loaded.model.vectors
        if word not in vectors:
            return None
        try:
            hits = vectors.precomputed_neighbours(word, int(topn), int(restrict) if restrict is not None else None)
        except W2VError:  # the app refuses it, with its own answer
            return None
        if hits is None:
            return None
        # Last, so a request handed to the app is charged once, there (a 429 comes from the app).
        if owner is not None and services.rate_limiter.acquire(owner) is not None:
            return None
        body = {"model_id": loaded.model_id, "results": [{"word": w, "score": s} for w, s in hits]}
        return json.dumps(body, allow_nan=False).encode()


def _api_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """As `app.deps.require_api_key` reads it: X-API-Key, else a Bearer token."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in (b"x-api-key", b"authorization"):
            found.setdefault(name, value)  # the first of repeated headers, as Starlette's `get`
    if b"x-api-key" in found:
        return found[b"x-api-key"].decode("latin-1")
    auth = found.get(b"authorization", b"").decode("latin-1")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None
