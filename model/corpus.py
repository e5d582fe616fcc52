"""Reading a text corpus: one sentence per line, whitespace-separated tokens.

Tokenisation matches gensim's `LineSentence`: `line.split()`, no other normalisation
unless `lowercase` is asked for. Lines longer than `MAX_SENTENCE_WORDS` tokens are cut
into consecutive chunks, because the context window never crosses a sentence boundary
and a single huge "sentence" (a whole document on one line) would otherwise be one
unsplittable unit of work.

Tokenising is Python string work that one core does at a few million words a second, so
a large uncompressed file is split at line starts and tokenised by several worker
processes (this module run as `python -m model.corpus`), merged back in file order: the
result is the same as one process would produce, ids included.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import logging
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

import numpy as np

from model.errors import CorpusError

log = logging.getLogger(__name__)

MAX_SENTENCE_WORDS = 10_000
# Past this many tokens (1 GiB of int32) the token stream is kept in a temp file, not the heap.
SPILL_AFTER_TOKENS = 256 * 1024 * 1024
# Plain files from this size up are tokenised by worker processes (each costs ~0.5 s to start).
PARALLEL_MIN_BYTES = 48 << 20
# Text per unit of work: bounds a worker's memory (~6x the text) and how far ahead it runs.
RANGE_BYTES = 8 << 20
# Compressed files from this size up are first decompressed to an unlinked temp file (gzip
# at hundreds of MB/s), which the workers then split like a plain one.
COMPRESSED_MIN_BYTES = PARALLEL_MIN_BYTES // 4

Source = str | Path | Iterable[Sequence[str]]

ACCEPTED = "UTF-8 text, plain or compressed with gzip, bzip2 or xz"
# Text that is not UTF-8 shows in its first bytes: a byte order mark, a file format's magic,
# or NUL bytes, which UTF-16 puts beside every ASCII letter and binary files are full of.
SNIFF_BYTES = 8192
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32LE", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32BE", "UTF-32"),
    (b"\xff\xfe", "UTF-16LE", "UTF-16"),
    (b"\xfe\xff", "UTF-16BE", "UTF-16"),
)
_FORMATS = (
    (b"PK\x03\x04", "a zip archive (or a document saved as one: .docx, .odt, .epub): extract its text"),
    (b"%PDF-", "a PDF document: extract its text, e.g. pdftotext file.pdf corpus.txt"),
    (b"{\\rtf", "an RTF document: save it as plain text"),
    (b"\xd0\xcf\x11\xe0", "an old Office document: save it as plain text"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive: extract its text"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data: decompress it (zstd -d), or recompress with gzip, bzip2 or xz"),
)
# What a damaged compressed stream raises while it is read (gzip.BadGzipFile is an OSError).
DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_MAGIC_BYTES = max(len(magic) for magic, _ in _MAGIC)


def check_storable_words(words: Sequence[object], error: type[Exception]) -> None:
    """Refuse words that are not strings or that a model's vocab.tsv (a word per line) cannot hold."""
    non_str = next((w for w in words if not isinstance(w, str)), None)
    if non_str is not None:
        raise error(f"words must be strings, got {non_str!r} ({type(non_str).__name__})")
    if "\n" in "".join(words):  # type: ignore[arg-type]
        bad = next(w for w in words if "\n" in w)  # type: ignore[operator]
        raise error(f"the word {bad!r} contains a line break (\\n), which a model cannot store; split it into words")


