"""Corpus reading, vocabulary and the token stream, in memory and spilled to disk."""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import model.trainer
from model import CorpusError, TrainConfig, train
from model.corpus import EncodedCorpus, encode, iter_sentences
from model.vocab import apply_vocab, build_vocab


def _reference(sentences: list[list[str]], min_count: int) -> tuple[list[str], list[list[str]]]:
    """Vocabulary (most frequent first, ties by first appearance) and the filtered sentences."""
    counts: dict[str, int] = {}
    for s in sentences:
        for w in s:
            counts[w] = counts.get(w, 0) + 1
    order = sorted((w for w in counts if counts[w] >= min_count), key=lambda w: -counts[w])
    keep = set(order)
    return order, [[w for w in s if w in keep] for s in sentences]


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("spill_after", [10**9, 1, 7])
def test_encoded_corpus_matches_a_plain_python_reference(spill_after: int, in_place: bool) -> None:
    rng = np.random.default_rng(spill_after)
    for _ in range(100):
        sentences = [
            [f"w{int(x)}" for x in rng.zipf(1.6, size=rng.integers(0, 25))] for _ in range(rng.integers(1, 20))
        ]
        if not any(sentences):
            continue
        encoded = encode(sentences, spill_after=spill_after)
        words, filtered = _reference(sentences, 2)
        if not words:
            continue
        vocab, ids = build_vocab(encoded, min_count=2, max_vocab=None)
        assert vocab.words == words
        corpus = apply_vocab(encoded, ids, chunk=int(rng.integers(1, 30)), in_place=in_place)
        got = [
            [vocab.words[i] for i in corpus.tokens[corpus.offsets[k] : corpus.offsets[k + 1]]]
            for k in range(len(sentences))
        ]
        assert got == filtered
        assert corpus.n_raw_words == sum(len(s) for s in sentences)


