"""Layout of the store directory that the API and the workers share.

Every name under the store that comes from a request is a server-issued id checked against
`ID_PATTERN`, so a path built from one can never leave its folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

ID_PATTERN = r"^[0-9a-f]{32}$"
# The errors of a store whose disk (or the account's quota on it) is full.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_ID_RE = re.compile(ID_PATTERN)


def is_disk_full(exc: BaseException) -> TypeGuard[OSError]:
    """Whether `exc` says the store's disk (or the account's quota on it) is full."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> StoreLayout:
        return cls(Path(root).expanduser().resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def corpora(self) -> Path:
        return self.root / "corpora"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def queue(self) -> Path:
        return self.root / "queue"

    def ensure(self) -> None:
        for folder in (self.models, self.corpora, self.jobs, self.checkpoints, self.evaluations, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Remove the partial uploads (`tmp/*.part`) and model exports (`tmp/export-*`) that no
        write has touched for `older_than_s`: what an API process killed mid-upload or mid-download
        leaves. A live upload writes to its file all along, so another replica's is never taken;
        an export being sent reads from a file it holds open, which removing its name leaves
        readable. Returns how many went."""
        cutoff = time.time() - older_than_s
        removed = 0
        # An export is written as a hidden temp file (model.atomic) and renamed when complete.
        exports = (*self.tmp.glob("export-*"), *self.tmp.glob(".export-*.tmp"))
        for path in (*self.tmp.glob("*.part"), *exports):
            with contextlib.suppress(OSError):  # gone meanwhile: finished or removed by another replica
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def model_dir(self, model_id: str) -> Path:
        return self.models / _checked(model_id)

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.checkpoints / _checked(job_id)

    def corpus_meta(self, corpus_id: str) -> Path:
        return self.corpora / f"{_checked(corpus_id)}.json"

    def corpus_file(self, filename: str) -> Path:
        """The data file of a corpus, by the name its metadata records (`<id>.txt[.gz|.bz2]`)."""
        stem = filename.split(".", 1)[0]
        if not is_id(stem) or filename not in {f"{stem}.txt", f"{stem}.txt.gz", f"{stem}.txt.bz2"}:
            raise ValueError(f"not a corpus file name: {filename!r}")
        return self.corpora / filename

    def evaluation_file(self, model_id: str) -> Path:
        return self.evaluations / f"{_checked(model_id)}.json"

    # Ids keep request data from naming a path outside the store; these checks keep the store's
    # own entries from leading outside it: a symlink planted in the store (by a careless copy or
    # a hostile neighbour on a shared volume) is treated as absent rather than followed.

    def is_plain_file(self, path: Path) -> bool:
        """A regular file (not a symlink) whose real location is inside the store."""
        return self._is_plain(path, stat.S_ISREG)

    def is_plain_dir(self, path: Path) -> bool:
        """A directory (not a symlink) whose real location is inside the store."""
        return self._is_plain(path, stat.S_ISDIR)

    def _is_plain(self, path: Path, kind: object) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not kind(st.st_mode):  # type: ignore[operator]
            return False
        return os.path.realpath(path).startswith(str(self.root) + os.sep)


def _checked(value: str) -> str:
    if not is_id(value):
        raise ValueError(f"not a valid id: {value!r}")
    return value
