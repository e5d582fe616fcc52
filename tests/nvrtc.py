"""Compiles CUDA C with NVRTC, the compiler CuPy's RawKernel uses, without a GPU.

NVRTC comes from the `nvidia-cuda-nvrtc` wheel (a dev dependency). It takes a narrower
set of options than nvcc, so a kernel that nvcc builds can still fail under CuPy.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@cache
def library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).glob("*/lib/libnvrtc.so*"))
        found = [p for p in found if "builtins" not in p.name]
        if found:
            return ctypes.CDLL(str(found[-1]))
    return None


@dataclass(frozen=True)
class Compiled:
    ok: bool
    log: str
    ptx: str


def compile_cuda(source: str, options: Sequence[str], name: str = "kernel.cu") -> Compiled:
    lib = library()
    if lib is None:
        raise RuntimeError("libnvrtc not found: install the dev extra (nvidia-cuda-nvrtc)")
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        opts = (ctypes.c_char_p * max(len(options), 1))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = ""
        if status == 0:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value.decode()
        return Compiled(status == 0, log.value.decode(errors="replace"), ptx)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
