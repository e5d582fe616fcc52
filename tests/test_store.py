"""Model directories: round trip, mmap loading, checksums, atomic replacement."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from model import Model, ModelFormatError, Vectors, load_model, save_model, store
from model.atomic import atomic_file, publish_dir, save_array, staging_dir


def _model(n: int = 50, d: int = 8, seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(n)]
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    counts = np.arange(n, 0, -1, dtype=np.int64) * 10
    return Model(Vectors(words, vectors, counts), {"note": "test", "config": {"epochs": 1}})


def test_round_trip_with_mmap(tmp_path: Path) -> None:
    m = _model()
    save_model(tmp_path / "m", m)
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.vectors.vectors, np.memmap)
    np.testing.assert_array_equal(loaded.vectors.vectors, m.vectors.vectors)
    assert loaded.vectors.words == m.vectors.words
    np.testing.assert_array_equal(loaded.vectors.counts, m.vectors.counts)
    assert loaded.meta["note"] == "test" and loaded.meta["vocab_size"] == 50
    assert set(os.listdir(tmp_path)) == {"m"}, "no staging leftovers"
    assert np.load(tmp_path / "m" / "vectors.npy", mmap_mode="r").dtype == np.float32


def test_unicode_words_survive(tmp_path: Path) -> None:
    # \r, \x85, \u2028 and \x1c end lines for Python's universal newlines; a word2vec binary
    # file (gensim reads it) may hold any of them inside a word.
    words = ["naïve", "日本", "emoji😀", "tab\tword", "x", "cr\rword", "\r", "nel\x85", "ls\u2028", "fs\x1c"]
    n = len(words)
    m = Model(Vectors(words, np.eye(n, dtype=np.float32), np.ones(n, dtype=np.int64)))
    save_model(tmp_path / "m", m)
    assert load_model(tmp_path / "m").vectors.words == words


def test_a_word_with_a_line_break_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"'a\\nb' contains a line break"):
        Vectors(["ok", "a\nb"], np.eye(2, dtype=np.float32))
    assert not list(tmp_path.iterdir())


def test_undecodable_vocabulary_is_a_format_error(tmp_path: Path) -> None:
    save_model(tmp_path / "m", _model())
    (tmp_path / "m" / "vocab.tsv").write_bytes(b"w\xff0\t5\n")
    with pytest.raises(ModelFormatError, match="not valid UTF-8"):
        load_model(tmp_path / "m", verify=False)


def test_existing_model_is_not_overwritten_by_default(tmp_path: Path) -> None:
    save_model(tmp_path / "m", _model(seed=1))
    with pytest.raises(FileExistsError):
        save_model(tmp_path / "m", _model(seed=2))
    save_model(tmp_path / "m", _model(seed=2), overwrite=True)
    np.testing.assert_array_equal(load_model(tmp_path / "m").vectors.vectors, _model(seed=2).vectors.vectors)
    assert set(os.listdir(tmp_path)) == {"m"}


@pytest.mark.parametrize("victim", ["vectors.npy", "vocab.tsv"])
def test_corrupted_file_fails_checksum(tmp_path: Path, victim: str) -> None:
    save_model(tmp_path / "m", _model())
    path = tmp_path / "m" / victim
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="checksum"):
        load_model(tmp_path / "m")


def test_truncated_and_missing_parts_are_refused(tmp_path: Path) -> None:
    save_model(tmp_path / "m", _model())
    vec = tmp_path / "m" / "vectors.npy"
    vec.write_bytes(vec.read_bytes()[:100])
    with pytest.raises(ModelFormatError):
        load_model(tmp_path / "m")
    with pytest.raises(ModelFormatError, match="not a model directory"):
        load_model(tmp_path)
    (tmp_path / "m" / "meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFormatError):
        load_model(tmp_path / "m")


def test_failed_save_leaves_old_model_intact(tmp_path: Path) -> None:
    save_model(tmp_path / "m", _model(seed=1))
    broken = _model(seed=2)
    broken.meta["unserialisable"] = object()  # json.dumps fails after the arrays are written
    with pytest.raises(TypeError):
        save_model(tmp_path / "m", broken, overwrite=True)
    loaded = load_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.vectors.vectors, _model(seed=1).vectors.vectors)
    assert set(os.listdir(tmp_path)) == {"m"}


def test_publish_dir_swaps_whole_directories(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    (target / "a").write_text("old")
    stage = staging_dir(target)
    (stage / "a").write_text("new")
    publish_dir(stage, target, overwrite=True)
    assert (target / "a").read_text() == "new"
    assert not stage.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_rewriting_only_if_exists_never_brings_a_deleted_model_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:  # the path taken where the kernel or filesystem has no atomic exchange
        monkeypatch.setattr("model.atomic._exchange", lambda a, b: None)
    target = tmp_path / "m"
    save_model(target, _model(seed=0))
    assert save_model(target, _model(seed=1), only_if_exists=True)
    np.testing.assert_array_equal(load_model(target).vectors.vectors, _model(seed=1).vectors.vectors)
    assert set(os.listdir(tmp_path)) == {"m"}

    # Deleted while the new version was being written: it stays deleted, and no staging is left.
    real_stage = store.staging_dir

    def stage_then_delete(path: Path) -> Path:
        stage = real_stage(path)
        shutil.rmtree(target)
        return stage

    monkeypatch.setattr(store, "staging_dir", stage_then_delete)
    assert not save_model(target, _model(seed=2), only_if_exists=True)
    assert os.listdir(tmp_path) == []
    assert not save_model(target, _model(seed=2), only_if_exists=True)  # and never created from nothing
    assert os.listdir(tmp_path) == []


def test_atomic_file_keeps_old_content_on_error(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"v": 1}))
    with pytest.raises(RuntimeError), atomic_file(path, "w") as fh:
        fh.write('{"v": 2')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["f.json"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_arrays_are_written_as_np_save_writes_them_and_a_full_disk_says_so(tmp_path: Path) -> None:
    # NumPy's own writer reports a full disk without an errno (or not at all), so the worker
    # could not tell a full disk from any other failure and fail the job with that reason.
    arr = np.random.default_rng(0).random((3000, 7), dtype=np.float32)
    np.save(tmp_path / "theirs.npy", arr, allow_pickle=False)
    save_array(tmp_path / "ours.npy", arr)
    assert (tmp_path / "ours.npy").read_bytes() == (tmp_path / "theirs.npy").read_bytes()
    with pytest.raises(OSError) as raised:
        save_array(Path("/dev/full"), arr)
    assert raised.value.errno == errno.ENOSPC
