"""API keys, who owns what, and per-key limits.

A key is never stored: what identifies its holder (the *owner* recorded on corpora, jobs and
models) is the SHA-256 of the key. Keys are long random secrets, so an unsalted hash is
enough to make the stored value useless for logging in, and it lets every replica and worker
derive the same owner from the same key without sharing anything else.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

Owner = str | None  # None: API keys are off, everything is shared


def key_owner(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def visible(record_owner: object, caller: Owner) -> bool:
    """Whether `caller` may see something owned by `record_owner`.

    With keys off (caller None) everything is visible. With keys on, a caller sees its own
    things and things made while keys were off (no owner), which were shared by everyone
    already; anything another key made is as good as absent (404, not 403, so ids do not
    leak whether they exist).
    """
    return caller is None or record_owner is None or record_owner == caller


def owned_by(meta: Mapping[str, Any], caller: Owner) -> bool:
    return visible(meta.get("owner"), caller)


class KeyRing:
    """The configured keys, checked in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Comparing fixed-length digests keeps the comparison time independent of the key length too.
        self._digests = [(bytes.fromhex(key_owner(k)), key_owner(k)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner_of(self, supplied: str) -> str | None:
        """The owner id of a valid key, or None; every configured key is compared, match or not."""
        given = hashlib.sha256(supplied.encode("utf-8")).digest()
        found = None
        for digest, owner in self._digests:
            if secrets.compare_digest(given, digest):
                found = owner
        return found


class RateLimiter:
    """A token bucket per owner: `rate` requests per second on average, `burst` at once.

    Kept in the API process: with N replicas a key gets up to N times the rate, which bounds
    abuse without a shared counter on every request's path.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, owner: str) -> float | None:
        """Take one token; None if allowed, else the seconds until a token is available."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(owner, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[owner] = (tokens - 1.0, now)
                return None
            self._buckets[owner] = (tokens, now)
            return (1.0 - tokens) / self.rate
