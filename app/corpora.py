"""Corpora in the store: one data file (`<id>.txt`, `.txt.gz`, `.txt.bz2` or `.txt.xz`) and one
metadata file each.

A corpus is checked (it decompresses, it is UTF-8 text, it is not empty) and its lines counted
before it gets an id, and its metadata is written last, so a corpus is listed only once it is
complete.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.auth import Owner, owned_by
from model import corpus as corpus_files
from model.errors import CorpusError
from worker.jobs import utcnow
from worker.storage import StoreLayout, is_id, new_id


class InvalidCorpus(ValueError):
    """The uploaded bytes are not a usable corpus."""


class CorpusTooLarge(InvalidCorpus):
    """The text, decompressed, is over the store's limit."""


class CorpusNotFound(LookupError):
    def __init__(self, corpus_id: str) -> None:
        self.corpus_id = corpus_id
        super().__init__(f"corpus {corpus_id!r} not found")


# The compressions model/corpus.py reads (by magic bytes), under the names corpus metadata
# gives them, and the suffix each is stored with.
_NAMES = {None: "none", "gzip": "gzip", "bzip2": "bz2", "xz": "xz"}
_SUFFIX = {"none": ".txt", "gzip": ".txt.gz", "bz2": ".txt.bz2", "xz": ".txt.xz"}
def compression_of(path: Path) -> str:
    """The compression of the file at `path` ("none" if plain), from its magic bytes."""
    return _NAMES[corpus_files.compression_of(path)]


