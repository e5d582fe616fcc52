"""Evaluation numbers must equal gensim's evaluate_word_analogies / evaluate_word_pairs."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gensim.models import KeyedVectors
from gensim.test.utils import datapath

from model.errors import ModelFormatError, ParameterError
from model.evaluation import evaluate_analogies, evaluate_word_pairs, read_analogies, read_word_pairs
from model.vectors import Vectors

QUESTIONS = Path(datapath("questions-words.txt"))
WORDSIM = Path(datapath("wordsim353.tsv"))
SIMLEX = Path(datapath("simlex999.txt"))

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated `init_sims`:DeprecationWarning")


def analogy_vectors(seed: int = 0, dim: int = 32, noise: float = 0.8) -> tuple[list[str], np.ndarray]:
    """Vectors in which each section's relation is a (noisy) offset, so a good share of the
    questions is answered correctly and a good share is not; plus filler words, and lowercase
    variants of some words placed both before and after the original (case folding keeps the
    first)."""
    rng = np.random.default_rng(seed)
    vec: dict[str, np.ndarray] = {}
    relation = np.zeros(dim)
    for line in QUESTIONS.read_text(encoding="utf-8").splitlines():
        if line.startswith(": "):
            relation = rng.standard_normal(dim)
            continue
        t = line.split()
        for w1, w2 in ((t[0], t[1]), (t[2], t[3])):
            if w1 not in vec and w2 not in vec:
                vec[w1] = rng.standard_normal(dim)
            if w2 not in vec:
                vec[w2] = vec[w1] + relation + noise * rng.standard_normal(dim)
            elif w1 not in vec:
                vec[w1] = vec[w2] - relation + noise * rng.standard_normal(dim)
    words = list(vec)
    rows = [vec[w] for w in words]
    originals = [w for w in words[::7] if w.lower() != w]
    words += [w.lower() for w in originals] + [f"filler{i}" for i in range(1500)]
    # Half the variants are near-copies: they top the neighbour lists of their originals, which
    # is where gensim's "skip case variants of the question words" rule decides the answer.
    rows += [
        vec[w] + 0.05 * rng.standard_normal(dim) if i % 2 else rng.standard_normal(dim) for i, w in enumerate(originals)
    ]
    rows += [rng.standard_normal(dim) for _ in range(1500)]
    perm = rng.permutation(len(words))
    return [words[i] for i in perm], np.asarray(rows, dtype=np.float32)[perm]


@pytest.fixture(scope="module")
def analogy_store() -> tuple[Vectors, KeyedVectors]:
    words, arr = analogy_vectors()
    kv = KeyedVectors(arr.shape[1])
    kv.add_vectors(words, arr)
    return Vectors(words, arr), kv


@pytest.fixture(scope="module")
def question_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every 8th question of every section: all section shapes, an eighth of the run time."""
    lines = QUESTIONS.read_text(encoding="utf-8").splitlines()
    kept, count = [], 0
    for line in lines:
        if line.startswith(": "):
            kept.append(line)
        else:
            count += 1
            if count % 8 == 0:
                kept.append(line)
    path = tmp_path_factory.mktemp("analogies") / "subset.txt"
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


def assert_equals_gensim(result, gensim_result, n_questions: int) -> None:
    score, sections = gensim_result
    assert result.accuracy == pytest.approx(score, abs=1e-12)
    assert [s["name"] for s in result.sections] == [s["section"] for s in sections]
    for ours, theirs in zip(result.sections, sections, strict=True):
        assert ours["correct"] == len(theirs["correct"]), ours["name"]
        assert ours["total"] == len(theirs["correct"]) + len(theirs["incorrect"]), ours["name"]
    total = sections[-1]
    assert (result.correct, result.total) == (len(total["correct"]), len(total["correct"]) + len(total["incorrect"]))
    assert result.skipped == n_questions - result.total


def count_questions(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith(":"))


def test_google_analogies_equal_gensim(analogy_store) -> None:
    ours, kv = analogy_store
    result = evaluate_analogies(ours, QUESTIONS)
    assert_equals_gensim(result, kv.evaluate_word_analogies(str(QUESTIONS)), count_questions(QUESTIONS))
    assert 0.3 < result.accuracy < 0.95  # the fixture really exercises right and wrong answers
    assert len(result.sections) == 15 and result.sections[-1]["name"] == "Total accuracy"
    assert json.loads(json.dumps(result.to_dict()))["correct"] == result.correct


@pytest.mark.parametrize(("restrict_vocab", "case_insensitive"), [(1200, True), (2500, False), (300000, False)])
def test_analogy_options_equal_gensim(analogy_store, question_subset, restrict_vocab, case_insensitive) -> None:
    ours, kv = analogy_store
    result = evaluate_analogies(ours, question_subset, restrict_vocab=restrict_vocab, case_insensitive=case_insensitive)
    expected = kv.evaluate_word_analogies(
        str(question_subset), restrict_vocab=restrict_vocab, case_insensitive=case_insensitive
    )
    assert_equals_gensim(result, expected, count_questions(question_subset))
    if restrict_vocab < len(ours):
        assert result.skipped > 0


