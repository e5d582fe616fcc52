"""Text corpora: upload (streamed, capped), list, inspect, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.corpora import corpus_lock
from app.deps import CorporaDep, JobsDep, OwnerDep, ServicesDep
from app.schemas import CorpusPublic, Name, error_responses
from app.uploads import multipart_schema, receive_upload, upload_label

router = APIRouter(prefix="/corpora", tags=["corpora"], responses=error_responses(401, 404, 409, 413, 422, 429, 503))

_UPLOAD_BODY = {
    "requestBody": {
        "description": "The corpus, one sentence per line, as the raw body (text/plain or "
        "application/octet-stream; UTF-8, optionally gzip, bzip2 or xz compressed) or as the multipart field `file`.",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": multipart_schema("A label, as ?name=."),
        },
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, openapi_extra=_UPLOAD_BODY, responses=error_responses(415))
async def upload_corpus(
    request: Request,
    services: ServicesDep,
    response: Response,
    owner: OwnerDep,
    name: Annotated[Name | None, Query(description="A label for the corpus.")] = None,
) -> CorpusPublic:
    """Upload a corpus; it is checked (decompresses, UTF-8 text, not empty) and its lines counted."""
    upload = await receive_upload(request, services.layout.tmp, services.settings.max_upload_bytes, kind="corpus")
    label = upload_label(name, upload)
    meta = await run_in_threadpool(
        services.corpora.ingest, upload.path, filename=upload.filename, name=label, owner=owner
    )
    response.headers["Location"] = str(request.url_for("get_corpus", corpus_id=meta["id"]))
    return CorpusPublic.model_validate(meta)


@router.get("")
def list_corpora(corpora: CorporaDep, owner: OwnerDep) -> list[CorpusPublic]:
    return [CorpusPublic.model_validate(m) for m in corpora.list(owner)]


@router.get("/{corpus_id}")
def get_corpus(corpus_id: str, corpora: CorporaDep, owner: OwnerDep) -> CorpusPublic:
    return CorpusPublic.model_validate(corpora.get(corpus_id, owner))


@router.delete("/{corpus_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_corpus(corpus_id: str, corpora: CorporaDep, jobs: JobsDep, owner: OwnerDep) -> None:
    """Delete a corpus, unless a queued or running job still needs it (409)."""
    corpora.get(corpus_id, owner)
    # POST /train creates its job under this lock, so no job can appear between this check and the deletion.
    with jobs.exclusive(corpus_lock(corpus_id)):
        users: list[Any] = [
            j
            for state in ("queued", "running")
            for j in jobs.list(state=state, limit=10_000)
            if j.corpus_id == corpus_id
        ]
        if users:
            # Only the caller's own job ids are named: a shared corpus must not reveal other keys' jobs.
            own = [j.job_id for j in users if owner is None or j.owner == owner]
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"corpus {corpus_id!r} is used by {len(users)} unfinished job(s)"
                + (": " + ", ".join(own) if own else ""),
            )
        corpora.delete(corpus_id, owner)
