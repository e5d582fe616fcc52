"""Bad input at the HTTP layer: each answer is a JSON 4xx that names what to fix, never a 500,
and nothing half-stored is left behind.

Covers numbers JSON cannot carry, library messages (paths, parameter names, advice in the
library's terms), uploads that are not what they claim (UTF-16 text, cut-off multipart bodies,
empty models, bad form labels), a corpus deleted while a job on it is being submitted, and
HEAD on GET routes.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from app.settings import Settings
from tests.test_api import MISSING_ID, corpus_upload, make_vectors, put_model, queued_messages
from worker.storage import StoreLayout

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        store=tmp_path / "store",
        broker_url=None,
        max_upload_bytes=3_000_000,
        max_inline_text_bytes=2_000,
        max_request_bytes=16_384,
    )


@pytest.fixture
def model_id(layout: StoreLayout) -> str:
    return put_model(layout, make_vectors())


def strict_json(text: str) -> Any:
    """Parse as JSON proper, which has no NaN or Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def only_error(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json", response.text
    detail = strict_json(response.text)["detail"]
    assert isinstance(detail, list) and len(detail) == 1, detail
    error: dict[str, Any] = detail[0]
    return error


def assert_nothing_stored(client: TestClient, layout: StoreLayout) -> None:
    assert client.get("/corpora").json() == []
    assert client.get("/models").json() == []
    assert list(layout.tmp.iterdir()) == []


# ------------------------------------------------------------------------------------ numbers JSON has not


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/similar/batch", b'{"queries": ["king"], "topn": NaN}', "topn"),
        ("/similar/batch", b'{"queries": ["king"], "restrict_vocab": Infinity}', "restrict_vocab"),
        ("/similar/batch", b'{"queries": [NaN]}', "queries"),
        ("/train", b'{"corpus_id": "CORPUS", "alpha": NaN}', "alpha"),
        ("/train", b'{"corpus_id": "CORPUS", "alpha": 1e400}', "alpha"),
        ("/train", b'{"corpus_id": "CORPUS", "sample": -Infinity}', "sample"),
        ("/train", b'{"corpus_id": "CORPUS", "ns_exponent": NaN}', "ns_exponent"),
        ("/train", b'{"corpus_id": "CORPUS", "vector_size": -1e999}', "vector_size"),
        # Numbers and booleans as strings are refused alike, floats as integers are.
        ("/train", b'{"corpus_id": "CORPUS", "alpha": "0.1"}', "alpha"),
        ("/train", b'{"corpus_id": "CORPUS", "epochs": "3"}', "epochs"),
        ("/train", b'{"corpus_id": "CORPUS", "lowercase": "true"}', "lowercase"),
    ],
)
def test_nan_and_infinity_in_json_bodies_are_422_naming_the_field(
    client: TestClient, model_id: str, path: str, body: bytes, field: str
) -> None:
    corpus = corpus_upload(client, b"a b c\n")
    r = client.post(path, content=body.replace(b"CORPUS", corpus["id"].encode()), headers=JSON)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    errors = strict_json(r.text)["detail"]
    assert errors and all(e["loc"][:2] == ["body", field] for e in errors), errors
    assert client.get("/jobs").json() == []


def test_an_unexpected_exception_is_a_json_500(settings: Settings, layout: StoreLayout, monkeypatch: Any) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:

        def broken(*_: Any, **__: Any) -> None:
            raise RuntimeError("/secret/internal/path exploded")

        monkeypatch.setattr(c.app.state.services.corpora, "list", broken)  # type: ignore[attr-defined]
        r = c.get("/corpora")
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        assert "internal server error" in r.json()["detail"]
        assert "secret" not in r.text and "Traceback" not in r.text


# ------------------------------------------------------------------------------------ library messages