def open_bytes(path: str | os.PathLike[str], *, what: str = "corpus") -> IO[bytes]:
    """Open a plain, gzip, bzip2 or xz file for its decompressed bytes, chosen by its magic
    bytes rather than its name; `what` names the file in errors."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"{what} file not found: {p}")
    if p.is_dir():
        raise CorpusError(f"{what} path is a directory, expected a text file: {p}")
    try:
        with p.open("rb") as fh:
            magic = fh.read(_MAGIC_BYTES)
    except OSError as exc:
        raise CorpusError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    compression = _compression(magic)
    if compression == "gzip":
        return gzip.open(p, "rb")  # type: ignore[return-value]
    if compression == "bzip2":
        return bz2.open(p, "rb")
    if compression == "xz":
        return lzma.open(p, "rb")
    return p.open("rb")


def compression_of(path: str | Path) -> str | None:
    """"gzip", "bzip2", "xz" or None (plain) for the file at `path`, from its magic bytes."""
    with Path(path).open("rb") as fh:
        return _compression(fh.read(_MAGIC_BYTES))


def _compression(magic: bytes) -> str | None:
    return next((name for prefix, name in _MAGIC if magic.startswith(prefix)), None)


def check_text_head(head: bytes) -> None:
    """Refuse text in another encoding (UTF-16 above all) and files that are not text, from
    their first (decompressed) bytes, saying how to convert them; raises CorpusError."""
    for bom, encoding, family in _BOMS:
        if head.startswith(bom):
            raise CorpusError(
                f"the corpus must be {ACCEPTED}, but it starts with a {encoding} byte order mark: "
                f"convert it to UTF-8 first, e.g. iconv -f {family} -t UTF-8 corpus.txt > corpus-utf8.txt"
            )
    for magic, what in _FORMATS:
        if head.startswith(magic):
            raise CorpusError(f"the corpus must be {ACCEPTED}, but it is {what}")
    if head[257:262] == b"ustar":
        raise CorpusError(f"the corpus must be {ACCEPTED}, but it is a tar archive: extract its files and join them")
    if b"\x00" in head[:SNIFF_BYTES]:
        raise CorpusError(
            f"the corpus must be {ACCEPTED}, but its first bytes hold NUL bytes: it is UTF-16 or UTF-32 "
            "text without a byte order mark (convert it, e.g. iconv -f UTF-16LE -t UTF-8 corpus.txt > "
            "corpus-utf8.txt) or not text at all (a binary or word-processor file: save it as plain text)"
        )


def invalid_utf8_at(head: bytes) -> int | None:
    """The offset of the first byte in `head` that is not UTF-8 (a sequence cut at its end is
    not counted), or None."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.end == len(head):
            return None
        return exc.start
    return None


def _checked_head(head: bytes, label: object) -> None:
    """`check_text_head`, and a warning for text that is not UTF-8 (Latin-1 or cp1252,
    usually), whose bad bytes training reads as U+FFFD."""
    check_text_head(head)
    at = invalid_utf8_at(head)
    if at is not None:
        log.warning(
            "corpus %s is not valid UTF-8 (byte %d is not): training reads such bytes as U+FFFD; if it is "
            "Latin-1 or cp1252 text, convert it first, e.g. iconv -f cp1252 -t UTF-8 in.txt > out.txt",
            label,
            at,
        )


def open_text(path: str | Path) -> IO[str]:
    """Open a plain, gzip, bzip2 or xz text file as text, after `check_text_head`."""
    raw = open_bytes(path)
    try:
        _checked_head(_peek(raw), path)
    except DECOMPRESS_ERRORS as exc:
        raw.close()
        raise CorpusError(f"cannot read corpus {path}: {exc}") from exc
    except BaseException:
        raw.close()
        raise
    return _as_text(raw)


def open_stream_text(stream: BinaryIO, label: str = "<stdin>") -> IO[str]:
    """A byte stream that cannot seek (a pipe) as text: decompressed when its magic bytes say
    gzip, bzip2 or xz, and checked as `open_text` checks a file."""
    # peek() shows the magic bytes without taking them from a pipe.
    raw: IO[bytes] = stream if hasattr(stream, "peek") else io.BufferedReader(cast(io.RawIOBase, stream))
    compression = _compression(_peek(raw))
    if compression == "gzip":
        raw = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    elif compression == "bzip2":
        raw = cast(IO[bytes], bz2.BZ2File(raw, "rb"))
    elif compression == "xz":
        raw = cast(IO[bytes], lzma.LZMAFile(raw, "rb"))
    try:
        _checked_head(_peek(raw), label)
    except DECOMPRESS_ERRORS as exc:
        raise CorpusError(f"cannot read corpus {label}: {exc}") from exc
    return _as_text(raw)


def _peek(raw: IO[bytes]) -> bytes:
    """Up to `SNIFF_BYTES` of what `raw` will read next, without consuming them."""
    peek = getattr(raw, "peek", None)
    return bytes(peek(SNIFF_BYTES)[:SNIFF_BYTES]) if peek is not None else b""


def _as_text(raw: IO[bytes], *, file_start: bool = True) -> IO[str]:
    # Undecodable bytes become U+FFFD instead of aborting a long job on one bad byte. A UTF-8
    # byte order mark (Notepad writes one) at the start of the file is not part of its first word.
    encoding = "utf-8-sig" if file_start else "utf-8"
    return io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline=None)


