"""Training jobs: submit (idempotent), watch, list, cancel, stream progress."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.auth import Owner, visible
from app.corpora import CorpusNotFound, corpus_lock
from app.deps import JobsDep, OwnerDep, ServicesDep
from app.errors import JobNotFound
from app.schemas import JobPublic, JobState, TrainAccepted, TrainCreate, error_responses
from model import TrainConfig
from worker.celery_app import SEND_RETRY_POLICY, TASK_TRAIN, queue_for_device
from worker.jobs import ACTIVE, TERMINAL, JobRecord, JobStore, utcnow
from worker.runner import initial_progress
from worker.storage import new_id

log = logging.getLogger(__name__)

router = APIRouter(tags=["training"], responses=error_responses(400, 401, 404, 409, 413, 422, 429, 503))

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a request with the same key to get the same job back instead of a second one.",
    ),
]

SSE_POLL_S = 0.5
SSE_KEEPALIVE_S = 15.0


def job_public(rec: JobRecord, *, stalled: bool = False) -> JobPublic:
    progress = {**initial_progress(int(rec.config.get("epochs", 0))), **(rec.progress or {})}
    fields = {name: getattr(rec, name) for name in JobPublic.model_fields if name not in ("progress", "stalled")}
    return JobPublic.model_validate({**fields, "progress": progress, "stalled": stalled})


def job_view(jobs: JobStore, rec: JobRecord) -> JobPublic:
    """The job as clients see it, with `stalled` set when its running worker has gone quiet.

    A worker holds the job's lease from before it marks the job running until after it marks
    it finished, so a running job without a lease has lost its worker. The record is read
    again once the lease is found missing: a run that finished in between is not stalled.
    """
    if rec.state != "running" or jobs.lease_holder(rec.job_id) is not None:
        return job_public(rec)
    fresh = jobs.get(rec.job_id) or rec
    return job_public(fresh, stalled=fresh.state == "running")


def _accepted(request: Request, rec: JobRecord) -> TrainAccepted:
    return TrainAccepted(
        job_id=rec.job_id,
        status_url=str(request.url_for("get_job", job_id=rec.job_id)),
        events_url=str(request.url_for("job_events", job_id=rec.job_id)),
        state=rec.state,  # type: ignore[arg-type]
    )


def _idempotency_scope(key: str | None, owner: Owner) -> str | None:
    """Keys are per API key: two clients choosing the same Idempotency-Key must not meet."""
    if key is None or owner is None:
        return key
    return f"{owner}:{key}"


def _active_jobs(jobs: JobStore, owner: str) -> int:
    return sum(1 for r in jobs.list(limit=1_000_000) if r.owner == owner and r.state in ACTIVE)


def _too_many_jobs(cap: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=f"this API key already has {cap} queued or running job(s), the most allowed; "
        "wait for one to finish or cancel one",
        headers={"Retry-After": "30"},
    )


def _replay(
    request: Request, response: Response, services: Any, bound: tuple[str, str], fingerprint: str
) -> TrainAccepted:
    job_id, bound_fingerprint = bound
    if bound_fingerprint != fingerprint:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="this Idempotency-Key was already used with a different request body; use a new key",
        )
    rec = services.jobs.get(job_id)
    if rec is None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="the job for this Idempotency-Key no longer exists")
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = str(request.url_for("get_job", job_id=job_id))
    return _accepted(request, rec)


@router.post("/train", status_code=status.HTTP_202_ACCEPTED)
def submit_training(
    body: TrainCreate,
    request: Request,
    response: Response,
    services: ServicesDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKey = None,
) -> TrainAccepted:
    """Queue a training job on an uploaded corpus (`corpus_id`) or an inline one (`text`)."""
    settings, jobs, corpora = services.settings, services.jobs, services.corpora
    config = body.train_config()
    TrainConfig.from_dict({**config, "device": body.device}).validate()
    fingerprint = hashlib.sha256(
        json.dumps(body.model_dump(mode="json", exclude=body.unused_fields()), sort_keys=True).encode()
    ).hexdigest()
    idempotency_key = _idempotency_scope(idempotency_key, owner)
    if idempotency_key is not None and (bound := jobs.lookup_idempotency_key(idempotency_key)) is not None:
        return _replay(request, response, services, bound, fingerprint)
    cap = settings.max_active_jobs_per_key if owner is not None else 0
    if cap and _active_jobs(jobs, owner) >= cap:  # type: ignore[arg-type]
        raise _too_many_jobs(cap)  # early, before an inline corpus is written

    if body.text is not None:
        size = len(body.text.encode("utf-8"))
        if size > settings.max_inline_text_bytes:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"inline 'text' is {size} bytes, over the limit of {settings.max_inline_text_bytes}; "
                "upload it with POST /corpora and pass its corpus_id instead",
            )
        corpus = corpora.ingest_text(body.text, name=body.name, owner=owner)
    else:
        assert body.corpus_id is not None
        corpus = corpora.get(body.corpus_id, owner)

    def discard_inline_corpus() -> None:
        if body.text is not None:
            corpora.delete(corpus["id"])

    rec = JobRecord(
        job_id=new_id(),
        state="queued",
        corpus_id=corpus["id"],
        corpus_file=corpus["file"],
        config=config,
        device=body.device,
        queue=queue_for_device(body.device),
        target_model_id=new_id(),
        created_at=utcnow(),
        name=body.name,
        progress=initial_progress(body.epochs),
        idempotency_key=idempotency_key,
        owner=owner,
    )
    try:
        # Counting and creating under one lock (shared by every API replica), so concurrent
        # submissions of one key cannot all see a free slot. An uploaded corpus is locked first
        # (DELETE /corpora/{id} looks for its unfinished jobs under the same lock), so it cannot
        # be deleted between the check that it exists and the job that needs it.
        with (
            jobs.exclusive(corpus_lock(corpus["id"])) if body.text is None else contextlib.nullcontext(),
            jobs.exclusive(f"admission:{owner}") if cap else contextlib.nullcontext(),
        ):
            if body.text is None:
                corpora.get(corpus["id"], owner)
            if cap and _active_jobs(jobs, owner) >= cap:  # type: ignore[arg-type]
                raise _too_many_jobs(cap)
            jobs.create(rec)
    except BaseException:
        discard_inline_corpus()
        raise
    if idempotency_key is not None:
        bound = jobs.reserve_idempotency_key(idempotency_key, rec.job_id, fingerprint)
        if bound is not None:  # a concurrent request with the same key got there first
            jobs.delete(rec.job_id)
            discard_inline_corpus()
            return _replay(request, response, services, bound, fingerprint)
    try:
        services.celery.send_task(
            TASK_TRAIN,
            args=[rec.job_id],
            queue=rec.queue,
            retry=True,
            retry_policy=SEND_RETRY_POLICY,
        )
    except Exception as exc:
        log.exception("cannot enqueue job %s", rec.job_id)
        jobs.delete(rec.job_id)
        if idempotency_key is not None:
            jobs.release_idempotency_key(idempotency_key, rec.job_id)
        discard_inline_corpus()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"cannot queue the job, the broker is unreachable: {exc}",
        ) from exc
    response.headers["Location"] = str(request.url_for("get_job", job_id=rec.job_id))
    return _accepted(request, rec)


@router.get("/jobs")
def list_jobs(
    jobs: JobsDep,
    owner: OwnerDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobPublic]:
    """Jobs, newest first."""
    if owner is None:
        return [job_view(jobs, rec) for rec in jobs.list(state=state, limit=limit)]
    mine = [rec for rec in jobs.list(state=state, limit=1_000_000) if visible(rec.owner, owner)]
    return [job_view(jobs, rec) for rec in mine[:limit]]


def _job(jobs: Any, job_id: str, owner: Owner = None) -> JobRecord:
    rec: JobRecord | None = jobs.get(job_id)
    if rec is None or not visible(rec.owner, owner):
        raise JobNotFound(job_id)
    return rec


@router.get("/jobs/{job_id}")
def get_job(job_id: str, jobs: JobsDep, owner: OwnerDep) -> JobPublic:
    return job_view(jobs, _job(jobs, job_id, owner))


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: str, jobs: JobsDep, services: ServicesDep, owner: OwnerDep) -> None:
    """Forget a finished job: its record, its Idempotency-Key and the corpus it was given inline
    as `text` (an uploaded corpus stays). The model it trained stays (`DELETE /models/{id}`
    removes that). A queued or running job must be cancelled first (409)."""
    rec = _job(jobs, job_id, owner)
    if rec.state not in TERMINAL:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job_id!r} is {rec.state}; cancel it first (POST /jobs/{job_id}/cancel), then delete it",
        )
    if rec.idempotency_key is not None:
        jobs.release_idempotency_key(rec.idempotency_key, job_id)
    jobs.delete(job_id)
    with contextlib.suppress(CorpusNotFound):
        corpus = services.corpora.get(rec.corpus_id)
        if corpus.get("inline"):
            # It is listed in /corpora like an upload, so another job may have been given its
            # id: kept while any job names it, checked under the lock POST /train takes.
            with jobs.exclusive(corpus_lock(rec.corpus_id)):
                if not any(j.corpus_id == rec.corpus_id for j in jobs.list(limit=10_000)):
                    services.corpora.delete(rec.corpus_id)


@router.post("/jobs/{job_id}/cancel", responses={202: {"model": JobPublic}})
def cancel_job(job_id: str, jobs: JobsDep, services: ServicesDep, response: Response, owner: OwnerDep) -> JobPublic:
    """Cancel a queued job at once, or ask a running one to stop after its current batch (202)."""
    rec = _job(jobs, job_id, owner)
    if rec.state == "queued":
        done = jobs.transition(job_id, {"queued"}, state="cancelled", cancel_requested=True, finished_at=utcnow())
        if done is not None:
            shutil.rmtree(services.layout.checkpoint_dir(job_id), ignore_errors=True)
            return job_public(done)
    flagged = jobs.transition(job_id, {"running"}, cancel_requested=True)
    if flagged is not None:
        response.status_code = status.HTTP_202_ACCEPTED
        return job_view(jobs, flagged)
    rec = _job(jobs, job_id, owner)
    if rec.state == "cancelled":
        return job_public(rec)
    if rec.state in TERMINAL:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id!r} already {rec.state}; nothing to cancel")
    # It moved from queued to running between our two steps; the flag is now the way to stop it.
    flagged = jobs.transition(job_id, {"running", "queued"}, cancel_requested=True)
    response.status_code = status.HTTP_202_ACCEPTED
    return job_public(flagged or rec)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def job_events(job_id: str, jobs: JobsDep, owner: OwnerDep) -> StreamingResponse:
    """Server-Sent Events: the job (as in GET /jobs/{job_id}) on every change, then `event: end`."""
    await run_in_threadpool(_job, jobs, job_id, owner)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        last, last_sent, seq = "", time.monotonic(), 0
        while True:
            rec = await run_in_threadpool(jobs.get, job_id)
            if rec is None:
                yield f"event: error\ndata: {json.dumps({'detail': f'job {job_id!r} not found'})}\n\n"
                return
            payload = (await run_in_threadpool(job_view, jobs, rec)).model_dump_json()
            if rec.state in TERMINAL:
                seq += 1
                yield f"id: {seq}\nevent: end\ndata: {payload}\n\n"
                return
            if payload != last:
                seq += 1
                yield f"id: {seq}\ndata: {payload}\n\n"
                last, last_sent = payload, time.monotonic()
            elif time.monotonic() - last_sent > SSE_KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await anyio.sleep(SSE_POLL_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
