"""The int8 3CosAdd search on CPUs with AVX-512 VNNI, for one query or a batch in one pass.

A batch is bound by arithmetic. BLAS's float32 product does 16 multiply-adds per vector
instruction; VNNI's `vpdpbusd` does 64 (unsigned bytes times signed bytes, summed in fours
into 32-bit lanes). A single query is bound by memory, and reads the same int8 copy of the
unit rows (`search.Int8Rows`), laid out for this kernel (`PackedRows`); on these CPUs it
replaces the row-major copy `search.scan_int8` reads elsewhere. Every row that could reach
a query's exact top `topn` is returned for exact rescoring, so the answers are those of
every other path, bit for bit.

How the guarantee is kept: each approximate score a of row r comes with a bound B on its
error, per row and query (`errors[r]` x |query| + |query error| x `max_norm` + rounding), so
the exact score lies in [a - B, a + B]. If L is the topn-th largest lower end among a
query's rows, topn rows score at least L exactly, so a row whose upper end is below L
cannot rank; every other row is a candidate. A query's L only rises as rows are seen, so
the scan keeps a running L per query (its "cut") and drops any block whose upper ends all
fall below it.

The kernels are LLVM IR generated here and compiled by llvmlite (which Numba already
brings), since NumPy and Numba cannot express `vpdpbusd`: one for batches, one for a single
query (`_SHAPES`). Where the CPU lacks VNNI, `available()` is False and `Vectors` keeps the
int8 scan and the float32 product.

Layout: rows are packed in blocks of 16 and, within a block, by groups of 4 dimensions
("quads"), so one 64-byte load holds the same quad of 16 rows, and a query's quad is
broadcast to all 16 lanes. Queries are quantised to signed 8 bits and stored offset by +128
(VNNI wants them unsigned); `128 * sum(row codes)` is subtracted afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from model.search import _FAST, ROUNDING_SLACK, Int8Rows, _listed, _replace_root, _rounded_up

__all__ = ["MAX_DIM", "PackedRows", "available", "serves", "shortlists"]

logger = logging.getLogger(__name__)

_LANES = 16  # 32-bit lanes of a 512-bit register: rows per block
_QUAD = 4  # bytes each lane's vpdpbusd sums
# Queries the kernel multiplies at once -> blocks of rows per step. A batch fills 16 of the 32
# zmm registers with accumulators; one query alone, the rows' memory traffic is the limit.
_SHAPES = {8: 2, 1: 4}
_ALIGN_BLOCKS = 4  # the packed rows come in whole steps of every shape
_DECLARATIONS = """
declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <16 x i32>, <16 x i32>)
declare i1 @llvm.vector.reduce.or.v16i1(<16 x i1>)
"""
_OFFSET = 128
_INT8_MAX = 127
# |sum| <= 255 * 127 * (dim padded to whole quads) must fit an int32.
MAX_DIM = (2**31 - 1) // (255 * _INT8_MAX) - _QUAD
# Blocks per kernel call: few at first, while every block passes the still-low cuts and the
# cuts rise fastest; then doubling up to as many as fill this many bytes of upper ends (were
# every block stored; the cuts keep most out).
_FIRST_CHUNK_BLOCKS = 8
_CHUNK_BYTES = 2**21
_POINTERS = 13
# A query's candidate list holds 2 topn + this many rows before it is compacted.
_SPARE_CANDIDATES = 256


def _kernel_ir(group: int, step: int) -> str:
    """int8_upper_ends_<group>(packed, queries, offsets, row_scales, row_errors, query_scales,
    query_norms, query_constants, cuts, out, hits, n_hits, scratch, block_lo, block_hi,
    n_quads, n_groups)

    For blocks b in [block_lo, block_hi) (a whole number of steps) and queries q = group g +
    i (g < n_groups), the upper ends a + B of block b's 16 rows, with
      a = float32(sum(offset codes of q x codes of row) - offsets[row]) * (row_scales[row] * query_scales[q])
    (the float32 operations of `search.scan_int8`) and
      B = row_errors[row] * query_norms[q] + query_constants[q].
    Where one of the 16 reaches cuts[q], out[b - block_lo, q, :] gets them and the next
    entry of hits the index (b - block_lo) * group n_groups + q, shifted left 16 bits, with the
    lanes that reached the cut in the low 16 bits; n_hits[0] gets the count.
    Blocks below the cut are neither stored nor listed (their ends go to `scratch`, 64
    bytes): most of the traffic.

    Queries are laid out [group][quad][query in group], rows [block][quad][16 rows]. Each turn
    of the inner loop multiplies one quad of `step` blocks by one quad of `group` queries: for
    8 x 2, 16 accumulators, 2 row loads and 8 broadcasts for 16 `vpdpbusd`.
    """
    pairs = [(r, i) for r in range(step) for i in range(group)]
    nl = "\n  "
    acc_phis = nl.join(
        f"%a{r}_{i} = phi <16 x i32> [zeroinitializer, %group_head], [%n{r}_{i}, %quad]" for r, i in pairs
    )
    row_loads = nl.join(
        f"%ri{r} = add i64 %quad{r}, %j\n  %ro{r} = mul i64 %ri{r}, 16\n"
        f"  %rp{r} = getelementptr i32, ptr %packed, i64 %ro{r}\n"
        f"  %rv{r} = load <16 x i32>, ptr %rp{r}, align 1"
        for r in range(step)
    )
    query_loads = nl.join(
        f"%qe{i} = getelementptr i32, ptr %qj, i64 {i}\n"
        f"  %qv{i} = load i32, ptr %qe{i}, align 4\n"
        f"  %qx{i} = insertelement <16 x i32> poison, i32 %qv{i}, i64 0\n"
        f"  %qb{i} = shufflevector <16 x i32> %qx{i}, <16 x i32> poison, <16 x i32> zeroinitializer"
        for i in range(group)
    )
    products = nl.join(
        f"%n{r}_{i} = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512("
        f"<16 x i32> %a{r}_{i}, <16 x i32> %qb{i}, <16 x i32> %rv{r})"
        for r, i in pairs
    )

    def splat(name: str, array: str, i: int) -> str:
        return (
            f"%{name}p{i} = getelementptr float, ptr %{array}, i64 %qi{i}\n"
            f"  %{name}s{i} = load float, ptr %{name}p{i}, align 4\n"
            f"  %{name}x{i} = insertelement <16 x float> poison, float %{name}s{i}, i64 0\n"
            f"  %{name}{i} = shufflevector <16 x float> %{name}x{i}, <16 x float> poison, <16 x i32> zeroinitializer"
        )

    query_consts = nl.join(
        f"%qi{i} = add i64 %qrow, {i}\n  "
        + nl.join(splat(name, array, i) for name, array in
                  (("qs", "query_scales"), ("qn", "query_norms"), ("qc", "query_constants"), ("ct", "cuts")))
        for i in range(group)
    )  # fmt: skip
    ends = []
    for k, (r, i) in enumerate(pairs):
        x = f"{r}_{i}"
        ends.append(
            f"%oq{x} = add i64 %obase{r}, %qi{i}\n  %oo{x} = mul i64 %oq{x}, 16\n"
            f"  %op{x} = getelementptr float, ptr %out, i64 %oo{x}\n"
            f"  %d{x} = sub <16 x i32> %n{x}, %off{r}\n"
            f"  %f{x} = sitofp <16 x i32> %d{x} to <16 x float>\n"
            f"  %t{x} = fmul <16 x float> %sc{r}, %qs{i}\n"
            f"  %v{x} = fmul <16 x float> %f{x}, %t{x}\n"
            f"  %be{x} = fmul <16 x float> %er{r}, %qn{i}\n"
            f"  %bd{x} = fadd <16 x float> %be{x}, %qc{i}\n"
            f"  %u{x} = fadd <16 x float> %v{x}, %bd{x}\n"
            f"  %hv{x} = fcmp oge <16 x float> %u{x}, %ct{i}\n"
            f"  %h{x} = call i1 @llvm.vector.reduce.or.v16i1(<16 x i1> %hv{x})\n"
            # Stores go to `out` on a hit and to a scratch line otherwise, and the hit list is
            # written at every block but advanced only on a hit: no branch. (A masked store
            # would do no better: with its mask off over a page not yet touched it costs a
            # microcode assist.)
            f"  %dst{x} = select i1 %h{x}, ptr %op{x}, ptr %scratch\n"
            f"  store <16 x float> %u{x}, ptr %dst{x}, align 4\n"
            f"  %hm{x} = bitcast <16 x i1> %hv{x} to i16\n"
            f"  %hw{x} = zext i16 %hm{x} to i64\n"
            f"  %hs{x} = shl i64 %oq{x}, 16\n"
            f"  %he{x} = or i64 %hs{x}, %hw{x}\n"
            f"  %hp{x} = getelementptr i64, ptr %hits, i64 %cnt{k}\n"
            f"  store i64 %he{x}, ptr %hp{x}, align 8\n"
            f"  %hz{x} = zext i1 %h{x} to i64\n"
            f"  %cnt{k + 1} = add i64 %cnt{k}, %hz{x}"
        )
    block_vectors = nl.join(
        f"%b{r} = add i64 %b, {r}\n  %quad{r} = mul i64 %b{r}, %nquads\n"
        f"  %bo{r} = sub i64 %b{r}, %lo\n  %obase{r} = mul i64 %bo{r}, %nq\n"
        f"  %row{r} = mul i64 %b{r}, 16\n"
        f"  %offp{r} = getelementptr i32, ptr %offsets, i64 %row{r}\n"
        f"  %off{r} = load <16 x i32>, ptr %offp{r}, align 4\n"
        f"  %scp{r} = getelementptr float, ptr %row_scales, i64 %row{r}\n"
        f"  %sc{r} = load <16 x float>, ptr %scp{r}, align 4\n"
        f"  %erp{r} = getelementptr float, ptr %row_errors, i64 %row{r}\n"
        f"  %er{r} = load <16 x float>, ptr %erp{r}, align 4"
        for r in range(step)
    )
    return f"""

