"""Runs CUDA C kernels on the CPU, so CI checks the GPU trainer without a GPU.

`SimKernel(source, name)` stands in for `cupy.RawKernel`: it compiles the kernel's own source
with g++ against a small shim and launches it with CuPy's calling convention. Each GPU
thread is a coroutine with its own stack. Threads take turns, each running up to its next
warp-level barrier (`__shfl_*_sync`, `__ballot_sync`, `__syncwarp`) or block barrier
(`__syncthreads`), so warp-synchronous code computes what it computes on a GPU. Up to 4,096
threads' blocks are resident at once and advance together, barrier by barrier, as blocks
share a GPU, and a finished block's place goes to the next; so kernels that share memory
across warps (Hogwild) see other warps' updates land between their own steps. The turns
follow a fixed order, so a launch is deterministic.

What a launch checks, beyond running the code:
- every argument against the kernel's parameter list: device array for a pointer (of the
  pointee's dtype, C-contiguous), NumPy scalar of the exact width for a value; CuPy would
  pass the bytes of a mismatched argument through and the GPU would read garbage;
- memory bounds: every array is copied between guard pages for the launch (read-only for a
  `const` pointer) and dynamic shared memory is exactly `shared_mem` bytes; an access past
  the end or a write through `const` fails the launch and names the argument;
- that all lanes of a warp reach the same barrier, and all threads of a block the same
  `__syncthreads`; dynamic shared memory starts filled with 0xFF bytes (NaN as float, -1 as
  int), so a read before a write shows;
- CUDA's launch limits: 1 to 1024 threads a block, whole warps, at most 48 KiB of dynamic
  shared memory.

`SimCupy` is the sliver of CuPy the engines use (device arrays with `.get()`, `asarray`,
`zeros`, `RawKernel`, device properties), backed by NumPy and this simulator.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_DYNAMIC_SHARED = 48 * 1024  # without cudaFuncSetAttribute, as the engines launch
MAX_RESIDENT_THREADS = 4096  # threads of the blocks that run interleaved (at most 64 blocks)

_SHIM = r"""
#include <cmath>
#include <csetjmp>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

struct sim_dim3 { unsigned x, y, z; };

namespace sim {
enum Wait { NONE = 0, WARP = 1, BLOCK = 2, DONE = 3 };
struct Lane {
    void* sp;
    unsigned char* stack;
    sim_dim3 tid, bid;
    unsigned char* smem;  // its block's dynamic shared memory
    int wait;
    unsigned long long warp_barriers, block_barriers, exchanges;
    unsigned long long xchg[2];  // what it published at its last two warp exchanges
};
static const size_t STACK = 128 * 1024;
static Lane* cur;
static void* sched_sp;
static sim_dim3 block_dim, grid_dim;
static char error[512];
static void (*entry)(void**);
static void** entry_args;
}

#define threadIdx (sim::cur->tid)
#define blockIdx (sim::cur->bid)
#define blockDim (sim::block_dim)
#define gridDim (sim::grid_dim)
#define warpSize 32
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static

extern "C" void sim_switch(void** save_sp, void* load_sp);
#if defined(__x86_64__)
// Saves the callee-saved registers and the SSE/x87 control words, swaps stacks, restores.
asm(R"(
.text
.globl sim_switch
.hidden sim_switch
.type sim_switch,@function
sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size sim_switch, .-sim_switch
)");
#else
#error "the CUDA simulator switches stacks with x86-64 assembly"
#endif

