"""Vocabulary: which words are trained, their counts, and the corpus re-encoded to them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from model.corpus import SPILL_AFTER_TOKENS, EncodedCorpus, TokenSink
from model.errors import EmptyVocabularyError


@dataclass
class Vocab:
    words: list[str]  # most frequent first, so "the first N rows" is a frequency cut-off
    counts: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.words)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update("\n".join(self.words).encode("utf-8"))
        h.update(np.ascontiguousarray(self.counts, dtype=np.int64).tobytes())
        return h.hexdigest()


@dataclass
class TrainingCorpus:
    """In-vocabulary token ids grouped into sentences, ready for the trainer."""

    tokens: np.ndarray  # int32 vocab ids, out-of-vocabulary words removed
    offsets: np.ndarray  # int64, len n_sentences + 1: sentence i is tokens[offsets[i]:offsets[i+1]]
    raw_offsets: np.ndarray  # int64, the same boundaries counted in raw corpus words (OOV included)

    @property
    def n_words(self) -> int:
        return int(self.tokens.size)

    @property
    def n_raw_words(self) -> int:
        return int(self.raw_offsets[-1])


def build_vocab(
    encoded: EncodedCorpus, *, min_count: int, max_vocab: int | None, min_words: int = 1
) -> tuple[Vocab, np.ndarray]:
    """Return the vocabulary and, per vocabulary word, its id in `encoded`; EmptyVocabularyError
    when it would hold fewer than `min_words` words."""
    keep = np.flatnonzero(encoded.counts >= min_count)
    # Stable sort keeps first-appearance order among equal counts, so the result is deterministic.
    order = keep[np.argsort(-encoded.counts[keep], kind="stable")]
    if max_vocab is not None:
        order = order[:max_vocab]
    if order.size == 0:
        raise EmptyVocabularyError(
            f"no word occurs at least min_count={min_count} times "
            f"(the corpus has {len(encoded.words)} distinct words, the most frequent occurs "
            f"{int(encoded.counts.max(initial=0))} times); lower min_count or use a larger corpus"
            f"{_unsplit_hint(encoded.words)}"
        )
    if order.size < min_words:
        # Nothing to compare it with: every query would answer nothing.
        raise EmptyVocabularyError(
            f"only {', '.join(repr(encoded.words[i][:40]) for i in order)} "
            f"{'is' if order.size == 1 else 'are'} in the vocabulary (min_count={min_count}"
            f"{'' if max_vocab is None else f', max_vocab={max_vocab}'}); a model needs at least {min_words} words"
            f"{_unsplit_hint(encoded.words)}"
        )
    vocab = Vocab(words=[encoded.words[i] for i in order], counts=encoded.counts[order].copy())
    return vocab, order


# Words of this many characters on average, across the distinct words, mean text that is
# not split into words by spaces (English averages under 10, even counting rare words).
_UNSPLIT_MEAN_CHARS = 25


def _unsplit_hint(words: list[str]) -> str:
    sample = words[:: max(1, len(words) // 1000)]
    if not sample or sum(map(len, sample)) / len(sample) < _UNSPLIT_MEAN_CHARS:
        return ""
    return (
        f". Its words average {sum(map(len, sample)) / len(sample):.0f} characters: is the text split into words "
        "by spaces? Chinese, Japanese or Thai text needs a word segmenter first (jieba, MeCab, PyThaiNLP)"
    )


def apply_vocab(
    encoded: EncodedCorpus, source_ids: np.ndarray, *, chunk: int = 1 << 20, in_place: bool = False
) -> TrainingCorpus:
    """Re-encode to vocabulary ids, dropping out-of-vocabulary words.

    Works through the token stream in chunks so the temporaries stay small even when the
    stream is a memory-mapped corpus larger than RAM. `in_place=True` rewrites `encoded`'s
    own token array where it can (an in-memory array), so the corpus is never held twice:
    `encoded.tokens` is then consumed.
    """
    remap = np.full(len(encoded.words), -1, dtype=np.int32)
    remap[source_ids] = np.arange(source_ids.size, dtype=np.int32)
    raw_offsets = np.zeros(encoded.lengths.size + 1, dtype=np.int64)
    np.cumsum(encoded.lengths, out=raw_offsets[1:])
    offsets = np.empty_like(raw_offsets)
    tokens = encoded.tokens
    rewrite = (
        in_place and not isinstance(tokens, np.memmap) and tokens.flags.writeable and tokens.flags.owndata
    )
    sink = None if rewrite else TokenSink(spill_after=SPILL_AFTER_TOKENS)
    kept_before = 0
    n = encoded.n_words
    for a in range(0, max(n, 1), chunk):
        b = min(a + chunk, n)
        ids = remap[tokens[a:b]]
        keep = ids >= 0
        # Kept tokens before each sentence start that falls in [a, b): a prefix sum lookup.
        prefix = np.zeros(b - a + 1, dtype=np.int64)
        np.cumsum(keep, out=prefix[1:])
        lo, hi = np.searchsorted(raw_offsets, [a, b], side="left")
        offsets[lo:hi] = kept_before + prefix[raw_offsets[lo:hi] - a]
        kept = ids[keep]
        if sink is None:
            # Writes land at or before `a`: on tokens this loop has already read.
            tokens[kept_before : kept_before + kept.size] = kept
        else:
            sink.append(kept)
        kept_before += int(prefix[-1])
    # Sentences that start at the very end (trailing empty lines) and the final boundary.
    tail = np.searchsorted(raw_offsets, n, side="left")
    offsets[tail:] = kept_before
    if sink is None:
        tokens.resize(kept_before, refcheck=False)  # only `encoded` shares it, and is consumed
        return TrainingCorpus(tokens=tokens, offsets=offsets, raw_offsets=raw_offsets)
    return TrainingCorpus(tokens=sink.finish(), offsets=offsets, raw_offsets=raw_offsets)
