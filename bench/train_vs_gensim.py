"""Training speed, memory and embedding quality: this project vs gensim and fastText, side by side.

Each run trains in a fresh subprocess (so peak RSS is that run's alone) on the same corpus
with the same settings, then every set of vectors is scored by the same evaluator on the
Google analogies, WordSim-353 and SimLex-999. Prints a table and, last, one JSON line.

    python bench/train_vs_gensim.py [--corpus FILE] [--repeat-to WORDS] [--epochs 5] [--seeds 1 2 3]
                                    [--threads 2] [--tools ours ours-gensim-alpha ours-subwords gensim
                                                           gensim-file fasttext fasttext-subwords]
                                    [--vector-size 100] [--window 5] [--negative 5] [--min-count 5]
                                    [--sample 1e-3] [--fasttext PATH]

The fastText tools run fastText's own command-line program (`fasttext cbow`), found on PATH or
given with --fasttext. Build it as fastText's README does (`make opt` in its repository: -O3
-march=native) rather than taking a distribution's package, which is built for any CPU and
trains about half as fast. "fasttext" is fastText without character n-grams (-minn 0 -maxn 0),
the same model as word2vec's CBOW; "fasttext-subwords" is fastText as it runs by default
(n-grams of 3 to 6 characters, 2 M hash buckets), to be compared with "ours-subwords", this
project with the same subword settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = dict(vector_size=100, window=5, negative=5, min_count=5, sample=1e-3, epochs=5)
# Each tool trains at its own default learning rate (ours 0.05 as word2vec.c's CBOW, gensim
# 0.025); the optional tool "ours-gensim-alpha" trains ours at gensim's, to tell the two apart.
GENSIM_ALPHA = 0.025
OURS_TOOLS: dict[str, dict[str, Any]] = {
    "ours": {},
    "ours-gensim-alpha": {"alpha": GENSIM_ALPHA},
    # Subwords as fastText's defaults have them (n-grams of 3 to 6 characters, 2 M buckets).
    "ours-subwords": {"min_n": 3, "max_n": 6, "buckets": 2_000_000},
}
# fastText's own default for cbow is 0.05 as well.
FASTTEXT_TOOLS = {"fasttext": ["-minn", "0", "-maxn", "0"], "fasttext-subwords": ["-minn", "3", "-maxn", "6"]}


def _evaluate(words: list[str], vectors: Any) -> dict[str, float]:
    from bench.corpora import gensim_data
    from model import Vectors, evaluate_analogies, evaluate_word_pairs

    v = Vectors(words, vectors)
    return {
        "analogy": evaluate_analogies(v, gensim_data("questions-words.txt")).accuracy * 100,
        "ws353": evaluate_word_pairs(v, gensim_data("wordsim353.tsv")).spearman,
        "simlex": evaluate_word_pairs(v, gensim_data("simlex999.txt")).spearman,
    }


def run_one(tool: str, corpus: str, seed: int, threads: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the child process: train, measure, evaluate."""
    import numpy as np

    epochs = settings["epochs"]
    if tool in OURS_TOOLS:
        from model import TrainConfig, train

        t0 = time.perf_counter()
        m = train(corpus, TrainConfig(seed=seed, threads=threads, **settings, **OURS_TOOLS[tool]))  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        words, vectors = m.vectors.words, np.asarray(m.vectors.vectors)
        raw_words = m.meta["corpus"]["raw_words"]
        corpus_seconds = m.meta["training"]["corpus_seconds"]
    elif tool in FASTTEXT_TOOLS:
        words, vectors, raw_words, corpus_seconds, seconds = _fasttext(tool, corpus, seed, threads, settings)
    else:
        from gensim.models import Word2Vec
        from gensim.models.word2vec import LineSentence

        kwargs = dict(settings, sg=0, hs=0, seed=seed, workers=threads)
        # "gensim-file": gensim reading the file itself, its fastest mode. build_vocab and train
        # are what Word2Vec(sentences, ...) runs, timed apart.
        source = {"corpus_iterable": LineSentence(corpus)} if tool == "gensim" else {"corpus_file": corpus}
        t0 = time.perf_counter()
        g = Word2Vec(**kwargs)
        g.build_vocab(**source)
        corpus_seconds = time.perf_counter() - t0
        g.train(**source, total_words=g.corpus_total_words, epochs=g.epochs)
        seconds = time.perf_counter() - t0
        words, vectors = list(g.wv.index_to_key), g.wv.vectors
        raw_words = g.corpus_total_words
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if tool in FASTTEXT_TOOLS:
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "tool": tool, "seed": seed, "seconds": seconds, "raw_words": raw_words,
        "words_per_sec": raw_words * epochs / seconds, "peak_rss_mb": peak_rss_mb,
        # Without the one pass that reads the corpus and builds the vocabulary.
        "corpus_seconds": corpus_seconds,
        "train_words_per_sec": raw_words * epochs / (seconds - corpus_seconds),
        "vocab": len(words), **_evaluate(words, vectors),
    }


