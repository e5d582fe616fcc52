"""Faults injected for real: signals to worker processes, a Redis server killed and restarted,
a worker that dies on every job, jobs over their time limit, concurrent duplicate submissions,
and processes killed while they save a model.

API and workers are separate processes (uvicorn, `w2v worker`) as in tests/test_service_e2e.py,
whose helpers these tests share; each test uses a Redis key namespace of its own on the shared
server, except the restart test, which runs and kills a Redis server of its own.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from app.modelstore import ModelStore
from model import load_model
from tests.test_service_e2e import (
    REDIS_URL,
    ROOT,
    Processes,
    clean_env,
    free_port,
    job,
    start_api,
    start_worker,
    submit,
    wait_for_epoch,
    wait_ready,
    wait_until,
)
from worker.storage import StoreLayout, is_id

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "cancelled")


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        j = job(client, job_id)
        return j if j["state"] in TERMINAL else None

    result: dict[str, Any] = wait_until(finished, timeout, f"job {job_id} to finish", interval=0.3)
    return result


def assert_exactly_one_model(store: Path, client: httpx.Client, model_id: str) -> None:
    """One model directory in the store, listed by the API, and no staging leftovers."""
    entries = sorted(os.listdir(store / "models"))
    assert entries == [model_id], entries
    assert [m["model_id"] for m in client.get("/models").json()] == [model_id]
    load_model(store / "models" / model_id, verify=True)


# ------------------------------------------------------------------------------------ SIGTERM


def test_sigterm_hands_the_running_job_back_promptly(
    processes: Processes, redis_namespace: str, tmp_path: Path, corpus_gz: bytes
) -> None:
    """Twice: a worker told to stop mid-job puts the job back at once (attempt not counted),
    the next worker resumes it from the checkpoint, and one model comes out."""
    store = tmp_path / "store"
    env = clean_env(W2V_STORE=str(store), W2V_BROKER_URL=REDIS_URL, W2V_NAMESPACE=redis_namespace, W2V_LEASE_TTL_S="3")
    port = free_port()
    api = start_api(processes, env, port)
    worker = start_worker(processes, env)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [api, worker])
        job_id, _ = submit(client, corpus_gz, epochs=40)
        epoch = 2
        for _ in range(2):
            reached = wait_for_epoch(client, job_id, epoch)["progress"]["epoch"]
            sent = time.monotonic()
            worker.send_signal(signal.SIGTERM)  # the worker alone, as `docker stop` or systemd would
            back = wait_until(
                lambda: (j := job(client, job_id))["state"] == "queued" and j, 20, "the job to be re-queued"
            )
            requeued_after = time.monotonic() - sent
            print(f"re-queued {requeued_after:.2f} s after SIGTERM")
            assert requeued_after < 5, f"re-queued only after {requeued_after:.1f} s"
            assert back["attempts"] == 0 and back["error"] is None  # a shutdown is not held against the job
            assert worker.wait(timeout=30) == 0  # warm shutdown: it exits cleanly once the job is handed back
            worker = start_worker(processes, env)
            epoch = reached + 3
        done = wait_finished(client, job_id)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 1
        meta = load_model(store / "models" / done["model_id"]).meta
        assert meta["training"]["resumed_from_epoch"] >= reached
        assert_exactly_one_model(store, client, done["model_id"])


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_a_queued_job_whose_message_was_lost_is_sent_again(
    processes: Processes, redis_namespace: str, tmp_path: Path, corpus_gz: bytes, broker: str
) -> None:
    """An API killed between a job's record and its message, or a worker killed between taking
    the message and marking the job running, leaves a queued job with no message anywhere:
    the workers' sweep sends it again, once, and the job runs."""
    store = tmp_path / "store"
    env = clean_env(W2V_STORE=str(store), W2V_SWEEP_INTERVAL_S="1")
    if broker == "redis":
        env.update(W2V_BROKER_URL=REDIS_URL, W2V_NAMESPACE=redis_namespace)
    port = free_port()
    api = start_api(processes, env, port)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [api])
        job_id, _ = submit(client, corpus_gz, epochs=1)
        # No worker yet: the message waits in the broker. Lose it, as a kill in either gap would.
        if broker == "redis":
            r = redis.Redis.from_url(REDIS_URL)
            assert r.llen(f"{redis_namespace}:cpu") == 1
            r.delete(f"{redis_namespace}:cpu")
        else:
            messages = list((store / "queue" / "messages").iterdir())
            assert len(messages) == 1
            messages[0].unlink()
        worker = start_worker(processes, env)
        done = wait_finished(client, job_id, timeout=120)
        assert done["state"] == "succeeded" and done["attempts"] == 1, done
        assert_exactly_one_model(store, client, done["model_id"])
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    logs = "".join(f.read_text(errors="replace") for f in processes.logs.glob("worker-*.log"))
    assert logs.count("no message in the broker") == 1, logs[-3000:]
    if broker == "redis":  # nothing sent twice: the queue is empty again
        assert redis.Redis.from_url(REDIS_URL).llen(f"{redis_namespace}:cpu") == 0