define void @int8_upper_ends_{group}(
    ptr noalias readonly %packed, ptr noalias readonly %queries, ptr noalias readonly %offsets,
    ptr noalias readonly %row_scales, ptr noalias readonly %row_errors,
    ptr noalias readonly %query_scales, ptr noalias readonly %query_norms,
    ptr noalias readonly %query_constants, ptr noalias readonly %cuts,
    ptr noalias %out, ptr noalias %hits, ptr noalias %n_hits, ptr noalias %scratch,
    i64 %lo, i64 %hi, i64 %nquads, i64 %ngroups) nounwind {{
entry:
  %nothing = icmp sge i64 %lo, %hi
  %no_quads = icmp slt i64 %nquads, 1
  %no_groups = icmp slt i64 %ngroups, 1
  %skip0 = or i1 %nothing, %no_quads
  %skip = or i1 %skip0, %no_groups
  %nq = mul i64 %ngroups, {group}
  %group_words = mul i64 %nquads, {group}
  br i1 %skip, label %done, label %block_head
block_head:
  %b = phi i64 [%lo, %entry], [%b_next, %block_tail]
  %cnt_b = phi i64 [0, %entry], [%cnt_g, %block_tail]
  {block_vectors}
  br label %group_head
group_head:
  %grp = phi i64 [0, %block_head], [%grp_next, %group_tail]
  %cnt0 = phi i64 [%cnt_b, %block_head], [%cnt_g, %group_tail]
  %qrow = mul i64 %grp, {group}
  %qgo = mul i64 %grp, %group_words
  %qg = getelementptr i32, ptr %queries, i64 %qgo
  br label %quad
quad:
  %j = phi i64 [0, %group_head], [%j_next, %quad]
  {acc_phis}
  {row_loads}
  %qjo = mul i64 %j, {group}
  %qj = getelementptr i32, ptr %qg, i64 %qjo
  {query_loads}
  {products}
  %j_next = add i64 %j, 1
  %more = icmp slt i64 %j_next, %nquads
  br i1 %more, label %quad, label %group_tail
group_tail:
  {query_consts}
  {nl.join(ends)}
  %cnt_g = add i64 %cnt{len(pairs)}, 0
  %grp_next = add i64 %grp, 1
  %more_groups = icmp slt i64 %grp_next, %ngroups
  br i1 %more_groups, label %group_head, label %block_tail
block_tail:
  %b_next = add i64 %b, {step}
  %more_blocks = icmp slt i64 %b_next, %hi
  br i1 %more_blocks, label %block_head, label %done
done:
  %cnt_all = phi i64 [0, %entry], [%cnt_g, %block_tail]
  store i64 %cnt_all, ptr %n_hits, align 8
  ret void
}}
"""


_Kernel = Callable[..., None]


@functools.cache
def _compiled() -> tuple[object, dict[int, _Kernel]] | None:
    """The kernels by query group size, and the engine that owns their machine code (kept
    alive with them), or None where the CPU cannot run them."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if os.environ.get("W2V_VNNI", "").strip().lower() in ("0", "false", "no", "off"):
        return None  # turned off: the int8 scan and BLAS answer instead
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    # The IR is written with opaque pointers, LLVM's only kind from version 15 (llvmlite 0.44).
    if llvm.llvm_version_info < (15,) or not {"+avx512f", "+avx512bw", "+avx512vnni"} <= set(features.split(",")):
        return None
    try:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        module = llvm.parse_assembly(_DECLARATIONS + "".join(_kernel_ir(g, step) for g, step in _SHAPES.items()))
        module.verify()
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=features, opt=3
        )
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        addresses = {group: engine.get_function_address(f"int8_upper_ends_{group}") for group in _SHAPES}
    except RuntimeError:
        # An llvmlite that cannot build it: the float32 and int8-scan paths still answer.
        logger.warning("AVX-512 VNNI kernel did not compile; searching without it", exc_info=True)
        return None
    # ctypes releases the GIL for the call, so the search threads run it in parallel.
    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * _POINTERS, *[ctypes.c_int64] * 4)
    return engine, {group: signature(address) for group, address in addresses.items()}