def test_evaluation_errors_name_the_parameter_and_no_server_path(
    client: TestClient, layout: StoreLayout, model_id: str
) -> None:
    pairs = b"king\tqueen\t9.0\nman\twoman\t8.0\nking\tapple\t1.0\n"
    r = client.post(f"/models/{model_id}/evaluate", params={"restrict_vocab": 1, "kind": "word_pairs"}, content=pairs)
    assert r.status_code == 422
    error = only_error(r)
    assert error["loc"] == ["query", "restrict_vocab"]
    assert error["msg"].startswith("restrict_vocab must be larger: only 0 of 3 pairs")
    assert "305 words" in error["msg"]
    assert str(layout.root) not in r.text and "/tmp" not in r.text and ".part" not in r.text
    # With the whole vocabulary searched, the file is what falls short.
    few = b"king\tqueen\t9.0\nzzz\tyyy\t8.0\nxxx\tqueen\t1.0\n"
    r = client.post(f"/models/{model_id}/evaluate", params={"kind": "word_pairs"}, content=few)
    assert r.status_code == 422
    error = only_error(r)
    assert error["loc"] == ["body"]
    assert error["msg"].startswith("the uploaded file: only 1 of 3 pairs")
    assert str(layout.root) not in r.text and ".part" not in r.text
    assert client.get(f"/models/{model_id}").json()["evaluations"] == []
    assert list(layout.tmp.iterdir()) == []


def test_import_format_advice_names_the_api_parameter(client: TestClient, layout: StoreLayout) -> None:
    # Line 2 is not a text record, so the file is read as binary, and fails as that too.
    r = client.post("/models/import", content=b"1 3\nfoo 1 0\n")
    assert r.status_code == 422
    msg = only_error(r)["msg"]
    assert "pass format=word2vec-text or format=word2vec-binary to force a format" in msg
    assert "binary=" not in msg
    assert_nothing_stored(client, layout)


