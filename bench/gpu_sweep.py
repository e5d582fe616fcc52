"""Throughput of the CUDA Hogwild kernel across launch shapes, for tuning on a lent GPU.

Trains one epoch of the same corpus (gensim's Wikipedia sample repeated) for each shape:
warps per block (`MAX_WARPS_PER_BLOCK`) and warps in the grid per multiprocessor
(`GRID_WARPS_PER_SM`), the two constants of `model/cuda_kernel.py`. Reports words/s of the
epoch alone (reading the corpus left out) and the epoch's loss, so a shape that trains
faster but worse shows. The first row is the shipped default. Prints a table and, last,
one JSON line. Run by bench/gpu.sh after the main benchmark.

    python bench/gpu_sweep.py [--words 20000000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = [(8, 128), (8, 32), (8, 64), (8, 512), (4, 128), (2, 128)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=20_000_000)
    args = parser.parse_args()

    import model.cuda_kernel as cuda_kernel
    from bench.corpora import DATA_DIR, repeated
    from model import TrainConfig, train

    corpus = repeated(DATA_DIR / "enwiki-sample.txt", args.words)
    cfg = TrainConfig(device="cuda", engine="hogwild", epochs=1, vector_size=100, window=5, negative=5)
    train(repeated(DATA_DIR / "enwiki-sample.txt", 1, DATA_DIR / "warmup.txt"), cfg)  # compile outside timing
    default = (cuda_kernel.MAX_WARPS_PER_BLOCK, cuda_kernel.GRID_WARPS_PER_SM)
    print(f"corpus {corpus.name}, one epoch per shape", flush=True)
    print(f"{'warps/block':>12}{'grid warps/SM':>15}{'epoch words/s':>16}{'loss':>8}", flush=True)
    rows: list[dict[str, Any]] = []
    for warps, grid in SHAPES:
        cuda_kernel.MAX_WARPS_PER_BLOCK, cuda_kernel.GRID_WARPS_PER_SM = warps, grid
        m = train(corpus, cfg)
        t = m.meta["training"]
        rate = m.meta["corpus"]["raw_words"] / (t["seconds"] - t["corpus_seconds"])
        rows.append(
            {"warps_per_block": warps, "grid_warps_per_sm": grid, "epoch_words_per_sec": rate, "loss": t["final_loss"]}
        )
        print(f"{warps:>12}{grid:>15}{rate:>16,.0f}{t['final_loss']:>8.3f}", flush=True)
    print(json.dumps({"benchmark": "gpu_sweep", "corpus": corpus.name, "default": default, "shapes": rows}))


if __name__ == "__main__":
    main()
