"""Choosing the array module (NumPy or CuPy) for a training call.

CuPy is imported only here and only when CUDA is asked for, so the project installs and
runs on machines without it. The choice is made per call, never as a global switch.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

import numpy as np

from model.errors import DeviceError

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")


def _cupy() -> ModuleType | None:
    try:
        cp = importlib.import_module("cupy")
        if cp.cuda.runtime.getDeviceCount() > 0:
            return cp
    except Exception:
        return None
    return None


def resolve_device(device: str) -> str:
    """Map "auto" to "cuda" when CuPy sees a GPU, else "cpu"; check that "cuda" is usable."""
    if device not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    has_gpu = _cupy() is not None
    if device == "cuda" and not has_gpu:
        raise DeviceError(
            "device='cuda' needs CuPy and a CUDA GPU (install the 'gpu' extra); none was found, "
            "use device='cpu' or 'auto'"
        )
    chosen = "cuda" if has_gpu else "cpu"
    if device == "auto":
        log.info("device=auto resolved to %s", chosen)
    return chosen


def array_module(device: str) -> ModuleType:
    if device == "cuda":
        cp = _cupy()
        if cp is None:
            raise DeviceError("CUDA device requested but CuPy/GPU is not available")
        return cp
    return np


def get_array_module(x: Any) -> ModuleType:
    """NumPy for host arrays, CuPy for device arrays, without importing CuPy for host arrays."""
    if type(x).__module__.startswith("cupy"):
        return importlib.import_module("cupy")
    return np


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(x.get())


def free_device_memory() -> None:
    """Return CuPy's cached blocks to the driver so a long-lived worker does not hoard GPU memory."""
    try:
        cp = importlib.import_module("cupy")
    except ImportError:
        return
    cp.get_default_memory_pool().free_all_blocks()
    cp.get_default_pinned_memory_pool().free_all_blocks()
