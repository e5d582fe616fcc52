"""Models in the store: list, inspect, delete, export, import, evaluate."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.auth import Owner
from app.corpora import open_decompressed
from app.deps import ModelsDep, OwnerDep, ServicesDep
from app.modelstore import ModelNotFound
from app.schemas import EvaluationPublic, ModelPublic, ModelSummary, Name, error_responses
from app.services import Services
from app.uploads import Upload, multipart_schema, receive_upload, upload_label
from model import (
    Model,
    ModelFormatError,
    ParameterError,
    evaluate_analogies,
    evaluate_word_pairs,
    load_word2vec_format,
    save_model,
    save_word2vec_format,
)
from model.corpus import DECOMPRESS_ERRORS
from model.formats import UnicodeErrors
from worker.celery_app import SEND_RETRY_POLICY, TASK_INDEX
from worker.jobs import utcnow
from worker.storage import new_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/models", tags=["models"], responses=error_responses(400, 401, 404, 413, 422, 429))

_FILE_BODY = {
    "requestBody": {
        "description": "The file as the raw body or as the multipart field `file`.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "text/plain": {"schema": {"type": "string"}},
            "multipart/form-data": multipart_schema("A label as ?name= (import)."),
        },
    }
}


def _summary_fields(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_id": meta["model_id"],
        "name": meta.get("name"),
        "created_at": meta["created_at"],
        "source": meta.get("source") or ("imported" if meta.get("imported_from") else "trained"),
        "vocab_size": meta["vocab_size"],
        "vector_size": meta["vector_size"],
        "job_id": meta.get("job_id"),
        "corpus_id": meta.get("corpus_id"),
    }


@router.get("")
def list_models(models: ModelsDep, owner: OwnerDep) -> list[ModelSummary]:
    """All models, newest first; the first one answers queries that name no model."""
    out = []
    for model_id in models.ids(owner):
        with contextlib.suppress(ModelNotFound, ModelFormatError):
            out.append(ModelSummary.model_validate(_summary_fields(models.meta(model_id))))
    return out


@router.get("/{model_id}")
def get_model(model_id: str, models: ModelsDep, owner: OwnerDep) -> ModelPublic:
    """Hyperparameters, corpus statistics, vocabulary size, training time and speed, evaluations."""
    meta = models.check(model_id, owner)
    evaluations = list(models.evaluations(model_id))
    if isinstance(meta.get("evaluation"), dict):
        evaluations.insert(0, {"kind": "at_training", "result": meta["evaluation"]})
    return ModelPublic.model_validate(
        {
            **_summary_fields(meta),
            "config": meta.get("config"),
            "corpus": meta.get("corpus"),
            "training": meta.get("training"),
            "version": meta.get("version"),
            "evaluations": evaluations,
            "neighbours": meta.get("neighbours"),
            "subwords": meta.get("subwords"),
        }
    )


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(model_id: str, models: ModelsDep, owner: OwnerDep) -> None:
    models.delete(model_id, owner)


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}, "text/plain": {}}}},
)
def export_model(
    model_id: str,
    services: ServicesDep,
    owner: OwnerDep,
    format: Annotated[Literal["word2vec-text", "word2vec-binary"], Query()] = "word2vec-binary",
) -> FileResponse:
    """The model in the original word2vec format, readable by gensim's `load_word2vec_format`."""
    services.models.check(model_id, owner)
    loaded = services.models.get(model_id, owner)
    binary = format == "word2vec-binary"
    out = services.layout.tmp / f"export-{new_id()}.{'bin' if binary else 'txt'}"
    try:
        save_word2vec_format(loaded.model.vectors, out, binary=binary)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return FileResponse(
        out,
        media_type="application/octet-stream" if binary else "text/plain; charset=utf-8",
        filename=f"{model_id}.{'bin' if binary else 'txt'}",
        background=BackgroundTask(out.unlink, missing_ok=True),
    )


# The library's advice names its own keywords; through the API they are query parameters.
_API_HINTS = {
    "pass binary=False/True to force a format": "pass format=word2vec-text or format=word2vec-binary to force a format",
    "pass unicode_errors='replace' or 'ignore'": "pass unicode_errors=replace or unicode_errors=ignore",
}


def _import(
    services: Services,
    upload: Upload,
    binary: bool | None,
    name: str | None,
    owner: Owner,
    limit: int | None = None,
    unicode_errors: UnicodeErrors = "strict",
) -> dict[str, Any]:
    try:
        vectors = load_word2vec_format(upload.path, binary=binary, limit=limit, unicode_errors=unicode_errors)
    except ModelFormatError as exc:
        message = str(exc)
        for library, api in _API_HINTS.items():
            message = message.replace(library, api)
        if message == str(exc):
            raise
        raise ModelFormatError(message) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFormatError(f"not a word2vec file: {exc}") from exc
    finally:
        upload.discard()
    if len(vectors.words) == 0:
        # It would become the newest model, the one every query without ?model= asks, and answer nothing.
        raise ModelFormatError("the file holds no vectors (its header declares 0 words); import one with at least one")
    model_id = new_id()
    meta = {
        "model_id": model_id,
        "name": name,
        "created_at": utcnow(),
        "source": "imported",
        "imported_from": upload.filename,
        "owner": owner,
    }
    save_model(services.layout.model_dir(model_id), Model(vectors, meta))
    try:
        # A worker builds its neighbour table (worker/indexing.py); until then its queries search.
        services.celery.send_task(TASK_INDEX, args=[model_id], queue="cpu", retry=True, retry_policy=SEND_RETRY_POLICY)
    except Exception:
        log.warning("model %s imported, but no worker could be asked for its neighbour table", model_id, exc_info=True)
    return services.models.meta(model_id)


