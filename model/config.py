"""Training hyperparameters and the progress record shared by the CLI and the service."""

from __future__ import annotations

import hashlib
import json
import math
import operator
from dataclasses import asdict, dataclass, fields
from typing import Any

from model.backend import DEVICES
from model.errors import ParameterError

ENGINES = ("auto", "hogwild", "minibatch")

# Bounds keep the worst allowed job inside memory and time on one node; the service
# re-states them in its request schema.
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "vector_size": (1, 1000),
    "window": (1, 50),
    "negative": (1, 50),
    "min_count": (1, 1_000_000),
    "epochs": (1, 100),
    "threads": (0, 256),
    "checkpoint_every": (0, 100),
    "min_n": (1, 20),
    "max_n": (0, 20),
    "buckets": (1, 10_000_000),
}
SUBWORD_FIELDS = ("min_n", "max_n", "buckets")


@dataclass(frozen=True)
class TrainConfig:
    vector_size: int = 100
    window: int = 5
    negative: int = 5
    ns_exponent: float = 0.75
    min_count: int = 5
    max_vocab: int | None = None
    sample: float = 1e-3
    epochs: int = 5
    alpha: float = 0.05  # word2vec.c's CBOW default
    min_alpha: float = 0.0001
    batch_words: int | None = None  # words per unit of work; None: the engine's default
    threads: int = 0  # 0: one per CPU core
    device: str = "cpu"
    engine: str = "auto"  # hogwild (per-word SGD: Numba on CPU, a CUDA kernel on GPU) or minibatch (array ops)
    seed: int = 1
    lowercase: bool = False
    checkpoint_every: int = 1  # epochs between checkpoints when a checkpoint dir is given; 0: never
    # Character n-grams of min_n..max_n characters (fastText's subwords, model/subwords.py),
    # hashed into `buckets` rows; max_n 0: none, plain word2vec.
    min_n: int = 3
    max_n: int = 0
    buckets: int = 2_000_000

    def validate(self) -> TrainConfig:
        # NumPy integers (from a sweep over np.arange, say) are taken as the ints they are, and
        # stored as int so the config stays JSON.
        for name in (*_INT_BOUNDS, "max_vocab", "batch_words", "seed"):
            value = getattr(self, name)
            if not isinstance(value, bool | int | None) and hasattr(value, "__index__"):
                object.__setattr__(self, name, operator.index(value))
        for name, (lo, hi) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ParameterError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if self.max_vocab is not None and (
            isinstance(self.max_vocab, bool) or not isinstance(self.max_vocab, int) or self.max_vocab < 2
        ):
            # One word has nothing to be compared with.
            raise ParameterError(f"max_vocab must be an integer of at least 2, or None, got {self.max_vocab!r}")
        if self.batch_words is not None and (
            isinstance(self.batch_words, bool)
            or not isinstance(self.batch_words, int)
            or not 1 <= self.batch_words <= 10_000_000
        ):
            raise ParameterError(f"batch_words must be an integer in [1, 10000000], got {self.batch_words!r}")
        if self.max_n and self.max_n < self.min_n:
            raise ParameterError(
                f"max_n ({self.max_n}) must be 0 (no subwords) or at least min_n ({self.min_n})"
            )
        _check_float("sample", self.sample, 0.0, 1.0, low_open=False)
        _check_float("alpha", self.alpha, 0.0, 1.0, low_open=True)
        _check_float("min_alpha", self.min_alpha, 0.0, 1.0, low_open=False)
        _check_float("ns_exponent", self.ns_exponent, -2.0, 2.0, low_open=False)
        if self.min_alpha > self.alpha:
            raise ParameterError(f"min_alpha ({self.min_alpha}) must not exceed alpha ({self.alpha})")
        if self.device not in DEVICES:
            raise ParameterError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.engine not in ENGINES:
            raise ParameterError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ParameterError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        return self

    @property
    def subwords(self) -> bool:
        return self.max_n > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"unknown training parameter(s): {', '.join(unknown)}")
        return cls(**data)

    def fingerprint(self) -> str:
        """Identity of what the weights depend on; threads and device may change on resume."""
        d = self.to_dict()
        for volatile in ("threads", "device", "checkpoint_every"):
            d.pop(volatile)
        if not self.max_n:  # unused: a plain run keeps the fingerprint it had before they existed
            for name in SUBWORD_FIELDS:
                d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _check_float(name: str, value: float, lo: float, hi: float, *, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    below = value <= lo if low_open else value < lo
    if below or value > hi:
        bracket = "(" if low_open else "["
        raise ParameterError(f"{name} must be in {bracket}{lo}, {hi}], got {value!r}")


@dataclass
class Progress:
    epoch: int  # 1-based epoch in progress (equals `epochs` when done)
    epochs: int
    words_done: int  # raw corpus words processed, all epochs together
    words_total: int
    words_per_sec: float
    loss: float | None  # mean loss per trained word since the previous report
    alpha: float
    eta_s: float | None
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
