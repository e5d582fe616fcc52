"""Subwords (fastText's character n-grams): hashing as fastText does, training, vectors for
words outside the vocabulary, and keeping them through save, load and resume."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from app.settings import Settings
from model import Model, ParameterError, TrainConfig, TrainingCancelled, UnknownWordError, Vectors, train
from model.errors import ModelFormatError
from model.store import NGRAMS_FILE, load_model
from model.subwords import Subwords, identity_rows, ngram_buckets, training_rows
from tests.test_api import put_model
from worker.storage import StoreLayout

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SUBWORDS = dict(max_n=6, min_n=3, buckets=1_000_000)


def test_ngrams_are_hashed_into_the_buckets_fasttext_uses() -> None:
    from gensim.models.fasttext import ft_ngram_hashes  # gensim's port of fastText's hashing

    words = ["hello", "naïve", "日本語", "a", "ab", "word2vec", "Zürich", "emoji😀s"]
    for min_n, max_n, buckets in ((3, 6, 2_000_000), (1, 3, 1000), (2, 2, 7), (5, 5, 10_000_000)):
        offsets, ids = ngram_buckets(words, min_n, max_n, buckets)
        for i, word in enumerate(words):
            assert sorted(ids[offsets[i] : offsets[i + 1]].tolist()) == sorted(
                ft_ngram_hashes(word, min_n, max_n, buckets)
            ), (word, min_n, max_n)


def test_each_word_trains_its_own_row_then_its_ngrams_rows() -> None:
    words = ["walk", "walked", "walking", "talk"]
    layout = training_rows(words, 3, 6, 1_000_000)
    assert np.all(np.diff(layout.bucket_ids) > 0)
    offsets, ids = ngram_buckets(words, 3, 6, 1_000_000)
    for i in range(len(words)):
        rows = layout.rows[layout.offsets[i] : layout.offsets[i + 1]]
        assert rows[0] == i
        assert sorted(layout.bucket_ids[rows[1:] - len(words)].tolist()) == sorted(ids[offsets[i] : offsets[i + 1]])
    # Shared n-grams ("<wa", "alk", "lk>", ...) are shared rows: fewer rows than n-grams.
    assert layout.bucket_ids.size < ids.size
    plain = identity_rows(3)
    assert plain.rows.tolist() == [0, 1, 2] and plain.n_rows == 3


def untrained_word(sub: Subwords) -> str:
    """A short word none of whose n-grams hashes to a trained bucket, found from the hashes
    alone (not from the lookup under test)."""
    candidates = ("ÞÞ", "ÆÞ", "ÐÞ", "ÞÐ", "ÆÐ")
    untrained = [w for w in candidates
                 if not np.isin(ngram_buckets([w], sub.min_n, sub.max_n, sub.buckets)[1], sub.bucket_ids).any()]
    assert untrained, "every candidate collides with a trained n-gram"
    return untrained[0]


@pytest.fixture(scope="module")
def lee_subwords(lee_text: Path) -> Model:
    return train(lee_text, TrainConfig(seed=1, threads=1, epochs=5, **SUBWORDS))  # type: ignore[arg-type]


def test_words_outside_the_vocabulary_get_vectors_from_their_ngrams(lee_subwords: Model) -> None:
    model = lee_subwords
    v = model.vectors  # type: ignore[attr-defined]
    assert model.meta["training"]["ngram_rows"] == v.subwords.bucket_ids.size > 0  # type: ignore[attr-defined]
    assert "government" in v and "governmentt" not in v and "bombingss" not in v
    # A misspelt word lands by the word it misspells.
    assert "government" in [w for w, _ in v.most_similar("governmentt", topn=5)]
    assert "bombings" in [w for w, _ in v.most_similar("bombingss", topn=5)]
    assert v.similarity("governmentt", "government") > 0.9
    assert v.get_vector("governmentt").shape == (v.vector_size,)
    # A vocabulary word's vector is the mean of its own row and its n-grams' rows, so the
    # out-of-vocabulary route gives a different vector from the stored one, but a close one.
    oov_route = v.subwords.vector("government")
    assert np.dot(v.get_vector("government", norm=True), oov_route / np.linalg.norm(oov_route)) > 0.9
    # A word none of whose n-grams was trained (no hash collision either) is still unknown.
    untrained = untrained_word(v.subwords)
    assert v.has_vector("governmentt") and not v.has_vector(untrained)
    with pytest.raises(UnknownWordError):
        v.most_similar(untrained)
    # Queries mixing vocabulary words and others work as usual; the unseen word is no answer.
    assert "governmentt" not in [w for w, _ in v.most_similar(["government", "governmentt"], topn=20)]
    assert len(v.most_similar_batch(["governmentt", "police"], topn=3)) == 2
    assert v.doesnt_match(["governmentt", "government", "bombings"]) == "bombings"


def test_distance_helpers_take_words_outside_the_vocabulary(lee_subwords: Model) -> None:
    v = lee_subwords.vectors  # type: ignore[attr-defined]
    oov = v.get_vector("governmentt")
    d = v.distances("governmentt", ["government", "bombingss"])
    expected = [1 - np.dot(oov, v.get_vector(w)) / (np.linalg.norm(oov) * np.linalg.norm(v.get_vector(w)))
                for w in ("government", "bombingss")]
    np.testing.assert_allclose(d, expected, atol=1e-6)
    # The misspelling's nearest word is "government" (above), so nothing is closer to it.
    assert v.closer_than("governmentt", "government") == [] and v.rank("governmentt", "government") == 1
    # Seen from "government", its misspelling sits among its nearest words.
    assert v.rank("government", "governmentt") <= 5
    # An unseen w2: every vocabulary word nearer to w1 than its n-gram vector is.
    limit = v.distances("police", ["bombingss"])[0]
    assert v.closer_than("police", "bombingss") == [w for w, d in zip(v.words, v.distances("police"), strict=True)
                                                      if d < limit and w != "police"]
    with pytest.raises(UnknownWordError):
        v.distances("government", [untrained_word(v.subwords)])


def test_subwords_survive_save_and_load(lee_subwords: Model, tmp_path: Path) -> None:
    model = lee_subwords
    model.save(tmp_path / "m")  # type: ignore[attr-defined]
    loaded = load_model(tmp_path / "m")
    assert loaded.meta["subwords"] == {**SUBWORDS, "rows": model.vectors.subwords.bucket_ids.size}  # type: ignore[attr-defined]
    assert loaded.vectors.most_similar("governmentt", topn=5) == model.vectors.most_similar(  # type: ignore[attr-defined]
        "governmentt", topn=5
    )
    # Saved again (say, with a neighbour table added), the n-grams stay.
    loaded.save(tmp_path / "m", overwrite=True)
    assert load_model(tmp_path / "m").vectors.subwords is not None
    # A torn n-gram file is refused, like any other data file of the model.
    with (tmp_path / "m" / NGRAMS_FILE).open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x80\x7f")
    with pytest.raises(ModelFormatError, match=NGRAMS_FILE):
        load_model(tmp_path / "m")


def test_subwords_help_the_words_they_share(lee_text: Path, lee_subwords: Model) -> None:
    """Inflections of one stem end up closer with subwords than without."""
    plain = train(lee_text, TrainConfig(seed=1, threads=1, epochs=5)).vectors
    sub = lee_subwords.vectors  # type: ignore[attr-defined]
    pairs = [(a, b) for a, b in [("attack", "attacks"), ("militant", "militants"), ("official", "officials"),
                                 ("say", "says"), ("kill", "killed"), ("report", "reported")]
             if a in plain and b in plain]
    assert len(pairs) >= 4
    assert np.mean([sub.similarity(a, b) for a, b in pairs]) > np.mean([plain.similarity(a, b) for a, b in pairs])


def test_a_subword_run_resumes_to_the_same_vectors(lee_text: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(seed=3, threads=1, epochs=3, **SUBWORDS)  # type: ignore[arg-type]
    reference = train(lee_text, cfg)
    epochs_done: list[int] = []
    with pytest.raises(TrainingCancelled):
        train(lee_text, cfg, checkpoint_dir=tmp_path / "ckpt", progress=lambda p: epochs_done.append(p.epoch),
              progress_interval=0.0, should_stop=lambda: bool(epochs_done) and epochs_done[-1] == 3)
    resumed = train(lee_text, cfg, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.meta["training"]["resumed_from_epoch"] == 2
    np.testing.assert_array_equal(resumed.vectors.vectors, reference.vectors.vectors)
    np.testing.assert_array_equal(resumed.vectors.subwords.vectors, reference.vectors.subwords.vectors)  # type: ignore[union-attr]


def test_the_array_engines_hidden_layer_is_the_mean_of_every_context_rows() -> None:
    """The minibatch engine (the CuPy path, here on NumPy): a context word stands for its own
    row and its n-grams' rows, and the hidden vector is the mean of all of them."""
    from model.layers import Embedding
    from model.minibatch import MinibatchEngine

    layout = training_rows(["walk", "walked", "talk"], 3, 4, 1000)
    engine = MinibatchEngine.__new__(MinibatchEngine)  # only the parts _bag_mean reads
    engine.xp = np
    engine.W_in = np.random.default_rng(0).random((layout.n_rows, 4), dtype=np.float32)
    engine.in_offsets, engine.in_rows = layout.offsets, layout.rows
    ctx = np.array([[0, 1, 2, 1], [2, 2, 0, 0]])
    valid = np.array([[True, True, False, True], [False, True, False, False]])
    embed = Embedding(engine.W_in)
    h, bag = engine._bag_mean(embed, ctx, valid)
    for b in range(2):
        rows = [r for c in range(4) if valid[b, c]
                for r in layout.rows[layout.offsets[ctx[b, c]] : layout.offsets[ctx[b, c] + 1]]]
        np.testing.assert_allclose(h[b], engine.W_in[rows].mean(axis=0), rtol=1e-6)
        assert (bag == b).sum() == len(rows)
    assert embed.idx is not None and embed.idx.size == bag.size