@router.post("/import", status_code=status.HTTP_201_CREATED, openapi_extra=_FILE_BODY, responses=error_responses(415))
async def import_model(
    request: Request,
    response: Response,
    services: ServicesDep,
    owner: OwnerDep,
    format: Annotated[Literal["auto", "word2vec-text", "word2vec-binary"], Query()] = "auto",
    name: Annotated[Name | None, Query()] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, description="Read only the first `limit` vectors (the most frequent words) and ignore the rest."),
    ] = None,
    unicode_errors: Annotated[
        UnicodeErrors,
        Query(
            description="How to read words that are not valid UTF-8 (such as those word2vec.c cut inside a "
            "character): refuse the file, replace the bad bytes with U+FFFD, or drop them. A word that "
            "decoding makes equal to an earlier one is dropped."
        ),
    ] = "strict",
) -> ModelSummary:
    """Add a model from a word2vec text or binary file, or GloVe's text without a header line
    (optionally gzip/bz2/xz compressed)."""
    upload = await receive_upload(request, services.layout.tmp, services.settings.max_upload_bytes, kind="vectors")
    binary = {"auto": None, "word2vec-text": False, "word2vec-binary": True}[format]
    label = upload_label(name, upload)
    meta = await run_in_threadpool(_import, services, upload, binary, label, owner, limit, unicode_errors)
    response.headers["Location"] = str(request.url_for("get_model", model_id=meta["model_id"]))
    return ModelSummary.model_validate(_summary_fields(meta))


def _sniff_kind(path: Path) -> Literal["analogies", "word_pairs"]:
    """Analogy files have ': section' lines and four words per line; pair files three fields,
    tab- or comma-separated (where a term may hold a space: "new york<TAB>city<TAB>5"), or
    space-separated.

    Read decompressed, as the evaluation itself reads the file (plain, gzip, bzip2 or xz).
    """
    for raw in _head(path).splitlines():
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            return "analogies"
        for delimiter in ("\t", ","):
            if delimiter in line:
                return "analogies" if len(line.split(delimiter)) == 4 else "word_pairs"
        return "analogies" if len(line.split()) == 4 else "word_pairs"
    raise ModelFormatError("the evaluation file is empty (or its first 64 KiB hold only comments)")


def _head(path: Path, size: int = 64 * 1024) -> bytes:
    """The first `size` decompressed bytes; damaged compressed data is a 422, not a 500."""
    try:
        with open_decompressed(path) as fh:
            return fh.read(size)
    except DECOMPRESS_ERRORS as exc:
        raise ModelFormatError(f"the uploaded file does not decompress: {exc}") from exc


def _evaluate(
    services: Services,
    model_id: str,
    upload: Upload,
    kind: str,
    restrict_vocab: int,
    case_insensitive: bool,
    method: Literal["add", "mul"],
    owner: Owner,
) -> dict[str, Any]:
    try:
        loaded = services.models.get(model_id, owner)
        if kind == "auto":
            kind = _sniff_kind(upload.path)
        if kind == "analogies":
            result = evaluate_analogies(
                loaded.model.vectors,
                upload.path,
                restrict_vocab=restrict_vocab,
                case_insensitive=case_insensitive,
                method=method,
            ).to_dict()
        else:
            try:
                result = evaluate_word_pairs(
                    loaded.model.vectors,
                    upload.path,
                    delimiter=None,  # the file's own: tab, comma or spaces
                    restrict_vocab=restrict_vocab,
                    case_insensitive=case_insensitive,
                ).to_dict()
            except ParameterError as exc:
                vocab_size = len(loaded.model.vectors.words)
                if restrict_vocab >= vocab_size:
                    raise  # the whole vocabulary was searched: the file is what falls short
                detail = str(exc).removeprefix(f"{upload.path}: ")
                raise ParameterError(
                    f"restrict_vocab must be larger: {detail} (the model has {vocab_size} words)"
                ) from exc
    finally:
        upload.discard()
    entry = {"kind": kind, "filename": upload.filename, "created_at": utcnow(), "result": result}
    services.models.add_evaluation(model_id, entry)
    return {"model_id": model_id, **entry}


@router.post("/{model_id}/evaluate", openapi_extra=_FILE_BODY, responses=error_responses(415))
async def evaluate_model(
    model_id: str,
    request: Request,
    services: ServicesDep,
    owner: OwnerDep,
    kind: Annotated[
        Literal["auto", "analogies", "word_pairs"],
        Query(description="'analogies' (questions-words.txt style) or 'word_pairs' (word1, word2, score)."),
    ] = "auto",
    restrict_vocab: Annotated[int, Query(ge=1)] = 300_000,
    case_insensitive: bool = True,
    method: Annotated[Literal["add", "mul"], Query(description="Analogy scoring: 3CosAdd or 3CosMul.")] = "add",
) -> EvaluationPublic:
    """Score the model on an uploaded analogy or word-pair file; the result is kept with the model."""
    services.models.check(model_id, owner)
    upload = await receive_upload(
        request, services.layout.tmp, services.settings.max_upload_bytes, kind="evaluation"
    )
    result = await run_in_threadpool(
        _evaluate, services, model_id, upload, kind, restrict_vocab, case_insensitive, method, owner
    )
    return EvaluationPublic.model_validate(result)
