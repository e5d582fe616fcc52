"""The /similar fast path answers only what the app would answer with 200, byte for byte,
checks keys, ownership and the rate limit as the app does, and hands everything else over."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.auth import key_owner
from app.fastpath import SimilarFromTable
from app.main import create_app
from app.settings import Settings
from model import Vectors
from model.cli import main as cli_main
from model.neighbours import build_neighbours
from tests.test_api import make_vectors, put_model
from tests.test_metrics import scrape, value
from worker.storage import StoreLayout

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KEY_A = "key-a-" + "1" * 26
KEY_B = "key-b-" + "2" * 26


def indexed_vectors(seed: int = 4, table_words: int = 100) -> Vectors:
    vectors = make_vectors(seed=seed)
    vectors.attach_neighbours(build_neighbours(vectors, k=10, words=table_words))
    return vectors


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # The store trusts a models-folder listing only once the folder has been unchanged for a
    # while (app/modelstore.py); these tests write a model and query it at once.
    monkeypatch.setattr("app.modelstore._SETTLE_NS", 0)
    return Settings(store=tmp_path / "store", broker_url=None)


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per /similar request the fast path looked at: whether it answered it."""
    seen: list[bool] = []
    real = SimilarFromTable._answer

    def spy(self: SimilarFromTable, scope: Any) -> bytes | None:
        body = real(self, scope)
        seen.append(body is not None)
        return body

    monkeypatch.setattr(SimilarFromTable, "_answer", spy)
    return seen


def app_only(client: TestClient, monkeypatch: pytest.MonkeyPatch, params: Any, **kw: Any) -> Any:
    """The same request with the fast path switched off: what the app itself answers."""
    with monkeypatch.context() as m:
        m.setattr(SimilarFromTable, "_answer", lambda self, scope: None)
        return client.get("/similar", params=params, **kw)


@pytest.fixture
def model_id(layout: StoreLayout) -> str:
    return put_model(layout, indexed_vectors(), name="indexed")


def test_table_hits_are_answered_before_the_app_with_its_exact_bytes(
    client: TestClient, model_id: str, answered: list[bool], monkeypatch
) -> None:
    client.get("/similar", params={"word": "king"})  # the first use loads the model (the app's job)
    answered.clear()
    for params in [
        {"word": "king"},
        {"word": "queen", "topn": "3", "model": model_id},
        {"word": "w7", "topn": "10", "restrict_vocab": "1000"},
        {"word": "w50", "restrict_vocab": "305"},
    ]:
        fast = client.get("/similar", params=params)
        assert answered.pop() is True
        slow = app_only(client, monkeypatch, params)
        assert fast.status_code == slow.status_code == 200
        assert fast.content == slow.content
        assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
        assert fast.headers["content-length"] == slow.headers["content-length"]


@pytest.mark.parametrize(
    "params",
    [
        {"word": "nosuchword"},  # unknown: the app's 404 names it
        {"word": ""},
        {"word": "x" * 1001},
        {"topn": "5"},  # no word
        {"word": "king", "topn": "0"},
        {"word": "king", "topn": "1001"},
        {"word": "king", "topn": "abc"},
        {"word": "king", "topn": "+5"},
        {"word": "king", "topn": "05"},
        {"word": "king", "restrict_vocab": "0"},
        {"word": "king", "restrict_vocab": "-1"},
        {"word": "king", "model": "../../etc"},
        {"word": "king", "model": "0" * 32},
        [("word", "king"), ("word", "queen")],
        [("word", "king"), ("positive", "queen")],
        {"word": "king", "negative": "man"},
        {"word": "king", "unexpected": "1"},
        {"word": "king", "topn": "11"},  # beyond the table's 10: searched
        {"word": "w200"},  # outside the table's 100 words: searched
    ],
)
def test_everything_else_is_the_apps_to_answer(
    client: TestClient, model_id: str, answered: list[bool], monkeypatch, params: Any
) -> None:
    client.get("/similar", params={"word": "king"})
    answered.clear()
    r = client.get("/similar", params=params)
    assert answered == [False]
    slow = app_only(client, monkeypatch, params)
    assert (r.status_code, r.content) == (slow.status_code, slow.content)


