"""Shared fixtures: small real corpora shipped with gensim (a dev dependency), and the
process and Redis fixtures of the end-to-end and fault tests."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from app.settings import Settings
    from model import Vectors
    from tests.test_service_e2e import Processes
    from worker.storage import StoreLayout


def gensim_data(name: str) -> Path:
    from gensim.test.utils import datapath

    return Path(datapath(name))


@pytest.fixture(scope="session")
def lee_path() -> Path:
    return gensim_data("lee_background.cor")


@pytest.fixture(scope="session")
def lee_sentences(lee_path: Path) -> list[list[str]]:
    from gensim.utils import simple_preprocess

    with lee_path.open(encoding="utf-8") as fh:
        return [simple_preprocess(line) for line in fh]


@pytest.fixture(scope="session")
def lee_text(tmp_path_factory: pytest.TempPathFactory, lee_sentences: list[list[str]]) -> Path:
    """lee_background as a lower-cased, punctuation-free text file, one document per line."""
    path = tmp_path_factory.mktemp("corpus") / "lee.txt"
    path.write_text("".join(" ".join(s) + "\n" for s in lee_sentences), encoding="utf-8")
    return path


class TrackerUpdate(NamedTuple):
    raw_words: int
    trained: int
    loss: float
    alpha: float


@pytest.fixture
def tracker_updates(monkeypatch: pytest.MonkeyPatch) -> list[TrackerUpdate]:
    """Every update the trainer's progress tracker receives (one per CPU job, GPU launch or
    minibatch read-back), in order."""
    import model.trainer as trainer

    updates: list[TrackerUpdate] = []
    add = trainer._Tracker.add

    def spy(self: trainer._Tracker, raw_words: int, trained: int, loss: float, alpha: float) -> None:
        updates.append(TrackerUpdate(raw_words, trained, loss, alpha))
        add(self, raw_words, trained, loss, alpha)

    monkeypatch.setattr(trainer._Tracker, "add", spy)
    return updates


def neighbour_overlap(a: Vectors, b: Vectors, words: Sequence[str], topn: int = 20) -> float:
    """Mean share of the `topn` neighbours that two models give the same words."""
    shared = []
    for word in words:
        ours = {w for w, _ in a.most_similar(word, topn=topn)}
        theirs = {w for w, _ in b.most_similar(word, topn=topn)}
        shared.append(len(ours & theirs) / topn)
    return sum(shared) / len(shared)


def _gpu_available() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _gpu_available():
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# ---------------------------------------------------------------------- processes and Redis (e2e, faults)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Child processes of one test (API, workers), each killed with its group afterwards."""
    from tests.test_service_e2e import Processes

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()
        print(procs.dump_logs())  # pytest shows captured output only when the test failed


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A key namespace of the test's own on the shared Redis, deleted afterwards."""
    import redis

    from tests.test_service_e2e import REDIS_URL

    r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis server at {REDIS_URL}")
    namespace = f"w2ve2e-{uuid.uuid4().hex[:12]}"
    try:
        yield namespace
    finally:
        keys = list(r.scan_iter(f"{namespace}:*"))
        if keys:
            r.delete(*keys)


@pytest.fixture(scope="module")
def corpus_gz(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """gensim's lee_background corpus, eight times over (about 0.5 M words), gzipped."""
    from gensim.test.utils import datapath

    text = Path(datapath("lee_background.cor")).read_bytes().rstrip(b"\n") + b"\n"
    return gzip.compress(text * 8)


@pytest.fixture
def layout(settings: Settings) -> StoreLayout:
    """The store of the module's own `settings` fixture, created."""
    from worker.storage import StoreLayout

    layout = StoreLayout.at(settings.store)
    layout.ensure()
    return layout


@pytest.fixture
def client(settings: Settings, layout: StoreLayout) -> Iterator[TestClient]:
    """An in-process API over the module's `settings` (lifespan runs: `with TestClient`)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c
