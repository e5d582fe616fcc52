"""Job records: what users see of a training job, kept by us rather than by Celery.

Celery's result backend reports any id it does not know as PENDING and forgets results after
a while; our records make an unknown id a 404 and keep a job's history. They live in Redis
when Redis is the broker (so every API replica and worker sees the same state) and as JSON
files in the store otherwise. Both the API and the workers import this module.

State changes that race (a user cancelling while a worker starts the job, two deliveries of
one message) go through `transition`, an atomic compare-and-set on the state. A running job
is owned through a lease that its worker renews; a job whose lease lapsed lost its worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import redis

from model.atomic import atomic_file
from worker.settings import WorkerSettings
from worker.storage import StoreLayout, is_id

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"queued", "running"})

IDEMPOTENCY_TTL_S = 24 * 3600


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class LockBusy(TimeoutError):
    """A job-store lock stayed taken past its timeout: the request may simply be retried."""


@dataclass
class JobRecord:
    job_id: str
    state: str
    corpus_id: str
    corpus_file: str
    config: dict[str, Any]
    device: str
    queue: str
    target_model_id: str  # fixed at submission so a redelivered job finds a model an earlier attempt saved
    created_at: str
    name: str | None = None
    model_id: str | None = None
    progress: dict[str, Any] | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    idempotency_key: str | None = None
    worker: str | None = None
    owner: str | None = None  # SHA-256 of the API key that submitted it (never the key); None: keys off
    unqueued_since: str | None = None  # when a sweep first found it queued with no message (worker.broker)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class JobStore(ABC):
    """Storage of job records, leases and idempotency keys."""

    @abstractmethod
    def create(self, record: JobRecord) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Newest first."""

    @abstractmethod
    def delete(self, job_id: str) -> None: ...

    @abstractmethod
    def update(self, job_id: str, *, lease_owner: str | None = None, **values: Any) -> bool:
        """Write fields without looking at the state (progress reports); a job that no longer
        exists stays deleted. With `lease_owner`, write only while that owner holds the job's
        lease, checked in the same step as the write. Returns whether it wrote."""

    @abstractmethod
    def transition(
        self, job_id: str, allowed: Collection[str], *, require_no_lease: bool = False, **values: Any
    ) -> JobRecord | None:
        """Write `values` only if the job's state is in `allowed` (and, if asked, nobody holds its lease).

        Returns the updated record, or None when the job is missing or the condition failed.
        """

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    @abstractmethod
    def incr_attempts(self, job_id: str) -> int: ...

    @abstractmethod
    def acquire_lease(self, job_id: str, owner: str, ttl_s: float) -> bool: ...

    @abstractmethod
    def renew_lease(self, job_id: str, owner: str, ttl_s: float) -> bool:
        """Extend the lease if `owner` still holds it; False means it was lost."""

    @abstractmethod
    def release_lease(self, job_id: str, owner: str) -> None: ...

    @abstractmethod
    def lease_holder(self, job_id: str) -> str | None: ...

    @abstractmethod
    def reserve_idempotency_key(self, key: str, job_id: str, fingerprint: str) -> tuple[str, str] | None:
        """Bind `key` to `job_id`, or return the (job_id, fingerprint) it is already bound to."""

    @abstractmethod
    def lookup_idempotency_key(self, key: str) -> tuple[str, str] | None: ...

    @abstractmethod
    def release_idempotency_key(self, key: str, job_id: str) -> None: ...

    @abstractmethod
    def exclusive(self, name: str, timeout_s: float = 10.0) -> contextlib.AbstractContextManager[None]:
        """A lock held across processes (and API replicas) for a short check-then-act step."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached."""

    def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Redis


_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
local n = tonumber(ARGV[1])
local ok = false
for i = 2, n + 1 do
  if ARGV[i] == state then ok = true break end
