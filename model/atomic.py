"""Crash-safe writes: a killed process leaves either the old state or the new one."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

_RENAME_EXCHANGE = 2


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Stream:
    """A file NumPy takes for a plain stream, so it writes through Python's `write`."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        return self._fh.write(data)


def save_array(path: Path, array: np.ndarray) -> None:
    """`np.save`, except that a failed write keeps its errno: NumPy's own `tofile` reports a
    full disk as a bare "N requested and M written", which no caller can tell from any other
    error, where Python's write raises ENOSPC."""
    with open(path, "wb") as fh:
        np.lib.format.write_array(_Stream(fh), np.asanyarray(array), allow_pickle=False)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[Any]]:
    """Write to a temp file beside `path`, fsync, then rename over it.

    `durable=False` skips both fsyncs for frequent, replaceable writes (progress records):
    readers still see the old content or the new, but a power cut may lose the latest write.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    # mkstemp creates 0600; published files get the usual permissions of the files they replace.
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


def fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


def _exchange(a: Path, b: Path) -> int | None:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE).

    0 on success, the errno on failure (ENOENT: one of them does not exist), None where the C
    library or the kernel has no such call, or the filesystem refuses it.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return None
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return 0
    err = ctypes.get_errno()
    return None if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) else err


def publish_dir(staging: Path, target: Path, *, overwrite: bool) -> None:
    """Move a fully written, fsynced staging directory to `target` in one step."""
    fsync_tree(staging)
    if not target.exists():
        os.rename(staging, target)
    elif not overwrite:
        raise FileExistsError(f"{target} already exists")
    elif _exchange(staging, target) == 0:
        shutil.rmtree(staging)  # now holds the previous version
    else:
        _replace_aside(staging, target)
    fsync_dir(target.parent)


def replace_existing_dir(staging: Path, target: Path) -> bool:
    """Swap a staging directory in for `target`, but only while `target` exists.

    For rewriting something another process may delete meanwhile (a model being indexed): a
    check-then-replace would bring a deleted one back. False, with the staging directory
    removed, when `target` is gone.
    """
    fsync_tree(staging)
    err = _exchange(staging, target)
    try:
        if err == errno.ENOENT:
            return False
        if err == 0:
            fsync_dir(target.parent)
            return True
        if err is not None:
            raise OSError(err, os.strerror(err), str(target))
        try:
            _replace_aside(staging, target)
        except FileNotFoundError:
            return False
        fsync_dir(target.parent)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the previous version, or the unused new one


def _replace_aside(staging: Path, target: Path) -> None:
    """Without an atomic exchange: the old version stays whole under a side name until the new one is in place.

    Raises FileNotFoundError, before touching anything, if `target` does not exist.
    """
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old)


def unwritable_reason(path: Path) -> str | None:
    """Why a file or folder could not be created at `path` (None if it could): checked before
    long work, so that a typo in a path fails at once rather than after hours of training."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            return f"{parent} is a broken link"
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the folder {parent} is not writable"
    return None


def staging_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    stage.chmod(0o755)  # mkdtemp's 0700 would make a published model unreadable to other users
    return stage
