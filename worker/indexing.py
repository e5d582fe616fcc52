"""Neighbour tables for models stored without one: word2vec files imported through the API.

A trained model gets its table inside its training job (`worker.runner`). An import is saved
by the API at once, and the API then asks a worker for the table with a `w2v.index_model`
message: the build takes tens of seconds of CPU for 100,000 words, which belongs on a worker,
at the worker's lowered priority, not in the process answering queries. Until the table is
in place the model answers every query by searching, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from model import ModelFormatError, load_model, save_model
from model.neighbours import build_neighbours
from model.store import META_FILE, VECTORS_FILE, VOCAB_FILE, read_meta
from worker.settings import WorkerSettings
from worker.storage import StoreLayout, is_id

log = logging.getLogger(__name__)


def index_stored_model(
    settings: WorkerSettings, layout: StoreLayout, model_id: str, should_stop: Callable[[], bool] | None = None
) -> str:
    """Build and attach the neighbour table of a stored model; returns what happened, in words.

    The model directory is replaced in one step, and only while it still exists: a model
    deleted during the build stays deleted. `should_stop` is polled between blocks; when it
    says stop, `TrainingCancelled` propagates and nothing is written.
    """
    if not is_id(model_id):
        return "not a model id"
    if not settings.neighbour_words or not settings.neighbour_topn:
        return "not wanted (W2V_NEIGHBOUR_WORDS or W2V_NEIGHBOUR_TOPN is 0)"
    path = layout.model_dir(model_id)
    if not layout.is_plain_dir(path):  # gone, or a symlink planted in the store: not followed
        return "model gone"
    files = [path / name for name in (META_FILE, VECTORS_FILE, VOCAB_FILE)]
    if not all(layout.is_plain_file(f) for f in files):
        return "not indexed: a model file is missing or is not a plain file in the store"
    try:
        if read_meta(path).get("neighbours"):
            return "already indexed"
        model = load_model(path)
    except ModelFormatError as exc:
        if not path.is_dir():
            return "model gone"  # deleted between the check and the read
        raise ModelFormatError(f"model {model_id} cannot be indexed: {exc}") from exc
    started = time.monotonic()
    table = build_neighbours(
        model.vectors,
        k=settings.neighbour_topn,
        words=settings.neighbour_words,
        seconds=settings.neighbour_seconds,
        should_stop=should_stop,
    )
    if table is None:
        return "too small to index"
    model.vectors.attach_neighbours(table)
    if not save_model(path, model, only_if_exists=True):
        return "model deleted while indexing; nothing written"
    return f"indexed: {table.n_words} words x {table.k} neighbours in {time.monotonic() - started:.1f} s"
