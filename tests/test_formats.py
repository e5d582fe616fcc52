"""word2vec text/binary files must round-trip with ours and with gensim in both directions."""

from __future__ import annotations

import bz2
import gzip
import os
import struct

import numpy as np
import pytest
from gensim.models import KeyedVectors

from model.errors import ModelFormatError, ParameterError
from model.formats import load_word2vec_format, save_word2vec_format
from model.vectors import Vectors

WORDS = ["the", "naïve", "日本語", "</s>", "C++", "a-b_c", "Ünïcödé", "x"]


@pytest.fixture(scope="module")
def vecs() -> Vectors:
    rng = np.random.default_rng(7)
    n, d = 300, 13
    arr = rng.standard_normal((n, d)).astype(np.float32)
    # Extreme magnitudes: a fixed 6-digit format would lose these.
    arr[0, :4] = [1e-38, -3.4e38, 1.0000001, 123456.79]
    arr[1] = 0.0
    words = WORDS + [f"w{i}" for i in range(n - len(WORDS))]
    return Vectors(words, arr)


def gensim_kv(v: Vectors) -> KeyedVectors:
    kv = KeyedVectors(v.vector_size)
    kv.add_vectors(v.words, np.asarray(v.vectors))
    return kv


def assert_same(loaded: Vectors, expected: Vectors) -> None:
    assert loaded.words == expected.words
    assert loaded.vectors.dtype == np.float32
    np.testing.assert_array_equal(loaded.vectors, expected.vectors)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("detect", [False, True])
def test_round_trip_is_exact(vecs, tmp_path, binary, detect) -> None:
    path = tmp_path / "v.w2v"
    save_word2vec_format(vecs, path, binary=binary)
    assert_same(load_word2vec_format(path, binary=None if detect else binary), vecs)


