"""Dependencies as `Annotated` aliases, so endpoints declare what they use in their signatures."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Depends, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError

from app.auth import Owner
from app.corpora import CorpusStore
from app.modelstore import ModelStore
from app.services import Services
from worker.jobs import JobStore

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
    """With API keys configured, every request must present one (Bearer token or X-API-Key).

    The key's owner id goes on `request.state.owner` for the endpoints (None with keys off);
    each key is held to its rate limit here, before any endpoint work.
    """
    request.state.owner = None
    if not services.keys.enabled:
        return
    supplied = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if supplied is None and auth.lower().startswith("bearer "):
        supplied = auth[7:].strip()
    owner = services.keys.owner_of(supplied) if supplied else None
    if owner is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    wait = services.rate_limiter.acquire(owner)
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"rate limit of {services.settings.rate_limit_per_s:g} requests/s for this API key exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    request.state.owner = owner


async def get_owner(request: Request, _: Annotated[None, Depends(require_api_key)]) -> Owner:
    """Who is asking: the owner id of the request's API key, None when keys are off.

    It depends on the key check itself (run once per request, however many ask), so an
    endpoint that knows its caller can never skip the check.
    """
    owner: Owner = getattr(request.state, "owner", None)
    return owner


OwnerDep = Annotated[Owner, Depends(get_owner)]


# "_=<timestamp>", which browser libraries (jQuery's cache: false) add to defeat caches.
_CACHE_BUSTER = "_"


async def check_query_params(request: Request) -> None:
    """Refuse query parameters the operation does not take ("topk=5" for topn) and a repeated
    one that takes a single value ("word=a&word=b"), which would otherwise be silently ignored
    or cut to the last one."""
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    shape = getattr(route, "_w2v_query_shape", None)
    if shape is None:
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            return
        shape = _query_shape(dependant)
        route._w2v_query_shape = shape  # type: ignore[union-attr]
    names, multi = shape
    counts = Counter(key for key, _ in request.query_params.multi_items())
    errors = [
        {
            "loc": ["query", key],
            "msg": f"unknown query parameter {key!r}; this operation takes: {', '.join(sorted(names)) or 'none'}",
            "type": "extra_forbidden",
        }
        for key in counts
        if key not in names and key != _CACHE_BUSTER
    ] + [
        {
            "loc": ["query", key],
            "msg": f"{key!r} is given {n} times; it takes one value",
            "type": "value_error",
        }
        for key, n in counts.items()
        if n > 1 and key in names and key not in multi
    ]
    if errors:
        raise RequestValidationError(errors)


def _query_shape(dependant: Dependant) -> tuple[frozenset[str], frozenset[str]]:
    """(every query parameter the operation takes, those that take several values)."""
    fields = list(_query_fields(dependant))
    return (
        frozenset(f.alias for f in fields),
        frozenset(f.alias for f in fields if _takes_several(f.field_info.annotation)),
    )


def _query_fields(dependant: Dependant) -> Iterator[Any]:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_fields(sub)


def _takes_several(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_several(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_takes_several(a) for a in get_args(annotation) if a is not type(None))
    return origin in (list, tuple, set, frozenset)