def iter_sentences(
    source: Source, *, lowercase: bool = False, max_sentence_words: int = MAX_SENTENCE_WORDS
) -> Iterator[list[str]]:
    """Yield token lists from a file path or from an iterable of token sequences."""
    if isinstance(source, str | Path):
        try:
            with open_text(source) as fh:
                yield from _line_sentences(fh, lowercase, max_sentence_words)
        except DECOMPRESS_ERRORS as exc:
            # Truncated or damaged compressed streams surface here; the message names the file.
            raise CorpusError(f"cannot read corpus {source}: {exc}") from exc
        return
    for sentence in source:
        if isinstance(sentence, str):
            raise CorpusError("a corpus iterable must yield lists of tokens, not strings")
        tokens = [t.lower() for t in sentence] if lowercase else list(sentence)
        yield from _chunks(tokens, max_sentence_words)


def _line_sentences(lines: Iterable[str], lowercase: bool, max_sentence_words: int) -> Iterator[list[str]]:
    for line in lines:
        yield from _chunks(line.lower().split() if lowercase else line.split(), max_sentence_words)


def _word_index() -> tuple[dict[str, int], Callable[[str], int]]:
    """An empty word -> id map and its lookup, which gives a new word the next free id."""
    index: defaultdict[str, int] = defaultdict()
    # The lookup runs entirely in C (via map()): the default factory is the dict's own length.
    index.default_factory = index.__len__
    return index, index.__getitem__


def _chunks(tokens: list[str], size: int) -> Iterator[list[str]]:
    if len(tokens) <= size:
        yield tokens
        return
    for i in range(0, len(tokens), size):
        yield tokens[i : i + size]


class TokenSink:
    """Collects int32 token chunks; past `spill_after` tokens they go to an unlinked temp file.

    In memory, `finish` moves the chunks into one array a chunk at a time and drops each once
    copied, so at most the array and what is left of the chunks are held, never the chunks
    and a full copy of them (whether the allocator hands freed chunks back to the system is
    its own business). A corpus larger than memory trains from a memory map of the temp file
    instead, so the page cache rather than the heap holds it, and the disk space is returned
    as soon as the array is dropped.
    """

    def __init__(self, spill_after: int = SPILL_AFTER_TOKENS):
        self.spill_after = spill_after
        self.chunks: list[np.ndarray] = []
        self.size = 0
        self.file: IO[bytes] | None = None

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=np.int32)
        self.size += chunk.size
        if self.file is None and self.size > self.spill_after:
            self.file = tempfile.TemporaryFile(prefix="w2v-tokens-")
            for held in self.chunks:
                self.file.write(held.tobytes())
            self.chunks.clear()
        if self.file is not None:
            self.file.write(chunk.tobytes())
        else:
            self.chunks.append(chunk)

    def finish(self) -> np.ndarray:
        if self.file is None:
            if len(self.chunks) == 1:
                return self.chunks.pop()
            tokens = np.empty(self.size, dtype=np.int32)
            self.chunks.reverse()
            pos = 0
            while self.chunks:
                chunk = self.chunks.pop()
                tokens[pos : pos + chunk.size] = chunk
                pos += chunk.size
                del chunk
            return tokens
        self.file.flush()
        tokens = np.memmap(self.file, dtype=np.int32, mode="r", shape=(self.size,))
        self.file.close()  # the mapping keeps the (already unlinked) file alive
        return tokens


@dataclass
class EncodedCorpus:
    """The corpus as integer ids in order of first appearance, plus per-word counts.

    One streaming pass produces both the counts (for the vocabulary) and the encoded
    token stream (for training), so the text is tokenised once, not once per epoch.
    """

    words: list[str]  # provisional id -> word
    counts: np.ndarray  # int64, per provisional id
    tokens: np.ndarray  # int32 provisional ids, all sentences concatenated (may be a memmap)
    lengths: np.ndarray  # int64 tokens per sentence
    n_lines: int

    @property
    def n_words(self) -> int:
        return int(self.tokens.size)


