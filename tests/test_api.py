"""The HTTP contract, through FastAPI's TestClient with the app's lifespan running.

Models are written into a temporary store with `save_model`, exactly as a worker writes
them; jobs go to the embedded filesystem queue (no worker consumes them here).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.batching import QueryBatcher
from app.main import create_app
from app.modelstore import ModelNotFound
from app.settings import Settings
from model import Model, Vectors, load_model, save_model
from model.neighbours import build_neighbours
from worker.indexing import index_stored_model
from worker.jobs import FileJobStore
from worker.settings import WorkerSettings
from worker.storage import StoreLayout, new_id

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about its httpx-based client
    from fastapi.testclient import TestClient

MISSING_ID = "0" * 32


def make_vectors(seed: int = 0, n_random: int = 300, dim: int = 16) -> Vectors:
    """Random words plus a planted analogy: queen = king - man + woman (nearly)."""
    rng = np.random.default_rng(seed)
    base = {w: rng.standard_normal(dim).astype(np.float32) for w in ("king", "man", "woman", "apple")}
    base["queen"] = base["king"] - base["man"] + base["woman"] + 0.01 * rng.standard_normal(dim).astype(np.float32)
    words = ["king", "queen", "man", "woman", "apple"] + [f"w{i}" for i in range(n_random)]
    vecs = np.vstack([base[w] for w in words[:5]] + [rng.standard_normal((n_random, dim)).astype(np.float32)])
    counts = np.arange(len(words), 0, -1, dtype=np.int64) * 10  # most frequent first
    return Vectors(words, vecs.astype(np.float32), counts)


def put_model(layout: StoreLayout, vectors: Vectors, **meta: Any) -> str:
    model_id = new_id()
    meta = {"model_id": model_id, "created_at": "2025-01-01T00:00:00.000+00:00", "source": "trained", **meta}
    save_model(layout.model_dir(model_id), Model(vectors, meta))
    return model_id


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        store=tmp_path / "store",
        broker_url=None,
        max_upload_bytes=200_000,
        max_corpus_text_bytes=1_000_000,
        max_inline_text_bytes=2_000,
        max_request_bytes=16_384,
    )


@pytest.fixture
def model_id(layout: StoreLayout) -> str:
    return put_model(layout, make_vectors(), name="planted")


@pytest.fixture
def vectors(layout: StoreLayout, model_id: str) -> Vectors:
    return load_model(layout.model_dir(model_id)).vectors


def hits(results: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"word": w, "score": pytest.approx(s, abs=1e-6)} for w, s in results]


def error_fields(response: Any) -> set[str]:
    return {str(e["loc"][-1]) for e in response.json()["detail"]}


def corpus_upload(client: TestClient, data: bytes, **kw: Any) -> dict[str, Any]:
    r = client.post("/corpora", content=data, headers={"Content-Type": "application/octet-stream"}, **kw)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


# ------------------------------------------------------------------------------------ health


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"store": "ok", "broker": "ok"}}


def test_readiness_fails_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path, broker_url="redis://127.0.0.1:1/0", namespace="unreachable")
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "unavailable"
        assert r.json()["checks"]["broker"].startswith("unreachable")
        assert c.get("/healthz").status_code == 200


def test_job_store_outage_is_503_not_500(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path, broker_url="redis://127.0.0.1:1/0", namespace="unreachable")
    with TestClient(create_app(settings)) as c:
        corpus = corpus_upload(c, b"a b c\n")
        r = c.post("/train", json={"corpus_id": corpus["id"]})
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        assert c.get("/jobs").status_code == 503
        r = c.post("/train", json={"text": "a b c"})
        assert r.status_code == 503
        assert [x["id"] for x in c.get("/corpora").json()] == [corpus["id"]]  # no orphaned inline corpus


def test_openapi_lists_the_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/corpora",
        "/train",
        "/jobs/{job_id}",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/cancel",
        "/models",
        "/models/{model_id}/export",
        "/models/import",
        "/models/{model_id}/evaluate",
        "/similar",
        "/analogy",
        "/similarity",
        "/vector",
        "/similar/batch",
        "/healthz",
        "/readyz",
    ):
        assert path in paths


# ------------------------------------------------------------------------------------ corpora


def test_corpus_upload_raw_text_counts_lines(client: TestClient, layout: StoreLayout) -> None:
    r = client.post(
        "/corpora?name=tiny",
        content=b"the cat sat\non the mat\nno newline at end",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 201
    body = r.json()
    assert body["lines"] == 3 and body["bytes"] == 40 and body["compression"] == "none" and body["name"] == "tiny"
    assert r.headers["location"].endswith(f"/corpora/{body['id']}")
    assert (layout.corpora / f"{body['id']}.txt").read_bytes().startswith(b"the cat sat")


@pytest.mark.parametrize(("compress", "kind"), [(gzip.compress, "gzip"), (bz2.compress, "bz2")])
def test_corpus_upload_compressed(client: TestClient, compress: Any, kind: str) -> None:
    text = b"".join(b"line %d of the corpus\n" % i for i in range(500))
    body = corpus_upload(client, compress(text))
    assert body["compression"] == kind
    assert body["lines"] == 500
    assert body["text_bytes"] == len(text)
    assert body["bytes"] < len(text)


def test_corpus_upload_multipart(client: TestClient) -> None:
    r = client.post(
        "/corpora", files={"file": ("corpus.txt", b"a b c\nd e f\n", "text/plain")}, data={"name": "from-a-form"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["lines"], body["filename"], body["name"]) == (2, "corpus.txt", "from-a-form")


def test_corpus_list_get_delete(client: TestClient) -> None:
    first = corpus_upload(client, b"one\n")
    second = corpus_upload(client, b"two\nlines\n")
    listed = [c["id"] for c in client.get("/corpora").json()]
    assert set(listed) >= {first["id"], second["id"]}
    assert client.get(f"/corpora/{first['id']}").json()["lines"] == 1
    assert client.delete(f"/corpora/{first['id']}").status_code == 204
    r = client.get(f"/corpora/{first['id']}")
    assert r.status_code == 404
    assert first["id"] in r.json()["detail"]
    assert client.delete(f"/corpora/{first['id']}").status_code == 404
    assert [c["id"] for c in client.get("/corpora").json()] == [second["id"]]


@pytest.mark.parametrize("bad_id", [MISSING_ID, "not-an-id", "..%2F..%2Fetc"])
def test_unknown_corpus_is_404(client: TestClient, bad_id: str) -> None:
    assert client.get(f"/corpora/{bad_id}").status_code == 404
    assert client.delete(f"/corpora/{bad_id}").status_code == 404


def test_corpus_upload_errors(client: TestClient) -> None:
    r = client.post("/corpora", content=b"", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "empty" in r.json()["detail"][0]["msg"]
    r = client.post(
        "/corpora",
        content=b"\x1f\x8b\x08\x00garbage that is not deflate",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 422 and "gzip" in r.json()["detail"][0]["msg"]
    r = client.post("/corpora", files={"other": ("x.txt", b"a b\n")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"][0]["msg"]


def test_corpus_upload_over_the_cap_is_413(client: TestClient, layout: StoreLayout) -> None:
    big = b"word " * 50_000  # 250 kB, cap is 200 kB
    r = client.post("/corpora", content=big, headers={"Content-Type": "text/plain"})
    assert r.status_code == 413
    # Without Content-Length (chunked), the cap applies while streaming.
    r = client.post("/corpora", content=iter([big[:100_000], big[100_000:]]), headers={"Content-Type": "text/plain"})
    assert r.status_code == 413
    r = client.post("/corpora", files={"file": ("big.txt", big)})
    assert r.status_code == 413
    assert client.get("/corpora").json() == []
    assert list(layout.tmp.iterdir()) == []  # partial uploads are removed


def test_a_compressed_corpus_over_the_text_cap_is_413(client: TestClient, layout: StoreLayout) -> None:
    # 1.5 MB of text in about 2 kB: under the upload cap, over the cap on text (1 MB here).
    bomb = gzip.compress(b"word " * 300_000)
    assert len(bomb) < 200_000
    r = client.post("/corpora", content=bomb, headers={"Content-Type": "application/gzip"})
    assert r.status_code == 413 and "W2V_MAX_CORPUS_TEXT_BYTES" in r.json()["detail"]
    assert client.get("/corpora").json() == []
    assert list(layout.tmp.iterdir()) == [] and list(layout.corpora.iterdir()) == []
    r = client.post("/corpora", content=gzip.compress(b"word " * 150_000), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201 and r.json()["text_bytes"] == 750_000


def test_corpus_in_use_by_a_queued_job_cannot_be_deleted(client: TestClient) -> None:
    corpus = corpus_upload(client, b"a b c\n")
    job = client.post("/train", json={"corpus_id": corpus["id"]}).json()
    r = client.delete(f"/corpora/{corpus['id']}")
    assert r.status_code == 409 and job["job_id"] in r.json()["detail"]
    client.post(f"/jobs/{job['job_id']}/cancel")
    assert client.delete(f"/corpora/{corpus['id']}").status_code == 204


# ------------------------------------------------------------------------------------ training jobs


def queued_messages(layout: StoreLayout) -> list[tuple[str, list[Any], str]]:
    """(task name, args, queue) of each message waiting in the embedded filesystem queue."""
    out = []
    for path in sorted((layout.queue / "messages").glob("*.msg")):
        payload = json.loads(path.read_text())
        args = json.loads(base64.b64decode(payload["body"]))[0]
        out.append((payload["headers"]["task"], args, path.name.rsplit(".", 2)[-2]))
    return out


def test_train_queues_a_job(client: TestClient, layout: StoreLayout) -> None:
    corpus = corpus_upload(client, b"a b c d\n" * 10)
    r = client.post("/train", json={"corpus_id": corpus["id"], "epochs": 3, "vector_size": 20, "name": "first"})
    assert r.status_code == 202, r.text
    accepted = r.json()
    job_id = accepted["job_id"]
    assert accepted["state"] == "queued"
    assert accepted["status_url"] == f"http://testserver/jobs/{job_id}"
    assert accepted["events_url"] == f"http://testserver/jobs/{job_id}/events"
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["name"] == "first" and job["corpus_id"] == corpus["id"]
    assert job["progress"]["epoch"] == 0 and job["progress"]["epochs"] == 3
    assert job["config"]["vector_size"] == 20 and job["config"]["window"] == 5  # trainer defaults fill the rest
    assert job["model_id"] is None and job["error"] is None and job["started_at"] is None
    # Device auto: the queue every worker takes, GPU workers included, which train it on their GPU.
    assert job["device"] == "auto"
    assert queued_messages(layout) == [("w2v.train", [job_id], "cpu")]


def test_train_routes_cuda_jobs_to_the_gpu_queue(client: TestClient, layout: StoreLayout) -> None:
    corpus = corpus_upload(client, b"a b c d\n")
    job_id = client.post("/train", json={"corpus_id": corpus["id"], "device": "cuda"}).json()["job_id"]
    assert queued_messages(layout) == [("w2v.train", [job_id], "gpu")]


def test_train_inline_text_becomes_a_corpus(client: TestClient) -> None:
    r = client.post("/train", json={"text": "the quick brown fox\njumps over\n", "epochs": 1})
    assert r.status_code == 202
    job = client.get(f"/jobs/{r.json()['job_id']}").json()
    corpus = client.get(f"/corpora/{job['corpus_id']}").json()
    assert corpus["lines"] == 2


def test_train_unknown_corpus_is_404(client: TestClient) -> None:
    r = client.post("/train", json={"corpus_id": MISSING_ID})
    assert r.status_code == 404
    assert MISSING_ID in r.json()["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vector_size", 0),
        ("vector_size", 1001),
        ("window", 51),
        ("negative", 0),
        ("epochs", 101),
        ("min_count", 0),
        ("sample", 1.5),
        ("alpha", 0),
        ("alpha", 2),
        ("min_alpha", -1),
        ("max_vocab", 0),
        ("seed", -1),
        ("device", "tpu"),
        ("vector_size", "100"),
        ("vector_size", 1.5),
        ("name", ""),
    ],
)
def test_train_out_of_bounds_parameter_is_422_naming_it(client: TestClient, field: str, value: Any) -> None:
    r = client.post("/train", json={"corpus_id": MISSING_ID, field: value})
    assert r.status_code == 422
    assert field in error_fields(r)


def test_train_request_shape_errors(client: TestClient) -> None:
    r = client.post("/train", json={})
    assert r.status_code == 422 and "exactly one of 'corpus_id'" in r.json()["detail"][0]["msg"]
    r = client.post("/train", json={"corpus_id": MISSING_ID, "text": "a b"})
    assert r.status_code == 422
    r = client.post("/train", json={"corpus_id": MISSING_ID, "vectorsize": 5})
    assert r.status_code == 422 and "vectorsize" in error_fields(r)
    r = client.post("/train", json={"corpus_id": MISSING_ID, "alpha": 0.01, "min_alpha": 0.02})
    assert r.status_code == 422 and "min_alpha" in r.json()["detail"][0]["msg"]
    r = client.post("/train", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_train_size_limits_are_413(client: TestClient) -> None:
    r = client.post("/train", json={"text": "word " * 1000})  # 5 kB > 2 kB inline cap
    assert r.status_code == 413 and "POST /corpora" in r.json()["detail"]
    r = client.post("/train", json={"text": "word " * 10_000})  # 50 kB > 16 kB body cap
    assert r.status_code == 413
    assert client.get("/corpora").json() == []


def test_idempotency_key_returns_the_same_job(client: TestClient, layout: StoreLayout) -> None:
    body = {"text": "a b c\nd e f\n", "epochs": 2}
    first = client.post("/train", json=body, headers={"Idempotency-Key": "order-42"})
    again = client.post("/train", json=body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(client.get("/jobs").json()) == 1
    assert len(client.get("/corpora").json()) == 1
    assert len(queued_messages(layout)) == 1

    other = client.post("/train", json=body, headers={"Idempotency-Key": "order-43"})
    assert other.json()["job_id"] != first.json()["job_id"]
    no_key = client.post("/train", json=body)
    assert no_key.json()["job_id"] not in {first.json()["job_id"], other.json()["job_id"]}

    changed = client.post("/train", json={**body, "epochs": 3}, headers={"Idempotency-Key": "order-42"})
    assert changed.status_code == 409
    assert client.post("/train", json=body, headers={"Idempotency-Key": ""}).status_code == 422


def test_unknown_job_is_404(client: TestClient) -> None:
    for method, path in [
        ("GET", f"/jobs/{MISSING_ID}"),
        ("POST", f"/jobs/{MISSING_ID}/cancel"),
        ("DELETE", f"/jobs/{MISSING_ID}"),
        ("GET", f"/jobs/{MISSING_ID}/events"),
        ("GET", "/jobs/nonsense"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, path
        assert "not found" in r.json()["detail"]


def test_list_jobs_filters_by_state(client: TestClient) -> None:
    corpus = corpus_upload(client, b"a b\n")
    ids = [client.post("/train", json={"corpus_id": corpus["id"]}).json()["job_id"] for _ in range(3)]
    client.post(f"/jobs/{ids[0]}/cancel")
    assert [j["job_id"] for j in client.get("/jobs").json()] == ids[::-1]  # newest first
    assert [j["job_id"] for j in client.get("/jobs?state=queued").json()] == ids[:0:-1]
    assert [j["job_id"] for j in client.get("/jobs?state=cancelled").json()] == [ids[0]]
    assert len(client.get("/jobs?limit=1").json()) == 1
    r = client.get("/jobs?state=done")
    assert r.status_code == 422 and "state" in error_fields(r)


def test_a_running_job_whose_worker_stopped_renewing_its_lease_is_shown_stalled(
    client: TestClient, layout: StoreLayout
) -> None:
    corpus = corpus_upload(client, b"a b\n")
    job_id = client.post("/train", json={"corpus_id": corpus["id"]}).json()["job_id"]
    assert client.get(f"/jobs/{job_id}").json()["stalled"] is False  # queued: no worker expected yet

    jobs = FileJobStore(layout.jobs)
    assert jobs.acquire_lease(job_id, "w1", ttl_s=0.3)
    jobs.transition(job_id, {"queued"}, state="running", worker="w1")
    assert client.get(f"/jobs/{job_id}").json()["stalled"] is False
    time.sleep(0.4)  # the worker is gone: its lease lapses unrenewed
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "running" and job["stalled"] is True
    assert [j["stalled"] for j in client.get("/jobs").json()] == [True]

    jobs.transition(job_id, {"running"}, state="succeeded", model_id=MISSING_ID)
    assert client.get(f"/jobs/{job_id}").json()["stalled"] is False


def test_cancel_queued_running_and_finished_jobs(client: TestClient, layout: StoreLayout) -> None:
    corpus = corpus_upload(client, b"a b\n")
    job_ids = [client.post("/train", json={"corpus_id": corpus["id"]}).json()["job_id"] for _ in range(3)]
    queued, running, finished = job_ids

    r = client.post(f"/jobs/{queued}/cancel")
    assert r.status_code == 200
    assert r.json()["state"] == "cancelled" and r.json()["finished_at"] is not None
    assert client.post(f"/jobs/{queued}/cancel").json()["state"] == "cancelled"  # idempotent

    # What a worker does when it starts or finishes a job.
    jobs = FileJobStore(layout.jobs)
    jobs.transition(running, {"queued"}, state="running", started_at="2025-01-01T00:00:00+00:00")
    jobs.transition(finished, {"queued"}, state="succeeded", model_id=MISSING_ID)

    r = client.post(f"/jobs/{running}/cancel")
    assert r.status_code == 202
    assert r.json()["state"] == "running" and r.json()["cancel_requested"] is True
    assert jobs.cancel_requested(running)

    r = client.post(f"/jobs/{finished}/cancel")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]


def test_a_finished_job_can_be_deleted_and_its_idempotency_key_reused(
    client: TestClient, layout: StoreLayout
) -> None:
    corpus = corpus_upload(client, b"a b\n")
    body = {"corpus_id": corpus["id"]}
    running = client.post("/train", json=body).json()["job_id"]
    done = client.post("/train", json=body, headers={"Idempotency-Key": "nightly"}).json()["job_id"]
    jobs = FileJobStore(layout.jobs)
    jobs.transition(running, {"queued"}, state="running")
    jobs.transition(done, {"queued"}, state="succeeded", model_id=MISSING_ID)

    r = client.delete(f"/jobs/{running}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    assert client.delete(f"/jobs/{done}").status_code == 204
    assert client.get(f"/jobs/{done}").status_code == 404
    assert client.delete(f"/jobs/{done}").status_code == 404
    assert [j["job_id"] for j in client.get("/jobs").json()] == [running]
    again = client.post("/train", json=body, headers={"Idempotency-Key": "nightly"})
    assert again.status_code == 202 and again.json()["job_id"] != done
    assert client.get(f"/corpora/{corpus['id']}").status_code == 200  # an upload stays


def test_deleting_a_job_deletes_the_corpus_it_sent_inline(client: TestClient, layout: StoreLayout) -> None:
    jobs = FileJobStore(layout.jobs)
    first = client.post("/train", json={"text": "a b c\n"}).json()
    second = client.post("/train", json={"text": "d e f\n"}).json()
    inline = [jobs.get(j["job_id"]).corpus_id for j in (first, second)]  # type: ignore[union-attr]
    # Another job given the second inline corpus by id keeps it alive.
    reuse = client.post("/train", json={"corpus_id": inline[1]}).json()["job_id"]
    for job in (first["job_id"], second["job_id"], reuse):
        jobs.transition(job, {"queued"}, state="cancelled")
    assert client.delete(f"/jobs/{first['job_id']}").status_code == 204
    assert client.delete(f"/jobs/{second['job_id']}").status_code == 204
    assert client.get(f"/corpora/{inline[0]}").status_code == 404
    assert client.get(f"/corpora/{inline[1]}").status_code == 200
    assert client.delete(f"/jobs/{reuse}").status_code == 204
    assert client.get(f"/corpora/{inline[1]}").status_code == 404


def test_job_events_stream_ends_with_the_final_state(client: TestClient) -> None:
    corpus = corpus_upload(client, b"a b\n")
    job_id = client.post("/train", json={"corpus_id": corpus["id"]}).json()["job_id"]
    client.post(f"/jobs/{job_id}/cancel")
    with client.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[-1].splitlines()[1] == "event: end"
    final = json.loads(events[-1].splitlines()[2].removeprefix("data: "))
    assert final["job_id"] == job_id and final["state"] == "cancelled"


# ------------------------------------------------------------------------------------ models


def test_models_list_and_detail(client: TestClient, model_id: str) -> None:
    listed = client.get("/models").json()
    assert [m["model_id"] for m in listed] == [model_id]
    assert listed[0]["vocab_size"] == 305 and listed[0]["vector_size"] == 16 and listed[0]["name"] == "planted"
    detail = client.get(f"/models/{model_id}").json()
    assert detail["model_id"] == model_id and detail["vocab_size"] == 305 and detail["evaluations"] == []


def test_model_detail_shows_training_metadata(client: TestClient, layout: StoreLayout) -> None:
    meta = {
        "config": {"vector_size": 16, "window": 5},
        "corpus": {"raw_words": 1000, "lines": 10},
        "training": {"seconds": 1.5, "words_per_sec": 5000.0, "final_loss": 2.1, "device": "cpu"},
        "evaluation": {"analogies": {"accuracy": 0.5}},
        "version": "0.1.0",
    }
    model_id = put_model(layout, make_vectors(), **meta)
    detail = client.get(f"/models/{model_id}").json()
    assert detail["config"] == meta["config"] and detail["corpus"] == meta["corpus"]
    assert detail["training"] == meta["training"]
    assert detail["evaluations"][0]["result"] == meta["evaluation"]


@pytest.mark.parametrize("bad_id", [MISSING_ID, "nonsense"])
def test_unknown_model_is_404(client: TestClient, model_id: str, bad_id: str) -> None:
    for method, path in [
        ("GET", f"/models/{bad_id}"),
        ("DELETE", f"/models/{bad_id}"),
        ("GET", f"/models/{bad_id}/export"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, path
        assert bad_id in r.json()["detail"]
    r = client.post(f"/models/{bad_id}/evaluate", content=b"a b 1\n")
    assert r.status_code == 404


def test_delete_model(client: TestClient, layout: StoreLayout, model_id: str) -> None:
    client.get("/similar", params={"word": "king"})  # loaded and cached
    assert client.delete(f"/models/{model_id}").status_code == 204
    assert client.get(f"/models/{model_id}").status_code == 404
    assert client.get("/similar", params={"word": "king", "model": model_id}).status_code == 404
    r = client.get("/similar", params={"word": "king"})
    assert r.status_code == 404 and "no model" in r.json()["detail"]
    assert not layout.model_dir(model_id).exists()


@pytest.mark.parametrize("fmt", ["word2vec-text", "word2vec-binary"])
def test_export_is_readable_by_gensim(
    client: TestClient, vectors: Vectors, model_id: str, fmt: str, tmp_path: Path
) -> None:
    from gensim.models import KeyedVectors

    r = client.get(f"/models/{model_id}/export", params={"format": fmt})
    assert r.status_code == 200
    assert model_id in r.headers["content-disposition"]
    path = tmp_path / "exported"
    path.write_bytes(r.content)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec-binary")
    assert list(kv.index_to_key) == vectors.words
    np.testing.assert_allclose(kv.vectors, vectors.vectors, rtol=1e-6)
    assert client.get(f"/models/{model_id}/export", params={"format": "csv"}).status_code == 422


@pytest.mark.parametrize("binary", [False, True])
def test_import_then_query(client: TestClient, layout: StoreLayout, tmp_path: Path, binary: bool) -> None:
    from gensim.models import KeyedVectors

    source = make_vectors(seed=7)
    kv = KeyedVectors(vector_size=source.vector_size)
    kv.add_vectors(source.words, source.vectors)
    path = tmp_path / "vectors.w2v"
    kv.save_word2vec_format(str(path), binary=binary)
    r = client.post("/models/import?name=imported", files={"file": ("vectors.w2v", path.read_bytes())})
    assert r.status_code == 201, r.text
    summary = r.json()
    assert (summary["vocab_size"], summary["vector_size"]) == (305, 16)
    assert summary["source"] == "imported" and summary["name"] == "imported"
    model_id = summary["model_id"]
    got = client.get("/similar", params={"word": "king", "model": model_id, "topn": 5}).json()
    assert got["results"] == hits(source.most_similar("king", topn=5))
    # A worker is asked for its neighbour table, which turns one-word queries into lookups.
    assert queued_messages(layout) == [("w2v.index_model", [model_id], "cpu")]
    assert client.get(f"/models/{model_id}").json()["neighbours"] is None
    outcome = index_stored_model(WorkerSettings(store=layout.root, neighbour_topn=5), layout, model_id)
    assert outcome.startswith("indexed: 305 words x 5 neighbours"), outcome
    detail = client.get(f"/models/{model_id}").json()
    assert detail["neighbours"] == {"words": 305, "k": 5}
    assert (detail["name"], detail["source"]) == ("imported", "imported")
    assert client.get("/similar", params={"word": "king", "model": model_id, "topn": 5}).json() == got


def test_import_raw_body(client: TestClient) -> None:
    r = client.post("/models/import?format=word2vec-text", content=b"2 3\nfoo 1 0 0\nbar 0 1 0\n")
    assert r.status_code == 201
    model_id = r.json()["model_id"]
    assert client.get("/similarity", params={"w1": "foo", "w2": "bar", "model": model_id}).json()["score"] == 0


def test_import_malformed_file_is_422(client: TestClient, layout: StoreLayout) -> None:
    r = client.post("/models/import", content=b"this is not\na word2vec file\n")
    assert r.status_code == 422
    r = client.post("/models/import?format=word2vec-text", content=b"2 3\nfoo 1 0\n")
    assert r.status_code == 422
    # Diverged training writes NaN; such a model could only ever answer with NaN scores.
    r = client.post("/models/import?format=word2vec-text", content=b"2 3\nfoo 1 0 0\nbar nan 1 0\n")
    assert r.status_code == 422 and "'bar' holds NaN or infinity" in r.json()["detail"][0]["msg"]
    assert client.get("/models").json() == []
    assert queued_messages(layout) == []


def test_evaluate_analogies_and_pairs(client: TestClient, model_id: str, vectors: Vectors) -> None:
    analogies = b": planted\nman king woman queen\nman king woman apple\nman king woman unknownword\n"
    r = client.post(f"/models/{model_id}/evaluate", files={"file": ("questions.txt", analogies)})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["kind"] == "analogies"
    assert (result["result"]["correct"], result["result"]["total"], result["result"]["skipped"]) == (1, 2, 1)

    pairs = b"king\tqueen\t9.0\nman\twoman\t8.0\nking\tapple\t1.0\nqueen\tw1\t0.5\n"
    r = client.post(f"/models/{model_id}/evaluate?kind=word_pairs", content=pairs)
    assert r.status_code == 200
    assert r.json()["result"]["pairs"] == 4
    assert -1 <= r.json()["result"]["spearman"] <= 1

    # Told apart without `kind`: a term with a space in a tab-separated file, a CSV with a header.
    for variant in (b"new york\tcity\t5\n" + pairs, b"Word 1,Word 2,Human (mean)\n" + pairs.replace(b"\t", b",")):
        r = client.post(f"/models/{model_id}/evaluate", content=variant)
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == "word_pairs" and r.json()["result"]["pairs"] == 4
    # Four tab-separated words are a question, which needs its section line first.
    r = client.post(f"/models/{model_id}/evaluate", content=b"man\tking\twoman\tqueen\n")
    assert r.status_code == 422 and "': section' line" in r.json()["detail"][0]["msg"]

    detail = client.get(f"/models/{model_id}").json()
    assert [e["kind"] for e in detail["evaluations"]] == ["analogies", "word_pairs", "word_pairs", "word_pairs"]
    assert client.post(f"/models/{model_id}/evaluate?kind=poems", content=pairs).status_code == 422


def test_only_the_newest_evaluations_are_kept(
    client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.modelstore

    monkeypatch.setattr(app.modelstore, "MAX_EVALUATIONS", 3)
    pairs = b"king\tqueen\t9.0\nman\twoman\t8.0\nking\tapple\t1.0\n"
    for n in range(5):
        r = client.post(f"/models/{model_id}/evaluate", files={"file": (f"pairs{n}.tsv", pairs)})
        assert r.status_code == 200
    kept = client.get(f"/models/{model_id}").json()["evaluations"]
    assert [e["filename"] for e in kept if e["kind"] != "at_training"] == ["pairs2.tsv", "pairs3.tsv", "pairs4.tsv"]


# ------------------------------------------------------------------------------------ queries


def test_similar_matches_the_library(client: TestClient, vectors: Vectors, model_id: str) -> None:
    r = client.get("/similar", params={"word": "king", "topn": 7})
    assert r.status_code == 200
    assert r.json() == {"model_id": model_id, "results": hits(vectors.most_similar("king", topn=7))}
    r = client.get("/similar", params=[("positive", "king"), ("positive", "woman"), ("negative", "man")])
    assert r.json()["results"] == hits(vectors.most_similar(["king", "woman"], ["man"], topn=10))
    assert r.json()["results"][0]["word"] == "queen"
    r = client.get("/similar", params={"word": "w5", "restrict_vocab": 50, "model": model_id})
    assert r.json()["results"] == hits(vectors.most_similar("w5", topn=10, restrict_vocab=50))


def test_similar_answers_from_the_neighbour_table_as_the_search_would(
    client: TestClient, layout: StoreLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    searched = make_vectors(seed=4)
    indexed = Vectors(searched.words, searched.vectors, searched.counts)
    indexed.attach_neighbours(build_neighbours(indexed, k=10, words=100))
    model_id = put_model(layout, indexed, name="indexed")
    assert client.get(f"/models/{model_id}").json()["neighbours"] == {"words": 100, "k": 10}
    queue: list[Any] = []
    real_submit = QueryBatcher.submit

    def submit(self: QueryBatcher, *args: Any, **kwargs: Any) -> Any:
        queue.append(args)
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(QueryBatcher, "submit", submit)
    table_hits: list[dict[str, Any]] = [
        {"word": "king", "topn": 7},
        {"word": "w50", "restrict_vocab": 1000},
        {"positive": "w90"},
    ]
    for params in table_hits:
        r = client.get("/similar", params={**params, "model": model_id})
        topn, restrict = params.get("topn", 10), params.get("restrict_vocab")
        word = str(params.get("word", params.get("positive")))
        assert r.json()["results"] == hits(searched.most_similar(word, topn=topn, restrict_vocab=restrict))
    assert queue == []  # answered where they stood, not queued for a search
    # Beyond the table (a word past its 100, a topn past its 10): searched, same answers.
    misses: list[dict[str, Any]] = [{"word": "w200"}, {"word": "king", "topn": 11}]
    for params in misses:
        r = client.get("/similar", params={**params, "model": model_id})
        assert r.json()["results"] == hits(searched.most_similar(params["word"], topn=params.get("topn", 10)))
    assert len(queue) == 2


def test_requests_do_not_re_analyse_endpoint_signatures(client: TestClient, model_id: str, monkeypatch) -> None:
    # FastAPI re-reads every dependency's signature on every request while any dependency
    # override is set: 0.3 ms per /similar, more than the whole of a query the neighbour table
    # answers. `w2v serve` passes its settings to create_app, so they must not become one.
    import fastapi.dependencies.utils as fastapi_deps

    def requests() -> None:
        assert client.get("/similar", params={"word": "king"}).status_code == 200
        assert client.get("/jobs").status_code == 200

    requests()  # routes may finish their set-up on first use
    calls: list[object] = []
    real = fastapi_deps.get_dependant

    def recording_get_dependant(**kw: Any) -> Any:
        calls.append(kw["call"])
        return real(**kw)

    monkeypatch.setattr(fastapi_deps, "get_dependant", recording_get_dependant)
    requests()
    assert calls == []


def test_analogy_matches_the_library(client: TestClient, vectors: Vectors) -> None:
    r = client.get("/analogy", params={"a": "man", "b": "king", "c": "woman", "topn": 3})
    assert r.status_code == 200
    assert r.json()["results"] == hits(vectors.analogy("man", "king", "woman", topn=3))
    assert r.json()["results"][0]["word"] == "queen"
    r = client.get("/analogy", params={"a": "man", "b": "king", "c": "woman", "method": "mul"})
    assert r.json()["results"] == hits(vectors.analogy("man", "king", "woman", method="mul"))


def test_similarity_vector_doesnt_match(client: TestClient, vectors: Vectors, model_id: str) -> None:
    r = client.get("/similarity", params={"w1": "king", "w2": "queen"})
    assert r.json() == {
        "model_id": model_id,
        "w1": "king",
        "w2": "queen",
        "score": pytest.approx(vectors.similarity("king", "queen")),
    }
    r = client.get("/vector", params={"word": "apple"})
    np.testing.assert_allclose(r.json()["vector"], vectors.get_vector("apple"), rtol=1e-6)
    r = client.get("/vector", params={"word": "apple", "norm": True})
    assert np.linalg.norm(r.json()["vector"]) == pytest.approx(1.0, abs=1e-5)
    words = ["king", "queen", "man", "apple"]
    r = client.get("/doesnt_match", params=[("words", w) for w in words])
    assert r.json()["word"] == vectors.doesnt_match(words)


def test_similar_batch_matches_the_library(client: TestClient, vectors: Vectors) -> None:
    body = {"queries": ["king", {"positive": ["king", "woman"], "negative": ["man"]}, "w3"], "topn": 4}
    r = client.post("/similar/batch", json=body)
    assert r.status_code == 200
    expected = vectors.most_similar_batch(["king", (["king", "woman"], ["man"]), "w3"], topn=4)
    assert r.json()["results"] == [hits(h) for h in expected]


def test_a_batch_takes_vectors_as_gensims_similar_by_vector_does(
    client: TestClient, model_id: str, vectors: Vectors
) -> None:
    """Nearest words to a raw vector (a document's mean, say), alone or with words beside it."""
    doc = (vectors["king"] + vectors["woman"] + 0.5 * vectors["w3"]).tolist()
    body = {"queries": [{"vector": doc}, {"vector": doc, "negative": ["man"]}, "queen"], "topn": 4}
    r = client.post("/similar/batch", json=body)
    assert r.status_code == 200, r.text
    expected = vectors.most_similar_batch(
        [([np.asarray(doc)], []), ([np.asarray(doc)], ["man"]), "queen"], topn=4
    )
    assert r.json()["results"] == [hits(h) for h in expected]
    # As gensim's similar_by_vector: no word is left out, so a word's own vector finds it first.
    assert expected[0] == vectors.similar_by_vector(np.asarray(doc), topn=4)
    r = client.post("/similar/batch", json={"queries": [{"vector": vectors["king"].tolist()}], "topn": 1})
    assert r.json()["results"][0][0]["word"] == "king"
    # A vector counts as a positive term for 3CosMul.
    r = client.post("/similar/batch", json={"queries": [{"vector": doc}], "method": "mul", "topn": 2})
    assert r.status_code == 200 and len(r.json()["results"][0]) == 2


def test_bad_query_vectors_are_422_naming_the_query(client: TestClient, model_id: str, vectors: Vectors) -> None:
    good = vectors["king"].tolist()
    for vector, message in [
        (good[:-1], f"needs the model's {vectors.vector_size} numbers"),
        ([0.0] * vectors.vector_size, "has no direction"),
        ([1e-50] * vectors.vector_size, "zeros (in float32) has no direction"),
        ([1e39, *good[1:]], "finite float32"),
        ([1e31, *good[1:]], "length must be at most 1e+30"),
    ]:
        r = client.post("/similar/batch", json={"queries": ["king", {"vector": vector}]})
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert error["loc"] == ["body", "queries", 1] and message in error["msg"], error
    for raw in [b'{"queries": [{"vector": [NaN, 1]}]}', b'{"queries": [{"vector": []}]}',
                b'{"queries": [{"vector": ["a", 1]}]}', b'{"queries": [{"vector": 3}]}',
                # Strings and booleans are no numbers, though Python would read them as some.
                json.dumps({"queries": [{"vector": ["1.5"] * vectors.vector_size}]}).encode(),
                json.dumps({"queries": [{"vector": [True] * vectors.vector_size}]}).encode()]:
        r = client.post("/similar/batch", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "vector" in {str(p) for e in r.json()["detail"] for p in e["loc"]}, raw


def test_unknown_words_are_404_naming_them(client: TestClient, model_id: str) -> None:
    cases = [
        ("/similar", {"word": "zebra"}, ["zebra"]),
        ("/similar", [("positive", "king"), ("positive", "zebra"), ("negative", "yak")], ["zebra", "yak"]),
        ("/analogy", {"a": "man", "b": "kingz", "c": "woman"}, ["kingz"]),
        ("/similarity", {"w1": "king", "w2": "zebra"}, ["zebra"]),
        ("/vector", {"word": "zebra"}, ["zebra"]),
        ("/doesnt_match", [("words", "zebra"), ("words", "yak")], ["zebra", "yak"]),
    ]
    for path, params, unknown in cases:
        r = client.get(path, params=params)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["unknown_words"] == unknown
        # The model that was asked, which a query without `model` does not name.
        assert r.json()["model_id"] == model_id and f"not in the vocabulary of model {model_id}" in r.json()["detail"]
        for word in unknown:
            assert word in r.json()["detail"]
    r = client.post("/similar/batch", json={"queries": ["king", "zebra", {"positive": ["yak"]}]})
    assert r.status_code == 404 and r.json()["unknown_words"] == ["zebra", "yak"]
    assert r.json()["model_id"] == model_id
    assert "suggestions" not in r.json()


def test_a_model_trained_lower_cased_is_asked_in_lower_case(client: TestClient, layout: StoreLayout) -> None:
    lowered = put_model(layout, make_vectors(), config={"lowercase": True})
    as_is = put_model(layout, make_vectors(), config={"lowercase": False})
    queries = [
        ("/similar", [("word", "King")]),
        ("/similar", [("positive", "KING"), ("negative", "Man")]),
        ("/analogy", [("a", "Man"), ("b", "King"), ("c", "WOMAN")]),
        ("/similarity", [("w1", "King"), ("w2", "Queen")]),
        ("/vector", [("word", "King")]),
    ]
    echoed = ("w1", "w2", "word")  # the words as asked
    for path, params in queries:
        r = client.get(path, params=[*params, ("model", lowered)])
        lower = client.get(path, params=[*((k, v.lower()) for k, v in params), ("model", lowered)])
        assert r.status_code == lower.status_code == 200, (path, r.text)
        assert {k: v for k, v in r.json().items() if k not in echoed} == {
            k: v for k, v in lower.json().items() if k not in echoed
        }
        assert client.get(path, params=[*params, ("model", as_is)]).status_code == 404
    words = [("words", "King"), ("words", "Queen"), ("words", "Apple")]
    r = client.get("/doesnt_match", params=[*words, ("model", lowered)])
    assert r.status_code == 200 and r.json()["word"] in ("King", "Queen", "Apple")  # in the caller's spelling
    r = client.post("/similar/batch", json={"queries": ["King", {"positive": ["Queen"]}], "model": lowered})
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_a_word_in_another_casing_is_suggested(client: TestClient, model_id: str) -> None:
    # The usual miss against a model trained lower-cased: "King" for "king".
    for path, params in (("/similar", {"word": "King"}), ("/analogy", {"a": "MAN", "b": "king", "c": "woman"})):
        r = client.get(path, params=params)
        assert r.status_code == 404
        body = r.json()
        assert body["suggestions"] == {params.get("word", "MAN"): params.get("word", "MAN").lower()}
        assert "did you mean" in body["detail"]


def test_query_parameter_errors_are_422(client: TestClient, model_id: str) -> None:
    cases = [
        ("/similar", {}, "word"),
        ("/similar", {"word": "king", "topn": 0}, "topn"),
        ("/similar", {"word": "king", "topn": "ten"}, "topn"),
        ("/similar", {"word": "king", "restrict_vocab": 0}, "restrict_vocab"),
        ("/analogy", {"a": "man", "b": "king"}, "c"),
        ("/analogy", {"a": "man", "b": "king", "c": "woman", "method": "div"}, "method"),
        ("/similarity", {"w1": "king"}, "w2"),
        ("/vector", {"word": ""}, "word"),
    ]
    for path, params, field in cases:
        r = client.get(path, params=params)
        assert r.status_code == 422, (path, params, r.text)
        assert field in error_fields(r), (path, r.json())
    for body, field in [
        ({"queries": []}, "queries"),
        ({"queries": ["king"], "topn": 0}, "topn"),
        ({"queries": [{}]}, "queries"),
        ({"queries": [{"negative": ["man"]}], "method": "mul"}, "positive"),
        ({"queries": ["king"], "x": 1}, "x"),
    ]:
        r = client.post("/similar/batch", json=body)
        assert r.status_code == 422, body
        assert field in {str(part) for e in r.json()["detail"] for part in e["loc"]}, r.json()


def test_a_query_of_negative_words_only_is_answered_as_gensim_answers_it(
    client: TestClient, model_id: str, vectors: Vectors
) -> None:
    expected = hits(vectors.most_similar(negative=["man"], topn=5))
    r = client.get("/similar", params={"negative": "man", "topn": 5})
    assert r.status_code == 200 and r.json()["results"] == expected
    r = client.post("/similar/batch", json={"queries": [{"negative": ["man"]}], "topn": 5})
    assert r.status_code == 200 and r.json()["results"] == [expected]


def test_a_batch_can_skip_the_queries_with_unknown_words(client: TestClient, model_id: str, vectors: Vectors) -> None:
    queries = ["king", "zebra", {"positive": ["woman", "yak"], "negative": ["zebra"]}, {"positive": ["queen"]}]
    r = client.post("/similar/batch", json={"queries": queries, "topn": 3, "skip_unknown": True})
    assert r.status_code == 200
    body = r.json()
    assert body["unknown_words"] == [[], ["zebra"], ["yak", "zebra"], []]
    king, queen = hits(vectors.most_similar("king", topn=3)), hits(vectors.most_similar("queen", topn=3))
    assert body["results"] == [king, [], [], queen]
    r = client.post("/similar/batch", json={"queries": ["zebra"], "skip_unknown": True})
    assert r.json()["results"] == [[]] and r.json()["unknown_words"] == [["zebra"]]
    assert "unknown_words" not in client.post("/similar/batch", json={"queries": ["king"]}).json()


def test_unknown_and_repeated_query_parameters_are_422_not_ignored(client: TestClient, model_id: str) -> None:
    r = client.get("/similar", params={"word": "king", "topk": 5})  # a typo of topn
    assert r.status_code == 422 and error_fields(r) == {"topk"}
    assert "unknown query parameter 'topk'" in r.json()["detail"][0]["msg"] and "topn" in r.json()["detail"][0]["msg"]
    r = client.get("/similar", params=[("word", "king"), ("word", "man")])
    assert r.status_code == 422 and "'word' is given 2 times" in r.json()["detail"][0]["msg"]
    r = client.get("/jobs", params={"status": "running"})  # the parameter is `state`
    assert r.status_code == 422 and error_fields(r) == {"status"}
    # Parameters that take several values, and every parameter given once, still work.
    assert client.get("/similar", params=[("positive", "king"), ("positive", "woman"), ("negative", "man")]).is_success
    assert client.get("/similar", params={"word": "king", "topn": 3, "model": model_id}).is_success
    assert client.get(f"/models/{model_id}/export", params={"format": "word2vec-text"}).is_success
    assert client.get("/similar", params={"word": "king", "_": "1732745000000"}).is_success  # a cache buster


def test_unknown_model_in_queries_is_404(client: TestClient, model_id: str) -> None:
    for path, params in [
        ("/similar", {"word": "king"}),
        ("/analogy", {"a": "a", "b": "b", "c": "c"}),
        ("/similarity", {"w1": "a", "w2": "b"}),
        ("/vector", {"word": "a"}),
    ]:
        r = client.get(path, params={**params, "model": MISSING_ID})
        assert r.status_code == 404 and MISSING_ID in r.json()["detail"]
    r = client.post("/similar/batch", json={"queries": ["king"], "model": MISSING_ID})
    assert r.status_code == 404


def test_no_model_yet_is_404(client: TestClient) -> None:
    r = client.get("/similar", params={"word": "king"})
    assert r.status_code == 404
    assert "no model yet" in r.json()["detail"]


def test_newest_model_answers_and_new_models_appear_without_restart(
    client: TestClient, layout: StoreLayout, model_id: str
) -> None:
    assert client.get("/similar", params={"word": "king"}).json()["model_id"] == model_id
    newer_vectors = make_vectors(seed=3)
    newer = put_model(layout, newer_vectors, created_at="2025-06-01T00:00:00.000+00:00")
    r = client.get("/similar", params={"word": "king", "topn": 3})
    assert r.json()["model_id"] == newer
    assert r.json()["results"] == hits(newer_vectors.most_similar("king", topn=3))
    assert [m["model_id"] for m in client.get("/models").json()] == [newer, model_id]
    assert client.get("/similar", params={"word": "king", "model": model_id}).json()["model_id"] == model_id


def test_loaded_models_are_bounded(settings: Settings, layout: StoreLayout) -> None:
    ids = [put_model(layout, make_vectors(seed=i)) for i in range(4)]
    with TestClient(create_app(settings.model_copy(update={"model_cache_size": 2}))) as c:
        for model_id in ids:
            assert c.get("/similar", params={"word": "king", "model": model_id}).status_code == 200
        store = c.app.state.services.models  # type: ignore[attr-defined]
        assert list(store._cache) == ids[2:]
        # An evicted model is reloaded on demand.
        assert c.get("/similar", params={"word": "king", "model": ids[0]}).status_code == 200


def test_damaged_model_is_refused(client: TestClient, layout: StoreLayout, model_id: str) -> None:
    vectors_file = layout.model_dir(model_id) / "vectors.npy"
    data = bytearray(vectors_file.read_bytes())
    data[-1] ^= 0xFF
    vectors_file.write_bytes(bytes(data))
    r = client.get("/similar", params={"word": "king"})
    assert r.status_code == 500  # the server's fault, said plainly rather than answered with garbage
    assert model_id in r.json()["detail"] and "checksum" in r.json()["detail"]


# ------------------------------------------------------------------------------------ API keys


def test_api_keys_guard_everything_but_health(settings: Settings, model_id: str) -> None:
    secured = settings.model_copy(update={"api_keys": ["s3cret", "other-key"]})
    with TestClient(create_app(secured)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        r = c.get("/models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/similar?word=king", headers={"X-API-Key": "other-key"}).status_code == 200
        assert c.post("/train", json={}).status_code == 401


def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("W2V_API_KEYS", "a, b")
    monkeypatch.setenv("W2V_STORE", str(tmp_path))
    assert Settings().api_keys == ["a", "b"]
    assert Settings().store == tmp_path


def _age_models_folder(layout: StoreLayout, seconds: float) -> None:
    st = os.stat(layout.models)
    os.utime(layout.models, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_a_model_removed_behind_the_apis_back_stops_being_served(client: TestClient, layout: StoreLayout) -> None:
    # Another replica (or an operator) deletes the directory: the event loop's fast path must
    # notice through the folder's mtime, although the model is still loaded in this process.
    model_id = put_model(layout, make_vectors(), name="elsewhere")
    _age_models_folder(layout, 60)  # settled: the hot path trusts the listing
    for _ in range(2):  # the first request loads the model and re-reads the listing
        assert client.get("/similar", params={"word": "king", "model": model_id}).status_code == 200
    shutil.rmtree(layout.model_dir(model_id))
    assert client.get("/similar", params={"word": "king", "model": model_id}).status_code == 404
    assert client.get("/similar", params={"word": "king"}).status_code == 404


def test_a_listing_read_within_a_tick_of_a_change_is_not_trusted(layout: StoreLayout) -> None:
    """A change in the same filesystem-clock tick as the listing leaves the mtime as it was."""
    from app.modelstore import ModelStore

    model_id = put_model(layout, make_vectors(), name="racy")
    store = ModelStore(layout, cache_size=2)
    assert store.get(model_id).model_id == model_id  # listed just after the change: unsettled
    before = os.stat(layout.models)
    shutil.rmtree(layout.model_dir(model_id))
    os.utime(layout.models, ns=(before.st_atime_ns, before.st_mtime_ns))  # same tick: mtime unchanged
    assert store.cached(model_id) is None  # not served from memory on the strength of the stale listing
    with pytest.raises(ModelNotFound):
        store.get(model_id)

    settled = put_model(layout, make_vectors(), name="settled")
    _age_models_folder(layout, 60)
    store.get(settled)
    assert store.cached(settled) is not None  # a settled listing is trusted: no disk checks


def test_a_query_no_search_can_answer_is_refused_alone_naming_itself(client: TestClient, model_id: str) -> None:
    r = client.get("/similar", params=[("word", "king"), ("negative", "king")])
    assert r.status_code == 422 and "cancel out" in r.json()["detail"][0]["msg"]
    r = client.post("/similar/batch", json={"queries": ["king", {"positive": ["man"], "negative": ["man"]}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "queries", 1]
    # Refused before the batcher: the queries it batches are never searched one by one for it.
    lm = client.app.state.services.models.get(model_id)  # type: ignore[attr-defined]
    submitted: list[object] = []
    submit = lm.batcher.submit
    lm.batcher.submit = lambda *a, **k: submitted.append(a) or submit(*a, **k)  # type: ignore[method-assign]
    assert client.get("/similar", params=[("word", "man"), ("negative", "man")]).status_code == 422
    assert submitted == []


def test_unknown_words_are_reported_as_the_caller_spelled_them(client: TestClient, layout: StoreLayout) -> None:
    lowered = put_model(layout, make_vectors(), config={"lowercase": True})
    r = client.get("/similar", params=[("positive", "King"), ("positive", "Zebra"), ("model", lowered)])
    assert r.status_code == 404 and r.json()["unknown_words"] == ["Zebra"]
    queries = ["Zebra", {"positive": ["Queen", "Yak"]}]
    r = client.post("/similar/batch", json={"queries": queries, "skip_unknown": True, "model": lowered})
    assert r.json()["unknown_words"] == [["Zebra"], ["Yak"]]
