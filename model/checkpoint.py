"""Per-epoch training checkpoints, so an interrupted job resumes instead of starting over."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.atomic import atomic_file

CHECKPOINT_FILE = "checkpoint.npz"

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    fingerprint: str  # config + vocabulary + corpus size: resume only into the very same run
    epochs_done: int
    syn0: np.ndarray
    syn1neg: np.ndarray
    elapsed_s: float
    epoch_losses: list[float]


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / CHECKPOINT_FILE) as fh:
        np.savez(
            fh,
            fingerprint=np.array(ckpt.fingerprint),
            epochs_done=np.array(ckpt.epochs_done),
            syn0=ckpt.syn0,
            syn1neg=ckpt.syn1neg,
            elapsed_s=np.array(ckpt.elapsed_s),
            epoch_losses=np.asarray(ckpt.epoch_losses, dtype=np.float64),
        )


def load_checkpoint(directory: Path, fingerprint: str) -> Checkpoint | None:
    """The checkpoint in `directory` if it belongs to this run; anything else is ignored."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint:
                log.warning(
                    "%s belongs to a run with other settings or another corpus: starting over (it will "
                    "be replaced at the end of the first epoch)", path,
                )
                return None
            return Checkpoint(
                fingerprint=fingerprint,
                epochs_done=int(data["epochs_done"]),
                syn0=np.array(data["syn0"], dtype=np.float32),
                syn1neg=np.array(data["syn1neg"], dtype=np.float32),
                elapsed_s=float(data["elapsed_s"]),
                epoch_losses=[float(x) for x in data["epoch_losses"]],
            )
    except (OSError, ValueError, KeyError):
        # A checkpoint that cannot be read is worth less than a clean restart.
        return None


def remove_checkpoint(directory: Path) -> None:
    """Remove a finished run's checkpoint (only that file: the folder may hold others)."""
    with contextlib.suppress(FileNotFoundError):
        (directory / CHECKPOINT_FILE).unlink()
