"""Open-loop load on GET /similar against a live server, with and without a training job running.

    .venv/bin/python bench/load_similar.py [--rate 200] [--duration 20] [--phases idle,training]
        [--server serve|split] [--words 100000] [--dim 100]

What it does, all on this machine:
1. writes a random `words` x `dim` model into a temporary store with `model.save_model`, with
   the neighbour table a worker saves after training;
2. starts the service on that store, with the embedded filesystem queue (no other server):
   - `--server serve` (default): `w2v serve`, the command `make run` starts: the API and the
     worker it supervises, as one process tree. It runs in this process's session, as a
     service started from one terminal does, so the load generator, which stands in for
     clients on other machines, shares its scheduler group (see "Sessions" below);
   - `--server split`: `uvicorn app.main:app` and `w2v worker`, each in a session of its own,
     as two separately started services on one host;
3. for each phase, sends GET /similar?word=<random word>&topn=10 at a fixed arrival rate
   (Poisson arrivals: exponential gaps) for `duration` seconds from this process, over raw
   keep-alive connections (a new one whenever all are busy), never waiting for a reply
   before sending the next request (open loop). Phase "training" first submits a training
   job on a synthetic corpus big enough to outlast the phase and waits until it trains; the
   job is cancelled afterwards. Phases may repeat (`--phases idle,training,training`).

Latency is measured from each request's *scheduled* send time, so a client or server that
falls behind shows up in the figures instead of being hidden (coordinated omission). The
client's event loop waits with select(), whose timeout has microsecond resolution; asyncio's
default, epoll, rounds every wait up to the next millisecond, which made the client send up
to 1 ms late and counted that against the server.

Sessions: Linux groups processes by session (scheduler autogroups) and shares the CPU
between groups before it looks at the processes inside. A worker's SCHED_IDLE (a woken
API thread preempts training at once) works inside its group; across groups, a woken
process may wait up to a scheduler tick (4 ms at 250 Hz) behind training. The worker lowers
its own group when it leads its session (`--server split`), which narrows that but cannot
remove it, and nothing can do it for the load generator here, which shares the 2 cores only
because it runs on this machine.

Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cpu_name  # noqa: E402
from model import Model, Vectors, save_model  # noqa: E402
from model.neighbours import build_neighbours  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402
from worker.storage import StoreLayout, new_id  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_model(layout: StoreLayout, n_words: int, dim: int, seed: int, neighbour_words: int) -> list[str]:
    """A random model, with the neighbour table a worker builds after training (unless 0 words)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(n_words)]
    vectors = Vectors(words, rng.standard_normal((n_words, dim), dtype=np.float32), np.arange(n_words, 0, -1))
    settings = WorkerSettings(store=layout.root, neighbour_words=neighbour_words)
    vectors.attach_neighbours(build_neighbours(vectors, k=settings.neighbour_topn, words=settings.neighbour_words))
    model_id = new_id()
    meta = {"model_id": model_id, "name": "load-bench", "created_at": "2030-01-01T00:00:00.000+00:00"}
    save_model(layout.model_dir(model_id), Model(vectors, meta))
    return words


def write_corpus(path: Path, n_words: int, seed: int) -> None:
    """Zipf-distributed words over a 20k vocabulary, 20-word sentences."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, size=n_words), 20_000)
    with path.open("w", encoding="utf-8") as fh:
        for start in range(0, n_words, 20):
            fh.write(" ".join(f"t{i}" for i in ids[start : start + 20]) + "\n")


class _Connections:
    """A pool of raw HTTP/1.1 keep-alive connections: a request takes a free one or opens one.

    An HTTP client library costs a few milliseconds of CPU per request on this machine's two
    cores, which the server under test shares; this client costs tens of microseconds, so
    the figures measure the server rather than the client.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened: list[asyncio.StreamWriter] = []

    async def get(self, target: str) -> int:
        if self.free:
            try:
                return await self._exchange(self.free.pop(), target)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the server closed an idle keep-alive connection: retry on a new one, as clients do
        conn = await asyncio.open_connection(self.host, self.port)
        self.opened.append(conn[1])
        return await self._exchange(conn, target)

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], target: str) -> int:
        reader, writer = conn
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:]) if k.lower() == b"content-length")
        await reader.readexactly(length)
        self.free.append(conn)
        return status

    def close(self) -> None:
        for writer in self.opened:
            writer.close()