@pytest.mark.slow
def test_the_array_engine_trains_subwords(lee_sentences: list[list[str]]) -> None:
    cfg = TrainConfig(seed=1, engine="minibatch", batch_words=64, epochs=4, negative=15, sample=0.0,
                      **SUBWORDS)  # type: ignore[arg-type]
    model = train(lee_sentences[:150], cfg)
    assert model.meta["training"]["engine"] == "minibatch"
    losses = model.meta["training"]["epoch_losses"]
    assert losses[-1] < losses[0] * 0.95
    sub = model.vectors.subwords
    assert sub is not None
    init = (np.random.default_rng(1).random((len(model.vectors) + sub.bucket_ids.size, 100), dtype=np.float32) - 0.5)
    moved = np.linalg.norm(sub.vectors - init[len(model.vectors):] / 100, axis=1)
    assert (moved > 0).all()  # every n-gram row in use was trained


def test_a_step_of_words_without_context_trains_on(tmp_path: Path) -> None:
    """One word per line: no centre word has a context, so a step has no input rows at all."""
    corpus = tmp_path / "lonely.txt"
    corpus.write_text("".join(f"w{i % 5}\n" for i in range(65)), encoding="utf-8")
    cfg = dict(engine="minibatch", batch_words=64, sample=0.0, min_count=1, epochs=1)
    for max_n in (0, 4):
        assert len(train(corpus, TrainConfig(max_n=max_n, **cfg)).vectors) == 5  # type: ignore[arg-type]