namespace sim {
[[noreturn]] static void lane_main() {
    entry(entry_args);
    cur->wait = DONE;
    sim_switch(&cur->sp, sched_sp);
    __builtin_trap();
}

static void start_lane(Lane* lane) {
    uintptr_t top = ((uintptr_t)(lane->stack + STACK)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;               // lane_main's would-be return address keeps the ABI alignment
    *--sp = (void*)&lane_main;     // where sim_switch's ret lands
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    --sp;
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    memcpy(sp, &mxcsr, 4);
    memcpy((char*)sp + 4, &fpucw, 2);
    lane->sp = sp;
    lane->wait = NONE;
    lane->warp_barriers = lane->block_barriers = lane->exchanges = 0;
}

static void yield(int kind) {
    cur->wait = kind;
    if (kind == WARP) cur->warp_barriers++;
    else cur->block_barriers++;
    sim_switch(&cur->sp, sched_sp);
}

static unsigned tid() { return cur->tid.x; }

// Publishes v, waits for the warp, and returns what lane `src` published. Two slots per
// lane, so a lane that runs ahead to its next exchange cannot overwrite a value still unread.
template <class T> static T shuffle_from(T v, int src_lane, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    const unsigned slot = (unsigned)(cur->exchanges++ & 1);
    memcpy(&cur->xchg[slot], &v, sizeof(T));
    yield(WARP);
    const unsigned lane = cur->tid.x & 31u;
    const unsigned seg = lane & ~(unsigned)(width - 1);
    const Lane* src = cur - lane + seg + ((unsigned)src_lane & (unsigned)(width - 1));
    T out;
    memcpy(&out, &src->xchg[slot], sizeof(T));
    return out;
}

static void check_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu && !error[0])
        snprintf(error, sizeof error, "%s with a partial mask %#x is not simulated", what, mask);
}
}  // namespace sim

template <class T> static T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    sim::check_mask(mask, "__shfl_sync");
    return sim::shuffle_from(v, src, width);
}
template <class T> static T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    sim::check_mask(mask, "__shfl_xor_sync");
    return sim::shuffle_from(v, (int)((sim::tid() & 31u) ^ (unsigned)lane_mask), width);
}
template <class T> static T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    sim::check_mask(mask, "__shfl_down_sync");
    const int lane = (int)(sim::tid() & 31u) % width;
    return sim::shuffle_from(v, lane + (int)delta < width ? lane + (int)delta : lane, width);
}
template <class T> static T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    sim::check_mask(mask, "__shfl_up_sync");
    const int lane = (int)(sim::tid() & 31u) % width;
    return sim::shuffle_from(v, lane >= (int)delta ? lane - (int)delta : lane, width);
}
static unsigned __ballot_sync(unsigned mask, int predicate) {
    sim::check_mask(mask, "__ballot_sync");
    const unsigned slot = (unsigned)(sim::cur->exchanges++ & 1);
    sim::cur->xchg[slot] = predicate ? 1u : 0u;
    sim::yield(sim::WARP);
    const sim::Lane* first = sim::cur - (sim::cur->tid.x & 31u);
    unsigned bits = 0;
    for (unsigned i = 0; i < 32; i++) bits |= (first[i].xchg[slot] ? 1u : 0u) << i;
    return bits;
}
static int __all_sync(unsigned mask, int p) { return __ballot_sync(mask, p) == 0xffffffffu; }
static int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0u; }
static void __syncwarp(unsigned mask = 0xffffffffu) {
    sim::check_mask(mask, "__syncwarp");
    sim::yield(sim::WARP);
}
static void __syncthreads() { sim::yield(sim::BLOCK); }
static int __popc(unsigned x) { return __builtin_popcount(x); }
static int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static int __ffs(int x) { return __builtin_ffs(x); }
static int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
// Macros, not functions: glibc's <math.h> declares its own __expf and __logf.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __fdividef(a, b) ((a) / (b))
static float rsqrtf(float x) { return 1.0f / sqrtf(x); }
template <class T> static T __ldg(const T* p) { return *p; }
// Threads never run at the same time here, so a plain read-modify-write is atomic.
template <class T, class U> static T atomicAdd(T* p, U v) { T old = *p; *p = old + (T)v; return old; }
template <class T> static T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <class T> static T atomicMin(T* p, T v) { T old = *p; if (v < old) *p = v; return old; }
template <class T> static T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T> static T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
static void __threadfence() {}