def _fasttext(
    tool: str, corpus: str, seed: int, threads: int, settings: dict[str, Any]
) -> tuple[list[str], Any, int, float, float]:
    """Trains with fastText's program; times come from its own output as it prints it.

    fastText writes the model files after training; like the other tools' times, ours stop
    when training ends: at its last progress line, printed once its threads have joined. Its
    corpus pass ends where it prints the vocabulary it read.
    """
    import tempfile

    import numpy as np

    from model import load_word2vec_format

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        cmd = [
            os.environ.get("FASTTEXT", "fasttext"), "cbow", "-input", corpus, "-output", str(out),
            "-dim", str(settings["vector_size"]), "-ws", str(settings["window"]),
            "-neg", str(settings["negative"]), "-minCount", str(settings["min_count"]),
            "-t", str(settings["sample"]), "-epoch", str(settings["epochs"]),
            "-thread", str(threads), "-seed", str(seed), *FASTTEXT_TOOLS[tool],
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        corpus_seconds = seconds = 0.0
        text = b""
        finals = 0
        while chunk := os.read(proc.stderr.fileno(), 65536):
            now = time.perf_counter() - t0
            text += chunk
            if not corpus_seconds and b"Number of labels" in text:
                corpus_seconds = now
            # The final line shows the learning rate at zero; it is printed after the threads join.
            if text.count(b"lr:  0.000000") > finals:
                finals, seconds = text.count(b"lr:  0.000000"), now
        if proc.wait() != 0 or not seconds:
            raise SystemExit(f"fastText failed ({proc.returncode}): {text.decode(errors='replace')[-2000:]}")
        vectors = load_word2vec_format(str(out) + ".vec")
    # fastText prints its word count in millions; the other tools count whitespace-split words.
    with open(corpus, encoding="utf-8", errors="replace") as fh:
        raw_words = sum(len(line.split()) for line in fh)
    return list(vectors.words), np.asarray(vectors.vectors), raw_words, corpus_seconds, seconds


def _child(tool: str, corpus: Path, seed: int, threads: int, settings: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", tool, "--corpus", str(corpus), "--seeds", str(seed),
         "--threads", str(threads), "--settings", json.dumps(settings)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tool} seed {seed} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="text file; default: gensim's Wikipedia sample")
    parser.add_argument(
        "--repeat-to", type=int, default=0, metavar="WORDS",
        help="train on the corpus repeated to at least this many words (speed at scale; the "
        "quality scores then describe that many passes over the same text)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    # The same settings for both tools; the defaults are both tools' own.
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--vector-size", type=int, default=SETTINGS["vector_size"])
    parser.add_argument("--window", type=int, default=SETTINGS["window"])
    parser.add_argument("--negative", type=int, default=SETTINGS["negative"])
    parser.add_argument("--min-count", type=int, default=SETTINGS["min_count"])
    parser.add_argument("--sample", type=float, default=SETTINGS["sample"])
    parser.add_argument(
        "--tools", nargs="+", default=["ours", "gensim", "gensim-file"],
        choices=[*OURS_TOOLS, "gensim", "gensim-file", *FASTTEXT_TOOLS],
    )
    parser.add_argument("--fasttext", help="fastText's program (default: `fasttext` on PATH)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fasttext:
        os.environ["FASTTEXT"] = str(Path(args.fasttext).resolve())
    if args.child:
        print(json.dumps(run_one(args.child, str(args.corpus), args.seeds[0], args.threads, json.loads(args.settings))))
        return
    settings = dict(
        vector_size=args.vector_size, window=args.window, negative=args.negative, min_count=args.min_count,
        sample=args.sample, epochs=args.epochs,
    )

    from bench.corpora import wiki_sample

    corpus = args.corpus or wiki_sample()
    if args.repeat_to:
        from bench.corpora import repeated

        corpus = repeated(corpus, args.repeat_to)
    # Warm the compiled-kernel cache once so no timed run pays for compilation.
    _child("ours", corpus, args.seeds[0], args.threads, dict(settings, epochs=1))
    runs = [_child(tool, corpus, seed, args.threads, settings) for seed in args.seeds for tool in args.tools]

    metrics = ["words_per_sec", "train_words_per_sec", "seconds", "peak_rss_mb", "analogy", "ws353", "simlex"]
    summary = {
        tool: {m: statistics.mean(r[m] for r in runs if r["tool"] == tool) for m in metrics}
        for tool in args.tools
    }
    print(f"corpus {corpus.name}: {runs[0]['raw_words']:,} words; settings {settings}; "
          f"threads {args.threads}; seeds {args.seeds}")
    print(f"{'tool':<18}{'words/s':>12}{'train w/s':>12}{'seconds':>9}{'peak MB':>9}{'analogy %':>11}"
          f"{'WS353':>8}{'SimLex':>8}")
    for tool, s in summary.items():
        print(f"{tool:<18}{s['words_per_sec']:>12,.0f}{s['train_words_per_sec']:>12,.0f}{s['seconds']:>9.2f}"
              f"{s['peak_rss_mb']:>9.0f}{s['analogy']:>11.2f}{s['ws353']:>8.3f}{s['simlex']:>8.3f}")
    comparisons = {}
    for mine in (t for t in args.tools if t.startswith("ours")):
        ours = summary[mine]
        for ref in (t for t in args.tools if not t.startswith("ours")):
            g = summary[ref]
            # "gensim", "gensim-file" for ours at its defaults; "ours-gensim-alpha vs gensim", ...
            key = ref if mine == "ours" else f"{mine} vs {ref}"
            comparisons[key] = c = {
                "speed_ratio": ours["words_per_sec"] / g["words_per_sec"],
                "train_speed_ratio": ours["train_words_per_sec"] / g["train_words_per_sec"],
                "rss_ratio": ours["peak_rss_mb"] / g["peak_rss_mb"],
                "analogy_diff_points": ours["analogy"] - g["analogy"],
                "ws353_diff": ours["ws353"] - g["ws353"],
                "simlex_diff": ours["simlex"] - g["simlex"],
            }
            print(f"{mine} vs {ref}: speed x{c['speed_ratio']:.2f} (training alone x{c['train_speed_ratio']:.2f}), "
                  f"peak RSS x{c['rss_ratio']:.2f}, "
                  f"analogy {c['analogy_diff_points']:+.2f} points, WS353 {c['ws353_diff']:+.3f}, "
                  f"SimLex {c['simlex_diff']:+.3f}")
    print(json.dumps({
        "benchmark": "train_vs_gensim", "corpus": corpus.name, "raw_words": runs[0]["raw_words"],
        "settings": settings, "threads": args.threads, "seeds": args.seeds, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "summary": summary,
        "comparisons": comparisons, "runs": runs,
    }))


if __name__ == "__main__":
    main()