end
if not ok then return 0 end
if ARGV[n + 2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if #ARGV > n + 2 then redis.call('HSET', KEYS[1], unpack(ARGV, n + 3)) end
return 1
"""

# A late progress write (a worker past its lease) must not recreate a deleted job as a stub,
# nor, when ARGV[1] names the lease's owner, land after another worker has taken the lease.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _encode(values: Mapping[str, Any]) -> dict[Any, Any]:
    return {k: json.dumps(v) for k, v in values.items()}


class RedisJobStore(JobStore):
    """Each job is a hash of JSON-encoded fields, so single fields (progress, state) update in place."""

    def __init__(self, url: str, namespace: str) -> None:
        self._r = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30, decode_responses=True
        )
        self._ns = namespace
        self._transition = self._r.register_script(_TRANSITION)
        self._renew = self._r.register_script(_RENEW)
        self._update = self._r.register_script(_UPDATE)
        self._release = self._r.register_script(_RELEASE)

    def _job(self, job_id: str) -> str:
        return f"{self._ns}:jobrec:{job_id}"

    def _lease(self, job_id: str) -> str:
        return f"{self._ns}:joblease:{job_id}"

    def _index(self) -> str:
        return f"{self._ns}:jobindex"

    def _idem(self, key: str) -> str:
        return f"{self._ns}:idempotency:{idempotency_digest(key)}"

    def create(self, record: JobRecord) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._job(record.job_id), mapping=_encode(record.to_dict()))
        pipe.zadd(self._index(), {record.job_id: time.time()})
        pipe.execute()

    @staticmethod
    def _decode(raw: Mapping[str, str]) -> JobRecord | None:
        if not raw:
            return None
        return JobRecord.from_dict({k: json.loads(v) for k, v in raw.items()})

    def get(self, job_id: str) -> JobRecord | None:
        return self._decode(cast(dict[str, str], self._r.hgetall(self._job(job_id))))

    def list(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        ids = cast(list[str], self._r.zrevrange(self._index(), 0, -1))
        if state is not None:
            pipe = self._r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(self._job(job_id), "state")
            wanted = json.dumps(state)
            ids = [job_id for job_id, s in zip(ids, pipe.execute(), strict=True) if s == wanted]
        ids = ids[:limit]
        pipe = self._r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._job(job_id))
        return [rec for raw in pipe.execute() if (rec := self._decode(raw)) is not None]

    def delete(self, job_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._job(job_id), self._lease(job_id))
        pipe.zrem(self._index(), job_id)
        pipe.execute()

    def update(self, job_id: str, *, lease_owner: str | None = None, **values: Any) -> bool:
        args = [item for pair in _encode(values).items() for item in pair]
        if not args:
            return False
        return bool(self._update(keys=[self._job(job_id), self._lease(job_id)], args=[lease_owner or "", *args]))

    def transition(
        self, job_id: str, allowed: Collection[str], *, require_no_lease: bool = False, **values: Any
    ) -> JobRecord | None:
        args: list[str] = [
            str(len(allowed)),
            *(json.dumps(s) for s in allowed),
            "1" if require_no_lease else "0",
        ]
        for k, v in _encode(values).items():
            args += [k, v]
        if self._transition(keys=[self._job(job_id), self._lease(job_id)], args=args) != 1:
            return None
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        raw = self._r.hget(self._job(job_id), "cancel_requested")
        return bool(raw is not None and json.loads(cast(str, raw)))

    def incr_attempts(self, job_id: str) -> int:
        return int(self._r.hincrby(self._job(job_id), "attempts", 1))

    def acquire_lease(self, job_id: str, owner: str, ttl_s: float) -> bool:
        return bool(self._r.set(self._lease(job_id), owner, nx=True, px=int(ttl_s * 1000)))

    def renew_lease(self, job_id: str, owner: str, ttl_s: float) -> bool:
        return bool(self._renew(keys=[self._lease(job_id)], args=[owner, int(ttl_s * 1000)]))

    def release_lease(self, job_id: str, owner: str) -> None:
        self._release(keys=[self._lease(job_id)], args=[owner])

    def lease_holder(self, job_id: str) -> str | None:
        return cast(str | None, self._r.get(self._lease(job_id)))

    def reserve_idempotency_key(self, key: str, job_id: str, fingerprint: str) -> tuple[str, str] | None:
        value = json.dumps({"job_id": job_id, "fingerprint": fingerprint})
        for _ in range(3):
            if self._r.set(self._idem(key), value, nx=True, ex=IDEMPOTENCY_TTL_S):
                return None
            existing = self.lookup_idempotency_key(key)
            if existing is not None:
                return existing
        raise RuntimeError("idempotency key kept changing while it was being reserved")

    def lookup_idempotency_key(self, key: str) -> tuple[str, str] | None:
        raw = self._r.get(self._idem(key))
        if raw is None:
            return None
        data = json.loads(cast(str, raw))
        return data["job_id"], data["fingerprint"]

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        existing = self.lookup_idempotency_key(key)
        if existing is not None and existing[0] == job_id:
            self._r.delete(self._idem(key))

    @contextlib.contextmanager
    def exclusive(self, name: str, timeout_s: float = 10.0) -> Iterator[None]:
        key = f"{self._ns}:lock:{hashlib.sha256(name.encode()).hexdigest()}"
        token = os.urandom(16).hex()
        deadline = time.monotonic() + timeout_s
        # The expiry frees the lock if its holder dies; holders keep it for milliseconds.
        while not self._r.set(key, token, nx=True, px=int(timeout_s * 1000)):
            if time.monotonic() > deadline:
                raise LockBusy(f"lock {name!r} is busy")
            time.sleep(0.005)
        try:
            yield
        finally:
            self._release(keys=[key], args=[token])

    def ping(self) -> None:
        self._r.ping()

    def close(self) -> None:
        self._r.close()


# ---------------------------------------------------------------------------------------------
# Files


class FileJobStore(JobStore):
    """One JSON file per job, replaced atomically; read-modify-write steps hold an flock.

    For the single-machine default (no broker server): the API and its worker share a disk.
    """

    def __init__(self, folder: Path) -> None:
        self._dir = folder
        self._idem_dir = folder / "idempotency"
        self._idem_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = folder / ".lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock belongs to the open file description, so this also excludes other threads of this process.
        with open(self._lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _path(self, job_id: str) -> Path:
        if not is_id(job_id):
            raise ValueError(f"not a valid job id: {job_id!r}")
        return self._dir / f"{job_id}.json"

    def _lease_path(self, job_id: str) -> Path:
        return self._dir / f"{job_id}.lease"

    @staticmethod
    def _write(path: Path, data: Mapping[str, Any], *, durable: bool) -> None:
        with atomic_file(path, "w", durable=durable) as fh:
            json.dump(data, fh)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None

    def create(self, record: JobRecord) -> None:
        with self._locked():
            self._write(self._path(record.job_id), record.to_dict(), durable=True)

    def get(self, job_id: str) -> JobRecord | None:
        if not is_id(job_id):
            return None
        data = self._read(self._path(job_id))
        return JobRecord.from_dict(data) if data is not None else None

    def list(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        records = []
        for path in self._dir.glob("*.json"):
            data = self._read(path)
            if data is not None and (state is None or data.get("state") == state):
                records.append(JobRecord.from_dict(data))
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records[:limit]

    def delete(self, job_id: str) -> None:
        with self._locked():
            for path in (self._path(job_id), self._lease_path(job_id)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def update(self, job_id: str, *, lease_owner: str | None = None, **values: Any) -> bool:
        with self._locked():
            data = self._read(self._path(job_id))
            if data is None:
                return False
            if lease_owner is not None and (self._lease(job_id) or {}).get("owner") != lease_owner:
                return False
            data.update(values)
            self._write(self._path(job_id), data, durable=False)
            return True

    def _lease(self, job_id: str) -> dict[str, Any] | None:
        lease = self._read(self._lease_path(job_id))
        if lease is None or lease["until"] < time.time():
            return None
        return lease

    def transition(
        self, job_id: str, allowed: Collection[str], *, require_no_lease: bool = False, **values: Any
    ) -> JobRecord | None:
        with self._locked():
            data = self._read(self._path(job_id))
            if data is None or data.get("state") not in allowed:
                return None
            if require_no_lease and self._lease(job_id) is not None:
                return None
            data.update(values)
            self._write(self._path(job_id), data, durable=True)
            return JobRecord.from_dict(data)

    def cancel_requested(self, job_id: str) -> bool:
        data = self._read(self._path(job_id))
        return bool(data and data.get("cancel_requested"))

    def incr_attempts(self, job_id: str) -> int:
        with self._locked():
            data = self._read(self._path(job_id))
            if data is None:
                raise KeyError(job_id)
            data["attempts"] = int(data.get("attempts", 0)) + 1
            self._write(self._path(job_id), data, durable=True)
            return int(data["attempts"])

    def acquire_lease(self, job_id: str, owner: str, ttl_s: float) -> bool:
        with self._locked():
            if self._lease(job_id) is not None:
                return False
            self._write(self._lease_path(job_id), {"owner": owner, "until": time.time() + ttl_s}, durable=False)
            return True

    def renew_lease(self, job_id: str, owner: str, ttl_s: float) -> bool:
        with self._locked():
            lease = self._lease(job_id)
            if lease is None or lease["owner"] != owner:
                return False
            self._write(self._lease_path(job_id), {"owner": owner, "until": time.time() + ttl_s}, durable=False)
            return True

    def release_lease(self, job_id: str, owner: str) -> None:
        with self._locked():
            lease = self._read(self._lease_path(job_id))
            if lease is not None and lease["owner"] == owner:
                self._lease_path(job_id).unlink()

    def lease_holder(self, job_id: str) -> str | None:
        lease = self._lease(job_id)
        return str(lease["owner"]) if lease is not None else None

    def _idem_path(self, key: str) -> Path:
        return self._idem_dir / f"{idempotency_digest(key)}.json"

    def reserve_idempotency_key(self, key: str, job_id: str, fingerprint: str) -> tuple[str, str] | None:
        with self._locked():
            existing = self.lookup_idempotency_key(key)
            if existing is not None:
                return existing
            self._write(self._idem_path(key), {"job_id": job_id, "fingerprint": fingerprint}, durable=True)
            return None

    def lookup_idempotency_key(self, key: str) -> tuple[str, str] | None:
        data = self._read(self._idem_path(key))
        if data is None:
            return None
        return str(data["job_id"]), str(data["fingerprint"])

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        with self._locked():
            existing = self.lookup_idempotency_key(key)
            if existing is not None and existing[0] == job_id:
                self._idem_path(key).unlink()

    @contextlib.contextmanager
    def exclusive(self, name: str, timeout_s: float = 10.0) -> Iterator[None]:
        # A lock file per name (not the records' own lock, which the step itself takes).
        path = self._dir / f".lock-{hashlib.sha256(name.encode()).hexdigest()[:32]}"
        deadline = time.monotonic() + timeout_s
        with open(path, "a+b") as fh:
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockBusy(f"lock {name!r} is busy") from None
                    time.sleep(0.005)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def ping(self) -> None:
        if not os.access(self._dir, os.R_OK | os.W_OK):
            raise OSError(f"job folder {self._dir} is not readable and writable")


def open_job_store(settings: WorkerSettings, layout: StoreLayout) -> JobStore:
    if settings.uses_redis:
        assert settings.broker_url is not None
        return RedisJobStore(settings.broker_url, settings.namespace)
    layout.jobs.mkdir(parents=True, exist_ok=True)
    return FileJobStore(layout.jobs)
