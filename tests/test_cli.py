"""The `w2v` command line: happy paths and one clear error line for every mistake."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model import Vectors, load_model, load_word2vec_format
from model.cli import main
from tests.conftest import gensim_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, lee_text: Path) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    assert main(["train", str(lee_text), "--out", str(out), "--epochs", "3", "--quiet", "--threads", "1"]) == 0
    return out


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("w2v: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_train_writes_a_loadable_model(trained: Path) -> None:
    model = load_model(trained)
    assert len(model.vectors) > 1000
    assert model.meta["config"]["epochs"] == 3


def test_train_shows_progress_and_evaluates(tmp_path: Path, lee_text: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    code = main([
        "train", str(lee_text), "--out", str(out), "--epochs", "2", "--vector-size", "20",
        "--analogies", str(gensim_data("questions-words.txt")), "--pairs", str(gensim_data("wordsim353.tsv")),
    ])
    captured = capsys.readouterr()
    assert code == 0
    assert "words/s" in captured.err and "epoch 2/2" in captured.err
    assert f"saved {out}" in captured.out
    evaluation = load_model(out).meta["evaluation"]
    assert 0.0 <= evaluation["analogies"]["accuracy"] <= 1.0
    assert evaluation["pairs"][0]["file"] == "wordsim353.tsv"
    # The scores are printed, as `w2v eval` prints them.
    assert f"accuracy {evaluation['analogies']['accuracy'] * 100:.2f}%" in captured.out
    assert f"pairs wordsim353.tsv: spearman {evaluation['pairs'][0]['spearman']:.4f}" in captured.out


def test_similar_and_analogy_print_scored_words(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["similar", str(trained), "government", "--topn", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    expected = load_model(trained).vectors.most_similar("government", topn=5)
    assert [line.split("\t")[1] for line in lines] == [w for w, _ in expected]
    assert main(["analogy", str(trained), "man", "king", "woman", "--topn", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_subwords_from_training_to_queries_and_export(
    tmp_path: Path, lee_text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub"
    argv = ["train", str(lee_text), "--out", str(out), "--epochs", "3", "--quiet", "--threads", "1", "--max-n", "5"]
    assert main(argv) == 0
    capsys.readouterr()
    assert load_model(out).meta["subwords"]["max_n"] == 5
    # A word the corpus never had is answered from its n-grams.
    assert main(["similar", str(out), "governmentt", "--topn", "5"]) == 0
    assert "government" in [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert main(["export", str(out), "--out", str(tmp_path / "sub.txt")]) == 0
    assert "n-gram rows" in capsys.readouterr().out  # said, since word2vec files cannot keep them


def test_train_can_save_a_neighbour_table(tmp_path: Path, lee_text: Path, capsys) -> None:
    out = tmp_path / "m"
    argv = ["train", str(lee_text), "--out", str(out), "--epochs", "1", "--quiet", "--threads", "1", "--seed", "5"]
    assert main([*argv, "--neighbours", "500", "--neighbours-topn", "7"]) == 0
    vectors = load_model(out).vectors
    assert vectors.neighbours is not None and (vectors.neighbours.n_words, vectors.neighbours.k) == (500, 7)
    capsys.readouterr()
    assert main(["similar", str(out), vectors.words[3], "--topn", "7"]) == 0
    expected = Vectors(vectors.words, vectors.vectors).most_similar(vectors.words[3], topn=7)
    assert [line.split("\t")[1] for line in capsys.readouterr().out.strip().splitlines()] == [w for w, _ in expected]
    for bad, flag in [(["--neighbours", "-1"], "--neighbours"), (["--neighbours-topn", "0"], "--neighbours-topn")]:
        with pytest.raises(SystemExit) as exited:  # argparse: its usage line, then the error
            main([*argv, "--force", *bad])
        assert exited.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"w2v train: error: argument {flag}") and "Traceback" not in "".join(err)


def test_index_adds_a_table_to_an_imported_model(trained: Path, tmp_path: Path, capsys) -> None:
    exported, imported = tmp_path / "v.txt", tmp_path / "imported"
    assert main(["export", str(trained), "--format", "word2vec-text", "--out", str(exported)]) == 0
    assert main(["import", str(exported), "--out", str(imported)]) == 0
    searched = load_model(imported).vectors
    assert searched.neighbours is None
    assert main(["index", str(imported), "--words", "300", "--topn", "6"]) == 0
    assert "300 most frequent words, 6 neighbours each" in capsys.readouterr().out
    indexed = load_model(imported)  # checksums verified, the table's included
    assert indexed.meta["imported_from"] == "v.txt" and indexed.meta["neighbours"] == {"words": 300, "k": 6}
    assert indexed.vectors.neighbours is not None
    for word in searched.words[:300:37]:
        assert indexed.vectors.precomputed_neighbours(word, topn=6) == searched.most_similar(word, topn=6)
    assert main(["index", str(imported), "--words", "50"]) == 0  # re-indexing replaces the table
    assert load_model(imported).meta["neighbours"] == {"words": 50, "k": 20}
    # The build shows its progress on stderr; a log gets a line per tenth, not one per chunk.
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("100.0% neighbours of 50/50 words eta     0s")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    assert "not a model directory" in _error(capsys, ["index", str(tmp_path / "nothing")])


def test_index_within_a_time_budget_keeps_the_most_frequent_words(
    trained: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(trained, model_dir)
    monkeypatch.setattr("model.neighbours._BUILD_CHUNK", 64)
    # Past its time after the first chunk: the table keeps that chunk's words, and says so.
    assert main(["index", str(model_dir), "--words", "1000", "--topn", "5", "--seconds", "1e-9", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "64 most frequent words, 5 neighbours each" in captured.out
    assert captured.err.strip() == (
        "w2v: the neighbour table holds the 64 most frequent words, not 1000: its 1e-09 s were up "
        "(the other words' queries search)"
    )
    indexed = load_model(model_dir)
    assert indexed.meta["neighbours"] == {"words": 64, "k": 5}
    searched = load_model(trained).vectors
    for word in searched.words[:64:9]:
        assert indexed.vectors.precomputed_neighbours(word, topn=5) == searched.most_similar(word, topn=5)
    for bad in ["0", "-1", "nan", "inf", "soon"]:
        with pytest.raises(SystemExit) as exited:  # argparse: its usage line, then the error
            main(["index", str(model_dir), "--seconds", bad])
        assert exited.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("w2v index: error: argument --seconds")


def test_eval_json(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(trained), "--pairs", str(gensim_data("simlex999.txt")), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"][0]["pairs"] > 0 and -1 <= result["pairs"][0]["spearman"] <= 1


@pytest.mark.parametrize("fmt", ["word2vec-text", "word2vec-binary"])
def test_export_then_import_round_trip(trained: Path, tmp_path: Path, fmt: str) -> None:
    exported = tmp_path / "vectors.w2v"
    assert main(["export", str(trained), "--format", fmt, "--out", str(exported)]) == 0
    assert len(load_word2vec_format(exported)) == len(load_model(trained).vectors)
    assert main(["import", str(exported), "--out", str(tmp_path / "imported")]) == 0
    imported = load_model(tmp_path / "imported").vectors
    np.testing.assert_allclose(imported.vectors, load_model(trained).vectors.vectors, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "binary"),
    [("v.txt", False), ("v.vec.gz", False), ("V.TXT.bz2", False), ("v.bin", True), ("v.w2v", True), ("v", True)],
)
def test_export_picks_the_format_the_file_name_asks_for(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, binary: bool
) -> None:
    out = tmp_path / name
    assert main(["export", str(trained), "--out", str(out)]) == 0
    assert ("word2vec-binary" if binary else "word2vec-text") in capsys.readouterr().out
    assert len(load_word2vec_format(out, binary=binary)) == len(load_model(trained).vectors)


def test_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not found" in _error(capsys, ["train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "m")])


def test_empty_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.txt").write_text("")
    assert "no words" in _error(capsys, ["train", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "m")])


def test_empty_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.txt").write_text("one two three\n")
    line = _error(capsys, ["train", str(tmp_path / "c.txt"), "--out", str(tmp_path / "m")])
    assert "min_count" in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("flag", "value", "name"),
    [("--epochs", "0", "epochs"), ("--window", "500", "window"), ("--alpha", "-1", "alpha"),
     ("--sample", "2", "sample"), ("--vector-size", "0", "vector_size"), ("--max-n", "2", "max_n")],
)
def test_out_of_range_parameter(
    lee_text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, name: str
) -> None:
    line = _error(capsys, ["train", str(lee_text), "--out", str(tmp_path / "m"), flag, value])
    assert name in line


def test_existing_output_needs_force(trained: Path, lee_text: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--force" in _error(capsys, ["train", str(lee_text), "--out", str(trained)])


def test_unknown_word(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, ["similar", str(trained), "government", "qqqzzz", "--negative", "xxyyzz"])
    assert "qqqzzz" in line and "xxyyzz" in line


def test_not_a_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a model directory" in _error(capsys, ["similar", str(tmp_path), "word"])


def test_eval_needs_a_file(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--analogies" in _error(capsys, ["eval", str(trained)])


def test_eval_missing_file(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _error(capsys, ["eval", str(trained), "--pairs", str(tmp_path / "missing.tsv")])


def test_import_malformed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\nword 1 2\n")
    _error(capsys, ["import", str(bad), "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("w2v")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "model.cli"]
    proc = subprocess.run(
        [*argv, "train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("w2v: error:") and "Traceback" not in proc.stderr


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 20, encoding="utf-8")
    return path


def _train_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(corpus), "--out", str(out), "--epochs", "1", "--min-count", "1", "--quiet", *extra]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--analogies", "missing.txt"], "missing.txt"),
        (["--pairs", "missing.tsv"], "missing.tsv"),
        (["--analogies", "bad-questions.txt"], "question before the first"),
        (["--pairs", "bad-pairs.tsv"], "not a finite number"),
        (["--checkpoint-dir", "a-file"], "checkpoint_dir .* not a folder"),
        (["--checkpoint-dir", "a-file/ck"], "a-file is not a folder"),
        (["--checkpoint-dir", "m"], "must be outside --out"),
        (["--checkpoint-dir", "m/ck", "--force"], "must be outside --out"),
    ],
)
def test_train_refuses_bad_side_inputs_before_training(
    tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    flags: list[str], message: str,
) -> None:
    import model.trainer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad-questions.txt").write_text("a b c d\n")
    (tmp_path / "bad-pairs.tsv").write_text("a\tb\tinf\n")
    (tmp_path / "a-file").write_text("")
    epochs: list[int] = []
    monkeypatch.setattr(model.trainer._Tracker, "start_epoch", lambda self, epoch: epochs.append(epoch))
    line = _error(capsys, _train_argv(small_corpus, tmp_path / "m", *flags))
    assert re.search(message, line), line
    assert epochs == [] and not (tmp_path / "m").exists()


def test_an_out_path_that_cannot_be_written_fails_before_training(
    tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    line = _error(capsys, _train_argv(small_corpus, tmp_path / "a-file" / "m"))
    assert "cannot write a model to" in line and "is not a folder" in line


def test_a_failure_after_training_still_saves_the_model(
    tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("king\tqueen\t9\nbread\tbutter\t7\n")  # no pair among the model's words
    out = tmp_path / "m"
    line = _error(capsys, _train_argv(small_corpus, out, "--pairs", str(pairs)))
    assert "only 0 of 2 pairs" in line and "the model is saved without it" in line
    assert len(load_model(out).vectors) >= 1


def test_a_corpus_of_one_word_or_of_unsplit_text_is_refused_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one_word = tmp_path / "one.txt"
    one_word.write_text("word word word\n")
    line = _error(capsys, _train_argv(one_word, tmp_path / "m"))
    assert "only 'word' is in the vocabulary" in line and "needs at least 2 words" in line
    assert "segmenter" not in line
    unsplit = tmp_path / "cjk.txt"  # Japanese is written without spaces between words
    tokyo = "東京は日本の首都であり世界最大の都市圏を形成している"
    osaka = "大阪は日本第二の都市圏の中心であり商業の町として知られる"
    unsplit.write_text(f"{tokyo}\n" * 3 + f"{osaka}\n" * 6)
    line = _error(capsys, ["train", str(unsplit), "--out", str(tmp_path / "m"), "--quiet"])  # min_count 5
    assert "is the text split into words by spaces?" in line and "MeCab" in line
    assert not (tmp_path / "m").exists()


def test_checkpoint_is_removed_after_a_finished_run(
    tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.checkpoint import CHECKPOINT_FILE

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "notes.txt").write_text("mine")
    argv = [*_train_argv(small_corpus, tmp_path / "m", "--checkpoint-dir", str(ckpt)), "--epochs", "3"]
    assert main(argv) == 0
    assert not (ckpt / CHECKPOINT_FILE).exists() and (ckpt / "notes.txt").read_text() == "mine"


def test_force_replaces_only_a_model(tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    for target, message in ((small_corpus, "not a model directory"), (folder, "holds no model")):
        line = _error(capsys, _train_argv(small_corpus, target, "--force"))
        assert message in line
    assert small_corpus.read_text().startswith("the cat") and (folder / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_train_argv(small_corpus, empty, "--force")) == 0
    assert main(_train_argv(small_corpus, empty, "--force", "--vector-size", "8")) == 0
    assert load_model(empty).vectors.vector_size == 8
    assert main(["import", str(small_corpus), "--out", str(folder), "--force"]) != 0
    assert (folder / "keep.txt").read_text() == "precious"


def test_force_on_the_working_directory(tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "holds no model" in _error(capsys, _train_argv(small_corpus, Path("."), "--force"))


def test_export_errors_name_the_users_path(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.bin"
    assert main(["export", str(trained), "--out", str(out)]) == 0
    assert "--force" in _error(capsys, ["export", str(trained), "--out", str(out)])
    assert main(["export", str(trained), "--out", str(out), "--force"]) == 0
    line = _error(capsys, ["export", str(trained), "--out", str(tmp_path / "no" / "such" / "v.bin")])
    assert str(tmp_path / "no" / "such") in line and ".tmp" not in line
    assert "is a directory" in _error(capsys, ["export", str(trained), "--out", str(tmp_path)])


def test_diverging_training_is_one_error_line_and_no_model(
    tmp_path: Path, lee_text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _error(capsys, ["train", str(lee_text), "--out", str(tmp_path / "m"), "--alpha", "1", "--epochs", "2"])
    assert "diverged" in line and "lower the learning rate alpha (now 1.0" in line
    assert not (tmp_path / "m").exists()


def test_train_reads_the_corpus_from_standard_input(tmp_path: Path, lee_text: Path) -> None:
    argv = [sys.executable, "-m", "model.cli", "train", "-", "--epochs", "1", "--threads", "1", "--quiet"]
    piped = subprocess.run(
        [*argv, "--out", str(tmp_path / "piped")], input=lee_text.read_bytes(), capture_output=True, timeout=300
    )
    assert piped.returncode == 0, piped.stderr
    assert main(_train_argv(lee_text, tmp_path / "file", "--threads", "1", "--min-count", "5")) == 0
    a, b = load_model(tmp_path / "piped"), load_model(tmp_path / "file")
    assert a.vectors.words == b.vectors.words
    assert a.meta["corpus"] == b.meta["corpus"]
    np.testing.assert_array_equal(a.vectors.vectors, b.vectors.vectors)  # same seed, one thread: same run


def test_import_reads_glove_files_without_a_header(tmp_path: Path, trained: Path) -> None:
    glove = tmp_path / "glove.txt"
    vectors = load_model(trained).vectors
    glove.write_text("".join(f"{w} {' '.join(map(str, vectors[w][:5]))}\n" for w in vectors.words[:50]))
    assert main(["import", str(glove), "--out", str(tmp_path / "m")]) == 0
    imported = load_model(tmp_path / "m").vectors
    assert imported.words == vectors.words[:50] and imported.vector_size == 5


def test_import_limit_and_unicode_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "cut.txt"
    src.write_bytes(b"3 2\n" + "ありがとう".encode() + b"\xe3\x83 1 2\nok 3 4\nmore 5 6\n")
    _error(capsys, ["import", str(src), "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()
    argv = ["import", str(src), "--out", str(tmp_path / "m"), "--limit", "2", "--unicode-errors", "ignore"]
    assert main(argv) == 0
    assert load_model(tmp_path / "m").vectors.words == ["ありがとう", "ok"]


def _pipe(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress], ids=["gzip", "bzip2"])
def test_train_reads_compressed_text_piped_in_as_it_reads_a_file(
    tmp_path: Path, trained: Path, lee_text: Path, monkeypatch: pytest.MonkeyPatch, compress
) -> None:
    _pipe(monkeypatch, compress(lee_text.read_bytes()))
    argv = ["train", "-", "--out", str(tmp_path / "m"), "--epochs", "3", "--quiet", "--threads", "1"]
    assert main(argv) == 0
    assert load_model(tmp_path / "m").vectors.words == load_model(trained).vectors.words


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("some text\n".encode("utf-16"), "UTF-16LE byte order mark"),
        ("some text\n".encode("utf-16-le"), "NUL bytes"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "zip archive"),
    ],
)
def test_train_refuses_what_is_not_utf8_text_from_a_file_or_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: bytes, message: str
) -> None:
    src = tmp_path / "c.txt"
    src.write_bytes(data)
    assert message in _error(capsys, ["train", str(src), "--out", str(tmp_path / "m"), "--quiet"])
    _pipe(monkeypatch, gzip.compress(data))
    assert message in _error(capsys, ["train", "-", "--out", str(tmp_path / "m"), "--quiet"])
    assert not (tmp_path / "m").exists()


def test_eval_takes_the_librarys_options_and_reads_comma_separated_pairs(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.evaluation import evaluate_analogies, evaluate_word_pairs

    questions, wordsim = gensim_data("questions-words.txt"), gensim_data("wordsim353.tsv")
    csv = tmp_path / "wordsim.csv"
    csv.write_text("Word 1,Word 2,Human (mean)\n" + wordsim.read_text().replace("\t", ","))
    argv = ["eval", str(trained), "--analogies", str(questions), "--pairs", str(csv), "--json"]
    assert main([*argv, "--restrict-vocab", "500", "--case-sensitive", "--method", "mul"]) == 0
    result = json.loads(capsys.readouterr().out)
    vectors = load_model(trained).vectors
    expected = evaluate_analogies(vectors, questions, restrict_vocab=500, case_insensitive=False, method="mul")
    assert result["analogies"]["correct"] == expected.correct and result["analogies"]["total"] == expected.total
    pairs = evaluate_word_pairs(vectors, wordsim, restrict_vocab=500, case_insensitive=False)
    assert result["pairs"][0]["spearman"] == pytest.approx(pairs.spearman)
    assert result["pairs"][0]["pairs"] == pairs.pairs
