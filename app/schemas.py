"""Request (`*Create`) and response (`*Public`) bodies.

Every number a request can carry is bounded here, so the worst job the API accepts still
fits a worker's memory and time, and a bad value is a 422 naming the field before anything
is queued. Defaults are the trainer's own.
"""

from __future__ import annotations

from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, WithJsonSchema, model_validator

from model import TrainConfig
from model.config import SUBWORD_FIELDS
from worker.storage import ID_PATTERN

# Always to the millisecond, as the job store writes them: pydantic's own form drops the
# fraction when it is zero, and a client parsing one fixed format then fails now and then.
Timestamp = Annotated[
    datetime,
    PlainSerializer(lambda t: t.isoformat(timespec="milliseconds"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

_D = TrainConfig()

# A reference to a server-issued id (32 hex digits). Anything else is simply not found (404),
# the same answer as for an id in a path, rather than a 422 that would tell ids and junk apart.
Id = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
ID_HINT = f"(server-issued, {ID_PATTERN})"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Word = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Device = Literal["cpu", "cuda", "auto"]
Engine = Literal["auto", "hogwild", "minibatch"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]

StrictInt = Annotated[int, Field(strict=True)]
# A JSON number (an integer too), never a string: "0.1" is refused as "100" is for an integer.
StrictFloat = Annotated[float, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]


def _takes_int(annotation: Any) -> bool:
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return any(o is int or (get_origin(o) is Annotated and get_args(o)[0] is int) for o in options)


class JsonBody(BaseModel):
    """A request body whose integer fields take what JSON Schema calls an integer.

    The OpenAPI schema says "integer", and JSON Schema counts 1.0 as one; strict parsing
    (which keeps refusing "100" and true) would call it a float. Converted here, before field
    validation, so the published schema keeps its plain minimum/maximum bounds.

    Python's JSON parser reads `NaN`, `Infinity` and `1e400` as floats that JSON itself cannot
    carry; a float field refuses them as not finite, naming the field.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        ints = {name for name, f in cls.model_fields.items() if _takes_int(f.annotation)}
        return {k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v for k, v in data.items()}


class TrainCreate(JsonBody):
    model_config = ConfigDict(extra="forbid")

    corpus_id: Id | None = Field(None, description=f"A corpus uploaded with POST /corpora {ID_HINT}.")
    text: str | None = Field(
        None, min_length=1, description="A small corpus inline instead of corpus_id: one sentence per line."
    )
    name: Name | None = Field(None, description="A label for the job and its model.")
    vector_size: StrictInt = Field(_D.vector_size, ge=1, le=1000, description="Dimensions of the word vectors.")
    window: StrictInt = Field(_D.window, ge=1, le=50, description="Largest distance between a word and its context.")
    negative: StrictInt = Field(_D.negative, ge=1, le=50, description="Negative samples per word.")
    ns_exponent: StrictFloat = Field(
        _D.ns_exponent, ge=-2, le=2, description="Exponent of the negative-sampling distribution."
    )
    min_count: StrictInt = Field(_D.min_count, ge=1, le=1_000_000, description="Ignore rarer words.")
    max_vocab: StrictInt | None = Field(
        _D.max_vocab, ge=2, le=10_000_000, description="Keep at most this many most frequent words."
    )
    sample: StrictFloat = Field(_D.sample, ge=0, le=1, description="Down-sampling threshold for frequent words.")
    epochs: StrictInt = Field(_D.epochs, ge=1, le=100)
    alpha: StrictFloat = Field(_D.alpha, gt=0, le=1, description="Initial learning rate.")
    min_alpha: StrictFloat = Field(_D.min_alpha, ge=0, le=1, description="Final learning rate (linear decay).")
    seed: StrictInt = Field(_D.seed, ge=0, lt=2**32)
    lowercase: StrictBool = Field(
        _D.lowercase,
        description="Lower-case the corpus before training; the model then lower-cases the words it is asked.",
    )
    device: Device = Field(
        "auto",
        description="Where to train. 'auto' (default): on the GPU of a worker that has one (`w2v worker --device "
        "cuda`, or `auto` with CuPy and a GPU), else on the CPU; 'cuda' waits for a GPU worker; 'cpu' never uses one.",
    )
    engine: Engine = Field(cast(Engine, _D.engine))
    max_n: StrictInt = Field(
        _D.max_n,
        ge=0,
        le=20,
        description="Subwords, as fastText: each word's vector also learns from its character n-grams of min_n "
        "to max_n characters, which helps rare words and inflections, and gives misspelt and unseen words a "
        "vector from the n-grams they share (queries take them like any word). 0 (default): none, plain "
        "word2vec. fastText's choice is 6, with min_n 3; training then takes several times longer.",
    )
    min_n: StrictInt = Field(_D.min_n, ge=1, le=20, description="Shortest character n-gram, with max_n > 0.")
    buckets: StrictInt = Field(
        _D.buckets,
        ge=1,
        le=10_000_000,
        description="Hash buckets the n-grams share, as fastText's; only those in use take memory and disk.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainCreate:
        if (self.corpus_id is None) == (self.text is None):
            raise ValueError("give exactly one of 'corpus_id' (an uploaded corpus) or 'text' (an inline corpus)")
        if self.max_n and self.max_n < self.min_n:
            raise ValueError(f"max_n ({self.max_n}) must be 0 (no subwords) or at least min_n ({self.min_n})")
        if self.min_alpha > self.alpha:
            raise ValueError(f"min_alpha ({self.min_alpha}) must not exceed alpha ({self.alpha})")
        return self

    def unused_fields(self) -> set[str]:
        """Subword settings of a request without subwords: left out of what is stored and
        compared, so a plain job reads as it did before they existed (to a worker of that
        release during a rolling deploy, and to an idempotent retry)."""
        return set() if self.max_n else set(SUBWORD_FIELDS)

    def train_config(self) -> dict[str, Any]:
        """The TrainConfig fields of this request (device is decided by the worker)."""
        return self.model_dump(exclude={"corpus_id", "text", "name", "device", *self.unused_fields()})


class TrainAccepted(BaseModel):
    job_id: str
    status_url: str
    events_url: str
    state: JobState


class ProgressPublic(BaseModel):
    epoch: int = 0
    epochs: int | None = None
    words_done: int = 0
    words_total: int | None = None
    words_per_sec: float | None = None
    loss: float | None = None
    eta_s: float | None = None
    alpha: float | None = None
    elapsed_s: float | None = None
    phase: Literal["training", "indexing"] | None = Field(
        None,
        description="While running: training, then indexing (building the model's neighbour table, "
        "`neighbour_words_done` of `neighbour_words_total` words).",
    )
    neighbour_words_done: int | None = None
    neighbour_words_total: int | None = None


class JobPublic(BaseModel):
    job_id: str
    state: JobState
    progress: ProgressPublic
    model_id: str | None
    error: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    name: str | None
    corpus_id: str
    device: Device
    config: dict[str, Any]
    attempts: int
    cancel_requested: bool
    stalled: bool = Field(
        False,
        description="Running, but its worker has stopped renewing the job's lease (killed, or frozen): a "
        "worker's sweep puts the job back on the queue within a lease lifetime plus a sweep interval, "
        "and it resumes from its last checkpoint.",
    )


class CorpusPublic(BaseModel):
    id: str
    bytes: int = Field(description="Size as stored (compressed if uploaded compressed).")
    lines: int
    text_bytes: int = Field(description="Size of the uncompressed text.")
    compression: Literal["none", "gzip", "bz2", "xz"]
    invalid_utf8_bytes: int | None = Field(
        None,
        description="Bytes of the text that are not valid UTF-8 (training reads each invalid sequence "
        "as U+FFFD, the replacement character); 0 for clean UTF-8. None: uploaded before this was counted.",
    )
    filename: str | None = None
    name: str | None = None
    created_at: Timestamp


class ModelSummary(BaseModel):
    model_id: str
    name: str | None = None
    created_at: Timestamp
    source: str | None = Field(None, description="'trained' or 'imported'.")
    vocab_size: int
    vector_size: int
    job_id: str | None = None
    corpus_id: str | None = None


class ModelPublic(ModelSummary):
    config: dict[str, Any] | None = Field(None, description="Hyperparameters it was trained with.")
    corpus: dict[str, Any] | None = Field(None, description="Statistics of the training corpus.")
    training: dict[str, Any] | None = Field(None, description="Training time, words/s, final loss, device.")
    evaluations: list[dict[str, Any]] = Field(default_factory=list)
    version: str | None = None
    neighbours: dict[str, int] | None = Field(
        None,
        description="The precomputed neighbour table (`words` most frequent words, `k` neighbours each): "
        "one-word /similar queries within it are lookups. None: every query searches.",
    )
    subwords: dict[str, int] | None = Field(
        None,
        description="For a model trained with subwords (`max_n` > 0): `min_n`, `max_n`, `buckets`, and the "
        "n-gram `rows` kept. Words outside the vocabulary then get a vector from their n-grams.",
    )


class SimilarHit(BaseModel):
    word: str
    score: float


class QueryResults(BaseModel):
    model_id: str
    results: list[SimilarHit]


class SimilarityPublic(BaseModel):
    model_id: str
    w1: str
    w2: str
    score: float


class VectorPublic(BaseModel):
    model_id: str
    word: str
    vector: list[float]


class DoesntMatchPublic(BaseModel):
    model_id: str
    word: str


class BatchQuery(BaseModel):
    # The published schema says what the validator below checks: a word on at least one side,
    # or a vector.
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "anyOf": [
                {"required": ["positive"], "properties": {"positive": {"minItems": 1}}},
                {"required": ["negative"], "properties": {"negative": {"minItems": 1}}},
                {"required": ["vector"], "properties": {"vector": {"type": "array"}}},
            ]
        },
    )

    positive: list[Word] = Field(default_factory=list, max_length=100)
    negative: list[Word] = Field(
        default_factory=list,
        max_length=100,
        description="Words to move away from. A query needs at least one word or a vector; 3CosMul, a positive "
        "word or a vector.",
    )
    vector: list[StrictFloat] | None = Field(
        None,
        min_length=1,
        description="A vector of the model's `vector_size` numbers, on the positive side: alone, the words "
        "nearest to it (gensim's `similar_by_vector`); no word is left out of its answers. Added as given, as "
        "gensim does, beside unit-length word vectors: normalise it to weigh it as one word.",
    )

    @model_validator(mode="after")
    def _some_term(self) -> BatchQuery:
        if not self.positive and not self.negative and self.vector is None:
            raise ValueError("a query needs at least one positive or negative word, or a vector")
        return self

    @property
    def has_positive(self) -> bool:
        return bool(self.positive) or self.vector is not None


class SimilarBatchCreate(JsonBody):
    # 3CosMul divides by the negative words' similarities: each of its queries needs a positive
    # word, which the endpoint checks and the published schema says.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"method": {"const": "mul"}}, "required": ["method"]},
            "then": {
                "properties": {
                    "queries": {
                        "items": {
                            "anyOf": [
                                {"type": "string"},
                                {
                                    "type": "object",
                                    "anyOf": [
                                        {"required": ["positive"], "properties": {"positive": {"minItems": 1}}},
                                        {"required": ["vector"], "properties": {"vector": {"type": "array"}}},
                                    ],
                                },
                            ]
                        }
                    }
                }
            },
        },
    )

    model: Id | None = Field(None, description=f"Model id {ID_HINT}; omitted: the newest model.")
    queries: list[Word | BatchQuery] = Field(
        min_length=1,
        max_length=1000,
        description="Words, or {'positive': [...], 'negative': [...], 'vector': [...]} objects (each part optional).",
    )
    topn: StrictInt = Field(10, ge=1, le=1000)
    restrict_vocab: StrictInt | None = Field(None, ge=1)
    method: Literal["add", "mul"] = "add"
    skip_unknown: StrictBool = Field(
        False,
        description="A query with words outside the vocabulary gets no results (its words listed in "
        "`unknown_words`) instead of failing the whole batch with a 404.",
    )


class SimilarBatchPublic(BaseModel):
    model_id: str
    results: list[list[SimilarHit]]
    unknown_words: list[list[str]] | None = Field(
        default=None,
        description="With `skip_unknown`: per query, its words outside the vocabulary (those with none, [])."
    )


class EvaluationPublic(BaseModel):
    model_id: str
    kind: Literal["analogies", "word_pairs"]
    filename: str | None
    created_at: Timestamp
    result: dict[str, Any]


class HealthPublic(BaseModel):
    status: str


class ReadinessPublic(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class ErrorPublic(BaseModel):
    """Every error body: `detail` says what went wrong (a list of field errors for 422s)."""

    detail: str | list[dict[str, Any]]
    unknown_words: list[str] | None = Field(None, description="With a 404 for words not in the vocabulary.")
    suggestions: dict[str, str] | None = Field(
        None, description="With such a 404: unknown words whose other casing is in the vocabulary, and that casing."
    )


_ERRORS = {
    400: "The body cannot be decoded (not UTF-8 JSON).",
    401: "No valid API key (only when API keys are configured).",
    404: "No such id (or it belongs to another API key), or words not in the vocabulary.",
    409: "The request conflicts with the resource's state.",
    413: "The body is over its size limit.",
    415: "The body's Content-Type does not fit: a file was expected, not JSON.",
    422: "A parameter or the body is invalid; `detail` names the field.",
    429: "Over this API key's rate limit or job cap; see Retry-After.",
    503: "The job store or broker is unreachable; try again shortly.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers an operation can give, all shaped as ErrorPublic."""
    return {code: {"model": ErrorPublic, "description": _ERRORS[code]} for code in codes}
