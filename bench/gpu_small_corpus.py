"""How the CUDA Hogwild engine learns a small corpus, by how many warps train it at once.

A small corpus has too few sentences to keep a GPU's thousands of warps apart: they all
train at once and lose each other's updates to the same rows. `SMALL_CORPUS_SCALE`
(model/cuda_kernel.py) narrows the grid on such corpora. This script trains gensim's Lee
corpus (58 k words) on the GPU with several numbers of warps, the shipped rule among them,
and on the CPU, and prints each one's losses and how far its neighbour lists agree with the
CPU engine's. With `--mid-words N ...` it then does the same for gensim's Wikipedia sample
repeated to N words, with speed and the analogy and word-pair scores instead. Prints tables
and, last, one JSON line. Run by bench/gpu.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FULL = -1  # as many warps as the grid holds: no narrowing
SHIPPED = 0  # the shipped rule


@contextmanager
def warps_set(warps: int) -> Iterator[Callable[[int, int, int], int]]:
    """Launches of `warps` warps (FULL, SHIPPED or a number); yields the rule in force."""
    import model.cuda_kernel as cuda_kernel

    shipped = cuda_kernel.grid_blocks

    def fixed(multiprocessors: int, per_block: int, epoch_words: int) -> int:
        if warps == FULL:
            return max(1, multiprocessors * cuda_kernel.GRID_WARPS_PER_SM // per_block)
        return max(1, warps // per_block)

    rule = shipped if warps == SHIPPED else fixed
    cuda_kernel.grid_blocks = rule  # type: ignore[assignment]
    try:
        yield rule
    finally:
        cuda_kernel.grid_blocks = shipped  # type: ignore[assignment]


def _label(warps: int) -> str:
    return {FULL: "full grid", SHIPPED: "shipped"}.get(warps, f"{warps:,}")


def _sms() -> int:
    import cupy as cp

    return int(cp.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"])


def lee(settings: list[int]) -> tuple[list[float], list[dict[str, Any]]]:
    from gensim.test.utils import datapath
    from gensim.utils import simple_preprocess

    from model import TrainConfig, train
    from tests.conftest import neighbour_overlap

    with open(datapath("lee_background.cor"), encoding="utf-8") as fh:
        sentences = [simple_preprocess(line) for line in fh]
    kwargs: dict[str, Any] = dict(seed=3, epochs=5)
    cpu = train(sentences, TrainConfig(device="cpu", threads=1, **kwargs))
    cpu_losses = cpu.meta["training"]["epoch_losses"]
    probe = cpu.vectors.words[50:80]
    print(f"Lee corpus, {cpu.meta['corpus']['raw_words']:,} words; CPU losses {[round(x, 3) for x in cpu_losses]}",
          flush=True)
    print(f"{'warps':>10}{'launched':>10}{'first loss':>12}{'last loss':>11}{'overlap':>9}{'seconds':>9}", flush=True)
    rows = []
    for warps in settings:
        with warps_set(warps) as rule:
            t0 = time.perf_counter()
            gpu = train(sentences, TrainConfig(device="cuda", **kwargs))
            seconds = time.perf_counter() - t0
        launched = rule(_sms(), 8, gpu.meta["corpus"]["vocab_words"]) * 8  # dim 100: 8 warps a block
        losses = gpu.meta["training"]["epoch_losses"]
        overlap = neighbour_overlap(cpu.vectors, gpu.vectors, probe)
        rows.append({"warps": _label(warps), "launched_warps": launched, "epoch_losses": losses,
                     "overlap_with_cpu": overlap, "seconds": seconds})
        print(f"{_label(warps):>10}{launched:>10,}{losses[0]:>12.3f}{losses[-1]:>11.3f}{overlap:>9.3f}{seconds:>9.2f}",
              flush=True)
    return cpu_losses, rows


def mid_sized(words: int, settings: list[int]) -> list[dict[str, Any]]:
    """Speed and scores on a repeated Wikipedia sample, beside the CPU engine on every core."""
    import numpy as np

    from bench.corpora import DATA_DIR, repeated
    from bench.train_vs_gensim import SETTINGS
    from bench.train_vs_gensim import _evaluate as scores
    from model import TrainConfig, train

    corpus = repeated(DATA_DIR / "enwiki-sample.txt", words)
    print(f"{corpus.name}, settings {SETTINGS}", flush=True)
    print(f"{'warps':>10}{'launched':>10}{'training w/s':>15}{'analogy %':>11}{'WS353':>8}{'SimLex':>8}", flush=True)
    rows = []
    for warps in [None, *settings]:  # None: the CPU engine
        device = "cpu" if warps is None else "cuda"
        with warps_set(SHIPPED if warps is None else warps) as rule:
            m = train(corpus, TrainConfig(device=device, **SETTINGS))  # type: ignore[arg-type]
        t = m.meta["training"]
        rate = m.meta["corpus"]["raw_words"] * SETTINGS["epochs"] / (t["seconds"] - t["corpus_seconds"])
        launched = 0 if warps is None else rule(_sms(), 8, m.meta["corpus"]["vocab_words"]) * 8
        label = "CPU" if warps is None else _label(warps)
        row = {"words": words, "warps": label, "launched_warps": launched or None, "train_words_per_sec": rate,
               **scores(m.vectors.words, np.asarray(m.vectors.vectors))}
        rows.append(row)
        print(f"{label:>10}{launched or '-':>10}{rate:>15,.0f}{row['analogy']:>11.2f}{row['ws353']:>8.3f}"
              f"{row['simlex']:>8.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warps", type=int, nargs="+", default=[FULL, 192, 48, 16, SHIPPED],
                        help=f"numbers of warps to train Lee with ({FULL}: the full grid, {SHIPPED}: the shipped rule)")
    parser.add_argument("--mid-words", type=int, nargs="*", default=[], help="also these repeated-Wikipedia sizes")
    parser.add_argument("--mid-warps", type=int, nargs="+", default=[FULL, SHIPPED])
    args = parser.parse_args()
    cpu_losses, rows = lee(args.warps)
    mid = [r for words in args.mid_words for r in mid_sized(words, args.mid_warps)]
    print(json.dumps({"benchmark": "gpu_small_corpus", "cpu_epoch_losses": cpu_losses, "runs": rows,
                      "mid_sized": mid}))


if __name__ == "__main__":
    main()