//__KERNEL_SOURCE__

namespace sim {
static sigjmp_buf fault_jump;
static volatile uintptr_t fault_addr;
static void on_fault(int, siginfo_t* info, void*) {
    fault_addr = (uintptr_t)info->si_addr;
    siglongjmp(fault_jump, 1);
}

struct Region { unsigned char* map; size_t map_len; unsigned char* data; size_t len; };

// `len` bytes that end where an inaccessible page begins.
static Region guarded(size_t len) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t body = (len + page - 1) / page * page;
    Region r;
    r.map_len = body + 2 * page;
    r.map = (unsigned char*)mmap(nullptr, r.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r.map == MAP_FAILED) { r.map = nullptr; return r; }
    mprotect(r.map + page, body, PROT_READ | PROT_WRITE);
    r.data = r.map + page + body - len;
    r.len = len;
    return r;
}

// One pass resumes every runnable thread of the resident blocks once, each running to its
// next barrier; then the warps are checked for lanes that went different ways.
static int pass(Lane* lanes, unsigned nt, bool* any_left) {
    bool all_at_block_barrier = true;
    for (unsigned t = 0; t < nt; t++)
        if (lanes[t].wait != BLOCK && lanes[t].wait != DONE) all_at_block_barrier = false;
    for (unsigned t = 0; t < nt; t++) {
        Lane* lane = &lanes[t];
        if (lane->wait == DONE || (lane->wait == BLOCK && !all_at_block_barrier)) continue;
        cur = lane;
        sim_switch(&sched_sp, lane->sp);
        if (error[0]) return 1;
    }
    const unsigned b = lanes[0].bid.x;
    *any_left = false;
    for (unsigned w = 0; w < nt; w += 32) {
        int done = 0;
        for (unsigned t = w; t < w + 32; t++) done += lanes[t].wait == DONE;
        if (done != 0 && done != 32) {
            snprintf(error, sizeof error,
                     "block %u, warp %u: %d of its lanes returned while the others wait at a barrier",
                     b, w / 32, done);
            return 1;
        }
        for (unsigned t = w + 1; t < w + 32; t++)
            if (lanes[t].wait != lanes[w].wait || lanes[t].warp_barriers != lanes[w].warp_barriers) {
                snprintf(error, sizeof error,
                         "block %u, warp %u: lanes 0 and %u wait at different barriers "
                         "(divergent warp-synchronous code)", b, w / 32, t - w);
                return 1;
            }
        if (done == 0) *any_left = true;
    }
    for (unsigned t = 1; t < nt; t++)
        if (lanes[t].wait == BLOCK && lanes[0].wait == BLOCK && lanes[t].block_barriers != lanes[0].block_barriers) {
            snprintf(error, sizeof error, "block %u: threads wait at different __syncthreads", b);
            return 1;
        }
    return 0;
}

static void start_block(Lane* lanes, unsigned nt, unsigned b, unsigned char* smem, size_t shared) {
    memset(smem, 0xff, shared);
    for (unsigned t = 0; t < nt; t++) {
        lanes[t].tid = {t, 0, 0};
        lanes[t].bid = {b, 0, 0};
        lanes[t].smem = smem;
        start_lane(&lanes[t]);
    }
}

// Up to `resident` blocks run interleaved, as blocks share a GPU; a finished block's slot
// takes the next block, so warps progress through the grid together.
static int run_grid(unsigned grid, unsigned nt, unsigned resident, Lane* lanes, Region* smem, size_t shared) {
    unsigned next = 0;
    bool* live = (bool*)calloc(resident, sizeof(bool));
    for (unsigned r = 0; r < resident && next < grid; r++, next++) {
        start_block(lanes + (size_t)r * nt, nt, next, smem[r].data, shared);
        live[r] = true;
    }
    int status = 0;
    for (bool any = true; any && !status;) {
        any = false;
        for (unsigned r = 0; r < resident && !status; r++) {
            if (!live[r]) continue;
            bool left = false;
            status = pass(lanes + (size_t)r * nt, nt, &left);
            if (!left && next < grid) {
                start_block(lanes + (size_t)r * nt, nt, next++, smem[r].data, shared);
                left = true;
            }
            live[r] = left;
            any = any || left;
        }
    }
    free(live);
    return status;
}
}  // namespace sim

