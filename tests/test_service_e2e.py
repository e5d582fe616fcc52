"""End to end, for real: uvicorn and separate Celery worker processes, over HTTP.

1. API + worker on the Redis server at 127.0.0.1:6379 (a key namespace of their own, removed
   afterwards): upload a real corpus (gensim's lee_background, gzipped), train, watch the
   progress stream, then compare /similar and /analogy with the saved model loaded directly.
2. The same with a worker killed -9 mid-training: a new worker resumes from the last
   per-epoch checkpoint and the job succeeds on its second attempt.
3. The same walkthrough against `w2v serve` with the embedded default (no broker server).

Every process is started in its own session and killed with its group in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from model import Vectors, load_model

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processes:
    """Child processes of one test, each the leader of its own process group."""

    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            self.kill(proc)  # the group, so grandchildren (serve's worker) go too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def dump_logs(self) -> str:
        parts = [f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.iterdir())]
        return "\n".join(parts)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the process's group, SIGKILL if it is still there after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_api(processes: Processes, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    return processes.start("api", argv, env)


def start_worker(
    processes: Processes, env: dict[str, str], module: str = "app.cli", queues: str | None = "cpu"
) -> subprocess.Popen[bytes]:
    """A `w2v worker` (or a stand-in module with the same arguments); queues None: its defaults."""
    argv = [sys.executable, "-m", module, *(["worker"] if module == "app.cli" else [])]
    return processes.start("worker", argv + (["--queues", queues] if queues else []), env)


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("W2V_")}
    env.update(values)
    return env


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            result = check()
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_for_epoch(client: httpx.Client, job_id: str, epoch: int, timeout: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        j = job(client, job_id)
        assert j["state"] in ("queued", "running"), j
        return j if j["state"] == "running" and j["progress"]["epoch"] >= epoch else None

    result: dict[str, Any] = wait_until(reached, timeout, f"job {job_id} to reach epoch {epoch}")
    return result


def wait_ready(client: httpx.Client, procs: list[subprocess.Popen[bytes]]) -> None:
    def ready() -> bool:
        for p in procs:
            assert p.poll() is None, f"process {p.args!r} exited with {p.returncode}"
        return client.get("/readyz").status_code == 200

    wait_until(ready, 60, "the API to be ready")


def submit(client: httpx.Client, corpus: bytes, **params: Any) -> tuple[str, dict[str, Any]]:
    r = client.post("/corpora", content=corpus, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.json()["compression"] == "gzip" and r.json()["lines"] == 300 * 8
    body = {"corpus_id": r.json()["id"], "min_count": 2, "vector_size": 40, "seed": 7, **params}
    r = client.post("/train", json=body)
    assert r.status_code == 202, r.text
    return r.json()["job_id"], r.json()


def watch_events(client: httpx.Client, events_url: str, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """Read the job's Server-Sent Events until `event: end`."""
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", events_url, timeout=httpx.Timeout(timeout, read=30)) as r:
        assert r.status_code == 200
        name, data = "message", ""
        deadline = time.monotonic() + timeout
        for line in r.iter_lines():
            assert time.monotonic() < deadline, "event stream ran too long"
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and data:
                events.append((name, json.loads(data)))
                if name == "end":
                    return events
                name, data = "message", ""
    raise AssertionError("event stream closed without an end event")


def assert_answers_match(client: httpx.Client, vectors: Vectors, model_id: str) -> None:
    words = vectors.words
    for word in (words[5], words[40], words[200]):
        r = client.get("/similar", params={"word": word, "topn": 10})
        assert r.status_code == 200
        got = r.json()
        assert got["model_id"] == model_id
        expected = vectors.most_similar(word, topn=10)
        assert [h["word"] for h in got["results"]] == [w for w, _ in expected]
        assert [h["score"] for h in got["results"]] == pytest.approx([s for _, s in expected], abs=1e-5)
    a, b, c = words[30], words[60], words[90]
    r = client.get("/analogy", params={"a": a, "b": b, "c": c, "topn": 5})
    assert r.status_code == 200
    expected = vectors.analogy(a, b, c, topn=5)
    assert [h["word"] for h in r.json()["results"]] == [w for w, _ in expected]
    assert [h["score"] for h in r.json()["results"]] == pytest.approx([s for _, s in expected], abs=1e-5)