def encode(
    source: Source,
    *,
    lowercase: bool = False,
    max_sentence_words: int = MAX_SENTENCE_WORDS,
    spill_after: int = SPILL_AFTER_TOKENS,
    workers: int = 1,
) -> EncodedCorpus:
    """Tokenise and count `source` in one pass; `workers` > 1 splits a large file among processes."""
    if workers > 1 and isinstance(source, str | Path):
        path = Path(source)
        kind, size = _file_kind(path)
        args = (lowercase, max_sentence_words, spill_after, workers)
        plain_parallel = kind == "plain" and size >= PARALLEL_MIN_BYTES
        compressed_parallel = kind == "compressed" and size >= COMPRESSED_MIN_BYTES
        if plain_parallel or compressed_parallel:
            with open_text(path):  # its checks, before worker processes start
                pass
        if plain_parallel:
            return _encode_in_processes(path, size, *args, label=path)
        if compressed_parallel:
            with _decompressed(path) as plain:
                if plain is not None:
                    return _encode_in_processes(plain[0], plain[1], *args, label=path)
    index, lookup = _word_index()
    sink = TokenSink(spill_after)
    counts = np.zeros(0, dtype=np.int64)
    pending: list[int] = []
    lengths: list[int] = []
    n_lines = 0

    def flush() -> None:
        nonlocal counts
        chunk = np.fromiter(pending, dtype=np.int32, count=len(pending))
        pending.clear()
        chunk_counts = np.bincount(chunk, minlength=len(index))
        chunk_counts[: counts.size] += counts
        counts = chunk_counts
        sink.append(chunk)

    for sentence in iter_sentences(source, lowercase=lowercase, max_sentence_words=max_sentence_words):
        n_lines += 1
        pending.extend(map(lookup, sentence))
        lengths.append(len(sentence))
        if len(pending) >= 1 << 20:
            flush()
    flush()
    if sink.size == 0:
        raise CorpusError("the corpus contains no words (empty file or only blank lines)")
    words = list(index)
    if not isinstance(source, str | Path):  # tokens from a file are str without line breaks
        check_storable_words(words, CorpusError)
    return EncodedCorpus(
        words=words,
        counts=counts.astype(np.int64),
        tokens=sink.finish(),
        lengths=np.asarray(lengths, dtype=np.int64),
        n_lines=n_lines,
    )


def _file_kind(path: Path) -> tuple[str, int]:
    """("plain" or "compressed", size) of a readable file; ("unreadable", 0) leaves the error
    to `open_text`, which words it."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(_MAGIC_BYTES)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return "unreadable", 0
    return ("plain" if _compression(magic) is None else "compressed"), size


@contextlib.contextmanager
def _decompressed(path: Path) -> Iterator[tuple[Path, int] | None]:
    """A decompressed copy of `path` as (a path other processes can open, size), or None where
    that cannot be had (no /proc, or no room in the temp folder): then one process reads it.

    The copy is an unlinked temp file that the workers open through /proc, so its space is
    returned when the last process holding it exits, however the job ends.
    """
    fd_dir = Path(f"/proc/{os.getpid()}/fd")
    if not fd_dir.is_dir():
        yield None
        return
    with tempfile.TemporaryFile(prefix="w2v-corpus-") as copy:
        with open_bytes(path) as raw:
            while True:
                try:
                    chunk = raw.read(1 << 20)
                except DECOMPRESS_ERRORS as exc:
                    raise CorpusError(f"cannot read corpus {path}: {exc}") from exc
                if not chunk:
                    break
                try:
                    copy.write(chunk)
                except OSError:
                    yield None  # the temp folder is full
                    return
        copy.flush()
        yield fd_dir / str(copy.fileno()), copy.tell()


def _line_starts(path: Path, size: int, step: int) -> list[int]:
    """Offsets near every `step` bytes where a line begins, from 0 to `size`."""
    cuts = [0]
    with path.open("rb") as fh:
        for target in range(step, size, step):
            if target <= cuts[-1]:
                continue
            fh.seek(target - 1)  # the line that holds byte target-1 ends where the next begins
            fh.readline()
            pos = fh.tell()
            if pos >= size:
                break
            cuts.append(pos)
    cuts.append(size)
    return cuts


def _encode_bytes(
    data: bytes, lowercase: bool, max_sentence_words: int, *, file_start: bool
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(words in order of first appearance, local ids, sentence lengths) of whole lines of
    text; `file_start`: they begin the file."""
    index, lookup = _word_index()
    ids: list[int] = []
    lengths: list[int] = []
    # The same decoding and sentences as a file read whole, so the pieces join to its result.
    text = _as_text(io.BytesIO(data), file_start=file_start)
    for sentence in _line_sentences(text, lowercase, max_sentence_words):
        ids.extend(map(lookup, sentence))
        lengths.append(len(sentence))
    return list(index), np.fromiter(ids, dtype=np.int32, count=len(ids)), np.asarray(lengths, dtype=np.int64)


