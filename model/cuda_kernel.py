"""Per-word CBOW negative-sampling SGD on a CUDA GPU (the algorithm of `cpu_kernel.py`).

One warp trains one sentence at a time, word after word as word2vec.c does, its 32 lanes
splitting the vector dimensions; thousands of warps train different sentences at once on
shared weights (Hogwild, as BlazingText does on GPUs). With subwords, a context word's
input is the rows `model/subwords.py` lists for it (its own and its n-grams'), as in the
CPU kernel; the kernel is then compiled with `SUBWORDS` set, so plain word2vec runs code
with no trace of the indirection. Random numbers come from a hash of
(seed, sentence, position, purpose) rather than a sequential generator, so lanes agree on
every draw without communicating and a launch's draws do not depend on scheduling.

The sampling tables and both weight matrices stay on the device for the whole job, and so
does the token stream when it fits beside them; a corpus too large for the GPU's free memory
stays on the host and each launch uploads its own slice. The host launches one kernel per
slice of the corpus and reads back two numbers (loss, trained words) per slice, for progress
and cancellation.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from model.backend import array_module, free_device_memory
from model.errors import TrainingCancelled

if TYPE_CHECKING:
    from model.trainer import _Run, _Tracker

log = logging.getLogger(__name__)

# word2vec.c's MAX_SENTENCE_LENGTH: longer sentences are trained as consecutive pieces,
# which also keeps a warp's compacted sentence in shared memory.
MAX_GPU_SENTENCE = 1000
WORDS_PER_LAUNCH = 4_000_000  # ~0.2 s at 20 M words/s: progress and cancel stay responsive
SHARED_MEMORY_BYTES = 48 * 1024
# Launch shape (bench/gpu_sweep.py measures others): warps per block, as many as the shared
# memory allows up to this; and warps in the grid per multiprocessor, several times what one
# holds at once, so each loops over many sentences and none idles while others finish.
MAX_WARPS_PER_BLOCK = 8
GRID_WARPS_PER_SM = 128
# Fewer warps on a small corpus. Warps that update the same rows at the same moment lose some
# of each other's updates (Hogwild); a large corpus makes up for it, but a small one trained by
# thousands of warps at once (every document in parallel) learned almost nothing in its first
# epoch on an H200. A corpus of n words gets at most n² / SMALL_CORPUS_SCALE warps: gensim's Lee
# corpus (58 k words) one block of 8, which matched the CPU engine; 1 M words ~3,300; from
# ~2.3 M words an H200's whole grid, which matched it at 5, 20 and 50 M words and ran a third
# faster at 5 M than 1,080 warps (bench/RESULTS.md, "Small corpora").
SMALL_CORPUS_SCALE = 300_000_000
# NVRTC (CuPy's compiler) optimises by default and rejects nvcc's -O flags.
NVRTC_OPTIONS: tuple[str, ...] = ()
# Left free beside the job's arrays when deciding whether the whole corpus fits on the GPU
# (CuPy's pool, cuBLAS workspaces, other processes' growth).
DEVICE_MEMORY_MARGIN = 1 << 30

CUDA_SOURCE = r"""
#define FULL_MASK 0xffffffffu
#ifndef SUBWORDS
#define SUBWORDS 0
#endif

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ unsigned long long draw(unsigned long long base, long long pos, int purpose) {
    return mix64(base ^ mix64(((unsigned long long)pos << 8) | (unsigned long long)purpose));
}