def walkthrough(client: httpx.Client, store: Path, corpus: bytes) -> None:
    job_id, accepted = submit(client, corpus, epochs=8, name="walkthrough")
    events = watch_events(client, accepted["events_url"], timeout=180)
    final = events[-1][1]
    assert final["state"] == "succeeded", final
    running = [e for _, e in events if e["state"] == "running"]
    done = [e["progress"]["words_done"] for e in running]
    total = final["progress"]["words_total"]
    assert any(0 < d < total for d in done), f"no progress seen mid-training: {done}"
    assert done == sorted(done)
    assert final["progress"]["words_done"] == total and final["progress"]["epoch"] == 8

    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["finished_at"]
    model_id = job["model_id"]
    detail = client.get(f"/models/{model_id}").json()
    assert detail["name"] == "walkthrough" and detail["job_id"] == job_id
    assert detail["config"]["epochs"] == 8 and detail["training"]["words_per_sec"] > 0
    assert detail["corpus"]["lines"] == 2400

    vectors = load_model(store / "models" / model_id).vectors
    assert detail["vocab_size"] == len(vectors)
    assert detail["neighbours"] == {"words": len(vectors), "k": 20}
    assert_answers_match(client, vectors, model_id)

    # An imported model gets its neighbour table from a worker too, shortly after the import.
    exported = client.get(f"/models/{model_id}/export", params={"format": "word2vec-binary"})
    r = client.post("/models/import", params={"format": "word2vec-binary", "name": "again"}, content=exported.content)
    assert r.status_code == 201, r.text
    imported_id = r.json()["model_id"]
    table = wait_until(
        lambda: client.get(f"/models/{imported_id}").json()["neighbours"], 60, "the imported model's neighbour table"
    )
    assert table == {"words": len(vectors), "k": 20}
    assert_answers_match(client, load_model(store / "models" / imported_id).vectors, imported_id)


def test_api_and_celery_worker_on_redis(
    processes: Processes, redis_namespace: str, tmp_path: Path, corpus_gz: bytes
) -> None:
    store = tmp_path / "store"
    port = free_port()
    env = clean_env(W2V_STORE=str(store), W2V_BROKER_URL=REDIS_URL, W2V_NAMESPACE=redis_namespace)
    api = start_api(processes, env, port)
    worker = start_worker(processes, env)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [api, worker])
        walkthrough(client, store, corpus_gz)


def test_killed_worker_job_resumes_from_checkpoint(
    processes: Processes, redis_namespace: str, tmp_path: Path, corpus_gz: bytes
) -> None:
    store = tmp_path / "store"
    port = free_port()
    env = clean_env(
        W2V_STORE=str(store),
        W2V_BROKER_URL=REDIS_URL,
        W2V_NAMESPACE=redis_namespace,
        W2V_LEASE_TTL_S="3",
        W2V_SWEEP_INTERVAL_S="1",
    )
    api = start_api(processes, env, port)
    first = start_worker(processes, env, queues=None)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [api, first])
        job_id, _ = submit(client, corpus_gz, epochs=40)
        wait_for_epoch(client, job_id, 4)
        Processes.kill(first)  # kill -9, mid-epoch, no chance to clean up
        first.wait(timeout=10)
        assert client.get(f"/jobs/{job_id}").json()["state"] == "running"
        # No worker is left to sweep it back onto the queue; clients see it has lost its worker.
        wait_until(lambda: client.get(f"/jobs/{job_id}").json()["stalled"], 10, "the job to show as stalled")
        assert client.get(f"/jobs/{job_id}").json()["state"] == "running"

        # Twice: the second worker is killed too once it has resumed and trained further.
        second = start_worker(processes, env, queues=None)

        def resumed_further() -> bool:
            job = client.get(f"/jobs/{job_id}").json()
            assert job["state"] in ("queued", "running"), job
            return bool(job["state"] == "running" and job["attempts"] == 2 and job["progress"]["epoch"] >= 10)

        wait_until(resumed_further, 120, "the resumed job to reach epoch 10")
        Processes.kill(second)
        second.wait(timeout=10)
        start_worker(processes, env, queues=None)

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        job = wait_until(finished, 240, "the resumed job to finish", interval=0.5)
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 3
        meta = load_model(store / "models" / job["model_id"]).meta
        assert meta["training"]["resumed_from_epoch"] >= 9
        assert not (store / "checkpoints" / job_id).exists()
        # Exactly one model: no second copy from a redelivery, no staging directory left behind.
        assert sorted(p.name for p in (store / "models").iterdir()) == [job["model_id"]]
        assert [m["model_id"] for m in client.get("/models").json()] == [job["model_id"]]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def start_serve(processes: Processes, store: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`w2v serve` with its embedded defaults (and its own worker), on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "app.cli", "serve", "--store", str(store), "--port", str(port)]
    return processes.start("serve", argv, clean_env()), port