// args[i] points at the i-th argument's value; a pointer argument's value is the array's
// address. sizes[i] is that array's length in bytes and readonly[i] is 1 for a `const`
// pointer, 0 for another pointer and -1 for a value.
extern "C" int sim_launch(unsigned grid, unsigned block, unsigned resident, size_t shared, void** args,
                          const size_t* sizes, const int* readonly, int n_args,
                          char* error_out, size_t error_len) {
    using namespace sim;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    error[0] = 0;
    fault_addr = 0;
    if (n_args > 64) { snprintf(error_out, error_len, "more than 64 kernel arguments"); return 1; }
    Region regions[64] = {};
    void* pointers[64];
    void* launch_args[64];
    int status = 0;
    for (int i = 0; i < n_args; i++) {
        launch_args[i] = args[i];
        if (readonly[i] < 0) continue;  // a value, passed as it is
        Region r = guarded(sizes[i]);
        if (!r.map) { status = 1; snprintf(error, sizeof error, "out of memory"); break; }
        memcpy(r.data, *(void**)args[i], sizes[i]);
        if (readonly[i] > 0) mprotect(r.map + page, r.map_len - 2 * page, PROT_READ);
        regions[i] = r;
        pointers[i] = r.data;
        launch_args[i] = &pointers[i];
    }
    if (resident > grid) resident = grid;
    Region smem_regions[64] = {};
    if (resident > 64) resident = 64;
    for (unsigned r = 0; r < resident; r++) smem_regions[r] = guarded(shared);
    Lane* lanes = (Lane*)calloc((size_t)resident * block, sizeof(Lane));
    for (size_t t = 0; t < (size_t)resident * block; t++) lanes[t].stack = (unsigned char*)malloc(STACK);
    entry_args = launch_args;
    block_dim = {block, 1, 1};
    grid_dim = {grid, 1, 1};

    struct sigaction act, old_segv, old_bus;
    memset(&act, 0, sizeof act);
    act.sa_sigaction = on_fault;
    act.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&act.sa_mask);
    sigaction(SIGSEGV, &act, &old_segv);
    sigaction(SIGBUS, &act, &old_bus);
    if (status == 0 && sigsetjmp(fault_jump, 1) == 0) {
        status = run_grid(grid, block, resident, lanes, smem_regions, shared);
    } else if (status == 0) {
        status = 1;
        const uintptr_t a = fault_addr;
        int arg = -1;
        for (int i = 0; i < n_args; i++) {
            const uintptr_t lo = (uintptr_t)regions[i].map, hi = lo + regions[i].map_len;
            if (regions[i].map && a >= lo && a < hi) { arg = i; break; }
        }
        int smem_slot = -1;
        for (unsigned r = 0; r < resident; r++) {
            const uintptr_t lo = (uintptr_t)smem_regions[r].map;
            if (a >= lo && a < lo + smem_regions[r].map_len) smem_slot = (int)r;
        }
        if (arg >= 0) {
            const uintptr_t d = (uintptr_t)regions[arg].data, e = d + regions[arg].len;
            const char* what = a >= e ? "past the end" : a < d ? "before the start" : "a write to const memory";
            snprintf(error, sizeof error, "invalid access (%s) at byte %lld of argument %d (%zu bytes)",
                     what, (long long)(a - d), arg, regions[arg].len);
        } else if (smem_slot >= 0) {
            snprintf(error, sizeof error, "invalid access at byte %lld of dynamic shared memory (%zu bytes)",
                     (long long)(a - (uintptr_t)smem_regions[smem_slot].data), shared);
        } else {
            snprintf(error, sizeof error, "invalid access at %#llx, outside every argument",
                     (unsigned long long)a);
        }
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);

    for (int i = 0; i < n_args; i++) {
        if (!regions[i].map) continue;
        if (!status && readonly[i] == 0) memcpy(*(void**)args[i], regions[i].data, sizes[i]);
        munmap(regions[i].map, regions[i].map_len);
    }
    for (unsigned r = 0; r < resident; r++) munmap(smem_regions[r].map, smem_regions[r].map_len);
    for (size_t t = 0; t < (size_t)resident * block; t++) free(lanes[t].stack);
    free(lanes);
    snprintf(error_out, error_len, "%s", error);
    return status;
}
"""

# C parameter types the engines use, and the NumPy dtype CuPy must be handed for each.
_C_TYPES: dict[str, np.dtype[Any]] = {
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "int": np.dtype(np.int32),
    "unsigned int": np.dtype(np.uint32),
    "unsigned": np.dtype(np.uint32),
    "long long": np.dtype(np.int64),
    "long long int": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64),
    "unsigned long long int": np.dtype(np.uint64),
    "short": np.dtype(np.int16),
    "unsigned short": np.dtype(np.uint16),
    "char": np.dtype(np.int8),
    "signed char": np.dtype(np.int8),
    "unsigned char": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}


class SimLaunchError(RuntimeError):
    """The kernel would fail or misbehave on a GPU: bad arguments, bounds, or divergence."""


@dataclass(frozen=True)
class Param:
    name: str
    base: str  # C type without qualifiers or '*'
    pointer: bool
    const: bool

    @property
    def dtype(self) -> np.dtype[Any]:
        if self.base not in _C_TYPES:
            raise SimLaunchError(f"parameter {self.name}: C type {self.base!r} is not simulated")
        return _C_TYPES[self.base]

    def c_decl(self) -> str:
        return f"{'const ' if self.const else ''}{self.base}{'*' if self.pointer else ''}"


def parse_params(source: str, name: str) -> list[Param]:
    match = re.search(rf'extern\s+"C"\s+__global__\s+void\s+{re.escape(name)}\s*\((.*?)\)\s*\{{', source, re.S)
    if match is None:
        raise SimLaunchError(f'no extern "C" __global__ kernel named {name!r} in the source')
    params = []
    for raw in match.group(1).split(","):
        text = " ".join(raw.replace("*", " * ").split())
        words = [w for w in text.split() if w != "__restrict__"]
        pname = words.pop()
        pointer = "*" in words
        if words.count("*") > 1:
            raise SimLaunchError(f"parameter {pname}: pointers to pointers are not simulated")
        # `const T* const p`: only the pointee's const matters to the kernel's caller.
        star = words.index("*") if pointer else len(words)
        const = "const" in words[:star]
        base = " ".join(w for w in words[:star] if w != "const")
        params.append(Param(pname, base, pointer, const))
    return params


def _cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"w2v-cudasim-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def compiler() -> str | None:
    """The C++ compiler the simulator needs, or None (x86-64 Linux with g++ or clang++ only)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")