# ------------------------------------------------------------------------------------ Redis restart


class OwnRedis:
    """A redis-server of the test's own on a free port, with an append-only file so a restart
    keeps its data (as a deployment's Redis must: see README, Scaling out)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_until(lambda: _pings(client), 20, "redis-server to start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a crash, not a SHUTDOWN: only what the AOF holds survives
            self.proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(client.ping())
    return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = OwnRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_redis_restarts_mid_job(processes: Processes, own_redis: OwnRedis, tmp_path: Path, corpus_gz: bytes) -> None:
    """Redis is killed and restarted twice while a job trains: the worker and the API reconnect,
    the job completes, and a job submitted afterwards is consumed within 60 s."""
    store = tmp_path / "store"
    env = clean_env(W2V_STORE=str(store), W2V_BROKER_URL=own_redis.url, W2V_LEASE_TTL_S="10")
    port = free_port()
    api = start_api(processes, env, port)
    worker = start_worker(processes, env)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [api, worker])
        job_id, _ = submit(client, corpus_gz, epochs=100)
        epoch = 2
        for _ in range(2):
            epoch = wait_for_epoch(client, job_id, epoch)["progress"]["epoch"] + 3
            own_redis.kill()
            assert client.get(f"/jobs/{job_id}").status_code == 503  # said plainly while it is down
            time.sleep(2)
            own_redis.start()
            wait_until(lambda: client.get("/readyz").status_code == 200, 30, "the API to see Redis again")
        done = wait_finished(client, job_id)
        assert done["state"] == "succeeded", done
        assert worker.poll() is None and api.poll() is None

        submitted = time.monotonic()
        second, _ = submit(client, corpus_gz, epochs=1)
        wait_until(lambda: job(client, second)["state"] != "queued", 60, "the worker to take a new job")
        taken_after = time.monotonic() - submitted
        print(f"new job taken {taken_after:.2f} s after submission")
        assert wait_finished(client, second)["state"] == "succeeded"
        assert taken_after < 60
        models = sorted(m["model_id"] for m in client.get("/models").json())
        assert models == sorted([done["model_id"], job(client, second)["model_id"]])


# ------------------------------------------------------------------------------------ crash loop


def test_a_job_that_kills_its_worker_every_time_fails_after_the_retry_cap(
    processes: Processes, redis_namespace: str, tmp_path: Path, corpus_gz: bytes
) -> None:
    store = tmp_path / "store"
    env = clean_env(
        W2V_STORE=str(store),
        W2V_BROKER_URL=REDIS_URL,
        W2V_NAMESPACE=redis_namespace,
        W2V_LEASE_TTL_S="2",
        W2V_SWEEP_INTERVAL_S="0.5",
        W2V_MAX_ATTEMPTS="2",
    )
    port = free_port()
    api = start_api(processes, env, port)
    worker = start_worker(processes, env, module="tests.crashing_worker")
    starts, crashes = 1, 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [api])
        job_id, _ = submit(client, corpus_gz, epochs=2)
        deadline = time.monotonic() + 120
        while job(client, job_id)["state"] not in TERMINAL:
            assert time.monotonic() < deadline, "the job never ended"
            if worker.poll() is not None:  # what a supervisor (w2v serve, systemd, compose) does
                assert worker.returncode == -signal.SIGKILL
                crashes += 1
                worker = start_worker(processes, env, module="tests.crashing_worker")
                starts += 1
            time.sleep(0.2)
        final = job(client, job_id)
        assert final["state"] == "failed", final
        assert "gave up after 2 attempts" in final["error"] and "lost each time" in final["error"]
        assert crashes == 2 and final["attempts"] == 3

        # No redelivery loop: the surviving worker stays up, the job stays failed, the queue is empty.
        time.sleep(4)
        assert worker.poll() is None
        assert job(client, job_id)["state"] == "failed"
        r = redis.Redis.from_url(REDIS_URL)
        assert r.llen(f"{redis_namespace}:cpu") == 0
        assert not (store / "models").exists() or os.listdir(store / "models") == []


# ------------------------------------------------------------------------------------ one deployment, several jobs


@pytest.fixture
def limited_service(processes: Processes, redis_namespace: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    """API + worker with a 3 s job time limit."""
    store = tmp_path / "store"
    env = clean_env(
        W2V_STORE=str(store), W2V_BROKER_URL=REDIS_URL, W2V_NAMESPACE=redis_namespace, W2V_JOB_TIME_LIMIT_S="3"
    )
    port = free_port()
    api = start_api(processes, env, port)
    worker = start_worker(processes, env)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_ready(client, [api, worker])
        yield client, store


def test_time_limit_empty_vocabulary_and_concurrent_idempotency_keys(
    limited_service: tuple[httpx.Client, Path], corpus_gz: bytes
) -> None:
    client, store = limited_service
    base = str(client.base_url)

    # The same Idempotency-Key posted by 8 clients at once, 4 times over: one job each time.
    for round_ in range(4):
        key = f"order-{uuid.uuid4().hex}"
        start = threading.Barrier(8)
        answers: list[tuple[int, str]] = []

        def post(
            round_: int = round_,
            key: str = key,
            start: threading.Barrier = start,
            answers: list[tuple[int, str]] = answers,
        ) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                start.wait()
                r = c.post(
                    "/train",
                    json={"text": f"a b c d\nround {round_}\n", "epochs": 1, "min_count": 1},
                    headers={"Idempotency-Key": key},
                )
                answers.append((r.status_code, r.json().get("job_id", r.text)))

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {status for status, _ in answers} == {202}, answers
        assert len({job_id for _, job_id in answers}) == 1, answers
    jobs = client.get("/jobs").json()
    assert len(jobs) == 4
    assert len(client.get("/corpora").json()) == 4  # losers' inline corpora were removed
    for j in jobs:
        assert wait_finished(client, j["job_id"], 60)["state"] == "succeeded"

    # A corpus whose words all fall under min_count: the job fails and says why.
    r = client.post("/train", json={"text": "alpha beta gamma\n", "min_count": 5})
    failed = wait_finished(client, r.json()["job_id"], 60)
    assert failed["state"] == "failed" and failed["error"].startswith("empty vocabulary: "), failed
    assert "min_count=5" in failed["error"]

    # A job past the time limit: failed with the reason, no model, no checkpoints left.
    job_id, _ = submit(client, corpus_gz, epochs=100)
    started = time.monotonic()
    over = wait_finished(client, job_id, 90)
    assert over["state"] == "failed" and "exceeded the time limit of 3 s" in over["error"], over
    assert time.monotonic() - started < 60
    assert over["model_id"] is None and not (store / "checkpoints" / job_id).exists()


def test_start_up_refuses_a_time_limit_beyond_the_visibility_timeout(tmp_path: Path) -> None:
    env = clean_env(
        W2V_STORE=str(tmp_path / "store"),
        W2V_BROKER_URL="redis://127.0.0.1:1/0",
        W2V_JOB_TIME_LIMIT_S="7200",
        W2V_VISIBILITY_TIMEOUT_S="3600",
    )
    worker = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert worker.returncode != 0
    assert "visibility_timeout_s (3600 s) must exceed the job time limit" in worker.stderr
    api = subprocess.run(
        [sys.executable, "-c", "from app.settings import Settings; Settings()"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert api.returncode != 0 and "must exceed the job time limit" in api.stderr
    # The default keeps an hour of margin over the hard limit.
    from worker.settings import WorkerSettings

    defaults = WorkerSettings(job_time_limit_s=7200)
    assert defaults.effective_visibility_timeout_s > defaults.hard_time_limit_s + 3000


# ------------------------------------------------------------------------------------ kill during save

_SAVER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from model.store import Model, save_model
    from model.vectors import Vectors

    store, words, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    names = [f"w{i}" for i in range(words)]
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    for line in sys.stdin:                      # one "fork <generation>" per iteration
        generation = int(line.split()[1])
        pid = os.fork()
        if pid == 0:
            acks = open(os.path.join(store, "acks"), "a")
            while True:
                vectors = np.full((words, dim), generation, dtype=np.float32)
                model = Model(Vectors(names, vectors, np.arange(words, 0, -1)), {"generation": generation})
                save_model(os.path.join(store, "models", "f" * 32), model, overwrite=True)
                fresh = os.urandom(16).hex()
                save_model(os.path.join(store, "models", fresh), model)
                acks.write(f"{generation} {fresh}\\n"); acks.flush()
                generation += 1
        sys.stdout.write(f"{pid}\\n"); sys.stdout.flush()
        os.waitpid(pid, 0)
        sys.stdout.write("reaped\\n"); sys.stdout.flush()
    """
)


