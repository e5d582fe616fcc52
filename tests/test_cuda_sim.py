"""The CPU simulator of CUDA kernels (tests/cuda_sim.py) computes what a GPU computes and
refuses what a GPU would get wrong; the CUDA trainer's tests rely on both."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cuda_sim import MAX_DYNAMIC_SHARED, SimCupy, SimLaunchError, compiler, parse_params

pytestmark = pytest.mark.skipif(compiler() is None, reason="the CUDA simulator needs g++ on x86-64 Linux")

WARP_OPS = r"""
extern "C" __global__ void warp_ops(const float* __restrict__ x, float* __restrict__ sums,
                                    unsigned int* __restrict__ ballots, int* __restrict__ firsts,
                                    const int n) {
    extern __shared__ float partial[];
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    float v = t < n ? x[t] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    const unsigned b = __ballot_sync(0xffffffffu, t < n && ((int)x[t]) % 3 == 0);
    const int first = __shfl_sync(0xffffffffu, t, 0);
    if (lane == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += partial[w];
        sums[blockIdx.x] = s;
    }
    if (lane == 0) {
        ballots[t >> 5] = b;
        firsts[t >> 5] = first;
    }
}
"""


@pytest.fixture(scope="module")
def cp() -> SimCupy:
    return SimCupy()


def launch_warp_ops(
    cp: SimCupy, n: int, blocks: int = 2, threads: int = 128, x_len: int | None = None
) -> tuple[np.ndarray, ...]:
    kernel = cp.RawKernel(WARP_OPS, "warp_ops")
    x = cp.asarray(np.arange(n if x_len is None else x_len, dtype=np.float32))
    sums = cp.zeros(blocks, dtype=np.float32)
    ballots = cp.zeros(blocks * threads // 32, dtype=np.uint32)
    firsts = cp.zeros(blocks * threads // 32, dtype=np.int32)
    kernel((blocks,), (threads,), (x, sums, ballots, firsts, np.int32(n)), shared_mem=threads // 32 * 4)
    return sums.get(), ballots.get(), firsts.get()


def test_shuffles_ballots_and_block_barriers_compute_what_a_gpu_does(cp: SimCupy) -> None:
    sums, ballots, firsts = launch_warp_ops(cp, 256)
    x = np.arange(256, dtype=np.float32)
    np.testing.assert_array_equal(sums, [x[:128].sum(), x[128:].sum()])
    expected = [sum(1 << i for i in range(32) if (w * 32 + i) % 3 == 0) for w in range(8)]
    assert ballots.tolist() == expected
    assert firsts.tolist() == [w * 32 for w in range(8)]


def test_reads_past_an_array_fail_the_launch_naming_the_argument(cp: SimCupy) -> None:
    with pytest.raises(SimLaunchError, match=r"past the end\) at byte 1024 of argument 0 \(1024 bytes\)"):
        launch_warp_ops(cp, 384, blocks=3, x_len=256)  # reads x[0..383] of 256 floats


def test_writes_through_const_and_past_shared_memory_fail() -> None:
    cp = SimCupy()
    src = r"""
    extern "C" __global__ void bad(const int* __restrict__ a, int* __restrict__ b, const int mode) {
        extern __shared__ int s[];
        if (mode == 0) ((int*)a)[threadIdx.x] = 1;
        if (mode == 1) s[threadIdx.x] = 1;
        if (mode == 2) b[threadIdx.x] = s[0];
    }
    """
    kernel = cp.RawKernel(src, "bad")
    a, b = cp.zeros(32, dtype=np.int32), cp.zeros(32, dtype=np.int32)
    with pytest.raises(SimLaunchError, match="write to const memory"):
        kernel((1,), (32,), (a, b, np.int32(0)), shared_mem=128)
    with pytest.raises(SimLaunchError, match=r"byte 64 of dynamic shared memory \(64 bytes\)"):
        kernel((1,), (32,), (a, b, np.int32(1)), shared_mem=64)
    # Shared memory starts as garbage on a GPU: here 0xFF bytes, so a read before a write shows.
    kernel((1,), (32,), (a, b, np.int32(2)), shared_mem=64)
    assert (b.get() == -1).all()
    assert (a.get() == 0).all()


def test_arguments_must_match_the_kernel_signature(cp: SimCupy) -> None:
    kernel = cp.RawKernel(WARP_OPS, "warp_ops")
    x = cp.asarray(np.arange(64, dtype=np.float32))
    out = [cp.zeros(2, dtype=np.float32), cp.zeros(2, dtype=np.uint32), cp.zeros(2, dtype=np.int32)]
    with pytest.raises(SimLaunchError, match=r"argument 4 \(const int n\): pass a NumPy scalar"):
        kernel((1,), (64,), (x, *out, 64))
    with pytest.raises(SimLaunchError, match="needs a int32 scalar, got int64"):
        kernel((1,), (64,), (x, *out, np.int64(64)))
    with pytest.raises(SimLaunchError, match=r"argument 0 .*needs dtype float32, got float64"):
        kernel((1,), (64,), (cp.asarray(np.arange(64.0)), *out, np.int32(64)))
    with pytest.raises(SimLaunchError, match="needs a device array, got ndarray"):
        kernel((1,), (64,), (np.arange(64, dtype=np.float32), *out, np.int32(64)))
    with pytest.raises(SimLaunchError, match="takes 5 arguments, got 4"):
        kernel((1,), (64,), (x, *out))
    with pytest.raises(SimLaunchError, match="whole warps"):
        kernel((1,), (48,), (x, *out, np.int32(64)))
    with pytest.raises(SimLaunchError, match="dynamic shared memory"):
        kernel((1,), (64,), (x, *out, np.int32(64)), shared_mem=MAX_DYNAMIC_SHARED + 1)


def test_divergent_warp_synchronous_code_is_reported(cp: SimCupy) -> None:
    src = r"""
    extern "C" __global__ void diverge(float* __restrict__ out) {
        float v = 1.0f;
        if (threadIdx.x == 3) v = __shfl_xor_sync(0xffffffffu, v, 1);
        out[threadIdx.x] = v;
    }
    """
    kernel = cp.RawKernel(src, "diverge")
    with pytest.raises(SimLaunchError, match=r"warp 0: .*returned while the others wait at a barrier"):
        kernel((1,), (32,), (cp.zeros(32, dtype=np.float32),))


def test_parameter_lists_are_read_as_cuda_declares_them() -> None:
    params = parse_params(
        'extern "C" __global__ void k(float* __restrict__ a, const long long* __restrict__ b,\n'
        "  const unsigned long long seed, const float* const c) {}",
        "k",
    )
    assert [(p.name, p.base, p.pointer, p.const) for p in params] == [
        ("a", "float", True, False),
        ("b", "long long", True, True),
        ("seed", "unsigned long long", False, True),
        ("c", "float", True, True),
    ]
    assert params[2].dtype == np.uint64