async def open_loop(base_url: str, words: list[str], rate: float, duration: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    latencies: list[float] = []
    service: list[float] = []
    errors: dict[str, int] = {}
    url = httpx.URL(base_url)
    pool = _Connections(url.host, url.port or 80)

    async def one(scheduled: float) -> None:
        word = words[rng.randrange(len(words))]
        sent = time.perf_counter()
        try:
            status = await pool.get(f"/similar?word={word}&topn=10")
            ok = status == 200
            if not ok:
                errors[str(status)] = errors.get(str(status), 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
            ok = False
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        done = time.perf_counter()
        if ok:
            latencies.append(done - scheduled)
            service.append(done - sent)

    # Only requests in flight are kept: holding every finished task would make the collector's
    # passes, and the final wait, scan tens of thousands of them mid-run (stalls of 50-100 ms).
    in_flight: set[asyncio.Task[None]] = set()
    sent_n = 0
    start = time.perf_counter()
    next_at = start
    lag_max = 0.0
    while next_at < start + duration:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag_max = max(lag_max, time.perf_counter() - next_at)
        task = asyncio.create_task(one(next_at))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        sent_n += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - start
    pool.close()
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    svc = np.array(service) * 1000 if service else np.array([np.nan])
    return {
        "offered_rps": rate,
        "requests": sent_n,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p90_ms": round(float(np.percentile(lat, 90)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "p99_service_ms": round(float(np.percentile(svc, 99)), 2),
        "error_rate": round(sum(errors.values()) / max(sent_n, 1), 4),
        "errors": errors,
        "client_lag_max_ms": round(lag_max * 1000, 2),
    }


def run_client(coro: Any) -> Any:
    """Runs the load generator on an event loop that waits with select() (see the docstring)."""
    # What this process set up (NumPy, Numba, the model's words) stays out of the collector's
    # full passes, which would otherwise stall the client for tens of milliseconds mid-run.
    gc.collect()
    gc.freeze()
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            result = check()
            if result:
                return result
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def start_server(kind: str, port: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    def start(argv: list[str], log: str, own_session: bool) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, env=env, stdout=(logs / log).open("wb"), stderr=subprocess.STDOUT,
            # Either way a process group of its own, so that it can be stopped with everything it started.
            start_new_session=own_session, process_group=None if own_session else 0,
        )  # fmt: skip

    if kind == "serve":
        return [start(["-m", "app.cli", "serve", "--port", str(port)], "serve.log", own_session=False)]
    return [
        start(["-m", "uvicorn", "app.main:app", "--port", str(port), "--no-access-log"], "api.log", own_session=True),
        start(["-m", "app.cli", "worker", "--queues", "cpu"], "worker.log", own_session=True),
    ]


def stop_server(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="arrivals per second (default 200)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per phase (default 20)")
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--corpus-words", type=int, default=3_000_000, help="training corpus size")
    parser.add_argument(
        "--server", choices=["serve", "split"], default="serve", help="how the service runs (see above; default serve)"
    )
    parser.add_argument("--worker-threads", type=int, default=0, help="W2V_THREADS for the worker (0: all cores)")
    parser.add_argument("--worker-nice", type=int, default=10, help="W2V_NICE for the worker (as w2v serve)")
    parser.add_argument(
        "--worker-cpu-idle", choices=["true", "false"], default="true", help="W2V_CPU_IDLE for the worker (as serve)"
    )
    parser.add_argument(
        "--neighbour-words",
        type=int,
        default=WorkerSettings.model_fields["neighbour_words"].default,
        help="words in the model's neighbour table, as W2V_NEIGHBOUR_WORDS (0: none, every query searches)",
    )
    parser.add_argument("--phases", default="idle,training", help="comma-separated, in order: idle, training")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or not set(phases) <= {"idle", "training"}:
        parser.error("--phases takes a comma-separated list of: idle, training")

    with tempfile.TemporaryDirectory(prefix="w2v-load-") as tmp:
        layout = StoreLayout.at(Path(tmp) / "store")
        layout.ensure()
        t0 = time.perf_counter()
        words = write_model(layout, args.words, args.dim, args.seed, args.neighbour_words)
        print(
            f"model: {args.words} x {args.dim}, neighbour table of {min(args.neighbour_words, args.words)} words, "
            f"written in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("W2V_")}
        env.update(W2V_STORE=str(layout.root), W2V_THREADS=str(args.worker_threads), W2V_NICE=str(args.worker_nice))
        env.update(W2V_CPU_IDLE=args.worker_cpu_idle)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        procs = start_server(args.server, port, env, logs)
        base = f"http://127.0.0.1:{port}"
        results: list[dict[str, Any]] = []
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                wait_for(lambda: client.get("/readyz").status_code == 200, 60, "the API")
                # Load the model (checksums, unit matrix) before measuring, as a warm server would have.
                assert client.get("/similar", params={"word": words[0]}).status_code == 200
                run_client(open_loop(base, words, args.rate, 2.0, args.seed + 100))  # warm-up
                corpus_id = None
                for phase in phases:
                    job_id = None
                    if phase == "training":
                        if corpus_id is None:
                            corpus = Path(tmp) / "corpus.txt"
                            write_corpus(corpus, args.corpus_words, args.seed)
                            r = client.post(
                                "/corpora", content=corpus.read_bytes(), headers={"Content-Type": "text/plain"}
                            )
                            r.raise_for_status()
                            corpus_id = r.json()["id"]
                        body = {"corpus_id": corpus_id, "epochs": 100, "min_count": 1}
                        job_id = client.post("/train", json=body).json()["job_id"]
                        status_url = f"/jobs/{job_id}"
                        wait_for(
                            lambda url=status_url: (
                                (j := client.get(url).json())["state"] == "running" and j["progress"]["words_done"] > 0
                            ),
                            120,
                            "the training job to run",
                        )
                    row = {"phase": phase, **run_client(open_loop(base, words, args.rate, args.duration, args.seed))}
                    if job_id is not None:
                        job = client.get(f"/jobs/{job_id}").json()
                        row["training_state"] = job["state"]
                        row["training_words_per_sec"] = job["progress"]["words_per_sec"]
                        client.post(f"/jobs/{job_id}/cancel")
                        wait_for(lambda url=status_url: client.get(url).json()["state"] != "running", 60, "the cancel")
                    results.append(row)
                    print(f"{phase}: p99 {row['p99_ms']:.2f} ms", flush=True)
        finally:
            stop_server(procs)

    header = ["phase", "offered/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for res in results:
        cells = [res["phase"], f"{res['offered_rps']:.0f}", f"{res['achieved_rps']:.1f}"]
        cells += [f"{res[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")] + [f"{res['error_rate']:.2%}"]
        print("| " + " | ".join(cells) + " |")
    summary = {
        "bench": "load_similar",
        "server": args.server,
        "words": args.words,
        "dim": args.dim,
        "rate": args.rate,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "worker_threads": args.worker_threads,
        "worker_nice": args.worker_nice,
        "worker_cpu_idle": args.worker_cpu_idle == "true",
        "neighbour_words": min(args.neighbour_words, args.words),
        "phases": results,
    }
    print(json.dumps(summary))

    return 0


if __name__ == "__main__":
    sys.exit(main())
