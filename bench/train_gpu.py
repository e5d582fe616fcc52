"""GPU training throughput and quality, beside gensim on the same corpus and settings.

Meant for a machine with a CUDA GPU (see bench/gpu.sh). Builds a corpus of at least
`--words` words by repeating gensim's Wikipedia sample, trains on the GPU with each engine,
trains gensim on the CPU cores, and scores all models with the same evaluator. Prints a
table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_vs_gensim import GENSIM_ALPHA, OURS_TOOLS, SETTINGS  # noqa: E402 - after the sys.path entry above
from bench.train_vs_gensim import _evaluate as _scores  # noqa: E402


def ours(corpus: Path, engine: str, epochs: int, alpha: float | None = None, subwords: bool = False) -> dict[str, Any]:
    import cupy as cp
    import numpy as np

    from model import TrainConfig, train

    pool = cp.get_default_memory_pool()
    peak = [0]

    def watch(_: Any) -> None:
        peak[0] = max(peak[0], pool.total_bytes())

    t0 = time.perf_counter()
    extra: dict[str, Any] = {} if alpha is None else {"alpha": alpha}
    if subwords:
        extra.update(OURS_TOOLS["ours-subwords"])
    m = train(corpus, TrainConfig(device="cuda", engine=engine, **{**SETTINGS, "epochs": epochs}, **extra),  # type: ignore[arg-type]
              progress=watch, progress_interval=0.5)
    seconds = time.perf_counter() - t0
    t = m.meta["training"]
    return {
        "tool": f"ours-cuda-{engine}" + ("" if alpha is None else f"-alpha{alpha}") + ("-subwords" if subwords else ""),
        "epochs": epochs, "seconds": seconds,
        "words_per_sec": m.meta["corpus"]["raw_words"] * epochs / seconds,
        # Without reading and tokenising the text (CPU work, done once per job).
        "corpus_seconds": t["corpus_seconds"],
        "train_words_per_sec": m.meta["corpus"]["raw_words"] * epochs / (seconds - t["corpus_seconds"]),
        "peak_gpu_mb": peak[0] / 2**20, "final_loss": t["final_loss"],
        **_scores(m.vectors.words, np.asarray(m.vectors.vectors)),
    }


def gensim_cpu(corpus: Path, workers: int) -> dict[str, Any]:
    from gensim.models import Word2Vec

    t0 = time.perf_counter()
    g = Word2Vec(sg=0, hs=0, seed=1, workers=workers, **SETTINGS)
    g.build_vocab(corpus_file=str(corpus))
    t1 = time.perf_counter()
    g.train(corpus_file=str(corpus), total_words=g.corpus_total_words, epochs=g.epochs)
    seconds = time.perf_counter() - t0
    return {
        "tool": f"gensim-cpu-{workers}", "epochs": SETTINGS["epochs"], "seconds": seconds,
        "words_per_sec": g.corpus_total_words * SETTINGS["epochs"] / seconds,
        "corpus_seconds": t1 - t0,
        "train_words_per_sec": g.corpus_total_words * SETTINGS["epochs"] / (seconds - (t1 - t0)),
        **_scores(list(g.wv.index_to_key), g.wv.vectors),
    }


def judge(runs: list[dict[str, Any]]) -> None:
    """Adds to each of our rows not compared yet its comparison with gensim's, and prints it."""
    g = next((x for x in runs if x["tool"].startswith("gensim")), None)
    for r in runs:
        if g is not None and r["tool"].startswith("ours") and "vs_gensim" not in r:
            # The bar (issue: GPU training): >= 20 M raw words/s of training, analogy >= gensim
            # - 0.5 points, each word-pair Spearman >= gensim - 0.01. Training words/s leaves out
            # tokenising the text, as gensim's own words/s leaves out build_vocab; the whole
            # call's rate is printed beside it.
            d = {k: r[k] - g[k] for k in ("analogy", "ws353", "simlex")}
            # Subwords are no part of the bar: their row shows what n-grams cost and buy.
            plain = "subwords" not in r["tool"]
            fast = r["train_words_per_sec"] >= 20e6
            eps = 1e-9  # a difference exactly at the bar is within it, whatever the float rounding
            good = d["analogy"] >= -0.5 - eps and min(d["ws353"], d["simlex"]) >= -0.01 - eps
            r["vs_gensim"] = {
                "speed_ratio": r["words_per_sec"] / g["words_per_sec"],
                "train_speed_ratio": r["train_words_per_sec"] / g["train_words_per_sec"],
                **d,
            }
            if plain:
                r["vs_gensim"].update(speed_bar_met=fast, quality_bar_met=good, bar_met=fast and good)
            v = r["vs_gensim"]
            print(f"{r['tool']} vs {g['tool']}: training {r['train_words_per_sec'] / 1e6:.1f} M words/s "
                  f"(x{v['train_speed_ratio']:.1f}), whole call {r['words_per_sec'] / 1e6:.1f} M words/s "
                  f"(x{v['speed_ratio']:.1f}); analogy {d['analogy']:+.2f} points, WS353 {d['ws353']:+.3f}, "
                  f"SimLex {d['simlex']:+.3f}"
                  + (f"; speed bar {'met' if fast else 'NOT met'}, quality bar {'met' if good else 'NOT met'}"
                     if plain else " (subwords: not a row of the bar)"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=50_000_000)
    parser.add_argument("--engines", nargs="+", default=["hogwild", "minibatch"])
    parser.add_argument("--minibatch-epochs", type=int, default=1, help="the array engine is slower: fewer epochs")
    parser.add_argument("--gensim-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-gensim", action="store_true")
    parser.add_argument("--no-subwords", action="store_true", help="leave out the Hogwild run with subwords")
    parser.add_argument("--json", type=Path, help="also write the JSON here, rewritten as each row ends")
    args = parser.parse_args()

    import cupy as cp

    from bench.corpora import DATA_DIR, repeated

    corpus = repeated(DATA_DIR / "enwiki-sample.txt", args.words)
    props = cp.cuda.runtime.getDeviceProperties(0)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    # Compile the kernels outside the timed runs.
    small = repeated(DATA_DIR / "enwiki-sample.txt", 1, DATA_DIR / "warmup.txt")
    for engine in args.engines:
        ours(small, engine, 1)
    subwords = "hogwild" in args.engines and not args.no_subwords
    if subwords:
        ours(small, "hogwild", 1, subwords=True)

    # Each row is printed as its run ends, the Hogwild engine and gensim first: a run cut
    # short by the device's time limit still leaves the figures the bar is about.
    print(f"{device}; corpus {corpus.name}; settings {SETTINGS}", flush=True)
    # words/s: raw words x epochs / the whole call; training words/s leaves out reading the corpus.
    print(f"{'tool':<30}{'epochs':>7}{'words/s':>14}{'training w/s':>14}{'seconds':>9}{'GPU MB':>8}"
          f"{'analogy %':>11}{'WS353':>8}{'SimLex':>8}", flush=True)
    jobs: list[Callable[[], dict[str, Any]]] = []
    if "hogwild" in args.engines:
        jobs.append(lambda: ours(corpus, "hogwild", int(SETTINGS["epochs"])))
    if not args.no_gensim:
        jobs.append(lambda: gensim_cpu(corpus, args.gensim_workers))
    if "hogwild" in args.engines:
        # The corpus repeats one 0.45 M-word text ~100 times, far more passes over the same
        # words than the default learning rate suits (bench/RESULTS.md, "Where the default
        # loses"); at gensim's rate the two tools are compared at the same settings.
        jobs.append(lambda: ours(corpus, "hogwild", int(SETTINGS["epochs"]), alpha=GENSIM_ALPHA))
    jobs += [functools.partial(ours, corpus, e, args.minibatch_epochs) for e in args.engines if e != "hogwild"]
    if subwords:
        # fastText's default character n-grams (3-6): what they cost in speed, and buy in analogies.
        jobs.append(lambda: ours(corpus, "hogwild", int(SETTINGS["epochs"]), subwords=True))
    runs: list[dict[str, Any]] = []

    def report() -> str:
        return json.dumps({"benchmark": "train_gpu", "device": device, "corpus": corpus.name,
                           "settings": SETTINGS, "host": platform.node(), "runs": runs})

    for job in jobs:
        r = job()
        runs.append(r)
        print(f"{r['tool']:<30}{r['epochs']:>7}{r['words_per_sec']:>14,.0f}{r['train_words_per_sec']:>14,.0f}"
              f"{r['seconds']:>9.1f}"
              f"{r.get('peak_gpu_mb', 0):>8.0f}{r['analogy']:>11.2f}{r['ws353']:>8.3f}{r['simlex']:>8.3f}",
              flush=True)
        # Judged and saved row by row: a run cut short by the device's time limit keeps both.
        judge(runs)
        if args.json is not None:
            args.json.write_text(report() + "\n")
    print(report())


if __name__ == "__main__":
    main()