def open_decompressed(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed if it is compressed."""
    return corpus_files.open_bytes(path, what="uploaded")


def _check_is_text(head: bytes) -> None:
    """Refuse text in another encoding (UTF-16 above all) and binary files, saying how to convert."""
    try:
        corpus_files.check_text_head(head)
    except CorpusError as exc:
        raise InvalidCorpus(str(exc)) from None


@dataclass
class TextStats:
    lines: int
    text_bytes: int  # uncompressed
    invalid_utf8_bytes: int  # training reads each invalid sequence as U+FFFD
    has_words: bool  # anything but whitespace


def count_text(path: Path, compression: str, max_text_bytes: int | None = None) -> TextStats:
    """Lines (a last line without a newline still counts), size and invalid UTF-8 of the text.

    Lines end as training reads them (Python's universal newlines): at "\n", "\r\n" or a lone "\r".

    Raises InvalidCorpus for data that does not decompress and for text that is not UTF-8,
    CorpusTooLarge as soon as the decompressed text passes `max_text_bytes`.
    """
    lines = size = valid = 0
    has_words = False
    last = b"\n"
    # Invalid bytes become lone surrogates, which encoding with "ignore" drops: what the
    # encoded text lacks of the bytes read is the invalid part. Split sequences at block
    # edges wait in the incremental decoder.
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    # Words are what the trainer's str.split() finds, so whitespace is Unicode's (U+3000,
    # U+00A0, the ASCII separators \x1c-\x1f), not only the bytes bytes.isspace() knows.
    words = codecs.getincrementaldecoder("utf-8-sig")("replace")  # a byte order mark is no word
    try:
        with open_decompressed(path) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                has_words = has_words or bool(words.decode(block).split())
                if size == 0:
                    _check_is_text(block)
                # "\r\n" split between blocks: its "\r" was counted with the block before.
                lines += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
                if last == b"\r" and block.startswith(b"\n"):
                    lines -= 1
                size += len(block)
                if max_text_bytes is not None and size > max_text_bytes:
                    raise CorpusTooLarge(
                        f"the corpus decompresses to more than {max_text_bytes} bytes of text, the limit "
                        f"(W2V_MAX_CORPUS_TEXT_BYTES); split it, or train on a part of it"
                    )
                last = block[-1:]
                if block.isascii() and not decoder.getstate()[0]:
                    valid += len(block)
                else:
                    valid += len(decoder.decode(block).encode("utf-8", "ignore"))
    except InvalidCorpus:  # CorpusTooLarge too
        raise
    except (*corpus_files.DECOMPRESS_ERRORS, ValueError) as exc:
        raise InvalidCorpus(f"the upload looks like {compression} data but does not decompress: {exc}") from exc
    valid += len(decoder.decode(b"", final=True).encode("utf-8", "ignore"))
    has_words = has_words or bool(words.decode(b"", final=True).split())
    if size and last not in (b"\n", b"\r"):
        lines += 1
    return TextStats(lines=lines, text_bytes=size, invalid_utf8_bytes=size - valid, has_words=has_words)


def corpus_lock(corpus_id: str) -> str:
    """The name of the job-store lock that orders job submissions on a corpus against its deletion."""
    return f"corpus:{corpus_id}"


class CorpusStore:
    def __init__(self, layout: StoreLayout, max_text_bytes: int | None = None) -> None:
        self.layout = layout
        self.max_text_bytes = max_text_bytes

    def ingest(
        self,
        tmp: Path,
        *,
        filename: str | None = None,
        name: str | None = None,
        inline: bool = False,
        owner: Owner = None,
    ) -> dict[str, Any]:
        """Adopt an uploaded temporary file as a new corpus; blocking (reads the whole file)."""
        try:
            compression = compression_of(tmp)
            stats = count_text(tmp, compression, self.max_text_bytes)
            if stats.text_bytes == 0:
                raise InvalidCorpus("the corpus is empty")
            if not stats.has_words:
                raise InvalidCorpus("the corpus holds only whitespace: there are no words to train on")
            corpus_id = new_id()
            data_name = f"{corpus_id}{_SUFFIX[compression]}"
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.layout.corpora / data_name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        meta = {
            "id": corpus_id,
            "file": data_name,
            "bytes": (self.layout.corpora / data_name).stat().st_size,
            "text_bytes": stats.text_bytes,
            "lines": stats.lines,
            "invalid_utf8_bytes": stats.invalid_utf8_bytes,
            "compression": compression,
            "filename": filename,
            "name": name,
            "inline": inline,
            "created_at": utcnow(),
            "owner": owner,
        }
        meta_path = self.layout.corpus_meta(corpus_id)
        staging = meta_path.with_name(f".{meta_path.name}.tmp")
        staging.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(staging, meta_path)
        return meta

    def ingest_text(self, text: str, *, name: str | None = None, owner: Owner = None) -> dict[str, Any]:
        tmp = self.layout.tmp / f"inline-{new_id()}.part"
        try:
            tmp.write_bytes(text.encode("utf-8"))
        except BaseException:  # a full disk, say: no empty .part left behind
            tmp.unlink(missing_ok=True)
            raise
        return self.ingest(tmp, name=name, inline=True, owner=owner)

    def _read(self, path: Path) -> dict[str, Any] | None:
        """A corpus's metadata, or None if it is missing, unreadable or not a plain file of the store."""
        if not self.layout.is_plain_file(path):
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def get(self, corpus_id: str, owner: Owner = None) -> dict[str, Any]:
        if not is_id(corpus_id):
            raise CorpusNotFound(corpus_id)
        data = self._read(self.layout.corpus_meta(corpus_id))
        if data is None or not owned_by(data, owner):
            raise CorpusNotFound(corpus_id)
        return data

    def list(self, owner: Owner = None) -> list[dict[str, Any]]:
        out = []
        for path in self.layout.corpora.glob("*.json"):
            if not is_id(path.stem):
                continue
            data = self._read(path)
            if data is not None and owned_by(data, owner):
                out.append(data)
        out.sort(key=lambda m: (m.get("created_at", ""), m.get("id", "")), reverse=True)
        return out

    def path(self, corpus_id: str, owner: Owner = None) -> Path:
        return self.layout.corpus_file(self.get(corpus_id, owner)["file"])

    def delete(self, corpus_id: str, owner: Owner = None) -> None:
        meta = self.get(corpus_id, owner)
        # Metadata first: from that moment the corpus is gone for every reader.
        self.layout.corpus_meta(corpus_id).unlink(missing_ok=True)
        self.layout.corpus_file(meta["file"]).unlink(missing_ok=True)
