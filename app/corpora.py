"""Corpora in the store: one data file (`<id>.txt`, `.txt.gz` or `.txt.bz2`) and one metadata file each.

A corpus is checked (it decompresses, it is not empty) and its lines counted before it gets an
id, and its metadata is written last, so a corpus is listed only once it is complete.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import os
import zlib
from pathlib import Path
from typing import IO, Any, cast

from app.auth import Owner, owned_by
from worker.jobs import utcnow
from worker.storage import StoreLayout, is_id, new_id


class InvalidCorpus(ValueError):
    """The uploaded bytes are not a usable corpus."""


class CorpusNotFound(LookupError):
    def __init__(self, corpus_id: str) -> None:
        self.corpus_id = corpus_id
        super().__init__(f"corpus {corpus_id!r} not found")


_SUFFIX = {"none": ".txt", "gzip": ".txt.gz", "bz2": ".txt.bz2"}


def _compression(path: Path) -> str:
    with path.open("rb") as fh:
        magic = fh.read(3)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"BZh":
        return "bz2"
    return "none"


def _open(path: Path, compression: str) -> IO[bytes]:
    if compression == "gzip":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == "bz2":
        return cast(IO[bytes], bz2.open(path, "rb"))
    return path.open("rb")


def count_text(path: Path, compression: str) -> tuple[int, int]:
    """(lines, uncompressed bytes); a last line without a newline still counts."""
    lines = size = 0
    last = b"\n"
    try:
        with _open(path, compression) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                lines += block.count(b"\n")
                size += len(block)
                last = block[-1:]
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise InvalidCorpus(f"the upload looks like {compression} data but does not decompress: {exc}") from exc
    if size and last != b"\n":
        lines += 1
    return lines, size


class CorpusStore:
    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout

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
            compression = _compression(tmp)
            lines, text_bytes = count_text(tmp, compression)
            if text_bytes == 0:
                raise InvalidCorpus("the corpus is empty")
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
            "text_bytes": text_bytes,
            "lines": lines,
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
        tmp.write_bytes(text.encode("utf-8"))
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