def cosmul_reference(kv: KeyedVectors, path: Path, case_insensitive: bool) -> tuple[int, int]:
    """gensim's evaluate_word_analogies loop, with most_similar_cosmul as the ranking."""
    ok: dict[str, int] = {}
    for i, w in enumerate(kv.index_to_key):
        ok.setdefault(w.upper() if case_insensitive else w, i)
    correct = total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(": "):
            continue
        a, b, c, expected = (w.upper() if case_insensitive else w for w in line.split())
        if not all(w in ok for w in (a, b, c, expected)):
            continue
        key = kv.index_to_key
        sims = kv.most_similar_cosmul(positive=[key[ok[b]], key[ok[c]]], negative=[key[ok[a]]], topn=5)
        predicted = None
        for word, _ in sims:
            predicted = word.upper() if case_insensitive else word
            if predicted not in {a, b, c}:
                break
        total += 1
        correct += predicted == expected
    return correct, total


@pytest.mark.parametrize("case_insensitive", [True, False])
def test_cosmul_analogies_equal_gensim_cosmul(analogy_store, question_subset, case_insensitive) -> None:
    ours, kv = analogy_store
    result = evaluate_analogies(ours, question_subset, method="mul", case_insensitive=case_insensitive)
    assert (result.correct, result.total) == cosmul_reference(kv, question_subset, case_insensitive)


@pytest.fixture(scope="module")
def pairs_store() -> tuple[Vectors, KeyedVectors]:
    rng = np.random.default_rng(3)
    seen: dict[str, None] = {}
    for path in (WORDSIM, SIMLEX):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                seen.update(dict.fromkeys(line.split("\t")[:2]))
    vocab = [w for i, w in enumerate(seen) if i % 9 != 4]  # leave some words out: OOV pairs
    # Capitalised variants ahead of some words: case folding must pick them, not the originals.
    vocab = [w.capitalize() for w in vocab[:40]] + vocab + [f"filler{i}" for i in range(300)]
    arr = rng.standard_normal((len(vocab), 20)).astype(np.float32)
    # Shared vectors make tied model similarities, the case where average ranks matter.
    arr[vocab.index("cat")] = arr[vocab.index("tiger")]
    kv = KeyedVectors(arr.shape[1])
    kv.add_vectors(vocab, arr)
    return Vectors(vocab, arr), kv


@pytest.mark.parametrize("path", [WORDSIM, SIMLEX], ids=["wordsim353", "simlex999"])
@pytest.mark.parametrize(("restrict_vocab", "case_insensitive"), [(300000, True), (300000, False), (500, True)])
def test_word_pairs_equal_gensim(pairs_store, path, restrict_vocab, case_insensitive) -> None:
    ours, kv = pairs_store
    result = evaluate_word_pairs(ours, path, restrict_vocab=restrict_vocab, case_insensitive=case_insensitive)
    pearson, spearman, oov_ratio = kv.evaluate_word_pairs(
        str(path), restrict_vocab=restrict_vocab, case_insensitive=case_insensitive
    )
    assert result.pearson == pytest.approx(pearson[0], abs=1e-9)
    assert result.spearman == pytest.approx(spearman[0], abs=1e-9)
    assert result.oov_ratio == pytest.approx(oov_ratio, abs=1e-9)
    n_pairs = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#"))
    assert result.pairs + result.oov == n_pairs
    assert result.oov > 0
    assert json.loads(json.dumps(result.to_dict()))["pairs"] == result.pairs


