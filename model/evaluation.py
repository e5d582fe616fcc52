"""Intrinsic evaluation with the same numbers as gensim's `KeyedVectors.evaluate_*`.

Matching gensim exactly matters more than any local improvement: these scores are compared
with published gensim results. Deliberate differences are limited to error handling
(malformed lines are errors here, where gensim logs and skips them) and speed (analogy
questions are answered in batched matrix products instead of one query at a time).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

import numpy as np

from model.corpus import DECOMPRESS_ERRORS, open_bytes
from model.errors import CorpusError, ModelFormatError, ParameterError
from model.vectors import Method, Vectors

__all__ = [
    "AnalogyQuestions",
    "AnalogyResult",
    "PairsResult",
    "WordPairs",
    "evaluate_analogies",
    "evaluate_word_pairs",
    "read_analogies",
    "read_word_pairs",
]

PathLike: TypeAlias = str | os.PathLike[str]

# gensim's name for the aggregate section, kept so reports line up with gensim logs.
TOTAL_SECTION = "Total accuracy"


@dataclass
class AnalogyResult:
    """Analogy accuracy; questions with a word outside the searched vocabulary are `skipped`."""

    accuracy: float
    correct: int
    total: int
    skipped: int
    #: One dict per ": section" of the file (name, correct, total, accuracy), in file order,
    #: followed by gensim's "Total accuracy" aggregate.
    sections: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairsResult:
    """Correlation of model similarities with human judgements.

    A correlation is NaN when either side is constant, as with scipy.
    """

    pearson: float
    spearman: float
    pairs: int
    oov: int
    #: Percentage (0-100) of pairs skipped for out-of-vocabulary words, as gensim reports it.
    oov_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AnalogyQuestions:
    """An analogy file, read: its ": section" names and (section index, a, b, c, expected)."""

    path: str
    sections: list[str]
    questions: list[tuple[int, str, str, str, str]]


@dataclass
class WordPairs:
    """A word-pair file, read: (word1, word2, human score) per pair."""

    path: str
    pairs: list[tuple[str, str, float]]


def _lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Lines of a plain, gzip, bzip2 or xz text file; a bad file is a ModelFormatError, a
    missing one a FileNotFoundError (as in gensim)."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "evaluation file not found", str(path))
    try:
        f = open_bytes(path, what="evaluation")
    except CorpusError as exc:
        raise ModelFormatError(str(exc)) from None
    with f:
        line_no = 0
        try:
            for line_no, raw in enumerate(f, start=1):
                try:
                    yield line_no, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ModelFormatError(
                        f"{path}: line {line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
                    ) from None
        except DECOMPRESS_ERRORS as exc:
            raise ModelFormatError(f"{path}: cannot read it after line {line_no}: {exc}") from None


def _ok_vocab(vectors: Vectors, restrict_vocab: int, case_insensitive: bool) -> dict[str, int]:
    """Searchable words by lookup key; with case folding the first (most frequent) variant
    of a word wins, as in gensim."""
    if restrict_vocab < 1:
        raise ParameterError(f"restrict_vocab must be at least 1, got {restrict_vocab}")
    ok: dict[str, int] = {}
    for i, word in enumerate(vectors.words[:restrict_vocab]):
        ok.setdefault(word.upper() if case_insensitive else word, i)
    return ok


def read_analogies(path: PathLike) -> AnalogyQuestions:
    """Read a questions-words.txt style file; a malformed one is a ModelFormatError."""
    section_names: list[str] = []
    questions: list[tuple[int, str, str, str, str]] = []
    for line_no, line in _lines(path):
        if line.startswith(": "):
            section_names.append(line.lstrip(": ").strip())  # gensim's exact name cleanup
            continue
        tokens = line.split()
        if not tokens:
            continue
        if not section_names:
            raise ModelFormatError(f"{path}: line {line_no}: question before the first ': section' line")
        if len(tokens) != 4:
            raise ModelFormatError(f"{path}: line {line_no}: expected 4 words, found {len(tokens)}")
        a, b, c, expected = tokens
        questions.append((len(section_names) - 1, a, b, c, expected))
    if not questions:
        raise ModelFormatError(f"{path}: no analogy questions found")
    return AnalogyQuestions(str(path), section_names, questions)


def evaluate_analogies(
    vectors: Vectors,
    path: PathLike | AnalogyQuestions,
    *,
    restrict_vocab: int = 300000,
    case_insensitive: bool = True,
    method: Method = "add",
) -> AnalogyResult:
    """Accuracy on "a b c d" questions (a is to b as c is to d), like gensim's
    `evaluate_word_analogies`: d must be the best match for b + c - a among the first
    `restrict_vocab` words, the question words themselves excluded.

    `method="mul"` ranks with 3CosMul instead of 3CosAdd (gensim only offers the latter).
    `path` may also be the file as `read_analogies` returned it.
    """
    ok_vocab = _ok_vocab(vectors, restrict_vocab, case_insensitive)
    read = path if isinstance(path, AnalogyQuestions) else read_analogies(path)
    section_names = read.sections
    questions = read.questions
    if case_insensitive:
        questions = [(s, a.upper(), b.upper(), c.upper(), d.upper()) for s, a, b, c, d in questions]

    answerable = [q for q in questions if all(w in ok_vocab for w in q[1:])]
    words = vectors.words
    # A question with an all-zero vector among a, b, c has no answer to search for (gensim
    # ranks NaN scores); it counts as answered wrongly.
    searchable = [all(vectors.vectors[ok_vocab[w]].any() for w in q[1:4]) for q in answerable]
    batch = [
        ([words[ok_vocab[b]], words[ok_vocab[c]]], [words[ok_vocab[a]]])
        for (_, a, b, c, _), ok in zip(answerable, searchable, strict=True)
        if ok
    ]
    # gensim asks for 5 neighbours and takes the first that is not a case variant of a question
    # word; asking for the same 5 reproduces its answer even in that corner case.
    found = iter(vectors.most_similar_batch(batch, topn=5, restrict_vocab=restrict_vocab, method=method))
    neighbours = [next(found) if ok else [] for ok in searchable]

    correct = [0] * len(section_names)
    total = [0] * len(section_names)
    for (section, a, b, c, expected), sims in zip(answerable, neighbours, strict=True):
        ignore = {a, b, c}
        predicted = None
        for word, _ in sims:
            predicted = word.upper() if case_insensitive else word
            if predicted in ok_vocab and predicted not in ignore:
                break
        total[section] += 1
        correct[section] += predicted == expected

    sections = [
        {"name": name, "correct": ok, "total": n, "accuracy": ok / n if n else 0.0}
        for name, ok, n in zip(section_names, correct, total, strict=True)
    ]
    n_correct, n_total = sum(correct), sum(total)
    accuracy = n_correct / n_total if n_total else 0.0
    sections.append({"name": TOTAL_SECTION, "correct": n_correct, "total": n_total, "accuracy": accuracy})
    return AnalogyResult(
        accuracy=accuracy,
        correct=n_correct,
        total=n_total,
        skipped=len(questions) - len(answerable),
        sections=sections,
    )


def read_word_pairs(path: PathLike, *, delimiter: str | None = "\t") -> WordPairs:
    """Read a "word1<delimiter>word2<delimiter>score" file (wordsim353.tsv, simlex999.txt);
    `#` lines are comments, and a first line whose score is not a number is a header
    ("Word 1,Word 2,Human (mean)" in WordSim353's CSV); a malformed file is a ModelFormatError.
    `delimiter=None` takes the first pair line's (past a header): a tab, a comma or runs of
    spaces, whichever splits it into two words and a number."""
    pairs: list[tuple[str, str, float]] = []
    first = True
    for line_no, line in _lines(path):
        if line.startswith("#") or not line.strip():
            continue
        if delimiter is None:
            found = _pair_delimiter(line)
            if found is None and first:
                first = False
                continue  # a header: its score is not a number however it is split
            delimiter = "\t" if found is None else found  # the error below then names a tab
        # "": guessed as spaces, any number of them.
        fields = line.rstrip("\r\n").split(delimiter) if delimiter else line.split()
        if len(fields) != 3:
            raise ModelFormatError(
                f"{path}: line {line_no}: expected 3 fields separated by {delimiter or 'spaces'!r}, "
                f"found {len(fields)}"
            )
        try:
            score = float(fields[2])
        except ValueError:
            if first:
                first = False
                continue
            score = math.nan
        first = False
        if not math.isfinite(score):
            raise ModelFormatError(f"{path}: line {line_no}: score {fields[2].strip()!r} is not a finite number")
        pairs.append((fields[0].strip(), fields[1].strip(), score))
    if not pairs:
        raise ModelFormatError(f"{path}: no word pairs found")
    return WordPairs(str(path), pairs)


def _pair_delimiter(line: str) -> str | None:
    """The delimiter ("" for runs of spaces) that splits `line` into two words and a number."""
    for delimiter in ("\t", ",", ""):
        fields = line.rstrip("\r\n").split(delimiter) if delimiter else line.split()
        if len(fields) == 3 and _is_number(fields[2]):
            return delimiter
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def evaluate_word_pairs(
    vectors: Vectors,
    path: PathLike | WordPairs,
    *,
    delimiter: str | None = "\t",
    restrict_vocab: int = 300000,
    case_insensitive: bool = True,
) -> PairsResult:
    """Pearson and Spearman correlation between cosine similarity and the scores in a
    "word1<delimiter>word2<delimiter>score" file (gensim's `evaluate_word_pairs` with
    `dummy4unknown=False`: pairs with unknown words are skipped and counted in `oov`).
    `path` may also be the file as `read_word_pairs` returned it.
    """
    ok_vocab = _ok_vocab(vectors, restrict_vocab, case_insensitive)
    read = path if isinstance(path, WordPairs) else read_word_pairs(path, delimiter=delimiter)
    words = vectors.words
    gold: list[float] = []
    model: list[float] = []
    oov = 0
    for a, b, score in read.pairs:
        if case_insensitive:
            a, b = a.upper(), b.upper()
        if a not in ok_vocab or b not in ok_vocab:
            oov += 1
            continue
        gold.append(score)
        model.append(vectors.similarity(words[ok_vocab[a]], words[ok_vocab[b]]))
    if len(gold) < 2:
        raise ParameterError(
            f"{read.path}: only {len(gold)} of {len(gold) + oov} pairs have both words among the first "
            f"{restrict_vocab} words of the vocabulary; a correlation needs at least 2"
        )
    x = np.asarray(gold, dtype=np.float64)
    y = np.asarray(model, dtype=np.float64)
    return PairsResult(
        pearson=_pearson(x, y),
        spearman=_pearson(_rank_average(x), _rank_average(y)),
        pairs=len(gold),
        oov=oov,
        oov_ratio=oov / (len(gold) + oov) * 100,
    )


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    # Same steps as scipy.stats.pearsonr (centre, normalise, dot, clip); scipy is only a dev
    # dependency, so it cannot be imported here.
    xm = x - x.mean()
    ym = y - y.mean()
    nx, ny = np.linalg.norm(xm), np.linalg.norm(ym)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(np.clip(np.dot(xm / nx, ym / ny), -1.0, 1.0))


def _rank_average(a: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (scipy.stats.rankdata's default)."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    new_value = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    dense = np.cumsum(new_value)[np.argsort(order, kind="mergesort")]
    bounds = np.r_[np.nonzero(new_value)[0], len(a)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)