def test_the_vocabulary_is_applied_without_a_second_copy_of_the_corpus() -> None:
    # The corpus is re-encoded to vocabulary ids in its own array: 4 bytes a token, not the
    # 8 that a second array beside it takes, which is what bounds the corpus size that fits.
    import tracemalloc

    from model.corpus import TokenSink

    rng = np.random.default_rng(0)
    n_tokens = 4_000_000
    tracemalloc.start()  # before the token array exists, so its later shrinking is seen as such
    chunks = [rng.zipf(1.3, size=n_tokens // 40).astype(np.int32) % 3000 for _ in range(40)]
    sink = TokenSink()
    for chunk in chunks:
        sink.append(chunk)
    tokens = sink.finish()
    np.testing.assert_array_equal(tokens, np.concatenate(chunks))
    assert sink.chunks == []  # each chunk let go once copied
    del chunks, chunk

    lengths = np.full(n_tokens // 200, 200, dtype=np.int64)
    encoded = EncodedCorpus(
        words=[f"w{i}" for i in range(3000)], counts=np.bincount(tokens, minlength=3000),
        tokens=tokens, lengths=lengths, n_lines=lengths.size,
    )
    _, ids = build_vocab(encoded, min_count=200, max_vocab=None)  # drops the rarer words
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    corpus = apply_vocab(encoded, ids, in_place=True, chunk=1 << 18)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak - before < 8 << 20  # chunk temporaries only; a second copy would be 16 MB
    assert corpus.n_raw_words == n_tokens and 0 < corpus.n_words < n_tokens


def test_large_token_stream_is_memory_mapped() -> None:
    encoded = encode([["a", "b"]] * 100, spill_after=50)
    assert isinstance(encoded.tokens, np.memmap)
    np.testing.assert_array_equal(np.asarray(encoded.tokens), np.tile([0, 1], 100))


def test_spilled_corpus_trains_identically(lee_text: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(epochs=1, threads=1, seed=5)
    in_memory = train(lee_text, cfg)
    monkeypatch.setattr(model.trainer, "encode", functools.partial(encode, spill_after=1000))
    spilled = train(lee_text, cfg)
    np.testing.assert_array_equal(in_memory.vectors.vectors, spilled.vectors.vectors)


@pytest.mark.parametrize(
    ("sentences", "message"),
    [([[1, 2, 3]] * 3, r"words must be strings, got 1 \(int\)"), ([["a\nb", "c"]] * 3, "contains a line break")],
)
def test_tokens_a_model_cannot_store_are_refused_before_training(sentences: list[list[object]], message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        train(sentences, TrainConfig(min_count=1, epochs=1))  # type: ignore[arg-type]


def test_iterable_of_strings_is_rejected() -> None:
    from model import CorpusError

    with pytest.raises(CorpusError, match="lists of tokens"):
        list(iter_sentences(["a whole line as one string"]))


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"\xff\xfeh\x00i\x00", "UTF-16LE byte order mark"),
        ("hi there".encode("utf-16-le"), "NUL bytes"),
        (b"PK\x03\x04\x14\x00\x00\x00", "zip archive"),
        (b"%PDF-1.7\n", "PDF document"),
        (b"notes.txt".ljust(257, b"\x00") + b"ustar\x0000", "tar archive"),
    ],
)
def test_files_that_are_not_utf8_text_are_refused_before_training(tmp_path: Path, head: bytes, message: str) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(gzip.compress(head + b"more"))  # checked after decompression
    with pytest.raises(CorpusError, match=message):
        encode(path)


def test_text_that_is_not_utf8_is_read_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes("café crème\nok\n".encode("cp1252"))
    with caplog.at_level("WARNING", logger="model.corpus"):
        assert list(iter_sentences(path)) == [["caf\ufffd", "cr\ufffdme"], ["ok"]]
    assert "not valid UTF-8 (byte 3 is not)" in caplog.text and "iconv" in caplog.text
    caplog.clear()
    path.write_bytes("café\n".encode())
    list(iter_sentences(path))
    assert caplog.text == ""


def test_undecodable_bytes_do_not_abort(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"caf\xe9 ok ok\nok\n")
    assert list(iter_sentences(path)) == [["caf\ufffd", "ok", "ok"], ["ok"]]


def _truncated(compress: Callable[[bytes], bytes]) -> bytes:
    data = compress(b"word " * 100000)
    return data[: len(data) // 2]


def _damaged(compress: Callable[[bytes], bytes]) -> bytes:
    data = bytearray(compress(b"word " * 100000))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x5a" * 64  # the middle of the stream, garbled
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_truncated(gzip.compress), id="truncated-gzip"),
        pytest.param(b"\x1f\x8b\x08\x00garbage" * 10, id="garbage-after-gzip-magic"),  # zlib.error
        pytest.param(_damaged(gzip.compress), id="damaged-gzip"),
        pytest.param(_damaged(bz2.compress), id="damaged-bzip2"),
        pytest.param(_damaged(lzma.compress), id="damaged-xz"),  # lzma.LZMAError
        pytest.param(_truncated(lzma.compress), id="truncated-xz"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_compressed_corpus_is_a_corpus_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, workers: int
) -> None:
    import model.corpus as corpus

    monkeypatch.setattr(corpus, "COMPRESSED_MIN_BYTES", 0)
    path = tmp_path / "c.txt"  # the name says nothing: the magic bytes decide
    path.write_bytes(data)
    with pytest.raises(CorpusError, match=r"cannot read corpus .*c\.txt"):
        encode(path, workers=workers)


def test_xz_corpus_reads_like_plain(tmp_path: Path, lee_text: Path) -> None:
    import model.corpus as corpus

    text = lee_text.read_bytes()
    (tmp_path / "c.xz").write_bytes(lzma.compress(text))
    plain = encode(lee_text)
    for workers, threshold in ((1, corpus.COMPRESSED_MIN_BYTES), (2, 0)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(corpus, "COMPRESSED_MIN_BYTES", threshold)
            xz = encode(tmp_path / "c.xz", workers=workers)
        assert xz.words == plain.words
        assert np.array_equal(xz.tokens, plain.tokens)


def _tricky_text(rng: np.random.Generator, lines: int) -> bytes:
    """Lines with CRLF and lone CR endings, blank lines, non-ASCII and invalid UTF-8, odd spaces."""
    words = ["alpha", "Beta", "γάμμα", "δ", "naïve", "東京", "x\u00a0y", "tab\tbed", "e\u2003m"]
    out = bytearray("\ufeff".encode())
    for i in range(lines):
        n = int(rng.integers(0, 40)) if i % 97 else 25_000  # some lines over MAX_SENTENCE_WORDS
        line = " ".join(rng.choice(words, size=n)).encode()
        if i % 13 == 0:
            line += b" bad\xff\xfebytes \xe6\x9d"  # invalid and truncated sequences
        out += line + (b"\r\n", b"\n", b"\r", b"\n\n")[i % 4]
    return bytes(out)


@pytest.mark.parametrize(
    ("compression", "lowercase"), [("plain", False), ("plain", True), ("gzip", False), ("bzip2", True)]
)
def test_worker_processes_encode_a_large_file_exactly_as_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str, lowercase: bool
) -> None:
    import bz2
    import gzip

    import model.corpus as corpus

    text = _tricky_text(np.random.default_rng(3), 6_000)
    path = tmp_path / "big.txt"
    # A compressed corpus is decompressed to an unlinked temp file that the workers split.
    compress: dict[str, Callable[[bytes], bytes]] = {
        "plain": bytes,
        "gzip": functools.partial(gzip.compress, compresslevel=1),
        "bzip2": bz2.compress,
    }
    path.write_bytes(compress[compression](text))
    # Small ranges so that range borders fall on every kind of line ending.
    monkeypatch.setattr(corpus, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(corpus, "COMPRESSED_MIN_BYTES", 0)
    monkeypatch.setattr(corpus, "RANGE_BYTES", 32771)
    serial = encode(path, lowercase=lowercase)
    spawned: list[object] = []
    popen = corpus.subprocess.Popen

    def counting_popen(*args: object, **kwargs: object) -> object:
        spawned.append(args)
        return popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(corpus.subprocess, "Popen", counting_popen)
    parallel = encode(path, lowercase=lowercase, workers=2)
    assert len(spawned) == min(2, os.cpu_count() or 1)
    assert parallel.words == serial.words
    np.testing.assert_array_equal(parallel.counts, serial.counts)
    np.testing.assert_array_equal(np.asarray(parallel.tokens), np.asarray(serial.tokens))
    np.testing.assert_array_equal(parallel.lengths, serial.lengths)
    assert parallel.n_lines == serial.n_lines
    assert max(serial.lengths) == corpus.MAX_SENTENCE_WORDS
    # The text starts with a UTF-8 byte order mark: the first word does not carry it.
    assert not any(w.startswith("\ufeff") for w in serial.words)


def test_a_truncated_compressed_corpus_is_a_corpus_error_with_workers_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip

    import model.corpus as corpus

    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(b"a b c\n" * 50_000)[:-200])
    monkeypatch.setattr(corpus, "COMPRESSED_MIN_BYTES", 0)
    with pytest.raises(CorpusError, match=r"cannot read corpus .*cut\.gz"):
        encode(path, workers=2)


def test_a_failing_tokenising_worker_is_a_corpus_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.corpus as corpus

    path = tmp_path / "big.txt"
    path.write_text("a b c\n" * 5000)
    monkeypatch.setattr(corpus, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(corpus, "RANGE_BYTES", 1000)
    monkeypatch.setattr(corpus.sys, "executable", "/bin/false")
    with pytest.raises(CorpusError, match="tokenising worker failed"):
        encode(path, workers=2)


@pytest.mark.slow
def test_workers_of_a_killed_encoding_remove_their_slices(tmp_path: Path) -> None:
    """A job killed while its corpus is being tokenised leaves no slices behind in the temp folder."""
    import signal
    import subprocess
    import sys
    import time

    corpus_file = tmp_path / "big.txt"
    corpus_file.write_bytes(_tricky_text(np.random.default_rng(5), 12_000))
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = (
        "import sys, model.corpus as c\n"
        "c.PARALLEL_MIN_BYTES = 0\n"
        "c.RANGE_BYTES = 4096\n"
        "c.encode(sys.argv[1], workers=2)\n"
    )
    env = dict(os.environ, TMPDIR=str(temp))
    proc = subprocess.Popen([sys.executable, "-c", script, str(corpus_file)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(temp.glob("w2v-encode-*/*.done")):
            assert proc.poll() is None, "the encoding finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while list(temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(temp.iterdir()) == []


def test_trains_where_numba_can_cache_neither_beside_the_code_nor_in_home(tmp_path: Path) -> None:
    # A read-only install run by an account without a home: Numba used to refuse to compile
    # ("cannot cache function ...: no locator available").
    install = tmp_path / "install"
    shutil.copytree(Path(model.__file__).parent, install / "model", ignore=shutil.ignore_patterns("__pycache__"))
    (install / "model" / "__pycache__").write_bytes(b"")  # a file: no folder can be made there
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c d\n" * 50, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME="/proc/no-home", PYTHONPATH=str(install), TMPDIR=str(tmp_path))
    script = (
        "import os; from model import TrainConfig, train;"
        "m = train(os.environ['CORPUS'], TrainConfig(min_count=1, epochs=1));"
        "print(len(m.vectors), os.environ['NUMBA_CACHE_DIR'])"
    )
    done = subprocess.run(
        [sys.executable, "-B", "-c", script], env={**env, "CORPUS": str(corpus)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    words, cache = done.stdout.split()
    assert words == "4"
    assert Path(cache).parent == tmp_path and os.stat(cache).st_mode & 0o777 == 0o700

    # A shared folder others can write to is not used (its cached pickles would be loaded):
    # the process takes a fresh folder of its own and removes it when it exits.
    os.chmod(cache, 0o777)
    again = subprocess.run(
        [sys.executable, "-B", "-c", script], env={**env, "CORPUS": str(corpus)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr
    own = Path(again.stdout.split()[1])
    assert own != Path(cache) and own.parent == tmp_path and not own.exists()
