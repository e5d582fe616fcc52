"""Reading a text corpus: one sentence per line, whitespace-separated tokens.

Tokenisation matches gensim's `LineSentence`: `line.split()`, no other normalisation
unless `lowercase` is asked for. Lines longer than `MAX_SENTENCE_WORDS` tokens are cut
into consecutive chunks, because the context window never crosses a sentence boundary
and a single huge "sentence" (a whole document on one line) would otherwise be one
unsplittable unit of work.
"""

from __future__ import annotations

import bz2
import gzip
import io
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from model.errors import CorpusError

MAX_SENTENCE_WORDS = 10_000
# Past this many tokens (1 GiB of int32) the token stream is kept in a temp file, not the heap.
SPILL_AFTER_TOKENS = 256 * 1024 * 1024

Source = str | Path | Iterable[Sequence[str]]


def open_text(path: str | Path) -> IO[str]:
    """Open a plain, gzip or bzip2 text file, chosen by its magic bytes rather than its name."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"corpus file not found: {p}")
    if p.is_dir():
        raise CorpusError(f"corpus path is a directory, expected a text file: {p}")
    try:
        with p.open("rb") as fh:
            magic = fh.read(3)
    except OSError as exc:
        raise CorpusError(f"cannot read corpus {p}: {exc.strerror or exc}") from exc
    raw: IO[bytes]
    if magic[:2] == b"\x1f\x8b":
        raw = gzip.open(p, "rb")  # type: ignore[assignment]
    elif magic == b"BZh":
        raw = bz2.open(p, "rb")
    else:
        raw = p.open("rb")
    # Undecodable bytes become U+FFFD instead of aborting a long job on one bad byte.
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)


def iter_sentences(
    source: Source, *, lowercase: bool = False, max_sentence_words: int = MAX_SENTENCE_WORDS
) -> Iterator[list[str]]:
    """Yield token lists from a file path or from an iterable of token sequences."""
    if isinstance(source, str | Path):
        try:
            with open_text(source) as fh:
                for line in fh:
                    yield from _chunks(line.lower().split() if lowercase else line.split(), max_sentence_words)
        except (OSError, EOFError) as exc:
            # Truncated gzip/bz2 streams surface here; the message names the file.
            raise CorpusError(f"cannot read corpus {source}: {exc}") from exc
        return
    for sentence in source:
        if isinstance(sentence, str):
            raise CorpusError("a corpus iterable must yield lists of tokens, not strings")
        tokens = [t.lower() for t in sentence] if lowercase else list(sentence)
        yield from _chunks(tokens, max_sentence_words)


def _chunks(tokens: list[str], size: int) -> Iterator[list[str]]:
    if len(tokens) <= size:
        yield tokens
        return
    for i in range(0, len(tokens), size):
        yield tokens[i : i + size]


class TokenSink:
    """Collects int32 token chunks; past `spill_after` tokens they go to an unlinked temp file.

    A corpus larger than memory then trains from a memory map backed by that file, so the
    page cache rather than the heap holds the token stream, and the disk space is returned
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
            if not self.chunks:
                return np.empty(0, dtype=np.int32)
            return self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
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
) -> EncodedCorpus:
    index: defaultdict[str, int] = defaultdict()
    # A missing word gets the next free id: the lookup runs entirely in C via map().
    index.default_factory = index.__len__
    lookup = index.__getitem__
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
    return EncodedCorpus(
        words=list(index), counts=counts.astype(np.int64), tokens=sink.finish(),
        lengths=np.asarray(lengths, dtype=np.int64), n_lines=n_lines,
    )