def test_a_csv_header_line_is_skipped_as_gensim_skips_it(pairs_store, tmp_path) -> None:
    # WordSim353's CSV distribution starts with "Word 1,Word 2,Human (mean)".
    ours, kv = pairs_store
    rows = [line.split("\t") for line in WORDSIM.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    path = tmp_path / "combined.csv"
    path.write_text("Word 1,Word 2,Human (mean)\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    result = evaluate_word_pairs(ours, path, delimiter=",")
    _, spearman, oov_ratio = kv.evaluate_word_pairs(str(path), delimiter=",")
    assert result.pairs + result.oov == len(rows)
    assert result.spearman == pytest.approx(spearman[0], abs=1e-9)
    assert result.oov_ratio == pytest.approx(oov_ratio, abs=1e-9)


def test_spearman_uses_average_ranks_for_ties(tmp_path) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    arr = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [1, 2]], dtype=np.float32)
    vecs = Vectors(["a", "b", "c", "d", "e"], arr)
    path = tmp_path / "pairs.tsv"
    rows = [("a", "d", 2.0), ("b", "d", 2.0), ("a", "c", 1.0), ("c", "e", 3.0), ("a", "e", 2.0), ("b", "c", 0.5)]
    path.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows), encoding="utf-8")
    result = evaluate_word_pairs(vecs, path)
    model = [vecs.similarity(a, b) for a, b, _ in rows]
    gold = [s for _, _, s in rows]
    assert result.spearman == pytest.approx(scipy_stats.spearmanr(gold, model).statistic, abs=1e-12)
    assert result.pearson == pytest.approx(scipy_stats.pearsonr(gold, model).statistic, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (": sec\na b c d\na b c\n", "line 3: expected 4 words, found 3"),
        (": sec\na b c d e\n", "line 2: expected 4 words, found 5"),
        ("a b c d\n", "line 1: question before the first"),
        (": only a header\n\n", "no analogy questions"),
        (": sec\na b \xff c d\n", None),
    ],
)
def test_malformed_analogy_files(tmp_path, text, message) -> None:
    path = tmp_path / "q.txt"
    path.write_bytes(text.encode("latin-1") if message is None else text.encode())
    vecs = Vectors(list("abcd"), np.eye(4, dtype=np.float32))
    with pytest.raises(ModelFormatError, match=message or "line 2: not valid UTF-8"):
        evaluate_analogies(vecs, path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# comment\na\tb\t1.0\na\tb\n", "line 3: expected 3 fields"),
        ("a\tb\t1\nc\td\tmuch\n", "line 2: score 'much' is not a finite number"),
        ("w1\tw2\tscore\n", "no word pairs"),  # a header alone
        ("a\tb\tnan\n", "line 1: score 'nan' is not a finite number"),
        ("a\tb\t-inf\n", "line 1: score '-inf' is not a finite number"),
        ("# only comments\n", "no word pairs"),
    ],
)
def test_malformed_pair_files(tmp_path, text, message) -> None:
    path = tmp_path / "p.tsv"
    path.write_text(text, encoding="utf-8")
    vecs = Vectors(["a", "b"], np.eye(2, dtype=np.float32))
    with pytest.raises(ModelFormatError, match=message):
        evaluate_word_pairs(vecs, path)


def test_pairs_all_out_of_vocabulary_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "p.tsv"
    path.write_text("x\ty\t1\nz\tw\t2\n", encoding="utf-8")
    with pytest.raises(ParameterError, match="only 0 of 2 pairs"):
        evaluate_word_pairs(Vectors(["a"], np.ones((1, 2), dtype=np.float32)), path)


def test_missing_files_raise_file_not_found(tmp_path) -> None:
    vecs = Vectors(["a"], np.ones((1, 2), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        evaluate_analogies(vecs, tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        evaluate_word_pairs(vecs, tmp_path / "missing.tsv")


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gz", "bz2", "xz"])
def test_compressed_files_and_files_read_ahead_score_the_same(
    tmp_path, analogy_store, pairs_store, compress: Callable[[bytes], bytes]
) -> None:
    ours, _ = analogy_store
    packed = tmp_path / "questions.txt.z"
    packed.write_bytes(compress(QUESTIONS.read_bytes()))
    plain = evaluate_analogies(ours, QUESTIONS)
    assert evaluate_analogies(ours, packed) == plain
    assert evaluate_analogies(ours, read_analogies(QUESTIONS)) == plain

    ours, _ = pairs_store
    packed = tmp_path / "pairs.tsv.z"
    packed.write_bytes(compress(WORDSIM.read_bytes()))
    plain_pairs = evaluate_word_pairs(ours, WORDSIM)
    assert evaluate_word_pairs(ours, packed) == plain_pairs
    assert evaluate_word_pairs(ours, read_word_pairs(WORDSIM)) == plain_pairs


def test_a_damaged_compressed_file_is_a_format_error(tmp_path) -> None:
    path = tmp_path / "p.tsv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(ModelFormatError, match="cannot read it"):
        read_word_pairs(path)


def test_a_question_with_an_all_zero_vector_counts_as_answered_wrongly(tmp_path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.standard_normal((6, 4)).astype(np.float32)
    arr[2] = 0.0  # an imported file can hold all-zero vectors
    vecs = Vectors(["a", "b", "z", "c", "d", "e"], arr)
    path = tmp_path / "q.txt"
    path.write_text(": s\na b c d\na z c d\nz b c d\n", encoding="utf-8")
    with_zero = evaluate_analogies(vecs, path)
    path.write_text(": s\na b c d\n", encoding="utf-8")
    without = evaluate_analogies(vecs, path)
    assert (with_zero.total, with_zero.skipped) == (3, 0)
    assert with_zero.correct == without.correct


@pytest.mark.parametrize(
    "text",
    [
        "word1 word2 score\nnew york\tcity\t5\nlove\tsex\t6.5\n",  # a header split otherwise than the pairs
        "Word 1,Word 2,Human (mean)\nnew york,city,5\nlove,sex,6.5\n",
        "new york\tcity\t5\nlove\tsex\t6.5\n",
    ],
)
def test_the_pair_delimiter_is_read_from_the_pairs_not_the_header(tmp_path, text) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(text, encoding="utf-8")
    assert read_word_pairs(path, delimiter=None).pairs == [("new york", "city", 5.0), ("love", "sex", 6.5)]