// Negative `d` of the word at `pos`: a uniform draw from the unigram^0.75 alias table.
__device__ __forceinline__ int negative_target(
    unsigned long long base, int pos, int d, int n_vocab,
    const float* __restrict__ alias_accept, const int* __restrict__ alias_index) {
    const unsigned long long r = draw(base, pos, 2 + d);
    const int j = (int)(((r >> 32) * (unsigned long long)n_vocab) >> 32);
    const float coin = (float)(r & 0xffffffffULL) * 2.3283064365386963e-10f;
    return coin < alias_accept[j] ? j : alias_index[j];
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

extern "C" __global__ void cbow_hogwild(
    float* __restrict__ syn0, float* __restrict__ syn1neg,
    const long long* __restrict__ in_offsets, const int* __restrict__ in_rows,
    const int* __restrict__ tokens, const long long token_base, const long long* __restrict__ offsets,
    const long long s_begin, const long long s_end,
    const unsigned long long* __restrict__ keep_threshold,
    const float* __restrict__ alias_accept, const int* __restrict__ alias_index,
    const int n_vocab, const int dim, const int window, const int negative, const int max_len,
    const float alpha_start, const float alpha_end, const long long words_begin, const long long launch_words,
    const unsigned long long seed,
    double* __restrict__ loss_out, unsigned long long* __restrict__ trained_out)
{
    extern __shared__ unsigned char smem[];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps_per_block = blockDim.x >> 5;
    const size_t per_warp = (size_t)max_len * sizeof(int) + 2 * (size_t)dim * sizeof(float);
    unsigned char* mine = smem + per_warp * warp;
    int* buf = (int*)mine;
    float* neu1 = (float*)(mine + (size_t)max_len * sizeof(int));
    float* neu1e = neu1 + dim;

    double loss = 0.0;
    unsigned long long trained = 0;
    const long long n_warps = (long long)gridDim.x * warps_per_block;
    for (long long s = s_begin + (long long)blockIdx.x * warps_per_block + warp; s < s_end; s += n_warps) {
        const long long start = offsets[s];
        const long long stop = offsets[s + 1];
        const unsigned long long base = mix64(seed ^ mix64((unsigned long long)s));
        const float alpha =
            alpha_start + (alpha_end - alpha_start) * (float)(start - words_begin) / (float)launch_words;

        // Subsample 32 words at a time and compact the survivors into buf (order kept).
        int length = 0;
        for (long long i0 = start; i0 < stop; i0 += 32) {
            const long long i = i0 + lane;
            int w = -1;
            bool keep = false;
            if (i < stop) {
                w = tokens[i - token_base];
                keep = keep_threshold[w] > (draw(base, i - start, 0) >> 32);
            }
            const unsigned ballot = __ballot_sync(FULL_MASK, keep);
            if (keep) buf[length + __popc(ballot & ((1u << lane) - 1u))] = w;
            length += __popc(ballot);
        }
        __syncwarp();

        for (int pos = 0; pos < length; pos++) {
            const int word = buf[pos];
            const int reduced = (int)((draw(base, pos, 1) >> 33) % (unsigned long long)window);
            int lo = pos - window + reduced;
            int hi = pos + window - reduced;
            if (lo < 0) lo = 0;
            if (hi > length - 1) hi = length - 1;
            // Input rows in the mean: every position in [lo, hi] but pos itself, one row each
            // or, with subwords, all the rows each word lists.
            int cw = hi - lo;
            if (SUBWORDS) {
                cw = 0;
                for (int c = lo; c <= hi; c++)
                    if (c != pos) cw += (int)(in_offsets[buf[c] + 1] - in_offsets[buf[c]]);
            }
            if (cw <= 0) continue;
            const float inv = 1.0f / (float)cw;
            for (int k = lane; k < dim; k += 32) {
                float acc = 0.0f;
                for (int c = lo; c <= hi; c++) {
                    if (c == pos) continue;
                    if (SUBWORDS) {
                        for (long long r = in_offsets[buf[c]]; r < in_offsets[buf[c] + 1]; r++)
                            acc += syn0[(size_t)in_rows[r] * dim + k];
                    } else {
                        acc += syn0[(size_t)buf[c] * dim + k];
                    }
                }
                neu1[k] = acc * inv;
                neu1e[k] = 0.0f;
            }
            // Lane l draws negative l + 1 up front, so the table lookups of all negatives
            // overlap instead of waiting on each other; the draws are the same either way.
            const int drawn = lane < negative ? negative_target(base, pos, lane + 1, n_vocab, alias_accept, alias_index)
                                              : word;
            for (int d = 0; d <= negative; d++) {
                int target;
                float label;
                if (d == 0) {
                    target = word;
                    label = 1.0f;
                } else {
                    target = d <= 32 ? __shfl_sync(FULL_MASK, drawn, d - 1)
                                     : negative_target(base, pos, d, n_vocab, alias_accept, alias_index);
                    if (target == word) continue;
                    label = 0.0f;
                }
                float* out = syn1neg + (size_t)target * dim;
                float part = 0.0f;
                for (int k = lane; k < dim; k += 32) part += neu1[k] * out[k];
                const float f = warp_sum(part);
                float sig, log_sig;
                if (f >= 0.0f) {
                    const float e = __expf(-f);
                    sig = 1.0f / (1.0f + e);
                    log_sig = -log1pf(e);
                } else {
                    const float e = __expf(f);
                    sig = e / (1.0f + e);
                    log_sig = f - log1pf(e);
                }
                if (lane == 0) loss -= label > 0.0f ? log_sig : (log_sig - f);
                const float g = (label - sig) * alpha;
                for (int k = lane; k < dim; k += 32) {
                    neu1e[k] += g * out[k];
                    out[k] += g * neu1[k];
                }
            }
            // word2vec.c applies the full error to every context word (fastText: every row).
            for (int c = lo; c <= hi; c++) {
                if (c == pos) continue;
                if (SUBWORDS) {
                    for (long long r = in_offsets[buf[c]]; r < in_offsets[buf[c] + 1]; r++) {
                        float* in = syn0 + (size_t)in_rows[r] * dim;
                        for (int k = lane; k < dim; k += 32) in[k] += neu1e[k];
                    }
                } else {
                    float* in = syn0 + (size_t)buf[c] * dim;
                    for (int k = lane; k < dim; k += 32) in[k] += neu1e[k];
                }
            }
            trained++;
        }
        __syncwarp();  // buf is rewritten by the next sentence
    }
    if (lane == 0) {
        atomicAdd(loss_out, loss);
        atomicAdd(trained_out, trained);
    }
}
"""


def kernel_source(subwords: bool) -> str:
    """The kernel's source, for plain word2vec or with subwords."""
    return ("#define SUBWORDS 1\n" if subwords else "") + CUDA_SOURCE


def split_sentences(offsets: np.ndarray, max_len: int = MAX_GPU_SENTENCE) -> np.ndarray:
    """Sentence boundaries with every sentence longer than `max_len` cut into pieces."""
    lengths = np.diff(offsets)
    pieces = np.maximum(1, -(-lengths // max_len))
    starts = np.repeat(offsets[:-1], pieces)
    within = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    starts = starts + within * max_len
    return np.append(starts, offsets[-1]).astype(np.int64)


def grid_blocks(multiprocessors: int, warps_per_block: int, epoch_words: int) -> int:
    """Blocks in a launch: `GRID_WARPS_PER_SM` warps per multiprocessor, or fewer on a small
    corpus (`SMALL_CORPUS_SCALE`), one block at least."""
    warps = min(multiprocessors * GRID_WARPS_PER_SM, epoch_words * epoch_words // SMALL_CORPUS_SCALE)
    return max(1, warps // warps_per_block)


class CudaHogwildEngine:
    def __init__(self, run: _Run, device: str):
        from model.trainer import _job_bounds

        self.run = run
        cp = self.cp = array_module(device)
        cfg = run.cfg
        self.dim = cfg.vector_size
        self.W_in = cp.asarray(run.syn0)
        self.W_out = cp.asarray(run.syn1neg)
        if cfg.subwords:
            self.in_offsets, self.in_rows = cp.asarray(run.inputs.offsets), cp.asarray(run.inputs.rows)
        else:  # unread by the plain kernel, whose signature is the same: one entry each
            self.in_offsets, self.in_rows = cp.zeros(1, dtype=np.int64), cp.zeros(1, dtype=np.int32)
        self.host_offsets = split_sentences(run.corpus.offsets)
        self.offsets = cp.asarray(self.host_offsets)
        self.keep = cp.asarray(run.keep)
        self.accept = cp.asarray(run.sampler.accept)
        self.alias = cp.asarray(run.sampler.alias)
        self.cuts = _job_bounds(self.host_offsets, WORDS_PER_LAUNCH)  # sentence indices where launches start
        tokens = run.corpus.tokens
        free, _total = cp.cuda.runtime.memGetInfo()
        # Resident: uploaded once for every epoch. Streamed: one launch's slice at a time,
        # into a buffer sized for the largest launch.
        self.resident = tokens.nbytes + DEVICE_MEMORY_MARGIN <= free
        if self.resident:
            self.tokens = cp.asarray(tokens)
        else:
            largest = int(np.diff(self.host_offsets[self.cuts]).max(initial=1))
            self.tokens = cp.empty(max(largest, 1), dtype=np.int32)
            log.info(
                "corpus of %d tokens (%.1f GB) does not fit beside the model in the GPU's %.1f GB free: "
                "streaming it in %d-word slices",
                tokens.size,
                tokens.nbytes / 1e9,
                free / 1e9,
                largest,
            )
        self.kernel = cp.RawKernel(kernel_source(cfg.subwords), "cbow_hogwild", options=NVRTC_OPTIONS)
        per_warp = MAX_GPU_SENTENCE * 4 + 2 * self.dim * 4
        self.warps = max(1, min(MAX_WARPS_PER_BLOCK, SHARED_MEMORY_BYTES // per_warp))
        self.shared = per_warp * self.warps
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        self.blocks = grid_blocks(int(props["multiProcessorCount"]), self.warps, run.corpus.n_words)
        self.loss = cp.zeros(1, dtype=cp.float64)
        self.trained = cp.zeros(1, dtype=cp.uint64)

    def _tokens_for(self, w0: int, w1: int) -> tuple[Any, int]:
        """The token array a launch over words w0..w1 reads, and the corpus index of its first entry."""
        if self.resident:
            return self.tokens, 0
        view = self.tokens[: w1 - w0]
        view.set(self.run.corpus.tokens[w0:w1])
        return view, w0

    def run_epoch(self, epoch: int, tracker: _Tracker, should_stop: Callable[[], bool] | None) -> None:
        from model.trainer import job_seed

        run, cfg = self.run, self.run.cfg
        offsets = self.host_offsets
        n_sent = offsets.size - 1
        raw_per_word = run.corpus.n_raw_words / max(run.corpus.n_words, 1)
        raw_reported = 0
        for launch, (s0, s1) in enumerate(itertools.pairwise(self.cuts)):
            w0, w1 = int(offsets[s0]), int(offsets[s1])
            a0, a1 = run.alpha_at(epoch, w0), run.alpha_at(epoch, w1)
            tokens, token_base = self._tokens_for(w0, w1)
            self.loss.fill(0)
            self.trained.fill(0)
            args: tuple[Any, ...] = (
                self.W_in,
                self.W_out,
                self.in_offsets,
                self.in_rows,
                tokens,
                np.int64(token_base),
                self.offsets,
                np.int64(s0),
                np.int64(s1),
                self.keep,
                self.accept,
                self.alias,
                np.int32(self.accept.size),
                np.int32(self.dim),
                np.int32(cfg.window),
                np.int32(cfg.negative),
                np.int32(MAX_GPU_SENTENCE),
                np.float32(a0),
                np.float32(a1),
                np.int64(w0),
                np.int64(max(w1 - w0, 1)),
                np.uint64(job_seed(cfg.seed, epoch, launch)),
                self.loss,
                self.trained,
            )
            self.kernel((self.blocks,), (32 * self.warps,), args, shared_mem=self.shared)
            raw = run.corpus.n_raw_words if s1 == n_sent else round(w1 * raw_per_word)
            tracker.add(raw - raw_reported, int(self.trained.get()[0]), float(self.loss.get()[0]), a1)
            raw_reported = raw
            tracker.report()
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training was cancelled")

    def sync_to_host(self) -> None:
        self.run.syn0[...] = self.W_in.get()
        self.run.syn1neg[...] = self.W_out.get()

    def close(self) -> None:
        del self.W_in, self.W_out, self.in_offsets, self.in_rows, self.tokens, self.offsets
        del self.keep, self.accept, self.alias
        del self.loss, self.trained
        free_device_memory()