@pytest.mark.parametrize("binary", [False, True])
def test_gensim_reads_our_files(vecs, tmp_path, binary) -> None:
    path = tmp_path / "ours.w2v"
    save_word2vec_format(vecs, path, binary=binary)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert kv.index_to_key == vecs.words
    if binary:
        np.testing.assert_array_equal(kv.vectors, vecs.vectors)
    else:
        np.testing.assert_allclose(kv.vectors, vecs.vectors, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_we_read_gensim_files(vecs, tmp_path, binary) -> None:
    path = tmp_path / "gensim.w2v"
    gensim_kv(vecs).save_word2vec_format(str(path), binary=binary)
    for flag in (binary, None):
        loaded = load_word2vec_format(path, binary=flag)
        assert loaded.words == vecs.words
        if binary:
            np.testing.assert_array_equal(loaded.vectors, vecs.vectors)
        else:
            np.testing.assert_allclose(loaded.vectors, vecs.vectors, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_c_tool_layout_is_read(tmp_path, binary) -> None:
    # word2vec.c ends binary records with "\n" and text lines with " \n"; CRLF files exist too.
    arr = np.array([[0.5, -1.25], [3.0, 0.125]], dtype=np.float32)
    if binary:
        body = b"".join(
            w + b" " + row.astype("<f4").tobytes() + b"\n" for w, row in zip([b"a", b"b"], arr, strict=True)
        )
        data = b"2 2\n" + body
    else:
        data = b"2 2\r\na 0.5 -1.25 \r\nb 3 0.125 \r\n"
    path = tmp_path / "c.w2v"
    path.write_bytes(data)
    loaded = load_word2vec_format(path)
    assert loaded.words == ["a", "b"]
    np.testing.assert_array_equal(loaded.vectors, arr)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_compressed_files(vecs, tmp_path, binary, suffix) -> None:
    # gensim writes compressed output by suffix; we read it by content, and write it by suffix.
    theirs = tmp_path / f"gensim.w2v{suffix}"
    gensim_kv(vecs).save_word2vec_format(str(theirs), binary=binary)
    loaded = load_word2vec_format(theirs)
    assert loaded.words == vecs.words
    np.testing.assert_allclose(loaded.vectors, vecs.vectors, rtol=1e-6, atol=1e-6)

    ours = tmp_path / f"ours.w2v{suffix}"
    save_word2vec_format(vecs, ours, binary=binary)
    opener = gzip.open if suffix == ".gz" else bz2.open
    with opener(ours, "rb") as f:
        assert f.read(8) == b"300 13\nt"
    kv = KeyedVectors.load_word2vec_format(str(ours), binary=binary)
    assert kv.index_to_key == vecs.words


def test_gzip_with_misleading_name_loads(vecs, tmp_path) -> None:
    plain = tmp_path / "plain.txt"
    save_word2vec_format(vecs, plain)
    packed = tmp_path / "model.bin"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert_same(load_word2vec_format(packed), vecs)


def test_empty_store_round_trips(tmp_path) -> None:
    path = tmp_path / "empty.w2v"
    save_word2vec_format(Vectors([], np.zeros((0, 4), dtype=np.float32)), path, binary=True)
    loaded = load_word2vec_format(path)
    assert len(loaded) == 0 and loaded.vector_size == 4


def binary_record(word: bytes, values: list[float]) -> bytes:
    return word + b" " + struct.pack(f"<{len(values)}f", *values) + b"\n"


def write_records(path, declared: int, records: list[tuple[bytes, list[float]]], binary: bool) -> None:
    """A word2vec file of 2-dimensional `records` whose header declares `declared` words."""
    body = [binary_record(w, v) if binary else w + b" %g %g\n" % tuple(v) for w, v in records]
    path.write_bytes(b"%d 2\n" % declared + b"".join(body))


MALFORMED = [
    pytest.param(b"", None, "line 1", id="empty-file"),
    pytest.param(b"hello world\nx 1 2\n", None, "line 1", id="non-numeric-header"),
    # Three fields are a record of a file without a header (GloVe's), not a bad header.
    pytest.param(b"1 2 3\nx 1\n", False, "line 2: expected 2 values .* without a header line", id="headerless-ragged"),
    pytest.param(b"1 0\nx\n", None, "line 1", id="zero-dimensions"),
    pytest.param(b"3 2\na 1 2\nb 3 4\n", False, "truncated", id="text-truncated-short-file"),
    pytest.param(b"3 2\na 1 2\nb 3 4\n" + b" " * 64, False, "after 2 of the 3", id="text-truncated"),
    pytest.param(b"2 2\na 1 2\nb 3\n", False, "line 3: expected 2 values", id="text-missing-column"),
    pytest.param(b"2 2\na 1 2\nb 3 4 5\n", False, "line 3: expected 2 values", id="text-extra-column"),
    pytest.param(b"2 2\na 1 2\nb 3 x4\n", False, "line 3: non-numeric value b'x4'", id="text-non-numeric"),
    pytest.param(b"2 2\na 1 2\n\xff\xfe 3 4\n", False, "line 3: word .* not valid UTF-8", id="text-bad-utf8"),
    pytest.param(b"2 2\na 1 2\na 3 4\n", False, "line 3: duplicate word 'a'", id="text-duplicate"),
    pytest.param(b"1 2\na 1 2\nb 3 4\n", False, "line 3: more records than the 1", id="text-extra-record"),
    pytest.param(
        b"2 2\n" + binary_record(b"a", [1, 2]) + b"b \x00\x00", True, "inside record 2", id="binary-truncated"
    ),
    pytest.param(
        b"2 2\n" + binary_record(b"a", [1, 2]) + binary_record(b"\xff", [3, 4]),
        True,
        "record 2 at byte 15: word .* not valid UTF-8",
        id="binary-bad-utf8",
    ),
    pytest.param(
        b"2 2\n" + binary_record(b"a", [1, 2]) + binary_record(b"a", [3, 4]),
        True,
        "record 2 at byte 15: duplicate word 'a'",
        id="binary-duplicate",
    ),
    pytest.param(
        b"1 2\n" + binary_record(b"a", [1, 2]) + binary_record(b"b", [3, 4]),
        True,
        "unexpected data after the 1 records",
        id="binary-extra-record",
    ),
]


@pytest.mark.parametrize("dims", [13, 300])  # 300: a first line longer than any header
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_text_without_a_header_line_reads_as_gensim_no_header(vecs, tmp_path, suffix, dims) -> None:
    # GloVe's files: gensim reads them with no_header=True; here the format is recognised.
    path = tmp_path / f"glove.txt{suffix}"
    if dims != vecs.vector_size:
        rng = np.random.default_rng(dims)
        vecs = Vectors(vecs.words, rng.standard_normal((len(vecs), dims)).astype(np.float32))
    gensim_kv(vecs).save_word2vec_format(str(path), write_header=False)
    theirs = KeyedVectors.load_word2vec_format(str(path), no_header=True)
    for flag in (None, False):
        loaded = load_word2vec_format(path, binary=flag)
        assert loaded.words == theirs.index_to_key == vecs.words
        np.testing.assert_array_equal(loaded.vectors, theirs.vectors)


@pytest.mark.parametrize("layout", ["text", "binary", "headerless", "text.gz"])
@pytest.mark.parametrize("limit", [1, 5, 300, 10_000])
def test_limit_reads_the_first_vectors_as_gensim_does(vecs, tmp_path, layout, limit) -> None:
    path = tmp_path / ("v.w2v.gz" if layout == "text.gz" else "v.w2v")
    binary = layout == "binary"
    gensim_kv(vecs).save_word2vec_format(str(path), binary=binary, write_header=layout != "headerless")
    theirs = KeyedVectors.load_word2vec_format(
        str(path), binary=binary, limit=limit or None, no_header=layout == "headerless"
    )
    loaded = load_word2vec_format(path, limit=limit)
    assert loaded.words == theirs.index_to_key == vecs.words[:limit]
    np.testing.assert_array_equal(loaded.vectors, theirs.vectors)


def test_limit_zero_is_a_mistake_not_everything_or_nothing(vecs, tmp_path) -> None:
    path = tmp_path / "v.w2v"
    save_word2vec_format(vecs, path)
    with pytest.raises(ParameterError, match="limit must be a positive number"):  # gensim: 0 reads all
        load_word2vec_format(path, limit=0)


@pytest.mark.parametrize("binary", [False, True])
def test_more_records_than_the_header_says_is_refused_and_limit_reads_them(tmp_path, binary) -> None:
    path = tmp_path / "v.w2v"
    write_records(path, 2, [(b"a", [1.0, 2.0]), (b"b", [3.0, 4.0]), (b"c", [5.0, 6.0])], binary)
    with pytest.raises(ModelFormatError, match="limit=2"):
        load_word2vec_format(path, binary=binary)
    loaded = load_word2vec_format(path, binary=binary, limit=2)
    assert loaded.words == KeyedVectors.load_word2vec_format(str(path), binary=binary).index_to_key == ["a", "b"]


@pytest.mark.parametrize("errors", ["replace", "ignore"])
def test_words_cut_inside_a_character_read_as_gensim_reads_them(tmp_path, errors) -> None:
    # word2vec.c cuts long words at a byte count, possibly inside a UTF-8 character.
    path = tmp_path / "cut.w2v"
    cut = "ありがとう".encode()
    records = [(cut + b"\xe3\x83", [1.0, 2.0]), (cut + b"\xe3", [3.0, 4.0]), (b"ok", [5.0, 6.0])]
    for binary in (False, True):
        write_records(path, 3, records, binary)
        with pytest.raises(ModelFormatError, match="unicode_errors='replace' or 'ignore'"):
            load_word2vec_format(path, binary=binary)
        loaded = load_word2vec_format(path, binary=binary, unicode_errors=errors)
        # Both cut words decode alike: the first, the more frequent, is kept.
        assert loaded.words == ["ありがとう" + ("\ufffd" if errors == "replace" else ""), "ok"]
        np.testing.assert_array_equal(loaded.vectors, [[1.0, 2.0], [5.0, 6.0]])
        theirs = KeyedVectors.load_word2vec_format(str(path), binary=binary, unicode_errors=errors)
        assert theirs.index_to_key[0] == loaded.words[0]


def test_files_of_other_formats_are_named_with_what_to_do(tmp_path) -> None:
    kv = KeyedVectors(3)
    kv.add_vectors(["a", "b"], np.ones((2, 3), dtype=np.float32))
    kv.save(str(tmp_path / "vectors.kv"))  # a pickle
    np.save(tmp_path / "vectors.npy", np.ones((2, 3)))
    (tmp_path / "cc.en.300.bin").write_bytes(struct.pack("<ii", 793712314, 12) + bytes(64))  # fastText's magic
    for name, message in (
        ("vectors.kv", "save_word2vec_format"),
        ("vectors.npy", "NumPy .npy array"),
        ("cc.en.300.bin", "import the .vec file"),
    ):
        with pytest.raises(ModelFormatError, match=message):
            load_word2vec_format(tmp_path / name)


@pytest.mark.parametrize(("data", "binary", "message"), MALFORMED)
def test_malformed_files_raise_model_format_error(tmp_path, data, binary, message) -> None:
    path = tmp_path / "bad.w2v"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=message):
        load_word2vec_format(path, binary=binary)
    if binary is not None:  # autodetection must reach the same verdict
        with pytest.raises(ModelFormatError):
            load_word2vec_format(path)


def test_corrupt_gzip_raises_model_format_error(vecs, tmp_path) -> None:
    path = tmp_path / "v.w2v.gz"
    save_word2vec_format(vecs, path, binary=True)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ModelFormatError, match="compressed"):
        load_word2vec_format(path)


