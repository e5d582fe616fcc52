"""word2vec CBOW with negative sampling: training, storage, import/export and queries.

A pure library: no web framework or task-queue imports live here.
"""

from typing import TYPE_CHECKING, Any

# First, so that it can point Numba's cache somewhere writable before any module imports Numba.
from model import numba_cache  # noqa: F401
from model.config import Progress, TrainConfig
from model.errors import (
    CorpusError,
    DeviceError,
    EmptyVocabularyError,
    ModelFormatError,
    ParameterError,
    TrainingCancelled,
    TrainingDiverged,
    UnknownWordError,
    W2VError,
)
from model.evaluation import AnalogyResult, PairsResult, evaluate_analogies, evaluate_word_pairs
from model.formats import load_word2vec_format, save_word2vec_format
from model.store import Model, load_model, save_model
from model.vectors import Vectors

if TYPE_CHECKING:
    from model.trainer import train


def __getattr__(name: str) -> Any:
    # The trainer pulls in Numba and its compiled kernels: loaded on first use of `train`, so
    # that the query side, the CLI's other commands and the tokenising workers start light.
    if name == "train":
        from model.trainer import train

        return train
    raise AttributeError(f"module 'model' has no attribute {name!r}")


__all__ = [
    "AnalogyResult",
    "CorpusError",
    "DeviceError",
    "EmptyVocabularyError",
    "Model",
    "ModelFormatError",
    "PairsResult",
    "ParameterError",
    "Progress",
    "TrainConfig",
    "TrainingCancelled",
    "TrainingDiverged",
    "UnknownWordError",
    "Vectors",
    "W2VError",
    "evaluate_analogies",
    "evaluate_word_pairs",
    "load_model",
    "load_word2vec_format",
    "save_model",
    "save_word2vec_format",
    "train",
]