def test_w2v_serve_embedded_default(processes: Processes, tmp_path: Path, corpus_gz: bytes) -> None:
    store = tmp_path / "store"
    serve, port = start_serve(processes, store)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [serve])
        assert client.get("/readyz").json()["checks"] == {"store": "ok", "broker": "ok"}
        walkthrough(client, store, corpus_gz)

    assert (store / "queue" / "messages").is_dir()  # the embedded queue lives in the store
    workers = children(serve.pid)
    assert workers, "w2v serve runs its worker as a child process"
    for pid in workers:
        # In serve's session, hence its scheduler group: only there does the worker's SCHED_IDLE
        # let a woken API thread preempt training at once (see README, W2V_CPU_IDLE).
        assert os.getsid(pid) == os.getsid(serve.pid)
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    serve.send_signal(signal.SIGTERM)  # only serve: it must take its worker down with it
    # ... and outlive it: a supervisor (systemd, Docker) that sees serve exit kills what is
    # left, and a worker cut off there has not handed back its job.
    assert serve.wait(timeout=60) == -signal.SIGTERM
    assert all(_gone(pid) for pid in workers)


def test_w2v_serve_resumes_the_job_of_a_worker_it_saw_die_without_waiting_out_its_lease(
    processes: Processes, tmp_path: Path, corpus_gz: bytes
) -> None:
    # The default lease lifetime (60 s) is longer than this test waits for the job to come back.
    serve, port = start_serve(processes, tmp_path / "store")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [serve])
        job_id, _ = submit(client, corpus_gz, epochs=40)
        wait_for_epoch(client, job_id, 2)
        [worker] = children(serve.pid)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()

        def resumed() -> bool:
            job = client.get(f"/jobs/{job_id}").json()
            return bool(job["state"] == "running" and job["attempts"] == 2 and not job["stalled"])

        wait_until(resumed, 40, "the restarted worker to resume the job")
        assert time.monotonic() - killed < 40  # well inside the dead worker's lease lifetime


_SIGTERM_WHILE_STARTING = """
import os, signal, sys, time
import uvicorn
from app.cli import main

def slow_start(app, **kwargs):  # the signal arrives before uvicorn has taken the signals over
    me = os.getpid()
    with open(os.environ["CHILDREN_FILE"], "w") as fh:
        fh.write(open(f"/proc/{me}/task/{me}/children").read())
    os.kill(me, signal.SIGTERM)
    time.sleep(60)

uvicorn.run = slow_start
sys.exit(main(sys.argv[1:]))
"""


def test_w2v_serve_stopped_while_starting_stops_with_its_worker(processes: Processes, tmp_path: Path) -> None:
    # A `systemctl stop` right after `start`: serve must neither sit out the signal until
    # uvicorn is up nor leave its worker behind.
    store, port = tmp_path / "store", str(free_port())
    argv = [sys.executable, "-c", _SIGTERM_WHILE_STARTING, "serve", "--store", str(store), "--port", port]
    listed = tmp_path / "children"
    serve = processes.start("serve", argv, {**clean_env(), "CHILDREN_FILE": str(listed)})
    assert serve.wait(timeout=40) == -signal.SIGTERM
    workers = [int(pid) for pid in listed.read_text().split()]
    assert workers and all(_gone(pid) for pid in workers)


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its dead parent's reaper counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
