"""The models folder of the store, seen from the API: listing, metadata and loaded models.

Workers add model directories at any time (each appears in one rename), so nothing here is
cached without a check that is cheap to repeat: the folder's mtime says whether the set of
models changed, and a cached model is dropped as soon as its directory disappears or is
replaced (`w2v index` swaps in a copy with a neighbour table). Loaded
models are memory-mapped and kept in a bounded LRU, each with its unit-normalised matrix and
its query batcher.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.auth import Owner, owned_by
from app.batching import QueryBatcher
from model import Model, ModelFormatError, ParameterError, load_model
from model.atomic import atomic_file
from model.store import META_FILE, VECTORS_FILE, VOCAB_FILE, read_meta
from worker.storage import StoreLayout, is_id, new_id

log = logging.getLogger(__name__)
# How long after its last change the models folder must stay unchanged before a listing of
# it is trusted on the hot path (far above any filesystem timestamp granularity).
MAX_EVALUATIONS = 100
_SETTLE_NS = 1_000_000_000


class ModelDamaged(RuntimeError):
    """A stored model fails its checks (torn write, disk corruption): refused rather than served."""

    def __init__(self, model_id: str, reason: str) -> None:
        self.model_id = model_id
        super().__init__(f"model {model_id!r} is damaged and cannot be served: {reason}")


class ModelNotFound(LookupError):
    def __init__(self, model_id: str | None) -> None:
        self.model_id = model_id
        super().__init__(
            f"model {model_id!r} not found" if model_id is not None else "no model yet: train or import one first"
        )


@dataclass
class LoadedModel:
    model_id: str
    model: Model
    batcher: QueryBatcher
    path: Path
    inode: int  # of the model directory it was loaded from (a replaced directory gets a new one)


class ModelStore:
    def __init__(self, layout: StoreLayout, cache_size: int) -> None:
        self.layout = layout
        self._cache_size = cache_size
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._meta: dict[str, tuple[dict[str, Any], int]] = {}  # id -> (meta.json, directory inode)
        self._listing_key: tuple[int, int] | None = None
        self._listing: list[str] = []
        self._listed: frozenset[str] = frozenset()
        self._listing_settled = False

    # -------------------------------------------------------------- listing and metadata

    def _listing_if_current(self) -> list[str] | None:
        """The cached listing if the models folder has not changed since it was read (one stat)."""
        st = os.stat(self.layout.models)
        with self._lock:
            current = (st.st_mtime_ns, st.st_ino) == self._listing_key and self._listing_settled
            return self._listing if current else None

    def _scan(self) -> list[str]:
        """Model ids, newest first; re-read only when the models folder changed."""
        st = os.stat(self.layout.models)
        key = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if key == self._listing_key and self._listing_settled:
                return self._listing
        # A folder's mtime has the kernel clock's granularity (a few ms): a change right after
        # a listing, within the same tick as the change before it, would leave the mtime as it
        # was. So a listing read less than _SETTLE_NS after the last change is used, but
        # re-read on the next scan rather than trusted for as long as the mtime stays put.
        settled = time.time_ns() - st.st_mtime_ns > _SETTLE_NS
        # Staging directories of saves in progress (or killed mid-way) are dot-names, never ids.
        inodes = {e.name: e.inode() for e in os.scandir(self.layout.models) if is_id(e.name)}
        self._forget_replaced(inodes)
        ids = [model_id for model_id in inodes if self.exists(model_id)]
        metas = {}
        for model_id in ids:
            with contextlib.suppress(ModelFormatError, OSError):
                metas[model_id] = self.meta(model_id)
        ordered = sorted(metas, key=lambda i: (str(metas[i].get("created_at") or ""), i), reverse=True)
        with self._lock:
            self._listing_key, self._listing, self._listed = key, ordered, frozenset(ordered)
            self._listing_settled = settled
            for gone in set(self._meta) - set(ids):
                self._meta.pop(gone, None)
        return ordered

    def _forget_replaced(self, inodes: dict[str, int]) -> None:
        """Drop what is cached of model directories replaced since (`w2v index` swaps a model's
        directory for one with a neighbour table): the next request reads the new one."""
        with self._lock:
            for model_id, (_, inode) in list(self._meta.items()):
                if inodes.get(model_id, inode) != inode:
                    del self._meta[model_id]
            replaced = [lm for lm in self._cache.values() if inodes.get(lm.model_id, lm.inode) != lm.inode]
            for lm in replaced:
                del self._cache[lm.model_id]
        for lm in replaced:
            log.info("model %s: its directory was replaced; it is reloaded on next use", lm.model_id)
            lm.batcher.close()

    def ids(self, owner: Owner = None) -> list[str]:
        """Ids of the models `owner` may see, newest first."""
        return [model_id for model_id in self._scan() if self._visible(model_id, owner)]

    def exists(self, model_id: str) -> bool:
        if not is_id(model_id):
            return False
        path = self.layout.model_dir(model_id)
        return self.layout.is_plain_dir(path) and self.layout.is_plain_file(path / META_FILE)

    def _visible(self, model_id: str, owner: Owner) -> bool:
        if owner is None:
            return True
        try:
            return owned_by(self.meta(model_id), owner)
        except (ModelNotFound, ModelFormatError, OSError):
            return False

    def check(self, model_id: str, owner: Owner = None) -> dict[str, Any]:
        """The metadata of a model `owner` may see; ModelNotFound otherwise (whoever else owns it)."""
        try:
            meta = self.meta(model_id)
        except (ModelFormatError, OSError) as exc:
            # A model directory that cannot be read is as good as absent to the caller.
            raise ModelNotFound(model_id) from exc
        if not owned_by(meta, owner):
            raise ModelNotFound(model_id)
        return meta

    def meta(self, model_id: str) -> dict[str, Any]:
        """The model's meta.json plus its id; cached until the directory is replaced or removed."""
        if not self.exists(model_id):
            raise ModelNotFound(model_id)
        path = self.layout.model_dir(model_id)
        inode = os.stat(path).st_ino
        with self._lock:
            cached = self._meta.get(model_id)
        if cached is not None and cached[1] == inode:
            return cached[0]
        meta = dict(read_meta(path))
        meta["model_id"] = model_id
        if not meta.get("created_at"):
            # Models placed in the store by other tools: the directory's age stands in.
            meta["created_at"] = datetime.fromtimestamp((path / "meta.json").stat().st_mtime, UTC).isoformat(
                timespec="milliseconds"
            )
        with self._lock:
            self._meta[model_id] = (meta, inode)
        return meta

    def evaluations(self, model_id: str) -> list[dict[str, Any]]:
        path = self.layout.evaluation_file(model_id)
        if not self.layout.is_plain_file(path):
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return []
        return data if isinstance(data, list) else []

    def add_evaluation(self, model_id: str, entry: dict[str, Any]) -> None:
        """Keep the result with the model: the newest MAX_EVALUATIONS of them, so a client that
        evaluates in a loop cannot grow the file (rewritten whole each time) without bound."""
        with self._lock:
            entries = [*self.evaluations(model_id), entry][-MAX_EVALUATIONS:]
            with atomic_file(self.layout.evaluation_file(model_id), "w") as fh:
                fh.write(json.dumps(entries))

    def resolve(self, model_id: str | None, owner: Owner = None) -> str:
        """An explicit id that exists (and `owner` may see), or the newest such model when none is given."""
        if model_id is not None:
            if not self.exists(model_id) or not self._visible(model_id, owner):
                raise ModelNotFound(model_id)
            return model_id
        ids = self._scan()
        for candidate in ids:
            if self.exists(candidate) and self._visible(candidate, owner):
                return candidate
        raise ModelNotFound(None)

    # -------------------------------------------------------------- loaded models

    def cached(self, model_id: str | None, owner: Owner = None) -> LoadedModel | None:
        """A loaded model without touching anything slow (for the event loop), or None.

        While the models folder is unchanged since it was last listed (one stat), the listing
        is still true: every id in it passed `exists` then, and no model was added, replaced
        or removed since. That spares the per-request symlink checks on the hot query path.
        """
        try:
            listing = self._listing_if_current()
        except OSError:
            return None
        if listing is None:  # changed since the last look: rescanning is the slow path's job
            return None
        if model_id is None:
            model_id = next((m for m in listing if self._visible_cached(m, owner)), None)
        elif model_id not in self._listed or not self._visible_cached(model_id, owner):
            model_id = None
        if model_id is None:
            return None
        with self._lock:
            loaded = self._cache.get(model_id)
            if loaded is not None:
                self._cache.move_to_end(model_id)
        return loaded

    def _visible_cached(self, model_id: str, owner: Owner) -> bool:
        if owner is None:
            return True
        with self._lock:
            cached = self._meta.get(model_id)
        return cached is not None and owned_by(cached[0], owner)

    def get(self, model_id: str | None, owner: Owner = None) -> LoadedModel:
        """Load (memory-mapped, checksum-verified) on first use; blocking."""
        self._scan()  # re-reads a changed or unsettled listing, so `cached` can trust it again
        resolved = self.resolve(model_id, owner)
        with self._lock:
            loaded = self._cache.get(resolved)
            if loaded is not None:
                self._cache.move_to_end(resolved)
                return loaded
            load_lock = self._load_locks.setdefault(resolved, threading.Lock())
        with load_lock:  # concurrent first requests load the model once
            with self._lock:
                loaded = self._cache.get(resolved)
            if loaded is not None:
                return loaded
            path = self.layout.model_dir(resolved)
            if not all(self.layout.is_plain_file(path / name) for name in (VECTORS_FILE, VOCAB_FILE)):
                raise ModelNotFound(resolved)
            try:
                inode = os.stat(path).st_ino
                model = load_model(path, mmap=True, verify=True)
            except FileNotFoundError as exc:
                raise ModelNotFound(resolved) from exc
            except ModelFormatError as exc:
                log.error("model %s: %s", resolved, exc)
                raise ModelDamaged(resolved, str(exc)) from exc
            # Build the normalised matrix and its int8 copy, and load the compiled search
            # kernels, before the first query waits on them.
            model.vectors.int8_rows  # noqa: B018
            if len(model.vectors) > 2:
                # Two words: a one-word query would be read from the neighbour table instead.
                with contextlib.suppress(ParameterError):  # an all-zero vector among them
                    model.vectors.most_similar(model.vectors.words[:2], topn=1)
            if model.vectors.subwords is not None:
                model.vectors.subwords.vector("warm-up")  # loads the n-gram hashing for unseen words
            loaded = LoadedModel(resolved, model, QueryBatcher(model.vectors, name=resolved[:8]), path, inode)
            evicted: list[LoadedModel] = []
            with self._lock:
                self._cache[resolved] = loaded
                while len(self._cache) > self._cache_size:
                    evicted.append(self._cache.popitem(last=False)[1])
                self._load_locks.pop(resolved, None)
            for old in evicted:
                old.batcher.close()
            log.info("loaded model %s (%d words)", resolved, len(model.vectors))
            return loaded

    def loaded_count(self) -> int:
        """How many models this process holds in memory (for /metrics)."""
        with self._lock:
            return len(self._cache)

    def drop(self, model_id: str) -> None:
        with self._lock:
            loaded = self._cache.pop(model_id, None)
            self._meta.pop(model_id, None)
            self._listing_key = None
        if loaded is not None:
            loaded.batcher.close()

    def delete(self, model_id: str, owner: Owner = None) -> None:
        self.check(model_id, owner)
        path = self.layout.model_dir(model_id)
        # Renamed away first, so no reader ever sees a half-deleted model.
        trash = self.layout.tmp / f"deleted-{model_id}-{new_id()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError as exc:
            raise ModelNotFound(model_id) from exc
        self.drop(model_id)
        with contextlib.suppress(FileNotFoundError):
            self.layout.evaluation_file(model_id).unlink()
        shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            loaded = list(self._cache.values())
            self._cache.clear()
        for lm in loaded:
            lm.batcher.close()