def _encode_in_processes(
    path: Path, size: int, lowercase: bool, max_sentence_words: int, spill_after: int, workers: int, *, label: Path
) -> EncodedCorpus:
    """`path` split at line starts among worker processes; `label` names the corpus in errors."""
    cuts = _line_starts(path, size, RANGE_BYTES)
    n_ranges = len(cuts) - 1
    n_procs = max(1, min(workers, os.cpu_count() or 1, n_ranges))
    index, lookup = _word_index()
    sink = TokenSink(spill_after)
    counts = np.zeros(0, dtype=np.int64)
    lengths: list[np.ndarray] = []
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")])
        ),
    )
    with tempfile.TemporaryDirectory(prefix="w2v-encode-") as tmp:
        out = Path(tmp)
        procs = []
        for w in range(n_procs):
            # Worker w takes ranges w, w + n_procs, ...: the ranges finish roughly in file order,
            # which is the order they are merged in.
            mine = [f"{i}:{cuts[i]}:{cuts[i + 1]}" for i in range(w, n_ranges, n_procs)]
            cmd = [
                sys.executable,
                "-m",
                "model.corpus",
                str(path),
                str(int(lowercase)),
                str(max_sentence_words),
                str(out),
                *mine,
            ]
            # stderr to a file, not a pipe: a chatty worker must not block on a full pipe.
            with (out / f"worker-{w}.err").open("wb") as log_file:
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file))
        try:
            for i in range(n_ranges):
                done = out / f"{i}.done"
                proc = procs[i % n_procs]
                while not done.exists():
                    if proc.poll() is not None and not done.exists():
                        err = (out / f"worker-{i % n_procs}.err").read_text(errors="replace")
                        raise CorpusError(f"cannot read corpus {label}: tokenising worker failed: {err[-2000:]}")
                    time.sleep(0.002)
                words = (out / f"{i}.words").read_text(encoding="utf-8").split("\n")
                words = words if words != [""] else []
                remap = np.fromiter(map(lookup, words), dtype=np.int32, count=len(words))
                local = np.fromfile(out / f"{i}.tokens", dtype=np.int32)
                sink.append(remap[local])
                if len(index) > counts.size:  # doubling, so a large vocabulary is not copied per range
                    grown = np.zeros(max(len(index), 2 * counts.size), dtype=np.int64)
                    grown[: counts.size] = counts
                    counts = grown
                counts[remap] += np.bincount(local, minlength=len(words))
                lengths.append(np.fromfile(out / f"{i}.lengths", dtype=np.int64))
                for suffix in ("done", "words", "tokens", "lengths"):
                    (out / f"{i}.{suffix}").unlink()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    if sink.size == 0:
        raise CorpusError("the corpus contains no words (empty file or only blank lines)")
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return EncodedCorpus(
        words=list(index),
        counts=counts[: len(index)].copy(),
        tokens=sink.finish(),
        lengths=all_lengths,
        n_lines=int(all_lengths.size),
    )


def _worker_main(argv: list[str]) -> None:
    """`python -m model.corpus PATH LOWERCASE MAX_WORDS OUT_DIR I:START:STOP...`: tokenise byte ranges."""
    path, lowercase, max_words, out = Path(argv[0]), argv[1] == "1", int(argv[2]), Path(argv[3])
    parent = os.getppid()

    def orphaned() -> bool:
        # The encoding process died (killed with its job): nobody will read or delete the
        # slices, so the worker that notices removes them all.
        if os.getppid() == parent:
            return False
        shutil.rmtree(out, ignore_errors=True)
        return True

    last: Path | None = None
    try:
        with path.open("rb") as fh:
            for spec in argv[4:]:
                if orphaned():
                    return
                i, start, stop = (int(x) for x in spec.split(":"))
                fh.seek(start)
                words, ids, lengths = _encode_bytes(fh.read(stop - start), lowercase, max_words, file_start=start == 0)
                (out / f"{i}.words").write_text("\n".join(words), encoding="utf-8")
                ids.tofile(out / f"{i}.tokens")
                lengths.tofile(out / f"{i}.lengths")
                (out / f"{i}.done.tmp").touch()
                last = out / f"{i}.done"
                os.replace(out / f"{i}.done.tmp", last)  # the files above are complete
        # Stay until the last slice is taken, so that a death of the encoding process after this
        # worker's last slice is still noticed and cleaned up.
        while last is not None and last.exists() and not orphaned():
            time.sleep(0.05)
    finally:
        # An orphan that fails (its folder removed by the other worker mid-write) cleans up too:
        # that removal may have missed the file this one was writing.
        orphaned()


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
