"""word2vec CBOW with negative sampling: training, storage, import/export and queries.

A pure library: no web framework or task-queue imports live here.
"""

from model.errors import (
    CorpusError,
    DeviceError,
    EmptyVocabularyError,
    ModelFormatError,
    ParameterError,
    TrainingCancelled,
    UnknownWordError,
    W2VError,
)
from model.evaluation import AnalogyResult, PairsResult, evaluate_analogies, evaluate_word_pairs
from model.formats import load_word2vec_format, save_word2vec_format
from model.store import Model, load_model, save_model
from model.trainer import Progress, TrainConfig, train
from model.vectors import Vectors

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