_build_lock = threading.Lock()


def _without_extern_shared(source: str) -> str:
    """Dynamic shared memory as a pointer to the running block's guarded buffer."""
    return re.sub(
        r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\s*\[\s*\]\s*;",
        r"\1* \2 = (\1*)sim::cur->smem;",
        source,
    )


def _build(source: str, name: str, params: Sequence[Param]) -> ctypes.CDLL:
    cxx = compiler()
    if cxx is None:
        raise SimLaunchError("the CUDA simulator needs g++ or clang++ on x86-64 Linux")
    kernel = _without_extern_shared(source)
    unpack = ", ".join(
        f"(({p.c_decl()})*(void* const*)a[{i}])" if p.pointer else f"*(const {p.base}*)a[{i}]"
        for i, p in enumerate(params)
    )
    wrapper = f"\nstatic void sim_entry(void** a) {{ {name}({unpack}); }}\n" + (
        'extern "C" void sim_bind(void) { sim::entry = sim_entry; }\n'
    )
    text = _SHIM.replace("//__KERNEL_SOURCE__", kernel + wrapper)
    key = hashlib.sha256((cxx + "\0" + text).encode()).hexdigest()[:24]
    lib_path = _cache_dir() / f"{name}-{key}.so"
    with _build_lock:
        if not lib_path.exists():
            # Named per process: another test process may be building the same library.
            src = lib_path.with_suffix(f".{os.getpid()}.cpp")
            src.write_text(text)
            tmp = lib_path.with_suffix(f".{os.getpid()}.tmp")
            cmd = [
                cxx,
                "-std=c++17",
                "-O2",
                "-fPIC",
                "-shared",
                "-fno-strict-aliasing",
                "-Wno-unused-function",
                "-o",
                str(tmp),
                str(src),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            src.unlink()
            if done.returncode != 0:
                raise SimLaunchError(f"the kernel does not compile on the simulator:\n{done.stderr[-4000:]}")
            os.replace(tmp, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    lib.sim_bind()
    lib.sim_launch.restype = ctypes.c_int
    lib.sim_launch.argtypes = [
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    return lib


class DeviceArray(np.ndarray):
    """An array "on the simulated device": like a CuPy array, `.get()` copies it to the host."""

    def get(self) -> np.ndarray:
        return np.array(self, copy=True)

    def set(self, host: np.ndarray) -> None:
        """Copies a host array of the same shape and dtype in, as CuPy's `ndarray.set`."""
        if host.shape != self.shape or host.dtype != self.dtype:
            raise ValueError(f"set: {host.dtype}{host.shape} into {self.dtype}{self.shape}")
        self[...] = host


def _dims(value: int | tuple[int, ...], what: str) -> int:
    dims = (value,) if isinstance(value, int) else tuple(value)
    if any(d != 1 for d in dims[1:]):
        raise SimLaunchError(f"{what} {dims}: only one-dimensional launches are simulated")
    return int(dims[0])


class SimKernel:
    """`cupy.RawKernel(source, name, options)` on the CPU."""

    _lock = threading.Lock()  # the simulator's scheduler state is global in each library

    def __init__(self, source: str, name: str, options: Sequence[str] = ()) -> None:
        self.name = name
        self.source = source
        self.options = tuple(options)
        self.params = parse_params(source, name)
        self._lib = _build(source, name, self.params)
        # A static __shared__ array is one C++ static here, so its blocks must run alone.
        self._one_block_at_a_time = bool(re.search(r"(?<!extern )__shared__", _without_extern_shared(source)))
        self.launches = 0

    def _resident(self, block: int) -> int:
        return 1 if self._one_block_at_a_time else max(1, min(MAX_RESIDENT_THREADS // block, 64))

    def __call__(
        self,
        grid: int | tuple[int, ...],
        block: int | tuple[int, ...],
        args: Sequence[Any],
        *,
        shared_mem: int = 0,
    ) -> None:
        n_grid, n_block = _dims(grid, "grid"), _dims(block, "block")
        if not 1 <= n_block <= 1024 or n_block % 32:
            raise SimLaunchError(f"block of {n_block} threads: must be 32..1024 in whole warps")
        if n_grid < 1:
            raise SimLaunchError(f"grid of {n_grid} blocks")
        if not 0 <= shared_mem <= MAX_DYNAMIC_SHARED:
            raise SimLaunchError(
                f"{shared_mem} bytes of dynamic shared memory: over the {MAX_DYNAMIC_SHARED} a launch gets "
                "without cudaFuncSetAttribute"
            )
        if len(args) != len(self.params):
            raise SimLaunchError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        n = len(args)
        holders: list[Any] = []
        values = (ctypes.c_void_p * n)()
        sizes = (ctypes.c_size_t * n)()
        readonly = (ctypes.c_int * n)()
        for i, (param, arg) in enumerate(zip(self.params, args, strict=True)):
            where = f"{self.name} argument {i} ({param.c_decl()} {param.name})"
            if param.pointer:
                if not isinstance(arg, DeviceArray):
                    raise SimLaunchError(f"{where}: needs a device array, got {type(arg).__name__}")
                if arg.dtype != param.dtype:
                    raise SimLaunchError(f"{where}: needs dtype {param.dtype}, got {arg.dtype}")
                if not arg.flags.c_contiguous:
                    raise SimLaunchError(f"{where}: the array must be C-contiguous")
                if not param.const and not arg.flags.writeable:
                    raise SimLaunchError(f"{where}: the array is read-only")
                address = ctypes.c_void_p(arg.ctypes.data)
                holders.append(address)
                values[i] = ctypes.addressof(address)
                sizes[i] = arg.nbytes
                readonly[i] = 1 if param.const else 0
            else:
                if not isinstance(arg, np.generic):
                    raise SimLaunchError(
                        f"{where}: pass a NumPy scalar of dtype {param.dtype}, not {type(arg).__name__} "
                        "(CuPy sizes a Python number by its own rules)"
                    )
                if arg.dtype != param.dtype:
                    raise SimLaunchError(f"{where}: needs a {param.dtype} scalar, got {arg.dtype}")
                box = np.array(arg)
                holders.append(box)
                values[i] = box.ctypes.data
                sizes[i] = 0
                readonly[i] = -1
        error = ctypes.create_string_buffer(512)
        with self._lock:
            status = self._lib.sim_launch(
                n_grid, n_block, self._resident(n_block), shared_mem, values, sizes, readonly, n, error, 512
            )
        self.launches += 1
        if status:
            raise SimLaunchError(f"{self.name}<<<{n_grid}, {n_block}, {shared_mem}>>>: {error.value.decode()}")


def _device(x: Any, dtype: Any = None) -> DeviceArray:
    return np.array(x, dtype=dtype, copy=True, order="C").view(DeviceArray)


class SimCupy(types.ModuleType):
    """The parts of the `cupy` module the engines use, on NumPy arrays and `SimKernel`."""

    def __init__(self, multiprocessors: int = 2, free_memory: int = 16 << 30) -> None:
        super().__init__("cupy_simulated")
        self.kernels: list[SimKernel] = []
        for name in ("float32", "float64", "int32", "int64", "uint32", "uint64", "int8", "uint8"):
            setattr(self, name, getattr(np, name))
        props = {
            "multiProcessorCount": multiprocessors,
            "sharedMemPerBlock": MAX_DYNAMIC_SHARED,
            "maxThreadsPerBlock": 1024,
            "warpSize": 32,
            "name": b"CUDA simulator",
        }
        runtime = types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda _id: dict(props),
            memGetInfo=lambda: (free_memory, 2 * free_memory),
        )
        self.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda *_: types.SimpleNamespace(id=0))

    def asarray(self, x: Any, dtype: Any = None) -> DeviceArray:
        return _device(x, dtype)

    def zeros(self, shape: Any, dtype: Any = np.float64) -> DeviceArray:
        return np.zeros(shape, dtype=dtype).view(DeviceArray)

    def empty(self, shape: Any, dtype: Any = np.float64) -> DeviceArray:
        return np.empty(shape, dtype=dtype).view(DeviceArray)

    def RawKernel(self, source: str, name: str, options: Sequence[str] = ()) -> SimKernel:
        kernel = SimKernel(source, name, options)
        self.kernels.append(kernel)
        return kernel
