"""Building the neighbour table (`model/neighbours.py`) against gensim answering the same words.

A worker builds the exact top 20 of the most frequent words after training, so that one-word
queries are lookups. This times that build for three kinds of store, by each route the build
can take, and beside it gensim's `KeyedVectors.most_similar(word, topn=20)` for the same
words (timed on a sample and scaled to all of them): what answering each word once costs
without a table.

- `random`: Gaussian vectors, no structure: the int8 kernel's best case.
- `crowded`: vectors sharing one dominant direction (cosines around 0.97), as a little-trained
  model on text with little structure has them; the int8 kernel cannot separate the top 20
  and hands most queries back to be scored again in float32.
- `trained`: this project's model of the Wikipedia sample (`bench/corpora.py`), min count 1.

Routes: `auto` is what ships (the VNNI kernel, unless its first chunk shows a crowded model,
then float32); `vnni` keeps the kernel whatever the crowd; `float32` is the route of CPUs
without AVX-512 VNNI. Every route's table is checked equal to `auto`'s, row for row and bit
for bit. Prints a table and, last, one JSON line (also written to --json).

    python bench/build_neighbours.py [--vocab 200000] [--words 20000] [--json bench/results/build_neighbours.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_TOPN = 20


def _stores(vocab: int, dim: int) -> dict[str, Any]:
    from bench.corpora import wiki_sample
    from model import TrainConfig, Vectors, train

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(vocab)]
    counts = np.arange(vocab, 0, -1)
    shared = rng.standard_normal(dim).astype(np.float32)
    noise = rng.standard_normal((vocab, dim)).astype(np.float32)
    trained = train(str(wiki_sample()), TrainConfig(min_count=1, seed=1, threads=os.cpu_count() or 1)).vectors
    return {
        "random": Vectors(words, noise, counts),
        "crowded": Vectors(words, shared + 0.25 * noise / np.sqrt(dim) * np.linalg.norm(shared), counts),
        "trained": Vectors(trained.words, trained.vectors, trained.counts),
    }


def _build(vectors: Any, words: int, route: str) -> tuple[float, Any]:
    from model import Vectors, neighbours, vnni_search

    fresh = Vectors(vectors.words, vectors.vectors, vectors.counts)  # no cached unit or int8 rows
    saved = vnni_search.available, neighbours._CROWDED_SHARE
    try:
        if route == "float32":
            vnni_search.available = lambda: False  # type: ignore[assignment]
        elif route == "vnni":
            neighbours._CROWDED_SHARE = float("inf")
        start = time.perf_counter()
        table = neighbours.build_neighbours(fresh, k=_TOPN, words=words)
        return time.perf_counter() - start, table
    finally:
        vnni_search.available, neighbours._CROWDED_SHARE = saved


def _gensim_seconds(vectors: Any, words: int, sample: int) -> float:
    """gensim's time for one `most_similar(word, topn=20)` per indexed word, from a sample."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vectors.vector_size)
    kv.add_vectors(vectors.words, vectors.vectors)
    kv.fill_norms()
    picked = np.random.default_rng(1).choice(min(words, len(vectors)), size=sample, replace=False)
    kv.most_similar(vectors.words[0], topn=_TOPN)  # warm
    start = time.perf_counter()
    for row in picked:
        kv.most_similar(vectors.words[int(row)], topn=_TOPN)
    return (time.perf_counter() - start) / sample * min(words, len(vectors))


def main() -> None:
    from bench import cpu_name
    from model import vnni_search

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=200_000, help="words in the random and crowded stores")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--words", type=int, default=20_000, help="most frequent words to index")
    parser.add_argument("--gensim-sample", type=int, default=300, help="words gensim answers, scaled to --words")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    routes = ["auto", "vnni", "float32"] if vnni_search.available() else ["auto", "float32"]
    rows: list[dict[str, Any]] = []
    stores = _stores(args.vocab, args.dim)
    for route in routes:  # loads each route's compiled kernels before anything is timed
        _build(stores["random"], 600, route)
    for kind, vectors in stores.items():
        n = min(args.words, len(vectors))
        gensim_s = _gensim_seconds(vectors, n, min(args.gensim_sample, n))
        reference = None
        for route in routes:
            seconds, table = _build(vectors, n, route)
            if reference is None:
                reference = table
            else:
                np.testing.assert_array_equal(table.rows, reference.rows)
                np.testing.assert_array_equal(table.scores, reference.scores)
            rows.append({
                "store": kind, "vocab": len(vectors), "words": n, "route": route, "seconds": round(seconds, 3),
                "words_per_s": round(n / seconds), "gensim_seconds": round(gensim_s, 3),
                "gensim_over_ours": round(gensim_s / seconds, 2),
            })  # fmt: skip
            print(f"{kind:8s} {route:8s} {seconds:8.2f} s", file=sys.stderr, flush=True)

    print(f"\nmachine: {cpu_name()}, {os.cpu_count()} cores; dim {args.dim}, top {_TOPN}; "
          f"gensim: most_similar per word, {args.gensim_sample} sampled, scaled\n")  # fmt: skip
    print("| store | vocabulary | words indexed | route | build s | words/s | gensim s, same words | gensim ÷ ours |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['store']} | {r['vocab']:,} | {r['words']:,} | {r['route']} | {r['seconds']:.2f} | "
            f"{r['words_per_s']:,} | {r['gensim_seconds']:.1f} | x{r['gensim_over_ours']:.1f} |"
        )
    result = {"machine": cpu_name(), "python": platform.python_version(), "dim": args.dim, "rows": rows}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
