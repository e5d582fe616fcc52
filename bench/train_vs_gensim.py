"""Training speed, memory and embedding quality: this project vs gensim, side by side.

Each run trains in a fresh subprocess (so peak RSS is that run's alone) on the same corpus
with the same settings, then both sets of vectors are scored by the same evaluator on the
Google analogies, WordSim-353 and SimLex-999. Prints a table and, last, one JSON line.

    python bench/train_vs_gensim.py [--corpus FILE] [--seeds 1 2 3] [--threads 2]
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


def _evaluate(words: list[str], vectors: Any) -> dict[str, float]:
    from bench.corpora import gensim_data
    from model import Vectors, evaluate_analogies, evaluate_word_pairs

    v = Vectors(words, vectors)
    return {
        "analogy": evaluate_analogies(v, gensim_data("questions-words.txt")).accuracy * 100,
        "ws353": evaluate_word_pairs(v, gensim_data("wordsim353.tsv")).spearman,
        "simlex": evaluate_word_pairs(v, gensim_data("simlex999.txt")).spearman,
    }


def run_one(tool: str, corpus: str, seed: int, threads: int) -> dict[str, Any]:
    """Runs inside the child process: train, measure, evaluate."""
    import numpy as np

    if tool == "ours":
        from model import TrainConfig, train

        t0 = time.perf_counter()
        m = train(corpus, TrainConfig(seed=seed, threads=threads, **SETTINGS))  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        words, vectors = m.vectors.words, np.asarray(m.vectors.vectors)
        raw_words = m.meta["corpus"]["raw_words"]
    else:
        from gensim.models import Word2Vec
        from gensim.models.word2vec import LineSentence

        kwargs = dict(SETTINGS, sg=0, hs=0, seed=seed, workers=threads)
        t0 = time.perf_counter()
        # "gensim-file": gensim reading the file itself, its fastest mode.
        source = {"sentences": LineSentence(corpus)} if tool == "gensim" else {"corpus_file": corpus}
        g = Word2Vec(**source, **kwargs)
        seconds = time.perf_counter() - t0
        words, vectors = list(g.wv.index_to_key), g.wv.vectors
        raw_words = g.corpus_total_words
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "tool": tool, "seed": seed, "seconds": seconds, "raw_words": raw_words,
        "words_per_sec": raw_words * SETTINGS["epochs"] / seconds, "peak_rss_mb": peak_rss_mb,
        "vocab": len(words), **_evaluate(words, vectors),
    }


def _child(tool: str, corpus: Path, seed: int, threads: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", tool, "--corpus", str(corpus), "--seeds", str(seed),
         "--threads", str(threads)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tool} seed {seed} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="text file; default: gensim's Wikipedia sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tools", nargs="+", default=["ours", "gensim", "gensim-file"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, str(args.corpus), args.seeds[0], args.threads)))
        return

    from bench.corpora import wiki_sample

    corpus = args.corpus or wiki_sample()
    # Warm the compiled-kernel cache once so no timed run pays for compilation.
    _child("ours", corpus, args.seeds[0], args.threads)
    runs = [_child(tool, corpus, seed, args.threads) for seed in args.seeds for tool in args.tools]

    metrics = ["words_per_sec", "seconds", "peak_rss_mb", "analogy", "ws353", "simlex"]
    summary = {
        tool: {m: statistics.mean(r[m] for r in runs if r["tool"] == tool) for m in metrics}
        for tool in args.tools
    }
    print(f"corpus {corpus.name}: {runs[0]['raw_words']:,} words; settings {SETTINGS}; "
          f"threads {args.threads}; seeds {args.seeds}")
    print(f"{'tool':<12}{'words/s':>12}{'seconds':>9}{'peak MB':>9}{'analogy %':>11}{'WS353':>8}{'SimLex':>8}")
    for tool, s in summary.items():
        print(f"{tool:<12}{s['words_per_sec']:>12,.0f}{s['seconds']:>9.2f}{s['peak_rss_mb']:>9.0f}"
              f"{s['analogy']:>11.2f}{s['ws353']:>8.3f}{s['simlex']:>8.3f}")
    ours = summary.get("ours")
    comparisons = {}
    if ours:
        for ref in (t for t in args.tools if t != "ours"):
            g = summary[ref]
            comparisons[ref] = {
                "speed_ratio": ours["words_per_sec"] / g["words_per_sec"],
                "rss_ratio": ours["peak_rss_mb"] / g["peak_rss_mb"],
                "analogy_diff_points": ours["analogy"] - g["analogy"],
                "ws353_diff": ours["ws353"] - g["ws353"],
                "simlex_diff": ours["simlex"] - g["simlex"],
            }
            c = comparisons[ref]
            print(f"ours vs {ref}: speed x{c['speed_ratio']:.2f}, peak RSS x{c['rss_ratio']:.2f}, "
                  f"analogy {c['analogy_diff_points']:+.2f} points, WS353 {c['ws353_diff']:+.3f}, "
                  f"SimLex {c['simlex_diff']:+.3f}")
    print(json.dumps({
        "benchmark": "train_vs_gensim", "corpus": corpus.name, "raw_words": runs[0]["raw_words"],
        "settings": SETTINGS, "threads": args.threads, "seeds": args.seeds, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "summary": summary,
        "comparisons": comparisons, "runs": runs,
    }))


if __name__ == "__main__":
    main()