def test_unseen_words_when_no_ngram_was_trained_at_all(lee_text: Path) -> None:
    """n-grams of 20 characters: no word of the corpus is that long, so none is in use."""
    model = train(lee_text, TrainConfig(epochs=1, threads=1, min_n=20, max_n=20))
    v = model.vectors
    assert v.subwords is not None and v.subwords.bucket_ids.size == 0
    assert not v.has_vector("a" * 30)
    with pytest.raises(UnknownWordError):
        v.most_similar("a" * 30)


def test_words_from_undecodable_bytes_are_hashed_as_those_bytes(lee_subwords: Model) -> None:
    v = lee_subwords.vectors
    word = b"government\xff".decode("utf-8", "surrogateescape")  # as a command line passes it
    assert v.has_vector(word)
    assert "government" in [w for w, _ in v.most_similar(word, topn=5)]


@pytest.mark.parametrize(
    "kwargs", [dict(max_n=2, min_n=3), dict(max_n=21), dict(min_n=0, max_n=3), dict(max_n=6, buckets=0)]
)
def test_bad_subword_settings_are_refused(kwargs: dict[str, int], lee_text: Path) -> None:
    with pytest.raises(ParameterError):
        train(lee_text, TrainConfig(**kwargs))  # type: ignore[arg-type]


