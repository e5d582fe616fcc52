"""GPU workers started as identical replicas each end up with a GPU of their own."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.gpu_slots import GPUSlotError, claim_gpu_slot, slot_devices, visible_gpu_count

ROOT = Path(__file__).resolve().parents[1]


def test_devices_come_from_the_count_or_from_cuda_visible_devices() -> None:
    assert slot_devices(3, None) == ["0", "1", "2"]
    assert slot_devices(2, "") == ["0", "1"]
    assert slot_devices(2, "5, 7") == ["5", "7"]
    assert slot_devices(2, "GPU-aaaa,GPU-bbbb,GPU-cccc") == ["GPU-aaaa", "GPU-bbbb"]


def test_claims_hand_out_each_gpu_once_and_take_it_back_when_released(tmp_path: Path) -> None:
    first = claim_gpu_slot(tmp_path, ["0", "1"])
    second = claim_gpu_slot(tmp_path, ["0", "1"])
    assert {first.device, second.device} == {"0", "1"}
    with pytest.raises(TimeoutError, match="all 2 GPU"):
        claim_gpu_slot(tmp_path, ["0", "1"], timeout_s=0.3, poll_s=0.1)
    first.release()
    third = claim_gpu_slot(tmp_path, ["0", "1"], timeout_s=1)
    assert third.device == first.device
    assert f"pid {os.getpid()}" in third.path.read_text()
    second.release()
    third.release()


def test_a_worker_that_dies_frees_its_gpu(tmp_path: Path) -> None:
    """A replica killed outright (kill -9) holds nothing: the kernel drops its lock."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from worker.gpu_slots import claim_gpu_slot; "
            f"s = claim_gpu_slot(Path({str(tmp_path)!r}), ['0']); print(s.device, flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        with pytest.raises(TimeoutError):
            claim_gpu_slot(tmp_path, ["0"], timeout_s=0.2, poll_s=0.05)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        slot = claim_gpu_slot(tmp_path, ["0"], timeout_s=5, poll_s=0.05)
        assert slot.device == "0" and time.monotonic() - started < 5
        slot.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_no_visible_gpu_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GPUSlotError, match="no CUDA device"):
        claim_gpu_slot(tmp_path, [])


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed: the count would succeed")
def test_worker_without_cupy_explains_why_it_cannot_claim_a_gpu(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("W2V_")}
    env["W2V_GPU_SLOTS_DIR"] = str(tmp_path / "slots")
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--device", "cuda", "--store", str(tmp_path / "store")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "w2v: error: cannot count CUDA devices" in done.stderr


@pytest.mark.gpu
def test_a_claimed_gpu_is_the_only_one_cuda_shows(tmp_path: Path) -> None:
    pytest.importorskip("cupy")
    try:
        count = visible_gpu_count()
    except GPUSlotError as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    slot = claim_gpu_slot(tmp_path, slot_devices(count, os.environ.get("CUDA_VISIBLE_DEVICES")))
    try:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": slot.device}
        probe = "import cupy; print(cupy.cuda.runtime.getDeviceCount())"
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "1"
    finally:
        slot.release()
