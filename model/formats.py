"""The original word2vec (Mikolov) text and binary formats, as read and written by gensim.

Both formats start with a "<word count> <dimensions>" line. Text records are
"word v1 ... vd"; binary records are "word " followed by d little-endian float32 values and,
as the C tool writes them, a newline (gensim omits it; both variants are read).
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import lzma
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, TypeAlias, cast

import numpy as np

from model.atomic import atomic_file
from model.corpus import compression_of, open_bytes
from model.errors import ModelFormatError, ParameterError
from model.vectors import Vectors

__all__ = ["load_word2vec_format", "save_word2vec_format"]

PathLike: TypeAlias = str | os.PathLike[str]
UnicodeErrors: TypeAlias = Literal["strict", "replace", "ignore"]

# What ends a word in either format, for gensim's reader and ours. (word2vec.c's own tools also
# split at tabs; a word with a tab, which only an imported file can give, is still written.)
_WORD_BREAK = re.compile(r"[ \n]")
# Rows converted per write/parse step: large enough to amortise Python overhead, small enough
# that a multi-gigabyte store is never materialised as one string.
_ROWS_PER_CHUNK = 4096
_READ_CHUNK = 1 << 20
_MAX_HEADER = 1024
# A text record without a header line (GloVe's) may hold this many bytes of numbers.
_MAX_FIRST_RECORD = 1 << 20
# A binary word longer than this means we are not looking at a word2vec file.
_MAX_WORD_BYTES = 1 << 16
# %.9g is the shortest fixed precision that round-trips every float32 exactly.
_FLOAT_FORMAT = "%.9g"

_COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
# Files people reach for that are not in this format, by their first bytes, and what to do.
_OTHER_FORMATS = (
    (b"\xba\x16\x4f\x2f", "a fastText .bin model: import the .vec file fastText writes beside it"),
    (
        b"\x80",
        "a Python pickle (gensim's .model or .kv files are): write it with gensim's "
        "model.wv.save_word2vec_format('vectors.bin', binary=True) and import that",
    ),
    (b"\x93NUMPY", "a NumPy .npy array, which holds no words: write a word2vec text or binary file"),
    (b"PK\x03\x04", "a zip archive: extract the vectors file from it"),
)


# ---------------------------------------------------------------------------- writing


def save_word2vec_format(vectors: Vectors, path: PathLike, *, binary: bool = False) -> None:
    """Write `vectors` so that gensim's `KeyedVectors.load_word2vec_format` reads them back.

    The file is replaced atomically (temp file, fsync, rename, fsync of the directory), so a
    crash never leaves a half-written model where a reader might pick it up. A ".gz", ".bz2"
    or ".xz" suffix compresses the output, as gensim does.
    """
    path = Path(path)
    bad = [w for w in vectors.words if not w or _WORD_BREAK.search(w)]
    if bad:
        shown = ", ".join(repr(w) for w in bad[:5])
        raise ModelFormatError(
            f"{len(bad)} word(s) are empty or contain a space and cannot be stored in "
            f"word2vec format: {shown}{', ...' if len(bad) > 5 else ''}"
        )
    writer = _write_binary if binary else _write_text
    kind = _COMPRESSED_SUFFIXES.get(path.suffix.lower())
    with atomic_file(path, "wb") as raw:
        if kind is None:
            writer(vectors, raw)
        else:
            with _compressor(raw, kind, path.name) as packed:
                writer(vectors, packed)


def _write_text(vectors: Vectors, out: IO[bytes]) -> None:
    n, d = len(vectors), vectors.vector_size
    out.write(f"{n} {d}\n".encode())
    row_format = " ".join([_FLOAT_FORMAT] * d)
    for start in range(0, n, _ROWS_PER_CHUNK):
        rows = vectors.vectors[start : start + _ROWS_PER_CHUNK].tolist()
        words = vectors.words[start : start + _ROWS_PER_CHUNK]
        lines = [f"{w} {row_format % tuple(row)}\n" for w, row in zip(words, rows, strict=True)]
        out.write("".join(lines).encode("utf-8"))


def _write_binary(vectors: Vectors, out: IO[bytes]) -> None:
    n, d = len(vectors), vectors.vector_size
    out.write(f"{n} {d}\n".encode())
    record = 4 * d
    for start in range(0, n, _ROWS_PER_CHUNK):
        data = np.ascontiguousarray(vectors.vectors[start : start + _ROWS_PER_CHUNK], dtype="<f4").tobytes()
        words = vectors.words[start : start + _ROWS_PER_CHUNK]
        parts: list[bytes] = []
        for i, w in enumerate(words):
            parts += (w.encode("utf-8"), b" ", data[i * record : (i + 1) * record], b"\n")
        out.write(b"".join(parts))


def _compressor(raw: IO[bytes], kind: str, name: str) -> IO[bytes]:
    # The wrappers do not close `raw`, so it can still be fsynced after they flush their trailer.
    if kind == "gzip":
        return cast(IO[bytes], gzip.GzipFile(filename=name, mode="wb", fileobj=raw, mtime=0))
    if kind == "bz2":
        return cast(IO[bytes], bz2.BZ2File(raw, "wb"))
    return cast(IO[bytes], lzma.LZMAFile(raw, "wb"))


# ---------------------------------------------------------------------------- reading


class _RecordError(Exception):
    """A record failed to parse; converted to ModelFormatError with file context."""


@dataclass(frozen=True)
class _Options:
    limit: int | None
    unicode_errors: UnicodeErrors

    def keeps(self, done: int) -> bool:
        """Whether the record after `done` records is read at all."""
        return self.limit is None or done < self.limit


def load_word2vec_format(
    path: PathLike,
    *,
    binary: bool | None = None,
    limit: int | None = None,
    unicode_errors: UnicodeErrors = "strict",
) -> Vectors:
    """Read a word2vec text or binary file (optionally gzip/bz2/xz compressed).

    With `binary=None` the format is detected from the first record: it is text if it decodes
    as a word followed by exactly the declared number of numbers. Pass `binary` explicitly
    when it is known; detection is a heuristic, although a binary file passes as text only
    with vanishing probability. Any malformation raises `ModelFormatError` naming the line
    (text) or record and byte offset (binary). Text whose first line is a record rather than a
    "<words> <dimensions>" header (GloVe's files) is read too, as gensim's `no_header=True` does.

    As in gensim: `limit` reads only the first `limit` vectors (files list the most frequent
    words first) and ignores the rest of the file. `unicode_errors="replace"` or `"ignore"`
    reads words that are not valid UTF-8, such as those word2vec.c cut in the middle of a
    character; a word that decoding makes equal to an earlier one is dropped, the earlier
    (more frequent) one kept.
    """
    if limit is not None and limit < 1:
        # gensim reads limit=0 as no limit; here that is limit=None, and 0 a mistake.
        raise ParameterError(f"limit must be a positive number of vectors, or None for all, got {limit}")
    if unicode_errors not in ("strict", "replace", "ignore"):
        raise ModelFormatError(f"unicode_errors must be 'strict', 'replace' or 'ignore', got {unicode_errors!r}")
    options = _Options(limit, unicode_errors)
    path = Path(path)
    kind = compression_of(path)  # by magic bytes, so a misnamed file still loads
    size = None if kind else path.stat().st_size
    with open_bytes(path, what="vectors") if kind else open(path, "rb", buffering=_READ_CHUNK) as stream:
        try:
            return _read(stream, path, binary, size, options)
        except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
            raise ModelFormatError(f"{path}: corrupt or truncated compressed data ({exc})") from exc
        except OSError as exc:
            if kind is None:
                raise
            raise ModelFormatError(f"{path}: corrupt {kind} data ({exc})") from exc


def _read(stream: IO[bytes], path: Path, binary: bool | None, size: int | None, options: _Options) -> Vectors:
    header = stream.readline(_MAX_HEADER)
    if not binary and len(header) == _MAX_HEADER and not header.endswith(b"\n"):
        # No header is this long; a GloVe record of 300 numbers is: read the rest of the line.
        header += stream.readline(_MAX_WORD_BYTES + _MAX_FIRST_RECORD)
    if not binary and _is_headerless_text(header):
        # GloVe's files: word2vec text without the "<words> <dimensions>" line.
        try:
            words, out = _read_headerless(header, stream, options)
        except _RecordError as exc:
            raise ModelFormatError(f"{path}: {exc} (read as text without a header line, as GloVe writes it)") from None
        return _checked_vectors(path, words, out)
    n, d = _parse_header(header, path)
    declared = n
    if options.limit is not None:
        n = min(n, options.limit)
    if size is not None and n == declared:
        # Cheapest possible record: 1-byte word, d single-digit values, separators. Checking
        # this first turns a corrupted header into a clear error instead of a huge allocation.
        needed = len(header) + n * (2 * d + 1) - 1
        if n and size < needed:
            raise ModelFormatError(
                f"{path}: header declares {n} words x {d} dimensions, which needs at least "
                f"{needed} bytes, but the file has {size} bytes (truncated or wrong header?)"
            )
    try:
        out = np.empty((n, d), dtype=np.float32)
    except (MemoryError, ValueError) as exc:
        raise ModelFormatError(f"{path}: header declares {n} words x {d} dimensions, too large") from exc

    # Bounded, because in a binary file the first "line" may run for megabytes.
    first = stream.readline(_MAX_WORD_BYTES + 32 * d) if n else b""
    detection_note = ""
    if binary is None and not first:
        binary = False  # nothing to inspect; the text reader reports the truncation clearly
    elif binary is None:
        try:
            _parse_text_record(first, d, 2, options)
            binary = False
        except _RecordError as exc:
            binary = True
            detection_note = (
                f" (read as binary because line 2 is not a valid text record: {exc}; "
                f"pass binary=False/True to force a format)"
            )
    if not binary and first and not first.endswith(b"\n"):
        first += stream.readline()  # an unusually long text line was cut by the bound above
    try:
        if binary:
            words, dropped = _read_binary(first, stream, out, len(header), options, declared)
        else:
            words, dropped = _read_text(first, stream, out, options, declared)
    except _RecordError as exc:
        raise ModelFormatError(f"{path}: {exc}{detection_note}") from None
    return _checked_vectors(path, words, np.delete(out, dropped, axis=0) if dropped else out)


def _checked_vectors(path: Path, words: list[str], out: np.ndarray) -> Vectors:
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if len(bad):
        # A diverged training run writes these; no similarity can be computed from them.
        raise ModelFormatError(
            f"{path}: the vector of {words[bad[0]]!r} holds NaN or infinity ({len(bad)} such word(s))"
        )
    return Vectors(words, out)


def _is_headerless_text(first: bytes) -> bool:
    """A first line that is a text record (a word, then numbers) rather than a header: a word2vec
    header is two integers, so a line of three or more fields, or of a word and one number
    that is not an integer pair, cannot be one."""
    fields = first.split()
    if len(fields) < 2 or not first.endswith(b"\n"):
        return False
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        return False
    return all(_is_float(f) for f in fields[1:])


def _read_headerless(first: bytes, stream: IO[bytes], options: _Options) -> tuple[list[str], np.ndarray]:
    d = len(first.split()) - 1
    out = np.empty((1024, d), dtype=np.float32)
    words: list[str] = []
    seen: dict[str, int] = {}
    records = 0
    for line_no, line in enumerate(itertools.chain([first], stream), start=1):
        if not line.strip():
            continue
        if not options.keeps(records):
            break
        records += 1
        parsed = _parse_new_record(line, d, line_no, seen, options)
        if parsed is None:
            continue
        word, values = parsed
        if len(words) == len(out):
            out = np.concatenate([out, np.empty_like(out)])  # doubling: amortised O(1) per row
        out[len(words)] = values
        words.append(word)
    return words, out[: len(words)].copy()


def _parse_header(header: bytes, path: Path) -> tuple[int, int]:
    for magic, what in _OTHER_FORMATS:
        if header.startswith(magic):
            raise ModelFormatError(f"{path}: not a word2vec file but {what}")
    fields = header.split()
    try:
        if len(fields) != 2:
            raise ValueError
        n, d = int(fields[0]), int(fields[1])
    except ValueError:
        raise ModelFormatError(
            f"{path}: line 1: expected a '<word count> <dimensions>' header, got {header[:80]!r}"
        ) from None
    if n < 0 or d < 1:
        raise ModelFormatError(f"{path}: line 1: invalid header sizes {n} words x {d} dimensions")
    return n, d


def _decode_word(raw: bytes, where: str, options: _Options) -> str:
    try:
        word = raw.decode("utf-8", errors=options.unicode_errors)
    except UnicodeDecodeError as exc:
        # Same strictness as gensim's default unicode_errors='strict', with a usable message.
        raise _RecordError(
            f"{where}: word {raw[:40]!r} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
            "pass unicode_errors='replace' or 'ignore' to read such words"
        ) from None
    if not word:
        raise _RecordError(f"{where}: empty word")
    return word


def _parse_text_record(line: bytes, d: int, line_no: int, options: _Options) -> tuple[str, np.ndarray]:
    # rstrip drops "\r\n" and the trailing space the C tool writes after the last value.
    word_raw, _, rest = line.rstrip().partition(b" ")
    where = f"line {line_no}"
    word = _decode_word(word_raw, where, options)
    tokens = rest.split()
    if len(tokens) != d:
        raise _RecordError(f"{where}: expected {d} values after word {word!r}, found {len(tokens)}")
    try:
        values = np.array(tokens, dtype=np.float32)
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise _RecordError(f"{where}: non-numeric value {bad[:40]!r} for word {word!r}") from None
    return word, values


def _parse_new_record(
    line: bytes, d: int, line_no: int, seen: dict[str, int], options: _Options
) -> tuple[str, np.ndarray] | None:
    """A text record whose word has not come before (`seen` maps words to their lines), or
    None for a repeat that lossy decoding made."""
    word, values = _parse_text_record(line, d, line_no, options)
    if word in seen:
        if _lossy_repeat(word, options):
            return None
        raise _RecordError(f"line {line_no}: duplicate word {word!r} (first on line {seen[word]})")
    seen[word] = line_no
    return word, values


def _lossy_repeat(word: str, options: _Options) -> bool:
    """Whether a repeated word may be dropped: lossy decoding can map two distinct byte
    strings to one word (with "ignore", always; with "replace", when both hold U+FFFD)."""
    return options.unicode_errors == "ignore" or (options.unicode_errors == "replace" and "\ufffd" in word)


def _is_float(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_text(
    first: bytes, stream: IO[bytes], out: np.ndarray, options: _Options, declared: int
) -> tuple[list[str], list[int]]:
    """The words, and the rows of `out` whose records lossy decoding dropped (left unfilled)."""
    n, d = out.shape
    words: list[str] = []
    dropped: list[int] = []
    seen: dict[str, int] = {}
    lines: Iterator[bytes] = itertools.chain([first] if first else [], stream)
    line_no = 1
    records = 0
    for line_no, line in enumerate(lines, start=2):
        if not line.strip():
            continue  # blank lines carry nothing; trailing ones are common
        if records == n and options.limit is not None:
            break  # `limit` reached: the rest of the file is not read
        if records >= n:
            raise _RecordError(
                f"line {line_no}: more records than the {n} declared in the header "
                f"(pass limit={n} to read only the first {n}, as gensim does)"
            )
        parsed = _parse_new_record(line, d, line_no, seen, options)
        if parsed is None:
            dropped.append(records)
        else:
            out[records] = parsed[1]
            words.append(parsed[0])
        records += 1
    if records < n:
        raise _RecordError(
            f"file ends at line {line_no} after {records} of the {declared} records declared in the header (truncated?)"
        )
    return words, dropped


def _read_binary(
    first: bytes, stream: IO[bytes], out: np.ndarray, header_len: int, options: _Options, declared: int
) -> tuple[list[str], list[int]]:
    """As `_read_text`, for the binary format."""
    n, d = out.shape
    record = 4 * d
    words: list[str] = []
    dropped: list[int] = []
    seen: dict[str, int] = {}
    buf = first
    base = header_len  # file offset of buf[0], for error messages
    pos = 0
    records = 0
    while records < n:
        # The C tool writes "\n" after each vector and gensim does not; skip it if present.
        while pos < len(buf) and buf[pos] == 0x0A:
            pos += 1
        space = buf.find(b" ", pos, pos + _MAX_WORD_BYTES + 1)
        if space == -1 or len(buf) - (space + 1) < record:
            if space == -1 and len(buf) - pos > _MAX_WORD_BYTES:
                raise _RecordError(
                    f"record {records + 1} at byte {base + pos}: no space-terminated word "
                    f"within {_MAX_WORD_BYTES} bytes; not a word2vec binary file?"
                )
            more = stream.read(max(_READ_CHUNK, record + 64))
            if not more:
                raise _RecordError(
                    f"file ends at byte {base + len(buf)} inside record {records + 1} of the {declared} "
                    f"declared in the header (truncated?)"
                )
            base += pos
            buf = buf[pos:] + more
            pos = 0
            continue
        where = f"record {records + 1} at byte {base + pos}"
        word = _decode_word(buf[pos:space], where, options)
        if word in seen and not _lossy_repeat(word, options):
            raise _RecordError(f"{where}: duplicate word {word!r} (first in record {seen[word]})")
        if word in seen:
            dropped.append(records)
        else:
            seen[word] = records + 1
            out[records] = np.frombuffer(buf, dtype="<f4", count=d, offset=space + 1)
            words.append(word)
        records += 1
        pos = space + 1 + record
    if options.limit is not None:
        return words, dropped  # `limit` reached: the rest of the file is not read
    trailing_at = base + pos
    rest = buf[pos:]
    while True:
        if rest.strip():
            raise _RecordError(
                f"unexpected data after the {n} records declared in the header, near byte {trailing_at} "
                f"(pass limit={n} to read only the first {n}, as gensim does)"
            )
        trailing_at += len(rest)
        rest = stream.read(_READ_CHUNK)
        if not rest:
            return words, dropped