def test_plain_runs_keep_their_checkpoint_fingerprint() -> None:
    """A checkpoint written before subwords existed still resumes: unused fields stay out of it."""
    assert TrainConfig().fingerprint().startswith("d37602a6")  # the default config's, before subwords
    assert TrainConfig().fingerprint() == TrainConfig(min_n=2, buckets=5).fingerprint()
    assert TrainConfig(max_n=6).fingerprint() != TrainConfig(max_n=6, buckets=5).fingerprint()


# ------------------------------------------------------------------------------------ over HTTP


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store=tmp_path / "store", broker_url=None)


def test_the_api_answers_for_words_outside_the_vocabulary(
    client: TestClient, layout: StoreLayout, lee_subwords: Model
) -> None:
    model_id = put_model(layout, lee_subwords.vectors, config=lee_subwords.meta["config"])
    r = client.get("/similar", params={"word": "governmentt", "model": model_id, "topn": 5})
    assert r.status_code == 200, r.text
    assert "government" in [hit["word"] for hit in r.json()["results"]]
    r = client.get("/similarity", params={"w1": "governmentt", "w2": "government", "model": model_id})
    assert r.status_code == 200 and r.json()["score"] > 0.9
    r = client.get("/vector", params={"word": "governmentt", "model": model_id})
    assert r.status_code == 200 and len(r.json()["vector"]) == 100
    r = client.post("/similar/batch", json={"model": model_id, "queries": ["governmentt", "bombingss"], "topn": 3})
    assert r.status_code == 200, r.text
    assert [len(q) for q in r.json()["results"]] == [3, 3]
    # A word none of whose n-grams was trained is a 404 naming the model, as any unknown word.
    assert lee_subwords.vectors.subwords is not None
    untrained = untrained_word(lee_subwords.vectors.subwords)
    r = client.get("/similar", params={"word": untrained, "model": model_id})
    assert r.status_code == 404 and r.json()["unknown_words"] == [untrained] and r.json()["model_id"] == model_id
    meta = client.get(f"/models/{model_id}").json()
    assert meta["subwords"] == {**SUBWORDS, "rows": lee_subwords.vectors.subwords.bucket_ids.size}  # type: ignore[union-attr]
    # Without subwords the same word is unknown, as before.
    plain_id = put_model(layout, Vectors(lee_subwords.vectors.words, lee_subwords.vectors.vectors))
    r = client.get("/similar", params={"word": "governmentt", "model": plain_id})
    assert r.status_code == 404 and r.json()["unknown_words"] == ["governmentt"]


def test_train_takes_subword_settings_and_refuses_bad_ones(client: TestClient) -> None:
    r = client.post("/train", json={"text": "a b c\n", "max_n": 2, "min_n": 3})
    assert r.status_code == 422 and "max_n (2) must be 0 (no subwords) or at least min_n (3)" in r.text
    r = client.post("/train", json={"text": "a b c\n", "max_n": 21})
    assert r.status_code == 422 and "max_n" in r.text
    # The CUDA Hogwild kernel trains subwords too (the job waits for a GPU worker).
    r = client.post("/train", json={"text": "a b c\n", "max_n": 6, "device": "cuda", "engine": "hogwild"})
    assert r.status_code == 202, r.text
    # A plain job's config holds no subword settings: a worker of the release before reads it.
    r = client.post("/train", json={"text": "a b c\n"})
    assert r.status_code == 202 and "max_n" not in client.get(f"/jobs/{r.json()['job_id']}").json()["config"]
    r = client.post("/train", json={"text": "a b c\n", "max_n": 6, "buckets": 100_000})
    assert r.status_code == 202, r.text
    config = client.get(f"/jobs/{r.json()['job_id']}").json()["config"]
    assert (config["min_n"], config["max_n"], config["buckets"]) == (3, 6, 100_000)