def available() -> bool:
    """Whether this CPU runs the kernel (x86-64 with AVX-512 VNNI)."""
    return _compiled() is not None


def serves(dim: int) -> bool:
    """Whether the kernel searches vectors of `dim` dimensions on this CPU."""
    return dim <= MAX_DIM and available()


@dataclass(frozen=True)
class PackedRows:
    """`Int8Rows` rearranged for the kernel: codes as (blocks, quads, 16 rows x 4 codes),
    zero-padded to whole blocks and quads, and the per-row arrays the kernel reads 16 at a
    time, zero-padded to whole blocks."""

    packed: np.ndarray  # (n_blocks, n_quads, 64) int8
    offsets: np.ndarray  # int32: 128 x the row's code sum
    scales: np.ndarray  # float32
    errors: np.ndarray  # float32
    max_norm: float
    n_quads: int

    @staticmethod
    def build(rows: Int8Rows) -> PackedRows:
        n, dim = rows.codes.shape
        n_blocks = _whole_steps(n)
        n_quads = -(-dim // _QUAD)
        padded = np.zeros((n_blocks * _LANES, n_quads * _QUAD), dtype=np.int8)
        padded[:n, :dim] = rows.codes
        by_quad = padded.reshape(n_blocks, _LANES, n_quads, _QUAD).transpose(0, 2, 1, 3)
        packed = np.ascontiguousarray(by_quad).reshape(n_blocks, n_quads, _LANES * _QUAD)
        offsets = _OFFSET * padded.sum(axis=1, dtype=np.int32)

        def per_row(values: np.ndarray) -> np.ndarray:
            out = np.zeros(n_blocks * _LANES, dtype=np.float32)
            out[:n] = values
            return out

        return PackedRows(packed, offsets, per_row(rows.scales), per_row(rows.errors), rows.max_norm, n_quads)


_Buffers = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_spare_buffers: list[_Buffers] = []
_spare_lock = threading.Lock()
# Spare sets kept for reuse: one per search thread of a couple of concurrent searches. Fresh
# buffers would cost page faults on every search; keeping one per thread that ever searched
# (the API's thread pool has dozens) would hold 2 MB each for good.
_MAX_SPARE_BUFFERS = 2 * (os.cpu_count() or 1) + 2


@contextlib.contextmanager
def _kernel_buffers(pairs: int) -> Iterator[_Buffers]:
    """Kernel outputs for up to `pairs` (block, query) pairs, for the duration of one part:
    upper ends (flat), the hit list (+1: the kernel writes one entry ahead), its count, and
    the scratch line."""
    with _spare_lock:
        buffers = _spare_buffers.pop() if _spare_buffers else None
    if buffers is None or len(buffers[1]) < pairs + 1:
        buffers = (
            np.empty(pairs * _LANES, dtype=np.float32),
            np.empty(pairs + 1, dtype=np.int64),
            np.zeros(1, dtype=np.int64),
            np.empty(_LANES, dtype=np.float32),
        )
    try:
        yield buffers
    finally:
        with _spare_lock:
            if len(_spare_buffers) < _MAX_SPARE_BUFFERS:
                _spare_buffers.append(buffers)


def _whole_steps(n_rows: int) -> int:
    """Blocks that hold `n_rows` rows, rounded up to whole kernel steps of every shape."""
    return -(-n_rows // (_LANES * _ALIGN_BLOCKS)) * _ALIGN_BLOCKS


def _quantize_queries(means: np.ndarray, n_quads: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offset uint8 codes, padded to whole query groups and quads, read as int32 quads laid
    out [group][quad][query in group]; each query's scale; the norm of what its codes miss."""
    n_queries, dim = means.shape
    q = np.asarray(means, dtype=np.float64)
    peak = np.abs(q).max(axis=1)
    scale = np.where(peak > 0, peak / _INT8_MAX, 0.0).astype(np.float32)
    inverse = np.divide(1.0, scale, out=np.zeros(n_queries), where=scale > 0)
    codes = np.rint(q * inverse[:, None])
    residual = np.linalg.norm(q - codes * scale.astype(np.float64)[:, None], axis=1)
    n_padded = -(-n_queries // group) * group
    offset = np.full((n_padded, n_quads * _QUAD), _OFFSET, dtype=np.uint8)
    offset[:n_queries, :dim] = (codes + _OFFSET).astype(np.uint8)
    quads = offset.view(np.int32).reshape(n_padded // group, group, n_quads)
    return np.ascontiguousarray(quads.transpose(0, 2, 1)), scale, residual


def _query_terms(
    means: np.ndarray, packed: PackedRows, group: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the kernel reads per query, padded to whole groups: the offset codes, their scales,
    and the two terms of the error bound B = errors[row] x norm + constant, where the
    constant covers the query's own rounding (|its error| x the largest row norm) and the
    float32 rounding of the score. Both terms are rounded up, so the float32 bound the kernel
    forms is never below the real one."""
    n_queries = len(means)
    queries, scales, residuals = _quantize_queries(means, packed.n_quads, group)
    n_padded = queries.shape[0] * group

    def padded(values: np.ndarray) -> np.ndarray:
        out = np.zeros(n_padded, dtype=np.float32)
        out[:n_queries] = values
        return out

    norms = _rounded_up(np.linalg.norm(np.asarray(means, dtype=np.float64), axis=1))
    constants = _rounded_up(residuals * packed.max_norm + ROUNDING_SLACK)
    return queries, padded(scales), padded(norms), padded(constants)


@njit(nogil=True, cache=True, fastmath=_FAST)
def _select_chunk(
    ends: np.ndarray,
    hits: np.ndarray,
    first_row: int,
    n_rows: int,
    errors: np.ndarray,
    query_norms: np.ndarray,
    query_constants: np.ndarray,
    cuts: np.ndarray,
    shared_cuts: np.ndarray,
    excluded_ptr: np.ndarray,
    excluded_rows: np.ndarray,
    best: np.ndarray,
    cand_rows: np.ndarray,
    cand_ends: np.ndarray,
    counts: np.ndarray,
    overflow: np.ndarray,
) -> None:
    """Take the kernel's hits in one chunk: for each listed (block, query) and lanes, the
    upper ends ends[block, query, lane] of rows first_row + 16 block + lane.

    Each query keeps a min-heap of its `topn` largest lower ends (`best`) and a candidate
    list of rows with their upper ends, every row whose upper end reached its cut when seen.
    The cut, `cuts[q]`, is the heap's smallest entry or higher: the other parts of the scan,
    on other threads, raise it from their own heaps through `shared_cuts`. It never passes
    the final cut (the topn-th largest lower end over all rows): heaps' smallest entries
    only rise, and a part's topn-th largest is at most the overall one. So a row skipped
    below a cut cannot rank, and the lists together hold every row the final cut keeps.

    A full list is compacted; a query whose list stays full (a crowd of near-ties) is marked
    in `overflow` for its caller to search another way. (Another thread's write to
    shared_cuts[q] may be lost to this one's; that cut then stays lower, never wrong.)
    """
    n_padded = ends.shape[1]
    cap = cand_rows.shape[1]
    dummy = np.zeros(best.shape[1], dtype=np.int64)
    for hit in hits:
        pair = hit >> 16
        lanes = hit & 0xFFFF
        b = pair // n_padded
        q = pair - b * n_padded
        q_norm = query_norms[q]
        q_constant = query_constants[q]
        cut = max(cuts[q], best[q, 0])
        for lane in range(_LANES):
            if not (lanes >> lane) & 1:
                continue
            upper = ends[b, q, lane]
            if upper < cut:
                continue
            row = first_row + b * _LANES + lane
            if row >= n_rows or _listed(row, excluded_rows[excluded_ptr[q] : excluded_ptr[q + 1]]):
                continue
            bound = errors[row] * q_norm + q_constant
            lower = upper - 2 * bound
            if lower > best[q, 0]:
                _replace_root(best[q], dummy, lower, np.int64(0))
                cut = max(cut, best[q, 0])
            if overflow[q]:
                continue
            if counts[q] == cap:
                kept = 0
                for i in range(cap):
                    if cand_ends[q, i] >= cut:
                        cand_rows[q, kept] = cand_rows[q, i]
                        cand_ends[q, kept] = cand_ends[q, i]
                        kept += 1
                counts[q] = kept
                if kept > 3 * cap // 4:  # too little room left: a crowd
                    overflow[q] = True
                    continue
            cand_rows[q, counts[q]] = row
            cand_ends[q, counts[q]] = upper
            counts[q] += 1
        cuts[q] = cut
    # Cuts are traded with the other parts once per chunk: per hit, the cache line would
    # bounce between cores at every write.
    for q in range(shared_cuts.shape[0]):
        if cuts[q] > shared_cuts[q]:
            shared_cuts[q] = cuts[q]
        elif shared_cuts[q] > cuts[q]:
            cuts[q] = shared_cuts[q]


@njit(nogil=True, cache=True)
def _merge_parts(
    best: np.ndarray, cand_rows: np.ndarray, cand_ends: np.ndarray, counts: np.ndarray, overflow: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's candidates over all parts (arrays indexed [part, query, ...]) whose upper
    end reaches its final cut: the rows, flat, each query's start among them, and whether to
    search the query another way (a part overflowed, or fewer than topn rows to rank)."""
    n_parts, n_queries, topn = best.shape
    starts = np.zeros(n_queries + 1, dtype=np.int64)
    elsewhere = np.zeros(n_queries, dtype=np.bool_)
    flat = np.empty(counts.sum(), dtype=np.int64)
    taken = 0
    for q in range(n_queries):
        starts[q] = taken
        cut = np.sort(best[:, q, :].ravel())[-topn]  # the topn-th largest lower end
        if overflow[:, q].any() or cut == -np.inf:
            elsewhere[q] = True
            continue
        for part in range(n_parts):
            for i in range(counts[part, q]):
                if cand_ends[part, q, i] >= cut:
                    flat[taken] = cand_rows[part, q, i]
                    taken += 1
    starts[n_queries] = taken
    return flat, starts, elsewhere


def shortlists(
    packed: PackedRows,
    means: np.ndarray,
    excluded: list[list[int]],
    n: int,
    topn: int,
    parts: int,
    run_parts: Callable[[Callable[[int], None], list[int]], object],
) -> list[np.ndarray | None]:
    """Rows among the first `n` that may rank in each query's exact 3CosAdd top `topn` (its
    own rows `excluded` aside), or None for a query to search another way (a crowd of
    near-ties, or fewer than topn rows). `means` are the unit query directions. The rows are
    scanned in `parts` ranges of blocks: `run_parts(fn, [0, 1, ...])` calls fn(part) for
    each, on threads of its choice."""
    compiled = _compiled()
    if compiled is None:
        raise RuntimeError("the VNNI search needs a CPU with AVX-512 VNNI (check available() first)")
    n_queries = len(means)
    group = 1 if n_queries == 1 else 8
    kernel, step = compiled[1][group], _SHAPES[group]
    queries, q_scales, q_norms, q_constants = _query_terms(means, packed, group)
    n_padded = len(q_scales)
    excluded_ptr = np.cumsum([0] + [len(e) for e in excluded], dtype=np.int64)
    excluded_rows = np.fromiter((i for e in excluded for i in e), dtype=np.int64)
    cap = 2 * topn + _SPARE_CANDIDATES
    edges = np.linspace(0, _whole_steps(n) // step, parts + 1).astype(np.int64) * step
    most_blocks = max(_FIRST_CHUNK_BLOCKS, _CHUNK_BYTES // (n_padded * _LANES * 4) // step * step)
    best = np.full((parts, n_queries, topn), -np.inf, dtype=np.float32)
    cand_rows = np.empty((parts, n_queries, cap), dtype=np.int64)
    cand_ends = np.empty((parts, n_queries, cap), dtype=np.float32)
    counts = np.zeros((parts, n_queries), dtype=np.int64)
    overflow = np.zeros((parts, n_queries), dtype=np.bool_)
    shared_cuts = np.full(n_queries, -np.inf, dtype=np.float32)
    inputs = (
        packed.packed, queries, packed.offsets, packed.scales, packed.errors, q_scales, q_norms, q_constants,
    )  # fmt: skip

    def run(part: int) -> None:
        cuts = np.full(n_padded, np.inf, dtype=np.float32)  # padding queries never hit
        cuts[:n_queries] = shared_cuts  # as high as the parts done so far have raised them
        with _kernel_buffers(most_blocks * n_padded) as (flat_ends, hits, n_hits, scratch):
            ends = flat_ends[: most_blocks * n_padded * _LANES].reshape(most_blocks, n_padded, _LANES)
            pointers = [a.ctypes.data for a in (*inputs, cuts, ends, hits, n_hits, scratch)]
            chunk, start, block_hi = _FIRST_CHUNK_BLOCKS, int(edges[part]), int(edges[part + 1])
            while start < block_hi:
                stop = min(start + chunk, block_hi)
                kernel(*pointers, start, stop, packed.n_quads, n_padded // group)
                _select_chunk(
                    ends, hits[: n_hits[0]], start * _LANES, n, packed.errors, q_norms, q_constants,
                    cuts, shared_cuts, excluded_ptr, excluded_rows,
                    best[part], cand_rows[part], cand_ends[part], counts[part], overflow[part],
                )  # fmt: skip
                start, chunk = stop, min(2 * chunk, most_blocks)

    run_parts(run, list(range(parts)))
    flat, starts, elsewhere = _merge_parts(best, cand_rows, cand_ends, counts, overflow)
    return [None if elsewhere[q] else flat[starts[q] : starts[q + 1]] for q in range(n_queries)]
