"""Query speed on a 100k x 100 store: this project's `Vectors` vs gensim's `KeyedVectors`.

Same random vectors, same random query words, same process. Reports single-query
`most_similar` latency and throughput for both, and our batch-of-64 throughput as a
multiple of our single-query throughput. The three are measured in alternating rounds (64
single queries each, then the same 64 as one batch), so a noisy neighbour on a shared
machine slows all three alike instead of skewing the ratios. Each round runs gensim first
and then pauses, because OpenBLAS's threads keep spinning on the cores for up to ~0.1 s
after gensim's products and would slow whatever ran next.

A fourth row, `ours_table`, answers the same single queries from the neighbour table a
worker saves with every trained model (`model/neighbours.py`, top 20 of every word; its
build time is reported too): the path a one-word query takes in the service. The other
rows search, as every query without a table (or beyond it) does. Prints a table and, last,
one JSON line.

    python bench/query_vs_gensim.py [--words 100000] [--dim 100] [--queries 2000] [--no-table]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


_BLAS_SPIN_S = 0.2


def _time_each(fn: Callable[[Any], object], items: Iterable[Any]) -> list[float]:
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    from gensim.models import KeyedVectors

    from bench import cpu_name
    from model import Vectors

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--topn", type=int, default=10)
    parser.add_argument("--no-table", action="store_true", help="skip the neighbour-table row (saves its build)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(args.words)]
    matrix = rng.normal(size=(args.words, args.dim)).astype(np.float32)
    ours = Vectors(words, matrix)
    ref = KeyedVectors(args.dim)
    ref.add_vectors(words, matrix)
    queries = [words[i] for i in rng.integers(0, args.words, size=args.queries)]

    # Build both norm caches (and our int8 copy, as the service does at load) and warm up.
    ours.int8_rows  # noqa: B018
    ours.most_similar(queries[0], topn=args.topn)
    # The first batch compiles the batch kernels (VNNI CPUs) and lays out their copy of the rows.
    ours.most_similar_batch(queries[: args.batch], topn=args.topn)
    ref.most_similar(queries[0], topn=args.topn)
    indexed, table_build_s = None, None
    if not args.no_table:
        from model.neighbours import build_neighbours

        indexed = Vectors(words, matrix)
        started = time.perf_counter()
        indexed.attach_neighbours(build_neighbours(indexed, k=20))
        table_build_s = time.perf_counter() - started
        assert indexed.most_similar(queries[0], topn=args.topn) == ours.most_similar(queries[0], topn=args.topn)

    # Everything set up so far (both libraries, both stores) stays out of the collector's
    # passes, which would otherwise stall whichever query happens to trigger one.
    gc.collect()
    gc.freeze()
    ours_lat: list[float] = []
    ref_lat: list[float] = []
    batch_lat: list[float] = []
    table_lat: list[float] = []
    for start in range(0, len(queries) - args.batch + 1, args.batch):
        words_ = queries[start : start + args.batch]
        ref_lat += _time_each(lambda w: ref.most_similar(w, topn=args.topn), words_)
        # OpenBLAS's threads spin for up to ~0.1 s after gensim's products before they sleep,
        # and would take a core from whatever runs next.
        time.sleep(_BLAS_SPIN_S)
        ours_lat += _time_each(lambda w: ours.most_similar(w, topn=args.topn), words_)
        batch_lat += _time_each(lambda b: ours.most_similar_batch(b, topn=args.topn), [words_])
        if indexed is not None:
            table_lat += _time_each(lambda w: indexed.most_similar(w, topn=args.topn), words_)

    def stats(lat: list[float], per: int = 1) -> dict[str, float]:
        ms = sorted(x * 1000 for x in lat)
        return {
            "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "queries_per_sec": per * len(lat) / sum(lat),
        }

    result = {
        "ours_single": stats(ours_lat),
        "gensim_single": stats(ref_lat),
        f"ours_batch{args.batch}": stats(batch_lat, args.batch),
    }
    if table_lat:
        result["ours_table"] = stats(table_lat)
    single_ratio = result["ours_single"]["queries_per_sec"] / result["gensim_single"]["queries_per_sec"]
    batch_ratio = result[f"ours_batch{args.batch}"]["queries_per_sec"] / result["ours_single"]["queries_per_sec"]
    kernel = "AVX-512 VNNI kernel" if ours._packed is not None else "int8 scan + BLAS batches"
    print(f"store {args.words:,} x {args.dim}, top-{args.topn}, {args.queries} random query words; ours: {kernel}")
    print(f"{'mode':<16}{'queries/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for name, s in result.items():
        print(f"{name:<16}{s['queries_per_sec']:>12,.0f}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}")
    print(f"single query, ours vs gensim: x{single_ratio:.2f}; batch of {args.batch} vs our single: x{batch_ratio:.1f}")
    table_ratio = None
    if table_lat:
        table_ratio = result["ours_table"]["queries_per_sec"] / result["gensim_single"]["queries_per_sec"]
        print(f"one-word query, neighbour table vs gensim: x{table_ratio:,.0f} (built in {table_build_s:.0f} s)")
    print(
        json.dumps(
            {
                "benchmark": "query_vs_gensim",
                "words": args.words,
                "dim": args.dim,
                "topn": args.topn,
                "search_threads": ours.search_threads,
                "cpus": os.cpu_count(),
                "cpu": cpu_name(),
                "vnni_kernel": ours._packed is not None,
                "results": result,
                "single_speed_ratio_vs_gensim": single_ratio,
                "batch_vs_single_ratio": batch_ratio,
                "table_speed_ratio_vs_gensim": table_ratio,
                "table_build_s": table_build_s,
            }
        )
    )


if __name__ == "__main__":
    main()
