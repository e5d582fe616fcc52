"""The model directory format: float32 `vectors.npy`, `vocab.tsv` (word, count), `meta.json`,
optionally `neighbours.npy` (the precomputed neighbour table, `model.neighbours`), and for a
model trained with subwords `ngrams.npy` and `ngram_buckets.npy` (its n-gram rows and the
bucket of each, `model.subwords`).

`meta.json` carries a SHA-256 of each data file so a torn or tampered model is refused at
load time instead of answering queries with garbage. Directories are written to a staging
name and renamed into place, so readers never see a half-written model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.atomic import publish_dir, replace_existing_dir, save_array, staging_dir, unwritable_reason
from model.errors import ModelFormatError
from model.neighbours import NeighbourTable
from model.vectors import Vectors

if TYPE_CHECKING:
    from model.subwords import Subwords

FORMAT_VERSION = 1
VECTORS_FILE = "vectors.npy"
VOCAB_FILE = "vocab.tsv"
META_FILE = "meta.json"
NEIGHBOURS_FILE = "neighbours.npy"
NGRAMS_FILE = "ngrams.npy"
NGRAM_BUCKETS_FILE = "ngram_buckets.npy"


@dataclass
class Model:
    vectors: Vectors
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        save_model(path, self, overwrite=overwrite)

    def query_words(self, words: list[str]) -> list[str]:
        """Query words as the vocabulary holds them: lower-cased for a model trained with
        `lowercase`, whose vocabulary has no capitals ("Paris" finds "paris")."""
        config = self.meta.get("config") or {}
        return [w.lower() for w in words] if config.get("lowercase") else words


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_writable_target(path: str | Path, *, overwrite: bool) -> Path:
    """The absolute path a model may be written to, or FileExistsError saying why not.

    Overwriting replaces only a model directory or an empty one: a mistyped path must not
    swap away a folder of other files, or a file, such as the corpus itself.
    """
    target = Path(os.path.abspath(path))
    if not target.exists() and not target.is_symlink():
        problem = unwritable_reason(target)
        if problem is not None:
            raise FileExistsError(f"cannot write a model to {path}: {problem}")
        return target
    if not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or allow overwrite")
    if not target.is_dir() or target.is_symlink():
        raise FileExistsError(f"{path} exists and is not a model directory; it is left as it is")
    if not (target / META_FILE).is_file() and any(target.iterdir()):
        raise FileExistsError(
            f"{path} is a folder that holds no model ({META_FILE} is missing); only a model "
            "directory or an empty folder is replaced"
        )
    return target


def save_model(path: str | Path, model: Model, *, overwrite: bool = False, only_if_exists: bool = False) -> bool:
    """Write a model directory in one step: readers see the old directory or the new one, whole.

    `only_if_exists` rewrites an existing model only while it still exists, so a model deleted
    during a long rewrite stays deleted; False then, and nothing is written.
    """
    if only_if_exists:
        target = Path(os.path.abspath(path))
        if not target.is_dir():
            return False
    else:
        target = check_writable_target(path, overwrite=overwrite)
    stage = staging_dir(target)
    try:
        vectors = np.ascontiguousarray(model.vectors.vectors, dtype=np.float32)
        save_array(stage / VECTORS_FILE, vectors)
        counts = model.vectors.counts
        with (stage / VOCAB_FILE).open("w", encoding="utf-8", newline="\n") as fh:
            for i, word in enumerate(model.vectors.words):
                fh.write(f"{word}\t{int(counts[i]) if counts is not None else 0}\n")
        names = [VECTORS_FILE, VOCAB_FILE]
        meta = dict(model.meta)
        meta.pop("neighbours", None)
        table = model.vectors.neighbours
        if table is not None:
            table.save(stage / NEIGHBOURS_FILE)
            names.append(NEIGHBOURS_FILE)
            meta["neighbours"] = {"words": table.n_words, "k": table.k}
        meta.pop("subwords", None)
        subwords = model.vectors.subwords
        if subwords is not None:
            save_array(stage / NGRAMS_FILE, np.ascontiguousarray(subwords.vectors, dtype=np.float32))
            save_array(stage / NGRAM_BUCKETS_FILE, np.ascontiguousarray(subwords.bucket_ids, dtype=np.int64))
            names += [NGRAMS_FILE, NGRAM_BUCKETS_FILE]
            meta["subwords"] = {**subwords.config(), "rows": int(subwords.bucket_ids.size)}
        meta.update(
            format_version=FORMAT_VERSION,
            vocab_size=len(model.vectors.words),
            vector_size=int(vectors.shape[1]),
            files={name: _sha256(stage / name) for name in names},
        )
        (stage / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        if only_if_exists:
            return replace_existing_dir(stage, target)
        publish_dir(stage, target, overwrite=overwrite)
        return True
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(stage)
        raise


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{path} is not a model directory (no {META_FILE})") from exc
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{meta_path} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"{meta_path}: unsupported or missing format_version")
    return meta


def load_model(path: str | Path, *, mmap: bool = True, verify: bool = True) -> Model:
    root = Path(path)
    meta = read_meta(root)
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise ModelFormatError(f"{root / META_FILE}: 'files' must map file names to checksums")
    # The table is optional, but once meta.json lists it, it must be there and intact.
    names = [VECTORS_FILE, VOCAB_FILE] + ([NEIGHBOURS_FILE] if NEIGHBOURS_FILE in files else [])
    if meta.get("subwords") is not None:
        names += [NGRAMS_FILE, NGRAM_BUCKETS_FILE]
    if verify:
        for name in names:
            expected = files.get(name)
            if not (root / name).is_file():
                raise ModelFormatError(f"{root}: {name} is missing")
            if expected != _sha256(root / name):
                raise ModelFormatError(f"{root}: {name} does not match its checksum in {META_FILE}")
    try:
        vectors = np.load(root / VECTORS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{root}: cannot read {VECTORS_FILE}: {exc}") from exc
    words: list[str] = []
    counts: list[int] = []
    # Lines end at \n only: a word may hold \r, as word2vec binary files allow (save_model
    # refuses words with \n). A word may hold tabs too: the count is after the last one.
    try:
        with (root / VOCAB_FILE).open(encoding="utf-8", newline="\n") as fh:
            for lineno, line in enumerate(fh, 1):
                word, sep, count = line.removesuffix("\n").rpartition("\t")
                if not sep or not count.isdigit():
                    raise ModelFormatError(f"{root / VOCAB_FILE}:{lineno}: expected 'word<TAB>count'")
                words.append(word)
                counts.append(int(count))
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{root / VOCAB_FILE} is not valid UTF-8: {exc}") from exc
    if vectors.ndim != 2 or vectors.shape[0] != len(words) or vectors.dtype != np.float32:
        raise ModelFormatError(
            f"{root}: {VECTORS_FILE} has shape {vectors.shape} {vectors.dtype}, expected ({len(words)}, d) float32"
        )
    loaded = Vectors(words, vectors, np.asarray(counts, dtype=np.int64))
    if NEIGHBOURS_FILE in names:
        loaded.attach_neighbours(NeighbourTable.load(root / NEIGHBOURS_FILE, len(words)))
    if meta.get("subwords") is not None:
        loaded.subwords = _load_subwords(root, meta["subwords"], vectors.shape[1], mmap)
    return Model(loaded, meta)


def _load_subwords(root: Path, info: Any, dim: int, mmap: bool) -> Subwords:
    from model.subwords import Subwords  # Numba: loaded only for models that need it

    try:
        ngrams = np.load(root / NGRAMS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        buckets = np.load(root / NGRAM_BUCKETS_FILE, allow_pickle=False)
        config = {k: int(info[k]) for k in ("min_n", "max_n", "buckets")}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelFormatError(f"{root}: cannot read its subwords: {exc}") from exc
    if ngrams.ndim != 2 or ngrams.shape != (buckets.size, dim) or ngrams.dtype != np.float32:
        raise ModelFormatError(f"{root}: {NGRAMS_FILE} has shape {ngrams.shape}, expected ({buckets.size}, {dim})")
    if buckets.dtype != np.int64 or buckets.ndim != 1 or (buckets.size and np.any(np.diff(buckets) <= 0)):
        raise ModelFormatError(f"{root}: {NGRAM_BUCKETS_FILE} must hold sorted, distinct int64 bucket ids")
    return Subwords(bucket_ids=buckets, vectors=ngrams, **config)
