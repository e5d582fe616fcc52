"""Crash-safe writes: a killed process leaves either the old state or the new one."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_RENAME_EXCHANGE = 2


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE) where the kernel has it."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def publish_dir(staging: Path, target: Path, *, overwrite: bool) -> None:
    """Move a fully written, fsynced staging directory to `target` in one step."""
    fsync_tree(staging)
    if not target.exists():
        os.rename(staging, target)
    elif not overwrite:
        raise FileExistsError(f"{target} already exists")
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the previous version
    else:
        # No atomic exchange: the old version stays whole under a side name until the new one is in place.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)
    fsync_dir(target.parent)


def staging_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    stage.chmod(0o755)  # mkdtemp's 0700 would make a published model unreadable to other users
    return stage
