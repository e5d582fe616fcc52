"""Errors raised by the library; each message says what the caller should fix."""

from __future__ import annotations

from collections.abc import Container, Iterable


class W2VError(Exception):
    """Base class: every error the library raises on bad input derives from it."""


class CorpusError(W2VError):
    """The corpus is missing, unreadable or empty."""


class EmptyVocabularyError(W2VError):
    """No word survives `min_count`, so there is nothing to train."""


class ParameterError(W2VError, ValueError):
    """A hyperparameter or argument is out of its allowed range."""


class ModelFormatError(W2VError):
    """A model directory or word2vec file is malformed, truncated or fails its checksum."""


class DeviceError(W2VError):
    """The requested compute device is not available."""


class TrainingDiverged(W2VError):
    """The loss blew up (usually a learning rate too high for the corpus); no model is kept."""


class TrainingCancelled(W2VError):
    """Training stopped because the caller asked it to."""


class UnknownWordError(W2VError, KeyError):
    """One or more query words are not in the vocabulary.

    Given the vocabulary (`known`), a word whose other casing is in it is suggested: the usual
    miss is "Paris" asked of a model trained lower-cased.
    """

    def __init__(self, words: Iterable[str], known: Container[str] | None = None, model_id: str | None = None):
        self.words = list(dict.fromkeys(words))
        self.model_id = model_id  # which model was asked, where a caller knows it
        self.suggestions: dict[str, str] = {}
        if known is not None:
            for word in self.words:
                if not isinstance(word, str):
                    continue
                other = next(
                    (v for v in (word.lower(), word.capitalize(), word.upper()) if v != word and v in known), None
                )
                if other is not None:
                    self.suggestions[word] = other
        vocabulary = "vocabulary" if model_id is None else f"the vocabulary of model {model_id}"
        message = f"not in {vocabulary}: {', '.join(repr(w) for w in self.words)}"
        if self.suggestions:
            message += f" (did you mean {', '.join(repr(v) for v in self.suggestions.values())}?)"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])