def _consistent(path: Path) -> int:
    """Load with checksum verification; every value equals the generation its meta.json names."""
    model = load_model(path, mmap=True, verify=True)
    generation = int(model.meta["generation"])
    vectors = np.asarray(model.vectors.vectors)
    assert vectors.min() == vectors.max() == generation, path
    assert model.vectors.words[-1] == f"w{len(model.vectors) - 1}"
    return generation


def test_a_model_killed_mid_save_is_old_or_new_never_torn(tmp_path: Path) -> None:
    """A process saving models (8 MB each) in a loop is SIGKILLed at random moments, 40 times.

    After every kill: the model saved in place (overwrite) loads, passes its checksums and
    holds the last generation acknowledged or a later one; every model the store lists loads
    the same way; every acknowledged fresh model is listed; staging directories never are.
    """
    layout = StoreLayout.at(tmp_path / "store")
    layout.ensure()
    saver = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(layout.root), "20000", "100"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert saver.stdin is not None and saver.stdout is not None
    fixed = layout.models / ("f" * 32)
    rng = random.Random(1234)
    acked_generation, staging_seen, generation = 0, 0, 1
    acked_fresh: set[str] = set()
    verified: set[str] = set()
    try:
        assert saver.stdout.readline().strip() == "ready"
        for _ in range(40):
            saver.stdin.write(f"fork {generation}\n")
            saver.stdin.flush()
            child = int(saver.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.6))
            os.kill(child, signal.SIGKILL)
            assert saver.stdout.readline().strip() == "reaped"

            acks = [line.split() for line in (layout.root / "acks").read_text().splitlines() if line.strip()]
            if acks:
                acked_generation = max(acked_generation, int(acks[-1][0]))
                acked_fresh.update(fresh for _, fresh in acks)
            if acked_generation:
                assert _consistent(fixed) >= acked_generation  # old or new, never torn or missing
            elif fixed.exists():
                _consistent(fixed)
            listed = set(ModelStore(layout, cache_size=1).ids())
            assert acked_fresh <= listed
            for model_id in listed - verified:  # a published model never changes: check each once
                _consistent(layout.models / model_id)
            verified |= listed
            staging = [e for e in os.listdir(layout.models) if not is_id(e)]
            staging_seen += bool(staging)
            for name in staging:  # as the worker's next attempt does for its own target
                shutil.rmtree(layout.models / name)
            generation = (acked_generation or generation) + 100
    finally:
        saver.kill()
        saver.wait(timeout=10)
    # The kills must have landed inside saves, or this test proved nothing.
    assert staging_seen >= 10, staging_seen
    assert acked_generation > 0 and len(acked_fresh) > 5
