"""Hostile and odd input: path traversal, symlinks planted in the store, odd words, body caps.

The traversal and symlink tests prove that nothing outside the store is touched with an
audit hook (PEP 578) on the test process, in which the app runs: every file the process
opens, lists, renames or deletes while the requests run is recorded with its real path, and
none may lie in the `outside` folder, whose files must also come out unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest

from app.settings import Settings
from model import Model, Vectors, save_model
from tests.test_api import make_vectors, put_model
from worker.storage import StoreLayout, new_id

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

_FILE_EVENTS = {
    "open",
    "os.listdir",
    "os.scandir",
    "os.remove",
    "os.rmdir",
    "os.rename",
    "os.truncate",
    "os.chmod",
    "os.symlink",
    "os.link",
    "os.mkdir",
    "shutil.rmtree",
    "shutil.move",
}

_ON_THE_ENTRY = {"os.remove", "os.rmdir", "os.rename", "os.symlink", "os.link", "shutil.rmtree", "shutil.move"}


class FileAudit:
    """Records the real path of every file operation of this process while `active`."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[tuple[str, str, bool]] = []  # (event, real path, writes?)
        self._busy = threading.local()

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in _FILE_EVENTS or getattr(self._busy, "on", False):
            return
        self._busy.on = True  # realpath itself makes audited calls
        try:
            if event == "open":
                mode, flags = args[1], args[2]
                writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                )
                targets = args[:1]
            else:
                writes = event not in ("os.listdir", "os.scandir")
                targets = args[:2] if event in ("os.rename", "os.symlink", "os.link", "shutil.move") else args[:1]
            for arg in targets:
                if isinstance(arg, str | bytes | os.PathLike):
                    path = os.fsdecode(arg)
                    if event in _ON_THE_ENTRY:  # acts on a link itself, not on what it points to
                        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
                    else:
                        real = os.path.realpath(path)
                    self.paths.append((event, real, writes))
        finally:
            self._busy.on = False

    def touched(self, folder: Path) -> list[tuple[str, str, bool]]:
        root = str(folder.resolve())
        return [t for t in self.paths if t[1] == root or t[1].startswith(root + os.sep)]

    def writes_outside(self, folder: Path) -> list[tuple[str, str, bool]]:
        root = str(folder.resolve())
        return [t for t in self.paths if t[2] and not t[1].startswith(root + os.sep)]


_AUDIT = FileAudit()
sys.addaudithook(_AUDIT.hook)  # hooks cannot be removed; this one is inert unless a test turns it on


@pytest.fixture
def audit() -> Iterator[FileAudit]:
    _AUDIT.paths.clear()  # tests switch it on once their own setup is done
    try:
        yield _AUDIT
    finally:
        _AUDIT.active = False


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `folder` with its content hash (or link target) and mtime."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[str(path)] = (os.readlink(path), 0)
        elif path.is_file():
            out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        else:
            out[str(path)] = ("dir", path.stat().st_mtime_ns)
    return out


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store=tmp_path / "store", broker_url=None, max_request_bytes=16_384, max_upload_bytes=100_000)



