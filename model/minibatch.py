"""Minibatch CBOW negative sampling with array operations: the engine for CuPy (and NumPy).

The token stream lives on the device for the whole job. Each step takes `batch` centre
words of the subsampled stream, gathers their shrunk windows (never crossing a sentence),
and updates both weight matrices through the layers in `model/layers.py`.

Frequent words appear many times in one batch, as centres, context words and negatives.
A plain scatter-add applies the sum of all those stale gradients at once and overshoots
(the large-batch trap); averaging them instead starves frequent words of updates. Each
row's summed update is divided by the square root of its count in the step, which
measured close to per-word SGD quality on the Wikipedia sample (bench/RESULTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from model.backend import array_module, free_device_memory
from model.errors import TrainingCancelled
from model.layers import Embedding, EmbeddingDot, SigmoidCrossEntropy, scatter_add

if TYPE_CHECKING:
    from model.trainer import _Run, _Tracker

Array = Any

DEFAULT_BATCH = 1024  # centre words per step
# Loss and word counts stay on the device and are read back (a host round trip, which waits
# for the GPU) about this often, not once per step.
READBACK_SECONDS = 0.5


def occurrence_scale(xp: Any, idx: Array, n_rows: int, weights: Array | None = None) -> Array:
    """1 / sqrt(times each entry's row occurs among `idx`), shaped like `idx`."""
    flat = idx.ravel()
    w = None if weights is None else weights.ravel()
    counts = xp.bincount(flat, weights=w, minlength=n_rows)
    return (1.0 / xp.sqrt(xp.maximum(counts[flat], 1.0))).reshape(idx.shape).astype(xp.float32)


class MinibatchEngine:
    def __init__(self, run: _Run, device: str):
        self.run = run
        self.device = device
        xp = self.xp = array_module(device)
        cfg = run.cfg
        self.batch = cfg.batch_words or DEFAULT_BATCH
        self.W_in = xp.asarray(run.syn0)
        self.W_out = xp.asarray(run.syn1neg)
        self.tokens = xp.asarray(run.corpus.tokens)
        lengths = np.diff(run.corpus.offsets)
        self.sentence = xp.asarray(np.repeat(np.arange(lengths.size, dtype=np.int32), lengths))
        self.keep_prob = xp.asarray(run.keep.astype(np.float64) / float(1 << 32))
        self.accept = xp.asarray(run.sampler.accept)
        self.alias = xp.asarray(run.sampler.alias)
        w = cfg.window
        self.offsets = xp.asarray(np.r_[np.arange(-w, 0), np.arange(1, w + 1)].astype(np.int64))
        self.abs_offsets = xp.abs(self.offsets)
        # With subwords a context word stands for several input rows (model/subwords.py).
        self.subwords = cfg.subwords
        self.in_offsets = xp.asarray(run.inputs.offsets)
        self.in_rows = xp.asarray(run.inputs.rows)

    def _bag_mean(self, embed: Embedding, ctx: Array, valid: Array) -> tuple[Array, Array]:
        """Hidden vectors as the mean of every input row of every valid context word, and
        the batch row each looked-up input row belongs to."""
        xp = self.xp
        lens = (self.in_offsets[ctx + 1] - self.in_offsets[ctx]) * valid
        flat = lens.ravel()
        ends = xp.cumsum(flat)
        entry = xp.arange(int(ends[-1]))  # the step's one host round trip: the number of rows
        pair = xp.searchsorted(ends, entry, side="right")
        within = entry - (ends[pair] - flat[pair])
        rows = self.in_rows[self.in_offsets[ctx.ravel()[pair]] + within]
        bag = pair // ctx.shape[1]
        h = xp.zeros((ctx.shape[0], self.W_in.shape[1]), dtype=xp.float32)
        scatter_add(h, bag, embed.forward(rows))
        h /= xp.maximum(lens.sum(axis=1), 1)[:, None].astype(xp.float32)
        return h, bag

    def run_epoch(self, epoch: int, tracker: _Tracker, should_stop: Callable[[], bool] | None) -> None:
        xp, run, cfg = self.xp, self.run, self.run.cfg
        rs = xp.random.RandomState(run.cfg.seed * 1000 + epoch)
        n_vocab = self.W_out.shape[0]
        n_inputs = self.W_in.shape[0]
        keep = rs.random_sample(self.tokens.size) < self.keep_prob[self.tokens]
        kept = xp.nonzero(keep)[0]
        kt = self.tokens[kept]
        ks = self.sentence[kept]
        n = int(kt.size)
        total = run.corpus.n_words
        raw_total = run.corpus.n_raw_words
        embed_in = Embedding(self.W_in)
        dot = EmbeddingDot(self.W_out)
        loss_layer = SigmoidCrossEntropy()
        loss_sum, trained_sum = xp.zeros((), dtype=xp.float64), xp.zeros((), dtype=xp.int64)
        raw_reported = 0
        last_readback = time.perf_counter()
        for b0 in range(0, n, self.batch):
            b1 = min(b0 + self.batch, n)
            # The learning rate follows the position in the (un-subsampled) stream, as in word2vec.c.
            alpha = run.alpha_at(epoch, round(b0 / max(n, 1) * total))
            pos = xp.arange(b0, b1)
            shrink = rs.randint(0, cfg.window, size=b1 - b0)
            ctx_pos = pos[:, None] + self.offsets[None, :]
            inside = (ctx_pos >= 0) & (ctx_pos < n)
            ctx_pos = xp.clip(ctx_pos, 0, n - 1)
            valid = inside & (self.abs_offsets[None, :] <= (cfg.window - shrink)[:, None])
            valid &= ks[ctx_pos] == ks[pos][:, None]
            mask = valid.astype(xp.float32)
            count = mask.sum(axis=1)
            has_ctx = count > 0
            ctx = kt[ctx_pos]
            if self.subwords:
                h, bag = self._bag_mean(embed_in, ctx, valid)
            else:
                h = (embed_in.forward(ctx) * mask[:, :, None]).sum(axis=1) / xp.maximum(count, 1)[:, None]

            k = cfg.negative
            draw = rs.randint(0, n_vocab, size=(b1 - b0, k))
            coin = rs.random_sample((b1 - b0, k))
            negatives = xp.where(coin < self.accept[draw], draw, self.alias[draw])
            centre = kt[b0:b1]
            targets = xp.concatenate([centre[:, None], negatives], axis=1)
            labels = xp.zeros(targets.shape, dtype=xp.float32)
            labels[:, 0] = 1.0
            weights = ((targets != centre[:, None]) | (labels > 0)) & has_ctx[:, None]
            weights = weights.astype(xp.float32)

            scores = dot.forward(h, targets)
            loss_sum += loss_layer.forward(scores, labels, weights)
            dscore = loss_layer.backward()
            dh, d_rows = dot.backward(dscore)
            d_rows *= occurrence_scale(xp, targets, n_vocab, weights)[:, :, None]
            dot.embed.sgd_step(d_rows, alpha)
            # Full error to every context word (each of its rows, with subwords), as word2vec.c
            # and fastText do, scaled for repeats like above.
            if self.subwords:
                embed_in.sgd_step(dh[bag] * occurrence_scale(xp, embed_in.idx, n_inputs)[:, None], alpha)
            else:
                d_ctx = dh[:, None, :] * (mask * occurrence_scale(xp, ctx, n_vocab, mask))[:, :, None]
                embed_in.sgd_step(d_ctx, alpha)

            trained_sum += has_ctx.sum()
            if b1 == n or time.perf_counter() - last_readback >= READBACK_SECONDS:
                raw_done = round(b1 / n * raw_total)  # so that an epoch adds up to the corpus exactly
                tracker.add(raw_done - raw_reported, int(trained_sum), float(loss_sum), alpha)
                loss_sum.fill(0)
                trained_sum.fill(0)
                raw_reported = raw_done
                last_readback = time.perf_counter()
                tracker.report()
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training was cancelled")

    def sync_to_host(self) -> None:
        if self.device == "cuda":
            self.run.syn0[...] = self.W_in.get()
            self.run.syn1neg[...] = self.W_out.get()

    def close(self) -> None:
        if self.device == "cuda":
            del self.W_in, self.W_out, self.tokens, self.sentence, self.in_offsets, self.in_rows
            free_device_memory()
