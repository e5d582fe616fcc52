"""Answer concurrent nearest-neighbour queries together.

Requests that arrive while a batch is being computed wait in a queue and form the next
batch, so a lone request pays no waiting time and a busy server batches as much as its load
allows. `Vectors.most_similar_batch` then picks the cheaper search for the batch's size: the
int8 scan (spread over the scan threads) for a few queries, one float32 matrix product for
many.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

from model import Vectors

log = logging.getLogger(__name__)

Method = Literal["add", "mul"]
Hits = list[tuple[str, float]]


@dataclass
class _Query:
    positive: list[str]
    negative: list[str]
    topn: int
    restrict_vocab: int | None
    method: Method
    future: Future[Hits] = field(default_factory=Future)


def limit_blas_threads(threads: int) -> Callable[[], None]:
    """Cap the BLAS threads of this process; returns the undo.

    BLAS scores large batches (and 3CosMul queries): a second BLAS thread shortens a product a
    little but spins a core while it waits, and a server answers many searches at once.
    Measured on 2 cores (100k x 100 model, when every search was a float32 product): 9.2 ms
    of CPU per /similar with 2 threads, 6.0 ms with 1.
    """
    if threads <= 0:
        return lambda: None
    from threadpoolctl import threadpool_limits

    limiter = threadpool_limits(limits=threads, user_api="blas")
    return limiter.restore_original_limits


class QueryBatcher:
    def __init__(self, vectors: Vectors, *, max_batch: int = 256, name: str = "") -> None:
        self._vectors = vectors
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Query | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(
        self,
        positive: list[str],
        negative: list[str],
        *,
        topn: int,
        restrict_vocab: int | None = None,
        method: Method = "add",
    ) -> Future[Hits]:
        q = _Query(positive, negative, topn, restrict_vocab, method)
        if self._closed:
            # The model was evicted while this request held it; answer on a thread of its own.
            threading.Thread(target=self._answer_one, args=(q,), daemon=True).start()
        else:
            self._queue.put(q)
        return q.future

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            batch = [first] if first is not None else []
            stop = first is None
            while not stop and len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._answer(batch)
        # Queries that raced with close() are still answered.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._answer_one(item)

    def _answer(self, batch: list[_Query]) -> None:
        groups: dict[tuple[int, int | None, Method], list[_Query]] = defaultdict(list)
        for q in batch:
            groups[(q.topn, q.restrict_vocab, q.method)].append(q)
        for (topn, restrict_vocab, method), items in groups.items():
            try:
                results = self._vectors.most_similar_batch(
                    [(q.positive, q.negative) for q in items],
                    topn=topn,
                    restrict_vocab=restrict_vocab,
                    method=method,
                )
            except Exception:
                for q in items:
                    self._answer_one(q)
                continue
            for q, hits in zip(items, results, strict=True):
                q.future.set_result(hits)

    def _answer_one(self, q: _Query) -> None:
        try:
            hits = self._vectors.most_similar_batch(
                [(q.positive, q.negative)], topn=q.topn, restrict_vocab=q.restrict_vocab, method=q.method
            )[0]
        except BaseException as exc:
            q.future.set_exception(exc)
        else:
            q.future.set_result(hits)
