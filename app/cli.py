"""The `w2v` command: the library's commands (train, eval, similar, ...) plus `serve` and `worker`.

`w2v serve` runs the API and, unless --no-worker, a Celery worker in a child process that it
restarts if it dies and stops when it stops. With no broker configured both sides use a
filesystem queue inside the store, so nothing but Python is needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from model import cli as model_cli

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = logging.getLogger("w2v")

PARENT_PID_ENV = "W2V_PARENT_PID"
S = TypeVar("S", bound=BaseSettings)
STOP_GRACE_S = 30.0


def _settings(cls: type[S], **flags: Any) -> S:
    """Settings from the environment, with the command-line flags that were given on top."""
    try:
        return cls(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise model_cli.CLIError(f"invalid settings: {problems}") from None


class WorkerSupervisor:
    """Keeps one worker process alive beside the API; restarts it with a growing delay if it exits."""

    def __init__(self, argv: list[str], env: dict[str, str], on_exit: Callable[[int], None] | None = None) -> None:
        self.argv, self.env, self.on_exit = argv, env, on_exit
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        log.info("worker started (pid %d)", self.proc.pid)

    def _watch(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if self.on_exit is not None:
                try:
                    self.on_exit(proc.pid)
                except Exception:
                    log.warning("cleaning up after worker %d failed", proc.pid, exc_info=True)
            # A worker that ran a while had a transient problem; one that dies at once gets backed off.
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 60.0)
            log.warning("worker exited with code %s; restarting in %.0f s", code, delay)
            if self._stopping.wait(delay):
                return
            self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # Warm shutdown: a running job stops after its current batch and goes back to the queue.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    settings = _settings(Settings, host=args.host, port=args.port, store=args.store, broker_url=args.broker)
    settings = settings.model_copy(update={"store": settings.store.expanduser().resolve()})
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the same signal again under
    # the handler it found: with the default one the process would die right there, before
    # its worker finished handing back its job. This handler, in force before uvicorn takes
    # the signals over (startup) and after it gives them back, stops serving instead; the
    # signal is raised again once the worker is gone.
    received: list[int] = []

    def stop_serving(number: int, _frame: object) -> None:
        received.append(number)
        raise _StopServing

    previous = {sig: signal.signal(sig, stop_serving) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisor = None
    try:
        if not args.no_worker:
            env = {**os.environ, "W2V_STORE": str(settings.store), PARENT_PID_ENV: str(os.getpid())}
            # The worker shares this host with the API: queries come first.
            env.setdefault("W2V_NICE", "10")
            env.setdefault("W2V_CPU_IDLE", "true")
            argv = [sys.executable, "-m", "app.cli", "worker", "--store", str(settings.store)]
            if settings.broker_url:
                argv += ["--broker", settings.broker_url]
            supervisor = WorkerSupervisor(argv, env, on_exit=_freeing_jobs_of(settings))
            supervisor.start()
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    except _StopServing:
        pass
    finally:
        for handled in previous:  # a second signal must not cut the worker's shutdown short
            signal.signal(handled, lambda number, _frame: received.append(number))
        if supervisor is not None:
            supervisor.stop()
        for handled, handler in previous.items():
            signal.signal(handled, handler)
    for number in received[:1]:
        signal.raise_signal(number)  # exit as the signal asked, as uvicorn would have
    return 0


def _freeing_jobs_of(settings: WorkerSettings) -> Callable[[int], None]:
    """What serve does when its worker dies: release the leases it held (see
    worker.runner.release_leases_of_process), so the restarted worker resumes its job at once."""
    from worker.jobs import open_job_store
    from worker.runner import release_leases_of_process
    from worker.storage import StoreLayout

    def free(pid: int) -> None:
        jobs = open_job_store(settings, StoreLayout.at(settings.store))
        try:
            for job_id in release_leases_of_process(jobs, pid):
                log.warning("job %s: its worker (pid %d) died; it resumes from its last checkpoint", job_id, pid)
        finally:
            jobs.close()

    return free


class _StopServing(BaseException):
    """Raised by the signal handler; a BaseException so that no `except Exception` swallows it."""


def _exit_with_parent(parent_pid: int) -> None:
    """Stop this worker if the `w2v serve` that started it is gone (even after a kill -9)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _claim_gpu(folder: Path) -> None:
    """Hold one of the host's GPUs for the life of this process (see worker.gpu_slots)."""
    from celery import signals

    from worker.gpu_slots import GPUSlotError, claim_gpu_slot, slot_devices, visible_gpu_count

    try:
        devices = slot_devices(visible_gpu_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        slot = claim_gpu_slot(folder, devices)
    except GPUSlotError as exc:
        raise model_cli.CLIError(str(exc)) from None
    os.environ["CUDA_VISIBLE_DEVICES"] = slot.device
    _held_slots.append(slot)  # the open lock file is the claim: keep it for the life of the process

    def announce(**_: Any) -> None:  # logging is set up only once the worker starts
        log.info("using GPU %s (claimed through %s)", slot.device, slot.path)

    signals.worker_ready.connect(announce, weak=False)


_held_slots: list[Any] = []


def _log_json() -> None:
    from celery import signals

    from worker.joblog import apply_format

    def to_json(logger: logging.Logger, **_: Any) -> None:
        apply_format(logger, "json")

    # Celery installs its own handlers while the worker starts; the format is put on them then.
    signals.after_setup_logger.connect(to_json, weak=False)


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import QUEUES, create_celery
    from worker.settings import WorkerSettings

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if not queues or unknown:
        raise model_cli.CLIError(f"--queues takes a comma-separated subset of {','.join(QUEUES)}, got {args.queues!r}")
    settings = _settings(WorkerSettings, store=args.store, broker_url=args.broker, device=args.device)
    settings = settings.model_copy(update={"store": settings.store.expanduser().resolve()})
    if settings.gpu_slots_dir is not None and settings.device == "cuda":
        _claim_gpu(settings.gpu_slots_dir.expanduser())
    app = create_celery(settings)
    if settings.log_format == "json":
        _log_json()
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and parent.isdigit():
        _exit_with_parent(int(parent))
    app.worker_main(
        [
            "worker",
            # One job at a time per process, in the main process: CUDA cannot be used in forked
            # children, and a CPU job already uses every core through its own threads.
            "--pool=solo",
            "--concurrency=1",
            f"--queues={','.join(queues)}",
            f"--loglevel={args.loglevel}",
            f"--hostname=w2v-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2v", description="word2vec CBOW embeddings: train, query, serve")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_cli.add_commands(sub)

    p = sub.add_parser("serve", help="run the HTTP API (and a training worker unless --no-worker)")
    p.add_argument("--host", help="interface to listen on (W2V_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (W2V_PORT; default 8000)")
    p.add_argument("--store", help="model store directory (W2V_STORE; default ./w2v-store)")
    p.add_argument(
        "--broker",
        help="Celery broker URL, e.g. redis://localhost:6379/0 (W2V_BROKER_URL; "
        "default: a filesystem queue in the store)",
    )
    p.add_argument("--no-worker", action="store_true", help="run the API only; workers run elsewhere")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a training worker (Celery) alone")
    p.add_argument("--broker", help="Celery broker URL (W2V_BROKER_URL; default: a filesystem queue in the store)")
    p.add_argument("--store", help="model store directory shared with the API (W2V_STORE)")
    p.add_argument("--queues", default="gpu,cpu", help="queues to take jobs from (default gpu,cpu)")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        help="device for jobs that ask for 'auto' (W2V_DEVICE; default auto)",
    )
    p.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return model_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
