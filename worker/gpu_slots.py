"""One GPU per worker process on a host with several GPUs, without a scheduler.

`docker compose up --scale worker-gpu=N` starts N identical containers, and Docker gives every
one the same GPUs: a fixed `count` or `device_ids` reservation cannot differ per replica. So
each worker sees all of the host's GPUs and claims one itself: it takes an exclusive `flock`
on one lock file per GPU in a folder shared by the workers of that host, and then narrows
`CUDA_VISIBLE_DEVICES` to the GPU it holds. The kernel drops the lock when the process dies,
however it dies, so a restarted or replacement worker finds the slot free again.

This must run before anything initialises CUDA in the process (the variable is read once,
at initialisation); the GPUs are therefore counted in a child process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


class GPUSlotError(RuntimeError):
    pass


@dataclass
class GPUSlot:
    device: str  # the value for CUDA_VISIBLE_DEVICES: a device index or id as the parent process saw it
    path: Path
    handle: IO[str]  # holds the lock; closing it (or exiting) gives the GPU back

    def release(self) -> None:
        self.handle.close()


def visible_gpu_count(timeout_s: float = 120.0) -> int:
    """How many CUDA devices this process may use, counted by a child so this one stays uninitialised."""
    code = "import cupy; print(cupy.cuda.runtime.getDeviceCount())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GPUSlotError(f"counting CUDA devices took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GPUSlotError(f"cannot count CUDA devices (is the 'gpu' extra installed and a GPU visible?): {last}")
    return int(done.stdout.strip())


def slot_devices(count: int, visible: str | None) -> list[str]:
    """The devices to share out: those CUDA_VISIBLE_DEVICES already names, else indices 0..count-1."""
    if visible is not None and visible.strip():
        named = [d.strip() for d in visible.split(",") if d.strip()]
        return named[:count]
    return [str(i) for i in range(count)]


def _try_lock(path: Path) -> IO[str] | None:
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    # Who holds it, for an operator looking at the folder; the lock itself is what counts.
    handle.seek(0)
    handle.truncate()
    handle.write(f"{socket.gethostname()} pid {os.getpid()}\n")
    handle.flush()
    return handle


def claim_gpu_slot(
    folder: Path,
    devices: list[str],
    *,
    timeout_s: float | None = None,
    poll_s: float = 5.0,
) -> GPUSlot:
    """Lock the first free device of `devices`; wait for one to free up if all are held.

    With `timeout_s` None this waits for as long as it takes: a replica beyond the number of
    GPUs stays idle rather than crash-looping, and takes over when another worker exits.
    """
    if not devices:
        raise GPUSlotError("no CUDA device is visible to this worker")
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    warned = False
    while True:
        for device in devices:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
            path = folder / f"gpu-{safe}.lock"
            handle = _try_lock(path)
            if handle is not None:
                return GPUSlot(device, path, handle)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"all {len(devices)} GPU(s) are held by other workers (lock files in {folder})")
        if not warned:
            log.warning("all %d GPU(s) are held by other workers; waiting for one to free up", len(devices))
            warned = True
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))
