"""Shared fixtures: small real corpora shipped with gensim (a dev dependency)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