def test_a_model_not_yet_loaded_is_loaded_by_the_app(client: TestClient, model_id: str, answered) -> None:
    assert client.get("/similar", params={"word": "king"}).status_code == 200
    assert client.get("/similar", params={"word": "king"}).status_code == 200
    assert answered == [False, True]


def test_a_model_indexed_while_served_is_reloaded_with_its_table(
    client: TestClient, layout: StoreLayout, answered: list[bool]
) -> None:
    plain = put_model(layout, make_vectors(seed=4), name="plain")
    before = client.get("/similar", params={"word": "king"})
    assert before.status_code == 200 and client.get(f"/models/{plain}").json()["neighbours"] is None
    assert client.get("/similar", params={"word": "king"}).status_code == 200
    assert answered == [False, False]  # loaded, then searched: no table yet
    assert cli_main(["index", str(layout.model_dir(plain)), "--topn", "10"]) == 0
    assert client.get(f"/models/{plain}").json()["neighbours"] == {"words": 305, "k": 10}
    answered.clear()
    after = [client.get("/similar", params={"word": "king"}) for _ in range(2)]
    assert answered == [False, True]  # reloaded once by the app, then answered from the table
    assert before.content == after[0].content == after[1].content


@pytest.fixture
def keyed(settings: Settings, layout: StoreLayout) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"api_keys": [KEY_A, KEY_B]}))) as c:
        yield c


def test_keys_and_ownership_hold_on_the_fast_path(keyed: TestClient, layout: StoreLayout, answered) -> None:
    mine = put_model(layout, indexed_vectors(), owner=key_owner(KEY_A))
    params = {"word": "king", "model": mine}
    assert keyed.get("/similar", params=params, headers={"X-API-Key": KEY_A}).status_code == 200  # loads it
    answered.clear()
    assert keyed.get("/similar", params=params, headers={"X-API-Key": KEY_A}).status_code == 200
    assert keyed.get("/similar", params=params, headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 200
    assert answered == [True, True]
    answered.clear()
    assert keyed.get("/similar", params=params).status_code == 401
    assert keyed.get("/similar", params=params, headers={"X-API-Key": KEY_A + "x"}).status_code == 401
    assert keyed.get("/similar", params=params, headers={"Authorization": f"Basic {KEY_A}"}).status_code == 401
    # Another key's model is as good as absent, loaded or not.
    other = keyed.get("/similar", params=params, headers={"X-API-Key": KEY_B})
    assert other.status_code == 404
    assert answered == [False] * 4


def test_fast_answers_use_the_rate_limit_once_each(settings: Settings, layout: StoreLayout, answered) -> None:
    limited = settings.model_copy(update={"api_keys": [KEY_A], "rate_limit_per_s": 0.01, "rate_limit_burst": 4})
    put_model(layout, indexed_vectors(), owner=key_owner(KEY_A))
    with TestClient(create_app(limited)) as c:
        codes = [c.get("/similar", params={"word": "king"}, headers={"X-API-Key": KEY_A}).status_code for _ in range(6)]
        assert codes == [200, 200, 200, 200, 429, 429]
        assert answered == [False, True, True, True, False, False]  # the first loads the model
        r = c.get("/corpora", headers={"X-API-Key": KEY_A})
        assert r.status_code == 429 and "rate limit" in r.json()["detail"]


def test_fast_answers_are_counted_in_the_metrics(client: TestClient, model_id: str, answered) -> None:
    for _ in range(3):
        assert client.get("/similar", params={"word": "king"}).status_code == 200
    assert answered == [False, True, True]
    samples = scrape(client)
    assert value(samples, "w2v_http_requests_total", method="GET", route="/similar", status="200") == 3
