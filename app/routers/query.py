"""Queries against a model in memory: neighbours, analogies, similarity, vectors.

Neighbour searches go through the model's batcher, so concurrent requests share one matrix
product. The model is looked up without blocking when it is already loaded; a first use
loads it in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from app.auth import Owner
from app.batching import Hits
from app.deps import ModelsDep, OwnerDep
from app.modelstore import LoadedModel, ModelStore
from app.schemas import (
    ID_HINT,
    BatchQuery,
    DoesntMatchPublic,
    Id,
    QueryResults,
    SimilarBatchCreate,
    SimilarBatchPublic,
    SimilarHit,
    SimilarityPublic,
    VectorPublic,
    Word,
    error_responses,
)
from model import ParameterError, UnknownWordError

router = APIRouter(tags=["query"], responses=error_responses(400, 401, 404, 413, 422, 429))

ModelParam = Annotated[Id | None, Query(description=f"Model id {ID_HINT}; omitted: the newest model.")]
TopN = Annotated[int, Query(ge=1, le=1000, description="How many results.")]
RestrictVocab = Annotated[int | None, Query(ge=1, description="Search only the this many most frequent words.")]
WordList = Annotated[list[Word] | None, Query(max_length=100)]


async def loaded_model(store: ModelStore, model_id: str | None, owner: Owner) -> LoadedModel:
    hit = store.cached(model_id, owner)
    if hit is not None:
        return hit
    return await run_in_threadpool(store.get, model_id, owner)


@contextlib.contextmanager
def _answering(lm: LoadedModel, asked: Sequence[str]) -> Iterator[None]:
    """Unknown words are reported with the model that was asked (the newest one answers a
    query without `model`, and a small job's model knows few words) and in the caller's
    spelling of them (a model trained lower-cased is asked in lower case)."""
    try:
        yield
    except UnknownWordError as exc:
        raise UnknownWordError(_as_asked(lm, asked, exc.words), lm.model.vectors.key_to_index, lm.model_id) from None


def _as_asked(lm: LoadedModel, asked: Sequence[str], words: Sequence[str]) -> list[str]:
    """`words` (as the vocabulary is asked) in the spelling the caller sent them in."""
    spelled = dict(zip(lm.model.query_words(list(asked)), asked, strict=True))
    return [spelled.get(w, w) for w in words]


def _hits(hits: Hits) -> list[SimilarHit]:
    return [SimilarHit(word=w, score=s) for w, s in hits]


def _results_json(model_id: str, hits: Hits) -> Response:
    """The QueryResults body, serialised directly: on the hot path, re-validating a response
    the code just built costs more than the search's own Python work."""
    body = {"model_id": model_id, "results": [{"word": w, "score": float(s)} for w, s in hits]}
    return Response(json.dumps(body, allow_nan=False), media_type="application/json")


@router.get("/similar", response_model=QueryResults)
async def similar(
    models: ModelsDep,
    owner: OwnerDep,
    word: Annotated[Word | None, Query(description="The word whose neighbours you want.")] = None,
    positive: WordList = None,
    negative: WordList = None,
    topn: TopN = 10,
    restrict_vocab: RestrictVocab = None,
    model: ModelParam = None,
) -> Response:
    """Nearest words to `word` (plus any `positive`, minus any `negative` words), by cosine."""
    pos = ([word] if word is not None else []) + list(positive or [])
    neg = list(negative or [])
    if not pos and not neg:
        raise RequestValidationError(
            [
                {
                    "loc": ["query", "word"],
                    "msg": "give 'word', or at least one 'positive' or 'negative' word",
                    "type": "missing",
                }
            ]
        )
    lm = await loaded_model(models, model, owner)
    vectors = lm.model.vectors
    hits = None
    with _answering(lm, pos + neg):
        pos, neg = lm.model.query_words(pos), lm.model.query_words(neg)
        # Checked here, so that a query no search can answer fails alone, never the batch it
        # joins. One word is checked by the table lookup (known, with a direction), in microseconds.
        if len(pos) == 1 and not neg:
            hits = vectors.precomputed_neighbours(pos[0], topn, restrict_vocab)
        else:
            vectors.check_query(pos, neg)
    if hits is None:
        hits = await asyncio.wrap_future(lm.batcher.submit(pos, neg, topn=topn, restrict_vocab=restrict_vocab))
    return _results_json(lm.model_id, hits)


@router.get("/analogy", response_model=QueryResults)
async def analogy(
    models: ModelsDep,
    owner: OwnerDep,
    a: Word,
    b: Word,
    c: Word,
    method: Annotated[Literal["add", "mul"], Query(description="3CosAdd or 3CosMul.")] = "add",
    topn: TopN = 10,
    restrict_vocab: RestrictVocab = None,
    model: ModelParam = None,
) -> Response:
    """`a` is to `b` as `c` is to ...? (nearest to b - a + c)."""
    lm = await loaded_model(models, model, owner)
    with _answering(lm, [a, b, c]):
        a, b, c = lm.model.query_words([a, b, c])
        lm.model.vectors.check_query([b, c], [a], method)
    hits = await asyncio.wrap_future(
        lm.batcher.submit([b, c], [a], topn=topn, restrict_vocab=restrict_vocab, method=method)
    )
    return _results_json(lm.model_id, hits)


@router.get("/similarity")
async def similarity(
    models: ModelsDep, owner: OwnerDep, w1: Word, w2: Word, model: ModelParam = None
) -> SimilarityPublic:
    """Cosine similarity of two words."""
    lm = await loaded_model(models, model, owner)
    with _answering(lm, [w1, w2]):
        score = lm.model.vectors.similarity(*lm.model.query_words([w1, w2]))
    return SimilarityPublic(model_id=lm.model_id, w1=w1, w2=w2, score=score)


@router.get("/vector")
async def vector(
    models: ModelsDep,
    owner: OwnerDep,
    word: Word,
    norm: Annotated[bool, Query(description="Unit-normalised instead of raw.")] = False,
    model: ModelParam = None,
) -> VectorPublic:
    """The vector of one word."""
    lm = await loaded_model(models, model, owner)
    with _answering(lm, [word]):
        vec = lm.model.vectors.get_vector(lm.model.query_words([word])[0], norm=norm)
    return VectorPublic(model_id=lm.model_id, word=word, vector=vec.tolist())


@router.get("/doesnt_match")
async def doesnt_match(
    models: ModelsDep,
    owner: OwnerDep,
    words: Annotated[list[Word], Query(min_length=2, max_length=100)],
    model: ModelParam = None,
) -> DoesntMatchPublic:
    """The word that fits least with the others (unknown words are ignored unless all are)."""
    lm = await loaded_model(models, model, owner)
    folded = lm.model.query_words(words)
    with _answering(lm, words):
        odd = lm.model.vectors.doesnt_match(folded)
    # Answered in the caller's spelling of the word.
    return DoesntMatchPublic(model_id=lm.model_id, word=words[folded.index(odd)])


@router.post("/similar/batch", response_model_exclude_none=True)
async def similar_batch(body: SimilarBatchCreate, models: ModelsDep, owner: OwnerDep) -> SimilarBatchPublic:
    """Many neighbour queries in one request, answered with one matrix product.

    A query is a word, or words to add and subtract, or a vector (with words too, if wanted)."""
    if body.method == "mul":
        no_positive = [i for i, q in enumerate(body.queries) if isinstance(q, BatchQuery) and not q.has_positive]
        if no_positive:
            raise RequestValidationError(
                [
                    {
                        "loc": ["body", "queries", i, "positive"],
                        "msg": "3CosMul (method 'mul') needs at least one positive word or a vector",
                        "type": "missing",
                    }
                    for i in no_positive
                ]
            )
    lm = await loaded_model(models, body.model, owner)
    asked = [(q.positive, q.negative) if isinstance(q, BatchQuery) else ([q], []) for q in body.queries]
    sides = [(lm.model.query_words(pos), lm.model.query_words(neg)) for pos, neg in asked]
    raw = [np.asarray(q.vector) if isinstance(q, BatchQuery) and q.vector is not None else None for q in body.queries]
    queries: list[tuple[list[Any], list[Any]]] = [
        ([*pos, *([] if vec is None else [vec])], neg) for (pos, neg), vec in zip(sides, raw, strict=True)
    ]
    vectors = lm.model.vectors
    # Each query checked on its own, so that an error names the query it is about.
    unknown: list[list[str]] = []
    refused = []
    for i, ((pos, neg), (pos_words, neg_words), spelled) in enumerate(zip(queries, sides, asked, strict=True)):
        missing = [w for w in dict.fromkeys((*pos_words, *neg_words)) if not vectors.has_vector(w)]
        unknown.append(_as_asked(lm, [*spelled[0], *spelled[1]], missing))
        if not missing:
            try:
                vectors.check_query(pos, neg, body.method)
            except ParameterError as exc:
                refused.append({"loc": ["body", "queries", i], "msg": str(exc), "type": "value_error"})
    if any(unknown) and not body.skip_unknown:
        raise UnknownWordError([w for words in unknown for w in words], vectors.key_to_index, lm.model_id)
    if refused:
        raise RequestValidationError(refused)
    known = [q for q, missing in zip(queries, unknown, strict=True) if not missing]
    found = iter(
        await run_in_threadpool(vectors.most_similar_batch, known, body.topn, body.restrict_vocab, method=body.method)
        if known
        else []
    )
    return SimilarBatchPublic(
        model_id=lm.model_id,
        results=[[] if missing else _hits(next(found)) for missing in unknown],
        unknown_words=unknown if body.skip_unknown else None,
    )