def test_missing_file_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_word2vec_format(tmp_path / "nope.w2v")


@pytest.mark.parametrize("bad_word", ["two words", ""])  # \n: Vectors refuses it
def test_words_the_format_cannot_hold_are_rejected_before_writing(tmp_path, bad_word) -> None:
    vecs = Vectors(["ok", bad_word], np.ones((2, 3), dtype=np.float32))
    path = tmp_path / "v.w2v"
    with pytest.raises(ModelFormatError, match="empty or contain a space"):
        save_word2vec_format(vecs, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("binary", [False, True])
def test_words_with_tabs_and_other_control_whitespace_round_trip(tmp_path, binary) -> None:
    # Both formats end a word at a space only, in gensim's reader and in ours; an imported model
    # holding such words exports again.
    words = ["tab\tword", "cr\rword", "vt\x0bword", "ff\x0cword", "\tlead", "trail\t", "nbsp\xa0word"]
    vecs = Vectors(words, np.arange(len(words) * 3, dtype=np.float32).reshape(-1, 3))
    path = tmp_path / "v.w2v"
    save_word2vec_format(vecs, path, binary=binary)
    assert_same(load_word2vec_format(path), vecs)
    assert KeyedVectors.load_word2vec_format(str(path), binary=binary).index_to_key == words


def test_failed_save_keeps_the_previous_file(vecs, tmp_path, monkeypatch) -> None:
    path = tmp_path / "v.w2v"
    path.write_bytes(b"previous contents")

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_word2vec_format(vecs, path, binary=True)
    assert path.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["v.w2v"]  # no temp file left behind


def test_save_overwrites_and_accepts_str_paths(vecs, tmp_path) -> None:
    path = tmp_path / "v.w2v"
    path.write_bytes(b"old")
    save_word2vec_format(vecs, str(path))
    assert path.read_bytes().startswith(b"300 13\nthe ")
    assert_same(load_word2vec_format(str(path)), vecs)


def test_loaded_vectors_answer_queries_like_the_original(vecs, tmp_path) -> None:
    path = tmp_path / "v.bin"
    save_word2vec_format(vecs, path, binary=True)
    loaded = load_word2vec_format(path)
    assert loaded.most_similar("日本語") == vecs.most_similar("日本語")
    assert loaded.most_similar("the", negative="C++") == vecs.most_similar("the", negative="C++")
    with pytest.raises(ParameterError, match="all zeros"):  # the fixture's zero row, as it was
        loaded.most_similar("naïve")
