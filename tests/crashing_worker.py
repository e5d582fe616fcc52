"""`w2v worker`, except that every training job kills its process (SIGKILL) as it starts.

Stands in for a job that crashes its worker every time (a native crash, the OOM killer) in
tests/test_faults.py: the worker is real, only the training call is replaced.
Run as `python -m tests.crashing_worker [w2v worker options]`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import worker.runner
from app.cli import main


def _crash(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


worker.runner.train = _crash  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