def test_import_reads_the_first_vectors_and_words_cut_inside_a_character_when_asked(
    client: TestClient, layout: StoreLayout
) -> None:
    cut = "ありがとう".encode() + b"\xe3\x83"  # as word2vec.c cuts a long word, inside a character
    body = b"3 2\n" + cut + b" 1 2\nok 3 4\nmore 5 6\n"
    r = client.post("/models/import", content=body)
    assert r.status_code == 422
    msg = only_error(r)["msg"]
    assert "not valid UTF-8" in msg and "pass unicode_errors=replace or unicode_errors=ignore" in msg
    assert_nothing_stored(client, layout)

    r = client.post("/models/import?unicode_errors=replace&limit=2", content=body)
    assert r.status_code == 201, r.text
    assert r.json()["vocab_size"] == 2
    model_id = r.json()["model_id"]
    assert client.get(f"/vector?word=ok&model={model_id}").json()["vector"] == [3.0, 4.0]
    assert client.get(f"/vector?word=more&model={model_id}").status_code == 404
    assert client.get(f"/vector?word=ありがとう\ufffd&model={model_id}").status_code == 200

    assert client.post("/models/import?limit=0", content=body).status_code == 422
    assert client.post("/models/import?unicode_errors=skip", content=body).status_code == 422


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"text": "a b c"}'),
        ("application/x-www-form-urlencoded", b"text=a+b+c"),
        (None, b'{"text": "a b c"}'),
    ],
)
def test_a_json_body_sent_as_something_else_says_which_content_type(
    client: TestClient, content_type: str | None, body: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/train", content=body, headers=headers)
    assert r.status_code == 422
    error = only_error(r)
    assert error["loc"] == ["body"]
    assert "send JSON with Content-Type: application/json" in error["msg"]
    if content_type:
        assert f"(got {content_type})" in error["msg"]
    # A JSON body of the wrong shape is still described as such, without the Content-Type advice.
    r = client.post("/train", content=b'["a b c"]', headers=JSON)
    assert r.status_code == 422 and only_error(r)["msg"] == "the body must be a JSON object"
    assert client.get("/corpora").json() == []


def test_an_upload_sent_as_json_or_form_fields_is_refused_not_stored_as_the_file(
    client: TestClient, layout: StoreLayout
) -> None:
    r = client.post("/corpora", json={"text": "hello world"})
    assert r.status_code == 415 and 'POST /train with {"text": "..."}' in r.json()["detail"]
    r = client.post("/corpora", data={"text": "hello world", "name": "x"})  # what requests' data= sends
    assert r.status_code == 422 and "an HTML form's fields" in only_error(r)["msg"]
    assert "curl -F file=@corpus.txt" in only_error(r)["msg"]
    r = client.post("/models/import", json={"a": [1, 2]})
    assert r.status_code == 415 and "curl -F file=@vectors.bin" in r.json()["detail"] and "/train" not in r.text
    assert_nothing_stored(client, layout)
    # curl --data-binary labels a file as form fields unless told otherwise: a file it stays.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = client.post("/corpora", content=b"the cat sat\non the mat\n", headers=form)
    assert r.status_code == 201 and r.json()["lines"] == 2


def test_a_form_with_two_files_is_refused_not_cut_to_the_first(client: TestClient, layout: StoreLayout) -> None:
    files = [("file", ("a.txt", b"one two\n")), ("file", ("b.txt", b"three four\n"))]
    r = client.post("/corpora", files=files)
    assert r.status_code == 422 and "more than one 'file' field" in only_error(r)["msg"]
    assert "cat a.txt b.txt" in only_error(r)["msg"]
    r = client.post("/models/import", files=files)  # two vectors files do not join by cat
    assert r.status_code == 422 and "cat " not in only_error(r)["msg"]
    assert_nothing_stored(client, layout)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bz2", "xz"])
def test_compressed_evaluation_files_are_read_like_plain_ones(client: TestClient, model_id: str, compress: Any) -> None:
    analogies = b": planted\nman king woman queen\nman king woman apple\n"
    pairs = b"king,queen,9.0\nman,woman,8.0\nking,apple,1.0\n"
    for content, kind in ((analogies, "analogies"), (pairs, "word_pairs")):
        plain = client.post(f"/models/{model_id}/evaluate", content=content)
        # The kind and the delimiter are told from the decompressed text, as from a plain file.
        packed = client.post(f"/models/{model_id}/evaluate", content=compress(content))
        assert plain.status_code == packed.status_code == 200, packed.text
        assert packed.json()["kind"] == kind
        assert packed.json()["result"] == plain.json()["result"]


@pytest.mark.parametrize("kind", ["auto", "word_pairs", "analogies"])
def test_a_damaged_compressed_evaluation_file_is_422(client: TestClient, model_id: str, kind: str) -> None:
    pairs = gzip.compress(b"king\tqueen\t9.0\nman\twoman\t8.0\n" * 2000)
    for body in (pairs[: len(pairs) // 2], b"\x1f\x8b\x08\x00garbage" * 10):
        r = client.post(f"/models/{model_id}/evaluate", params={"kind": kind}, content=body)
        assert r.status_code == 422, r.text
        assert "store" not in only_error(r)["msg"]  # no server path


# ------------------------------------------------------------------------------------ uploads


def test_importing_a_file_without_vectors_is_422_and_keeps_the_default_model(
    client: TestClient, layout: StoreLayout, model_id: str
) -> None:
    for body in (b"0 5\n", gzip.compress(b"0 5\n")):
        r = client.post("/models/import", content=body)
        assert r.status_code == 422
        assert "the file holds no vectors" in only_error(r)["msg"]
    assert [m["model_id"] for m in client.get("/models").json()] == [model_id]
    assert client.get("/similar", params={"word": "king"}).status_code == 200
    assert queued_messages(layout) == []
    assert list(layout.tmp.iterdir()) == []


BAD_NAMES = ["x\x01y", "tab\there", "new\nline", "del\x7f", "n" * 201]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_form_name_gets_the_checks_of_the_query_name(client: TestClient, layout: StoreLayout, name: str) -> None:
    for path, file in (("/corpora", b"a b c\n"), ("/models/import", b"1 2\nw 1 0\n")):
        r = client.post(path, params={"name": name}, files={"file": ("f.txt", file)})
        assert r.status_code == 422
        assert only_error(r)["loc"] == ["query", "name"]
        r = client.post(path, files={"file": ("f.txt", file)}, data={"name": name})
        assert r.status_code == 422, r.text
        error = only_error(r)
        assert error["loc"] == ["body", "name"]
        assert error["msg"].startswith("String should")
    assert_nothing_stored(client, layout)


def test_a_blank_form_name_is_no_name(client: TestClient) -> None:
    r = client.post("/corpora", files={"file": ("f.txt", b"a b\n")}, data={"name": ""})
    assert r.status_code == 201 and r.json()["name"] is None
    r = client.post("/models/import", files={"file": ("f.txt", b"1 2\nw 1 0\n")}, data={"name": "ok name"})
    assert r.status_code == 201 and r.json()["name"] == "ok name"


TEXT = "the quick brown fox\njumps over the lazy dog\n"


@pytest.mark.parametrize(
    ("data", "advice"),
    [
        (TEXT.encode("utf-16"), "iconv -f UTF-16 -t UTF-8"),  # with a byte order mark
        (TEXT.encode("utf-16-be"), "iconv -f UTF-16"),  # without one: NUL bytes
        (b"\xfe\xff" + TEXT.encode("utf-16-be"), "iconv -f UTF-16 -t UTF-8"),
        (TEXT.encode("utf-32"), "iconv -f UTF-32 -t UTF-8"),
        (gzip.compress(TEXT.encode("utf-16")), "iconv -f UTF-16 -t UTF-8"),
        (bz2.compress(TEXT.encode("utf-16-le")), "iconv -f UTF-16"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 20, "zip"),
    ],
    ids=["utf16-bom", "utf16be-no-bom", "utf16be-bom", "utf32", "gzip-utf16", "bz2-utf16le-no-bom", "zip"],
)
def test_a_corpus_that_is_not_utf8_text_is_422_saying_how_to_convert(
    client: TestClient, layout: StoreLayout, data: bytes, advice: str
) -> None:
    for send in (
        lambda: client.post("/corpora", content=data, headers={"Content-Type": "text/plain"}),
        lambda: client.post("/corpora", files={"file": ("corpus.txt", data)}),
    ):
        r = send()
        assert r.status_code == 422, r.text
        error = only_error(r)
        assert error["loc"] == ["body"]
        assert "the corpus must be UTF-8 text" in error["msg"] and advice in error["msg"]
    assert_nothing_stored(client, layout)


def test_an_xz_corpus_is_taken_as_compressed_text(client: TestClient, layout: StoreLayout) -> None:
    text = TEXT.encode() * 50
    body = corpus_upload(client, lzma.compress(text))
    assert (body["compression"], body["lines"], body["text_bytes"]) == ("xz", 100, len(text))
    assert (layout.corpora / f"{body['id']}.txt.xz").exists()
    r = client.post("/corpora", content=b"\xfd7zXZ\x00 but not xz data", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "xz data but does not decompress" in only_error(r)["msg"]


def test_invalid_utf8_bytes_are_counted_not_refused(client: TestClient) -> None:
    # é in Latin-1 (1 byte), a UTF-8-encoded surrogate (3 bytes), a lone continuation byte (1).
    body = corpus_upload(client, b"caf\xe9 na\xc3\xafve\n\xed\xa0\x80 ok \x80\n")
    assert (body["lines"], body["invalid_utf8_bytes"]) == (2, 5)
    assert corpus_upload(client, TEXT.encode())["invalid_utf8_bytes"] == 0
    assert corpus_upload(client, bz2.compress(b"\xef\xbf\xbd is U+FFFD itself\n"))["invalid_utf8_bytes"] == 0
    # A character split across the 1 MiB blocks the upload is read in is still valid; a
    # truncated one at the very end is not.
    edge = b"a" * ((1 << 20) - 1) + "é\n".encode()
    assert corpus_upload(client, gzip.compress(edge))["invalid_utf8_bytes"] == 0
    assert corpus_upload(client, b"a b\n\xc3")["invalid_utf8_bytes"] == 1
    assert client.get(f"/corpora/{body['id']}").json()["invalid_utf8_bytes"] == 5


@pytest.mark.parametrize(
    "body",
    [
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nhello',
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nhello\r\n--xyz',
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nhello\r\n--xyz\r\n',
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n',
        b"--xyz\r\n",
        b"",
    ],
    ids=["in-data", "in-boundary", "after-boundary", "in-headers", "after-first-boundary", "empty"],
)
def test_a_multipart_body_cut_off_before_its_end_is_refused(
    client: TestClient, layout: StoreLayout, body: bytes
) -> None:
    for path in ("/corpora", "/models/import"):
        r = client.post(path, content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 422, (path, r.text)
        assert "cut off" in only_error(r)["msg"]
    assert_nothing_stored(client, layout)
    complete = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nhello\r\n--xyz--\r\n'
    r = client.post("/corpora", content=complete, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 201 and r.json()["text_bytes"] == 5


def test_startup_removes_partial_uploads_and_exports_a_killed_api_left(settings: Settings) -> None:
    layout = StoreLayout.at(settings.store)
    layout.ensure()
    stale = [
        layout.tmp / "upload-a.part",
        layout.tmp / "inline-b.part",
        layout.tmp / "export-d.bin",
        layout.tmp / ".export-e.txt.x1y2.tmp",  # killed while writing it
    ]
    live, other = layout.tmp / "upload-c.part", layout.tmp / "deleted-model"
    for path in (*stale, live):
        path.write_bytes(b"half a corpus")
    other.mkdir()
    for path in (*stale, other):
        os.utime(path, (0, time.time() - 7200))  # untouched for two hours
    with TestClient(create_app(settings)) as started:
        assert started.get("/healthz").status_code == 200
    assert [p.exists() for p in stale] == [False, False, False, False]
    assert live.exists() and other.exists()  # an upload in progress elsewhere; not an upload


def test_a_full_disk_is_507_and_leaves_nothing(client: TestClient, layout: StoreLayout, monkeypatch) -> None:
    def disk_full(self: Path, data: bytes) -> int:
        self.touch()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    r = client.post("/train", json={"text": "a b c"})
    monkeypatch.undo()
    assert r.status_code == 507 and "full" in r.json()["detail"]
    assert list(layout.tmp.iterdir()) == []
    assert_nothing_stored(client, layout)


def test_the_spec_s_multipart_bodies_say_what_the_server_enforces(client: TestClient) -> None:
    # A client generated from /openapi.json must know `file` is needed and what a name may be.
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/corpora", "/models/import", "/models/{model_id}/evaluate"):
        schema = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert schema["required"] == ["file"], path
        name = schema["properties"]["name"]
        assert (name["minLength"], name["maxLength"], name["pattern"]) == (1, 200, r"^[^\x00-\x1f\x7f]+$")
    without_file = b'--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\nfoo\r\n--xyz--\r\n'
    r = client.post("/corpora", content=without_file, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 422 and "no field named 'file'" in only_error(r)["msg"]


# ------------------------------------------------------------------------------------ submit against delete


class Interleaving:
    """Makes one request stop at a chosen step until the other request has got as far as it can.

    `pause_at` wraps a method so that its first call waits until `proceed` is set; every call
    of the job store's `exclusive` with the corpus lock's name while one is paused sets it,
    because from there the other request can only wait for the lock (a fixed API) or has
    already done its check (without the lock), either way without help from the paused one.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, jobs: Any, lock_name: str) -> None:
        self.paused = threading.Event()
        self.proceed = threading.Event()
        real_exclusive = jobs.exclusive

        @contextlib.contextmanager
        def exclusive(name: str, timeout_s: float = 10.0) -> Iterator[None]:
            if name == lock_name and self.paused.is_set():
                self.proceed.set()
            with real_exclusive(name, timeout_s):
                yield

        monkeypatch.setattr(jobs, "exclusive", exclusive)

    def pause_at(self, monkeypatch: pytest.MonkeyPatch, owner: Any, method: str) -> None:
        real = getattr(owner, method)

        def paused(*args: Any, **kwargs: Any) -> Any:
            if not self.paused.is_set():
                self.paused.set()
                assert self.proceed.wait(30), "the other request never came"
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, method, paused)

    def run(self, first: Any, second: Any) -> tuple[int, int]:
        """Start `first`; once it is paused, run `second`; the two status codes."""
        codes: dict[str, int] = {}

        def call(key: str, request: Any) -> None:
            try:
                codes[key] = request().status_code
            finally:
                if key == "second":
                    self.proceed.set()  # finished: nothing more to wait for

        a = threading.Thread(target=call, args=("first", first))
        a.start()
        assert self.paused.wait(30)
        b = threading.Thread(target=call, args=("second", second))
        b.start()
        a.join(30)
        b.join(30)
        return codes["first"], codes["second"]


def test_a_corpus_cannot_be_deleted_between_the_check_and_the_job_that_needs_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = corpus_upload(client, b"a b c\n")
    services = client.app.state.services  # type: ignore[attr-defined]
    race = Interleaving(monkeypatch, services.jobs, f"corpus:{corpus['id']}")
    # The submission has checked that the corpus exists and is about to create its job.
    race.pause_at(monkeypatch, services.jobs, "create")
    submitted, deleted = race.run(
        lambda: client.post("/train", json={"corpus_id": corpus["id"]}),
        lambda: client.delete(f"/corpora/{corpus['id']}"),
    )
    assert (submitted, deleted) == (202, 409)
    assert client.get(f"/corpora/{corpus['id']}").status_code == 200
    assert [j["state"] for j in client.get("/jobs").json()] == ["queued"]


def test_a_job_cannot_be_submitted_on_a_corpus_being_deleted(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = corpus_upload(client, b"a b c\n")
    services = client.app.state.services  # type: ignore[attr-defined]
    race = Interleaving(monkeypatch, services.jobs, f"corpus:{corpus['id']}")
    # The deletion has found no unfinished job on the corpus and is about to delete it.
    race.pause_at(monkeypatch, services.corpora, "delete")
    deleted, submitted = race.run(
        lambda: client.delete(f"/corpora/{corpus['id']}"),
        lambda: client.post("/train", json={"corpus_id": corpus["id"]}),
    )
    assert (deleted, submitted) == (204, 404)
    assert client.get("/jobs").json() == []
    assert client.get("/corpora").json() == []


# ------------------------------------------------------------------------------------ HEAD


def test_head_answers_wherever_get_does(client: TestClient, layout: StoreLayout, model_id: str) -> None:
    for path, params in [
        ("/healthz", {}),
        ("/models", {}),
        (f"/models/{model_id}", {}),
        ("/similar", {"word": "king"}),
        (f"/models/{model_id}/export", {"format": "word2vec-text"}),
        ("/", {}),
    ]:
        got, head = client.get(path, params=params), client.head(path, params=params)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers.get("content-length") == got.headers.get("content-length"), path
    assert client.head(f"/models/{MISSING_ID}").status_code == 404
    assert list(layout.tmp.iterdir()) == []  # the export's temporary file went as after a GET
    # A stream answers with its headers and ends.
    job = client.post("/train", json={"text": "a b c"}).json()
    r = client.head(f"/jobs/{job['job_id']}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream") and r.content == b""
    # HEAD is not a method of its own for POST-only paths, and 405s list it next to GET.
    assert client.head("/train").status_code == 405
    r = client.delete("/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json()["detail"] == "DELETE is not allowed on /models; it takes GET, HEAD"
    r = client.post("/similar", json={"word": "king"})
    assert r.status_code == 405 and "POST /similar/batch" in r.json()["detail"]
    assert client.post("/models").headers["allow"] == "GET, HEAD"
    # Counted as HEAD requests of the route that answered them.
    metrics = client.get("/metrics").text
    assert 'w2v_http_requests_total{method="HEAD",route="/models/{model_id}",status="200"} 1.0' in metrics


JSON = {"Content-Type": "application/json"}


def test_timestamps_always_carry_milliseconds(client: TestClient) -> None:
    import re

    from app.schemas import CorpusPublic

    shape = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
    whole_second = CorpusPublic(id="c", bytes=1, lines=1, text_bytes=1, compression="none",
                                created_at="2026-01-02T03:04:05+00:00")  # type: ignore[arg-type]
    assert json.loads(whole_second.model_dump_json())["created_at"] == "2026-01-02T03:04:05.000+00:00"
    corpus = client.post("/corpora", content=b"a b c\n", headers={"Content-Type": "text/plain"}).json()
    assert shape.match(corpus["created_at"]), corpus["created_at"]
    job = client.post("/train", json={"corpus_id": corpus["id"]}).json()
    assert shape.match(client.get(f"/jobs/{job['job_id']}").json()["created_at"])
    schema = client.get("/openapi.json").json()["components"]["schemas"]["CorpusPublic"]
    assert schema["properties"]["created_at"]["format"] == "date-time"


def test_a_corpus_of_whitespace_only_is_422_not_a_job_that_fails(client: TestClient, layout: StoreLayout) -> None:
    # Whitespace as the trainer's str.split() knows it: Unicode's too, not only ASCII's.
    blanks = (
        b" \n\t\r\n   \n" * 1000,
        "\ufeff\n  \n".encode(),  # a byte order mark is no word either
        "\u3000\u00a0\n\x1c\x1f\u2028 \x0b\n".encode() * 100,
    )
    for blank in blanks:
        for r in (
            client.post("/corpora", content=blank, headers={"Content-Type": "text/plain"}),
            client.post("/corpora", content=gzip.compress(blank), headers={"Content-Type": "text/plain"}),
            client.post("/train", json={"text": blank.decode()[:1500]}),
        ):
            assert r.status_code == 422, r.text
            assert "only whitespace" in only_error(r)["msg"]
    assert_nothing_stored(client, layout)
    # One word anywhere, even after a megabyte of blanks, is a corpus.
    late = b" \n" * (1 << 20) + "\u3000mot\n".encode()
    assert client.post("/corpora", content=late, headers={"Content-Type": "text/plain"}).status_code == 201


def test_a_lock_held_too_long_is_503_with_retry_after(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.jobs import LockBusy

    corpus = corpus_upload(client, b"a b c\n")
    services = client.app.state.services  # type: ignore[attr-defined]

    def busy(name: str, timeout_s: float = 10.0) -> Any:
        raise LockBusy(f"lock {name!r} is busy")

    monkeypatch.setattr(services.jobs, "exclusive", busy)
    for r in (client.post("/train", json={"corpus_id": corpus["id"]}), client.delete(f"/corpora/{corpus['id']}")):
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "retry" in r.json()["detail"]
    monkeypatch.undo()
    assert client.get(f"/corpora/{corpus['id']}").status_code == 200 and client.get("/jobs").json() == []


@pytest.mark.parametrize("multipart", [False, True])
def test_a_client_that_disconnects_mid_upload_is_an_answer_not_a_server_error(tmp_path: Path, multipart: bool) -> None:
    import anyio
    from fastapi import HTTPException
    from starlette.requests import Request

    from app.uploads import receive_upload

    first = b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nhalf a ' if multipart else b"half a "
    messages = [{"type": "http.request", "body": first, "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    content_type = b"multipart/form-data; boundary=xyz" if multipart else b"text/plain"
    scope = {"type": "http", "method": "POST", "path": "/corpora", "headers": [(b"content-type", content_type)]}

    async def upload() -> None:
        await receive_upload(Request(scope, receive), tmp_path, 1 << 20, kind="corpus")

    with pytest.raises(HTTPException) as raised:
        anyio.run(upload)
    assert raised.value.status_code == 400 and "disconnected" in raised.value.detail
    assert list(tmp_path.iterdir()) == []  # the partial upload is removed


@pytest.mark.parametrize(
    "text",
    [
        b"one\rtwo\rthree",  # classic Mac line ends
        b"one\r\ntwo\r\n\r\nthree\r\n",
        b"mixed\rends\nhere\r\n\rlast",
        b"a" * (2**20 - 1) + b"\r\nb c\rd\n",  # a "\r\n" split between two read blocks
        b"a" * (2**20 - 1) + b"\r" + b"\rb",
    ],
)
def test_an_uploads_line_count_is_the_lines_training_reads(tmp_path: Path, text: bytes) -> None:
    import io

    from app.corpora import count_text

    path = tmp_path / "c.txt"
    path.write_bytes(text)
    read = io.TextIOWrapper(io.BytesIO(text), encoding="utf-8", newline=None).readlines()
    assert count_text(path, "none").lines == len(read)


def test_a_query_of_a_word_with_no_direction_is_422(client: TestClient) -> None:
    r = client.post("/models/import", content=b"4 2\na 1 2\nz 0 0\nb 3 4\nc -1 0.5\n")
    assert r.status_code == 201
    model_id = r.json()["model_id"]
    for path, params in (
        ("/similar", {"word": "z"}),
        ("/analogy", {"a": "a", "b": "b", "c": "z"}),
        ("/similar", [("positive", "a"), ("negative", "a")]),
    ):
        r = client.get(path, params=[*(params.items() if isinstance(params, dict) else params), ("model", model_id)])
        assert r.status_code == 422, r.text
        assert "no direction" in only_error(r)["msg"]
    assert client.get("/similar", params={"word": "a", "model": model_id}).status_code == 200


def test_cross_origin_pages_are_answered_only_for_the_configured_origins(settings: Settings) -> None:
    origin = {"Origin": "https://app.example.com"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    with TestClient(create_app(settings)) as closed:
        assert "access-control-allow-origin" not in closed.get("/healthz", headers=origin).headers
        assert closed.options("/similar/batch", headers=preflight).status_code == 405
    opened = settings.model_copy(update={"cors_origins": ["https://app.example.com"], "api_keys": ["k" * 32]})
    with TestClient(create_app(opened)) as c:
        r = c.options("/similar/batch", headers=preflight)  # no key needed to ask
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
        r = c.get("/models", headers=origin)  # a refusal carries the headers too, or the page cannot read it
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = c.get("/models", headers={**origin, "X-API-Key": "k" * 32})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        other = c.get("/models", headers={"Origin": "https://evil.example", "X-API-Key": "k" * 32})
        assert "access-control-allow-origin" not in other.headers
    assert Settings(cors_origins="https://a.example, http://b.example:8080").cors_origins == [  # type: ignore[arg-type]
        "https://a.example",
        "http://b.example:8080",
    ]
    # Written as a browser sends it: lower case, no trailing slash.
    assert Settings(cors_origins="HTTPS://App.Example.com/").cors_origins == ["https://app.example.com"]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheme://host"):
        Settings(cors_origins="https://app.example.com/page")  # type: ignore[arg-type]
