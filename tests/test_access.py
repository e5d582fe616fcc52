"""API keys: who may call, who owns what, and the per-key limits.

The app runs in-process (TestClient with its lifespan) on a temporary store and the embedded
filesystem queue; nothing consumes the queued jobs.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.auth import KeyRing, key_owner
from app.main import create_app
from app.settings import Settings
from tests.test_api import make_vectors, put_model
from worker.storage import StoreLayout

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KEY_A = "key-a-" + "1" * 26
KEY_B = "key-b-" + "2" * 26
MISSING_ID = "0" * 32


def hdr(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        store=tmp_path / "store",
        broker_url=None,
        api_keys=[KEY_A, KEY_B],
        rate_limit_per_s=0,
        max_active_jobs_per_key=0,
        max_request_bytes=16_384,
    )



def sample_request(method: str, template: str, model_id: str) -> tuple[str, dict[str, Any]]:
    """A well-formed request for an operation, so only the key decides the answer."""
    path = template.replace("{model_id}", model_id).replace("{job_id}", MISSING_ID)
    path = path.replace("{corpus_id}", MISSING_ID)
    kwargs: dict[str, Any] = {}
    if template in ("/similar", "/vector"):
        kwargs["params"] = {"word": "king"}
    elif template == "/analogy":
        kwargs["params"] = {"a": "man", "b": "king", "c": "woman"}
    elif template == "/similarity":
        kwargs["params"] = {"w1": "king", "w2": "queen"}
    elif template == "/doesnt_match":
        kwargs["params"] = [("words", "king"), ("words", "apple")]
    elif template == "/train":
        kwargs["json"] = {"text": "a b c"}
    elif template == "/similar/batch":
        kwargs["json"] = {"queries": ["king"]}
    elif method == "POST":
        kwargs["content"] = b"2 2\na 1 0\nb 0 1\n"
    return path, kwargs


def test_every_endpoint_but_the_health_checks_needs_a_valid_key(client: TestClient, layout: StoreLayout) -> None:
    model_id = put_model(layout, make_vectors(), owner=key_owner(KEY_A))
    spec = client.get("/openapi.json", headers=hdr(KEY_A)).json()
    operations = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    operations += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]
    assert len(operations) >= 20
    public = {("GET", "/healthz"), ("GET", "/readyz")}
    for method, template in operations:
        path, kwargs = sample_request(method, template, model_id)
        if (method, template) in public:
            assert client.request(method, path, **kwargs).status_code == 200, template
            continue
        for headers in ({}, hdr("wrong"), hdr(KEY_A[:-1]), {"Authorization": "Bearer " + KEY_A + "x"}):
            r = client.request(method, path, headers=headers, **kwargs)
            assert r.status_code == 401, (method, template, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
        r = client.request(method, path, headers={"Authorization": f"Bearer {KEY_A}"}, **kwargs)
        assert r.status_code != 401, (method, template)


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(secrets, "compare_digest", spy)
    ring = KeyRing(["first-key", "second-key", "third-key"])
    for supplied, owner in [
        ("second-key", key_owner("second-key")),
        ("nope", None),
        ("first-key", key_owner("first-key")),
    ]:
        calls.clear()
        assert ring.owner_of(supplied) == owner
        # Every configured key is compared, as fixed-length digests, whether or not one matched.
        assert len(calls) == 3 and all(len(a) == len(b) == 32 for a, b in calls)


def test_keys_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# deploy keys\nfrom-file-1\n\n  from-file-2  # ci\n")
    monkeypatch.setenv("W2V_API_KEYS", "from-env")
    monkeypatch.setenv("W2V_API_KEYS_FILE", str(keys))
    assert Settings().api_keys == ["from-env", "from-file-1", "from-file-2"]
    monkeypatch.setenv("W2V_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="cannot be read"):
        Settings()  # a configured but unreadable keys file stops start-up instead of running open
    keys.write_text("# nothing but comments\n")
    monkeypatch.setenv("W2V_API_KEYS_FILE", str(keys))
    with pytest.raises(ValidationError, match="no keys"):
        Settings()

    monkeypatch.delenv("W2V_API_KEYS")
    keys.write_text("only-from-file\n")
    monkeypatch.setenv("W2V_STORE", str(tmp_path / "store"))
    with TestClient(create_app(Settings(broker_url=None))) as c:
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers=hdr("only-from-file")).status_code == 200


def test_things_belong_to_the_key_that_made_them(client: TestClient, layout: StoreLayout) -> None:
    a, b = hdr(KEY_A), hdr(KEY_B)
    corpus = client.post("/corpora", content=b"a b c\nd e f\n", headers={**a, "Content-Type": "text/plain"}).json()
    job = client.post("/train", json={"corpus_id": corpus["id"]}, headers={**a, "Idempotency-Key": "k1"}).json()
    inline_job = client.post("/train", json={"text": "x y z"}, headers=a).json()
    imported = client.post("/models/import", content=b"3 2\nking 1 0\nqueen 0.9 0.1\napple 0 1\n", headers=a).json()
    trained_id = put_model(layout, make_vectors(), owner=key_owner(KEY_A), created_at="2099-01-01T00:00:00+00:00")
    model_ids = [imported["model_id"], trained_id]

    # Another key: every id of A's is absent (404, as for an id that never existed), lists are empty.
    for method, path in [
        ("GET", f"/corpora/{corpus['id']}"),
        ("DELETE", f"/corpora/{corpus['id']}"),
        ("GET", f"/jobs/{job['job_id']}"),
        ("POST", f"/jobs/{job['job_id']}/cancel"),
        ("GET", f"/jobs/{job['job_id']}/events"),
        *[(m, f"/models/{i}{s}") for i in model_ids for m, s in [("GET", ""), ("DELETE", ""), ("GET", "/export")]],
    ]:
        r = client.request(method, path, headers=b)
        assert r.status_code == 404, (method, path, r.text)
    for model_id in model_ids:
        assert client.post(f"/models/{model_id}/evaluate", content=b"king queen 1\n", headers=b).status_code == 404
        assert client.get("/similar", params={"word": "king", "model": model_id}, headers=b).status_code == 404
        r = client.post("/similar/batch", json={"queries": ["king"], "model": model_id}, headers=b)
        assert r.status_code == 404
    r = client.get("/similar", params={"word": "king"}, headers=b)
    assert r.status_code == 404 and "no model yet" in r.json()["detail"]  # A's newest model is not B's default
    assert client.post("/train", json={"corpus_id": corpus["id"]}, headers=b).status_code == 404
    for path in ("/corpora", "/jobs", "/models"):
        assert client.get(path, headers=b).json() == [], path
    # The same Idempotency-Key from another key is another request, not A's job.
    other = client.post("/train", json={"text": "p q"}, headers={**b, "Idempotency-Key": "k1"})
    assert other.status_code == 202 and other.json()["job_id"] != job["job_id"]

    # A still has everything, and the newest of A's models answers A's queries.
    assert {c["id"] for c in client.get("/corpora", headers=a).json()} >= {corpus["id"]}
    assert {j["job_id"] for j in client.get("/jobs", headers=a).json()} == {job["job_id"], inline_job["job_id"]}
    assert {m["model_id"] for m in client.get("/models", headers=a).json()} == set(model_ids)
    assert client.get("/similar", params={"word": "king"}, headers=a).json()["model_id"] == trained_id
    assert client.get(f"/models/{imported['model_id']}/export", headers=a).status_code == 200
    assert client.delete(f"/models/{imported['model_id']}", headers=a).status_code == 204

    # Owners are stored as the key's SHA-256, never the key itself.
    stored = b"".join(p.read_bytes() for p in layout.root.rglob("*") if p.is_file())
    for key in (KEY_A, KEY_B):
        assert key.encode() not in stored
        assert hashlib.sha256(key.encode()).hexdigest().encode() in stored


def test_models_made_with_keys_off_stay_shared(client: TestClient, layout: StoreLayout) -> None:
    shared = put_model(layout, make_vectors())  # no owner: made before keys were configured
    for key in (KEY_A, KEY_B):
        assert client.get("/similar", params={"word": "king"}, headers=hdr(key)).json()["model_id"] == shared


def test_rate_limit_per_key_is_429_with_retry_after(settings: Settings, layout: StoreLayout) -> None:
    limited = settings.model_copy(update={"rate_limit_per_s": 2.0, "rate_limit_burst": 3})
    with TestClient(create_app(limited)) as c:
        codes = [c.get("/corpora", headers=hdr(KEY_A)).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = c.get("/corpora", headers=hdr(KEY_A))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "rate limit" in r.json()["detail"]
        assert c.get("/corpora", headers=hdr(KEY_B)).status_code == 200  # a bucket per key
        assert c.get("/healthz").status_code == 200
        time.sleep(0.6)  # 2 tokens/s: one is back
        assert c.get("/corpora", headers=hdr(KEY_A)).status_code == 200
        assert c.get("/corpora", headers=hdr(KEY_A)).status_code == 429


def test_cap_on_queued_and_running_jobs_per_key(settings: Settings, layout: StoreLayout) -> None:
    capped = settings.model_copy(update={"max_active_jobs_per_key": 2})
    with TestClient(create_app(capped)) as c:
        corpus = c.post("/corpora", content=b"a b c\n", headers={**hdr(KEY_A), "Content-Type": "text/plain"}).json()
        body = {"corpus_id": corpus["id"]}
        first, second = (c.post("/train", json=body, headers=hdr(KEY_A)) for _ in range(2))
        assert first.status_code == second.status_code == 202
        r = c.post("/train", json=body, headers=hdr(KEY_A))
        assert r.status_code == 429 and r.headers["retry-after"] and "2 queued or running" in r.json()["detail"]
        r = c.post("/train", json={"text": "inline"}, headers=hdr(KEY_A))
        assert r.status_code == 429
        assert len(c.get("/corpora", headers=hdr(KEY_A)).json()) == 1  # the refused inline corpus is not kept
        assert c.post("/train", json={"text": "x"}, headers=hdr(KEY_B)).status_code == 202  # B has its own cap
        c.post(f"/jobs/{first.json()['job_id']}/cancel", headers=hdr(KEY_A))
        assert c.post("/train", json=body, headers=hdr(KEY_A)).status_code == 202
        assert c.post("/train", json=body, headers=hdr(KEY_A)).status_code == 429


def test_job_cap_holds_under_concurrent_submissions(settings: Settings, layout: StoreLayout) -> None:
    capped = settings.model_copy(update={"max_active_jobs_per_key": 3})
    with TestClient(create_app(capped)) as c:
        # Round 0 starts empty, round 1 after cancelling round 0's jobs, round 2 with the cap full.
        for round_, expected in enumerate([3, 3, 0]):
            start = threading.Barrier(8)
            codes: list[int] = []
            lock = threading.Lock()

            def submit(
                i: int,
                round_: int = round_,
                start: threading.Barrier = start,
                codes: list[int] = codes,
                lock: threading.Lock = lock,
            ) -> None:
                start.wait()
                r = c.post("/train", json={"text": f"round {round_} request {i}"}, headers=hdr(KEY_A))
                with lock:
                    codes.append(r.status_code)

            threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert codes.count(202) == expected and codes.count(429) == 8 - expected, codes
            active = [j for j in c.get("/jobs", headers=hdr(KEY_A)).json() if j["state"] == "queued"]
            assert len(active) == 3
            if round_ == 0:
                for job in active:
                    c.post(f"/jobs/{job['job_id']}/cancel", headers=hdr(KEY_A))
