"""GET /metrics: what an operator scrapes, parsed with Prometheus' own text parser."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings
from model import Model, Vectors, save_model
from worker.jobs import JobRecord, JobStore, utcnow
from worker.storage import StoreLayout, new_id

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def put_model(layout: StoreLayout, words: int = 50) -> str:
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(words)]
    vectors = Vectors(vocab, rng.standard_normal((words, 8)).astype(np.float32), np.arange(words, 0, -1) * 3)
    model_id = new_id()
    save_model(layout.model_dir(model_id), Model(vectors, {"model_id": model_id, "created_at": utcnow()}))
    return model_id


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store=tmp_path / "store", broker_url=None, max_request_bytes=4096)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def layout(client: TestClient) -> StoreLayout:
    result: StoreLayout = client.app.state.services.layout  # type: ignore[attr-defined]
    return result


def test_requests_are_counted_and_timed_per_route_template(client: TestClient, layout: StoreLayout) -> None:
    model_id = put_model(layout)
    assert client.get(f"/models/{model_id}").status_code == 200
    assert client.get(f"/models/{'0' * 32}").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/path/123").status_code == 404
    assert client.post("/train", content=b"{" + b" " * 10_000 + b"}").status_code == 413  # refused before routing

    samples = scrape(client)
    route = "/models/{model_id}"
    assert value(samples, "w2v_http_requests_total", method="GET", route=route, status="200") == 1
    assert value(samples, "w2v_http_requests_total", method="GET", route=route, status="404") == 1
    assert value(samples, "w2v_http_requests_total", method="GET", route="/healthz", status="200") == 1
    assert value(samples, "w2v_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(samples, "w2v_http_requests_total", method="POST", route="/train", status="413") == 1
    assert value(samples, "w2v_http_request_duration_seconds_count", method="GET", route=route) == 2
    assert value(samples, "w2v_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf") == 2
    total = value(samples, "w2v_http_request_duration_seconds_sum", method="GET", route=route)
    assert total is not None and 0 < total < 10
    # Raw paths (with ids) never become label values: the series count stays bounded.
    labels = {v for (_, ls) in samples for (_, v) in ls}
    assert not any(model_id in v or "123" in v for v in labels)


def test_jobs_by_state_and_training_speed_of_running_jobs(client: TestClient) -> None:
    jobs: JobStore = client.app.state.services.jobs  # type: ignore[attr-defined]

    def job(state: str, words_per_sec: float | None = None) -> str:
        progress = {"epoch": 2, "epochs": 5, "words_done": 400, "words_total": 1000, "words_per_sec": words_per_sec}
        rec = JobRecord(
            job_id=new_id(), state=state, corpus_id=new_id(), corpus_file="x.txt", config={}, device="cpu",
            queue="cpu", target_model_id=new_id(), created_at=utcnow(), progress=progress,
        )
        jobs.create(rec)
        return rec.job_id

    fast, slow = job("running", 2500.5), job("running", 1000.0)
    job("queued")
    job("succeeded", 99999.0)  # finished jobs do not count towards the current speed
    samples = scrape(client)
    assert value(samples, "w2v_job_store_up") == 1
    for state, n in {"queued": 1, "running": 2, "succeeded": 1, "failed": 0, "cancelled": 0}.items():
        assert value(samples, "w2v_jobs", state=state) == n, state
    assert value(samples, "w2v_training_words_per_second") == pytest.approx(3500.5)
    assert value(samples, "w2v_job_words_per_second", job_id=fast, device="cpu") == pytest.approx(2500.5)
    assert value(samples, "w2v_job_words_per_second", job_id=slow, device="cpu") == pytest.approx(1000.0)
    assert value(samples, "w2v_job_progress_ratio", job_id=fast) == pytest.approx(0.4)


def test_models_loaded_and_memory(client: TestClient, layout: StoreLayout) -> None:
    put_model(layout)
    samples = scrape(client)
    assert value(samples, "w2v_models_stored") == 1
    assert value(samples, "w2v_models_loaded") == 0
    assert client.get("/similar", params={"word": "w3"}).status_code == 200
    samples = scrape(client)
    assert value(samples, "w2v_models_loaded") == 1
    rss = value(samples, "process_resident_memory_bytes")
    assert rss is not None and rss > 10 * 2**20  # a Python process with NumPy loaded


def test_a_job_store_outage_still_yields_a_scrape(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = client.app.state.services.jobs  # type: ignore[attr-defined]

    def down(*_: object, **__: object) -> list[JobRecord]:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(jobs, "list", down)
    samples = scrape(client)
    assert value(samples, "w2v_job_store_up") == 0
    assert value(samples, "w2v_jobs", state="running") is None
    assert value(samples, "process_resident_memory_bytes") is not None


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    first = create_app(Settings(store=tmp_path / "a", broker_url=None))
    second = create_app(Settings(store=tmp_path / "b", broker_url=None))
    with TestClient(first) as a, TestClient(second) as b:
        for _ in range(3):
            a.get("/healthz")
        b.get("/healthz")
        count = "w2v_http_requests_total"
        assert value(scrape(a), count, method="GET", route="/healthz", status="200") == 3
        assert value(scrape(b), count, method="GET", route="/healthz", status="200") == 1


def test_metrics_need_an_api_key_when_keys_are_set(settings: Settings) -> None:
    secured = settings.model_copy(update={"api_keys": ["s3cret"]})
    with TestClient(create_app(secured)) as c:
        assert c.get("/metrics").status_code == 401
        r = c.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and "w2v_http_requests_total" in r.text
