"""Corpus reading, vocabulary and the token stream, in memory and spilled to disk."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import model.trainer
from model import TrainConfig, train
from model.corpus import encode, iter_sentences
from model.vocab import apply_vocab, build_vocab


def _reference(sentences: list[list[str]], min_count: int) -> tuple[list[str], list[list[str]]]:
    """Vocabulary (most frequent first, ties by first appearance) and the filtered sentences."""
    counts: dict[str, int] = {}
    for s in sentences:
        for w in s:
            counts[w] = counts.get(w, 0) + 1
    order = sorted((w for w in counts if counts[w] >= min_count), key=lambda w: -counts[w])
    keep = set(order)
    return order, [[w for w in s if w in keep] for s in sentences]


@pytest.mark.parametrize("spill_after", [10**9, 1, 7])
def test_encoded_corpus_matches_a_plain_python_reference(spill_after: int) -> None:
    rng = np.random.default_rng(spill_after)
    for _ in range(100):
        sentences = [
            [f"w{int(x)}" for x in rng.zipf(1.6, size=rng.integers(0, 25))] for _ in range(rng.integers(1, 20))
        ]
        if not any(sentences):
            continue
        encoded = encode(sentences, spill_after=spill_after)
        words, filtered = _reference(sentences, 2)
        if not words:
            continue
        vocab, ids = build_vocab(encoded, min_count=2, max_vocab=None)
        assert vocab.words == words
        corpus = apply_vocab(encoded, ids, chunk=int(rng.integers(1, 30)))
        got = [
            [vocab.words[i] for i in corpus.tokens[corpus.offsets[k] : corpus.offsets[k + 1]]]
            for k in range(len(sentences))
        ]
        assert got == filtered
        assert corpus.n_raw_words == sum(len(s) for s in sentences)


def test_large_token_stream_is_memory_mapped() -> None:
    encoded = encode([["a", "b"]] * 100, spill_after=50)
    assert isinstance(encoded.tokens, np.memmap)
    np.testing.assert_array_equal(np.asarray(encoded.tokens), np.tile([0, 1], 100))


def test_spilled_corpus_trains_identically(lee_text: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(epochs=1, threads=1, seed=5)
    in_memory = train(lee_text, cfg)
    monkeypatch.setattr(model.trainer, "encode", functools.partial(encode, spill_after=1000))
    spilled = train(lee_text, cfg)
    np.testing.assert_array_equal(in_memory.vectors.vectors, spilled.vectors.vectors)


def test_iterable_of_strings_is_rejected() -> None:
    from model import CorpusError

    with pytest.raises(CorpusError, match="lists of tokens"):
        list(iter_sentences(["a whole line as one string"]))


def test_undecodable_bytes_do_not_abort(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"caf\xe9 ok ok\nok\n")
    assert list(iter_sentences(path)) == [["caf\ufffd", "ok", "ok"], ["ok"]]


def test_truncated_gzip_is_a_corpus_error(tmp_path: Path) -> None:
    import gzip

    from model import CorpusError

    data = gzip.compress(b"word " * 100000)
    path = tmp_path / "c.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="cannot read"):
        list(iter_sentences(path))