@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files next to the store that no request may read, write or delete: a valid model, a
    corpus and its metadata, an evaluation list, a job record."""
    folder = tmp_path / "outside"
    folder.mkdir()
    secret_id = new_id()
    save_model(folder / "model", Model(make_vectors(seed=9), {"model_id": secret_id, "name": "SECRET-MODEL"}))
    (folder / "corpus.txt").write_text("SECRET corpus text\n")
    (folder / "corpus.json").write_text(
        json.dumps(
            {
                "id": secret_id,
                "file": f"{secret_id}.txt",
                "bytes": 1,
                "text_bytes": 1,
                "lines": 1,
                "compression": "none",
                "name": "SECRET-CORPUS",
                "created_at": "2025-01-01T00:00:00+00:00",
            }
        )
    )
    (folder / "evaluations.json").write_text(json.dumps([{"kind": "analogies", "result": {"SECRET": 1}}]))
    (folder / "passwd").write_text("root:x:0:0:SECRET\n")
    return folder


# ------------------------------------------------------------------------------------ traversal

TRAVERSALS = [
    "..",
    "../..%2Foutside",
    "%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "../../outside/model",
    "..%2F..%2Foutside%2Fmodel",
    "%2e%2e%2f%2e%2e%2foutside%2fmodel",
    "%252e%252e%252f%252e%252e%252foutside",
    "..%5C..%5Coutside",
    "%2Fetc%2Fpasswd",
    "....%2F%2F....%2F%2Foutside",
    f"{'0' * 32}%2F..%2F..%2Foutside",
    f"{'0' * 32}%00",
    "~root",
]


def traversal_requests(token: str, outside: Path) -> list[tuple[str, str, dict[str, Any]]]:
    absolute = str(outside / "model")
    return [
        ("GET", f"/models/{token}", {}),
        ("DELETE", f"/models/{token}", {}),
        ("GET", f"/models/{token}/export", {}),
        ("POST", f"/models/{token}/evaluate", {"content": b"king queen 1\n"}),
        ("GET", f"/corpora/{token}", {}),
        ("DELETE", f"/corpora/{token}", {}),
        ("GET", f"/jobs/{token}", {}),
        ("POST", f"/jobs/{token}/cancel", {}),
        ("GET", f"/jobs/{token}/events", {}),
        # The same payloads where ids travel as query parameters and in JSON bodies, plus absolute paths.
        ("GET", "/similar", {"params": {"word": "king", "model": token.replace("%2F", "/")}}),
        ("GET", "/similar", {"params": {"word": "king", "model": absolute}}),
        ("GET", "/vector", {"params": {"word": "king", "model": "../../outside/model"}}),
        ("POST", "/similar/batch", {"json": {"queries": ["king"], "model": absolute}}),
        ("POST", "/train", {"json": {"corpus_id": "../../outside/corpus"}}),
        ("POST", "/train", {"json": {"corpus_id": str(outside / "corpus.txt")}}),
    ]


def raw_request(client: TestClient, method: str, raw_path: str, body: bytes = b"") -> tuple[int, bytes]:
    """Call the app with the path exactly as given: HTTP clients (httpx included) remove dot
    segments before sending, a hostile client does not, and uvicorn passes them through."""

    async def run() -> tuple[int, bytes]:
        status, out = 0, bytearray()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                out.extend(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await client.app(scope, receive, send)  # type: ignore[arg-type]
        return status, bytes(out)

    assert client.portal is not None
    return client.portal.call(run)


@pytest.mark.parametrize("token", TRAVERSALS)
def test_traversal_in_ids_is_404_and_touches_nothing_outside(
    client: TestClient, layout: StoreLayout, outside: Path, audit: FileAudit, token: str
) -> None:
    put_model(layout, make_vectors())
    before = snapshot(outside)
    audit.active = True
    for method, path, kwargs in traversal_requests(token, outside):
        if "params" in kwargs or "json" in kwargs:
            r = client.request(method, path, **kwargs)
            status, text = r.status_code, r.text
        else:
            status, raw = raw_request(client, method, path, kwargs.get("content", b""))
            text = raw.decode("utf-8", "replace")
        assert status == 404, (method, path, kwargs, status, text[:300])
        assert "SECRET" not in text
    audit.active = False
    assert audit.touched(outside) == []
    assert snapshot(outside) == before


def test_names_are_labels_never_paths(
    client: TestClient, layout: StoreLayout, tmp_path: Path, audit: FileAudit
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    audit.active = True
    evil = ["../../escape", "/etc/passwd", "..\\..\\escape", "%2e%2e%2fescape"]
    for name in evil:
        r = client.post("/corpora", params={"name": name}, content=b"a b\n", headers={"Content-Type": "text/plain"})
        assert r.status_code == 201 and r.json()["name"] == name
        r = client.post("/corpora", files={"file": (f"../../{name}.txt", b"a b\n")})
        assert r.status_code == 201 and r.json()["filename"] == f"../../{name}.txt"
        r = client.post("/models/import", params={"name": name}, content=b"1 2\nw 1 0\n")
        assert r.status_code == 201 and r.json()["name"] == name
        r = client.post("/train", json={"text": "a b", "name": name})
        assert r.status_code == 202
    audit.active = False
    # Everything was written under server-issued ids inside the store; nothing appeared beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert audit.paths and audit.writes_outside(layout.root) == []
    for folder in (layout.models, layout.corpora):
        for entry in os.listdir(folder):
            assert len(entry.split(".")[0]) == 32, entry


# ------------------------------------------------------------------------------------ planted symlinks


def plant(layout: StoreLayout, outside: Path) -> dict[str, str]:
    """Symlinks inside the store that point outside it, under valid ids, at every level."""
    ids = {name: new_id() for name in ("model_dir", "model_file", "corpus_meta", "corpus_data", "evaluated")}
    # A whole model directory.
    (layout.models / ids["model_dir"]).symlink_to(outside / "model", target_is_directory=True)
    # A real model directory whose data files point outside (its own meta.json is genuine).
    save_model(layout.model_dir(ids["model_file"]), Model(make_vectors(seed=9), {"model_id": ids["model_file"]}))
    for name in ("vectors.npy", "vocab.tsv"):
        target = layout.model_dir(ids["model_file"]) / name
        target.unlink()
        target.symlink_to(outside / "model" / name)
    # Corpus metadata, and a genuine metadata file whose data file points outside.
    layout.corpus_meta(ids["corpus_meta"]).symlink_to(outside / "corpus.json")
    meta = json.loads((outside / "corpus.json").read_text())
    meta.update(id=ids["corpus_data"], file=f"{ids['corpus_data']}.txt", name="planted")
    layout.corpus_meta(ids["corpus_data"]).write_text(json.dumps(meta))
    (layout.corpora / f"{ids['corpus_data']}.txt").symlink_to(outside / "corpus.txt")
    # The evaluation list of a genuine model.
    save_model(layout.model_dir(ids["evaluated"]), Model(make_vectors(), {"model_id": ids["evaluated"]}))
    layout.evaluation_file(ids["evaluated"]).symlink_to(outside / "evaluations.json")
    return ids


def test_symlinks_planted_in_the_store_are_not_followed(
    client: TestClient, layout: StoreLayout, outside: Path, audit: FileAudit
) -> None:
    ids = plant(layout, outside)
    before = snapshot(outside)
    audit.active = True

    listed = {m["model_id"] for m in client.get("/models").json()}
    assert ids["model_dir"] not in listed and ids["evaluated"] in listed
    for method, path in [
        ("GET", f"/models/{ids['model_dir']}"),
        ("GET", f"/models/{ids['model_dir']}/export"),
        ("DELETE", f"/models/{ids['model_dir']}"),
        ("GET", f"/models/{ids['model_file']}/export"),
        ("GET", f"/corpora/{ids['corpus_meta']}"),
        ("DELETE", f"/corpora/{ids['corpus_meta']}"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
    for model in (ids["model_dir"], ids["model_file"]):
        assert client.get("/similar", params={"word": "king", "model": model}).status_code == 404
    assert client.post("/train", json={"corpus_id": ids["corpus_meta"]}).status_code == 404
    assert ids["corpus_meta"] not in {c["id"] for c in client.get("/corpora").json()}
    detail = client.get(f"/models/{ids['evaluated']}").json()
    assert detail["evaluations"] == []  # the planted list is not read
    assert "SECRET" not in client.get("/corpora").text + client.get("/models").text
    # Deleting a corpus whose data file is a planted link removes the link, never its target.
    assert client.delete(f"/corpora/{ids['corpus_data']}").status_code == 204

    audit.active = False
    assert audit.touched(outside) == []
    assert snapshot(outside) == before


def test_worker_does_not_train_on_a_planted_corpus_link(layout: StoreLayout, outside: Path) -> None:
    from worker.jobs import FileJobStore, JobRecord, utcnow
    from worker.runner import JobContext, run_job
    from worker.settings import WorkerSettings

    corpus_id = new_id()
    (layout.corpora / f"{corpus_id}.txt").symlink_to(outside / "corpus.txt")
    jobs = FileJobStore(layout.jobs)
    rec = JobRecord(
        job_id=new_id(),
        state="queued",
        corpus_id=corpus_id,
        corpus_file=f"{corpus_id}.txt",
        config={"epochs": 1, "min_count": 1},
        device="cpu",
        queue="cpu",
        target_model_id=new_id(),
        created_at=utcnow(),
    )
    jobs.create(rec)
    ctx = JobContext(WorkerSettings(store=layout.root), layout, jobs, lambda _: None)
    assert run_job(ctx, rec.job_id) == "failed"
    done = jobs.get(rec.job_id)
    assert done is not None and "deleted" in (done.error or "")
    assert not layout.model_dir(rec.target_model_id).exists()


# ------------------------------------------------------------------------------------ odd words

ODD_WORDS = [
    "naïve",
    "東京",
    "🙂",
    "👩‍👩‍👧",  # zero-width joiners
    "שלום",  # right to left
    "e\u0301cole",  # combining accent (NFD)
    "école",  # the same word, NFC: a different key, never silently merged
    "Ǆ",
    "a\u200bb",  # zero-width space
    "\u2028",
    "x" * 1000,
]


@pytest.fixture
def odd_model(layout: StoreLayout) -> str:
    base = make_vectors()
    rng = np.random.default_rng(5)
    words = [*base.words, *ODD_WORDS]
    vecs = np.vstack([base.vectors, rng.standard_normal((len(ODD_WORDS), base.vector_size)).astype(np.float32)])
    return put_model(layout, Vectors(words, vecs.astype(np.float32), np.arange(len(words), 0, -1)))


def test_odd_unicode_words_are_answered_cleanly(client: TestClient, odd_model: str) -> None:
    for word in ODD_WORDS:
        r = client.get("/similar", params={"word": word, "topn": 3})
        assert r.status_code == 200, (word, r.text)
        assert word not in [h["word"] for h in r.json()["results"]]
        assert client.get("/vector", params={"word": word}).status_code == 200
    r = client.post("/similar/batch", json={"queries": ODD_WORDS, "topn": 2})
    assert r.status_code == 200 and len(r.json()["results"]) == len(ODD_WORDS)
    r = client.get("/similarity", params={"w1": "école", "w2": "e\u0301cole"})
    assert r.status_code == 200 and r.json()["score"] < 0.99  # two entries, two vectors


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("", 422),  # empty
        ("x" * 1001, 422),  # over the length bound
        ("y" * 1000, 404),  # within it, unknown
        (" ", 404),
        ("\x00", 404),
        ("\ufffd", 404),
        ("cafe\u0301", 404),
        ("\U0010ffff", 404),
    ],
)
def test_unknown_empty_and_huge_words(client: TestClient, odd_model: str, word: str, status: int) -> None:
    for path, params in [
        ("/similar", {"word": word}),
        ("/vector", {"word": word}),
        ("/analogy", {"a": word, "b": "king", "c": "man"}),
        ("/similarity", {"w1": "king", "w2": word}),
    ]:
        r = client.get(path, params=params)
        assert r.status_code == status, (path, word[:20], r.text[:200])
        if status == 404:
            assert r.json()["unknown_words"] == [word]


def test_raw_bytes_that_are_not_utf8(client: TestClient, odd_model: str) -> None:
    # Percent-encoded bytes that are not UTF-8, and lone surrogates sent as JSON escapes.
    for query in ("word=%ff%fe", "word=%ed%a0%80", "word=%c0%af", "word=caf%e9"):
        r = client.get(f"/similar?{query}")
        assert r.status_code == 404, (query, r.text)
    for body in (b'{"queries": ["a\\ud800b"]}', b'{"queries": [{"positive": ["\\udfff"]}]}'):
        r = client.post("/similar/batch", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"], body
    r = client.post("/train", content=b'{"text": "a \\ud800 b"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "text" in str(r.json()["detail"][0]["loc"])
    r = client.post("/train", content=b'{"text": "a b"}\xff', headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422)


def test_query_word_counts_are_bounded(client: TestClient, odd_model: str) -> None:
    r = client.get("/similar", params=[("positive", "king")] * 100)
    assert r.status_code == 200
    r = client.get("/similar", params=[("positive", "king")] * 101)
    assert r.status_code == 422 and "positive" in str(r.json()["detail"])
    r = client.post("/similar/batch", json={"queries": ["king"] * 1001})
    assert r.status_code in (413, 422)


# ------------------------------------------------------------------------------------ body caps


def test_json_bodies_over_the_cap_are_413_before_parsing(client: TestClient, odd_model: str) -> None:
    big = {"queries": ["king"] * 4000}  # ~36 kB > 16 kB
    r = client.post("/similar/batch", json=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    data = json.dumps(big).encode()
    r = client.post(
        "/similar/batch", content=iter([data[:8000], data[8000:]]), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413  # no Content-Length: counted as it streams
    r = client.post("/models/import", content=b"1 2\nw 1 0\n" + b"0" * 200_000)
    assert r.status_code == 413
    assert client.get("/models").status_code == 200
