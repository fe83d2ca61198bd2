"""Batch-invariant attention: each query row computed alone, in an order no batch can change.

Lesson: lessons/08-serving.py (section 8, batch invariance)

The problem. A serving engine promises that a request's greedy answer does not depend on which
other requests share its steps, nor on how its prompt was cut into chunks, nor on whether it was
preempted and recomputed. With exact arithmetic that is free. With floats it is not: a sum of the
same numbers in another order rounds differently, and BLAS picks the order from the *shapes* it
is given (how it blocks a product, how many SIMD lanes a row gets, where the tail starts). So
`ops.attention_forward` on a batch of 32 sequences, or on a prompt of 200 positions, does not
give bit for bit what it gives on one decode step, although every row means the same math.

For a float32 model that is harmless: the difference is ~1e-7 relative and stays that size. For
SmolLM2 as llama.cpp runs it, it is not: every matrix product first rounds its input to 8-bit
blocks, so a 1-ulp difference sometimes moves an activation to the next integer, and 30 layers
amplify that (measured: a 1e-7 relative nudge to the embeddings moves the logits by 0.18 on
average and flips ~3% of the argmaxes; llama.cpp's own batched and one-token-at-a-time logits of
one window agree on only 97% of positions). Greedy decoding then follows a different path.

The cure (what "batch-invariant kernels" mean in recent serving work): every operation a row
goes through computes that row with the same instructions in the same order, whatever else is in
the batch. In tinyinfer the quantized products already are (each output is one row of W against
one row of x, tested in tests/test_quant_kernels.py), and so are the norms, RoPE, SwiGLU and the
residual adds (elementwise, or reductions along one contiguous row: tests/test_invariant_attention.py
checks them). Attention was the exception. This module replaces it for inference:

    out = attention_rows(q, key_cache, value_cache, block_tables, query_seq, query_pos)

    q            (T, H, D)     one row per query: T queries from any mix of sequences
    key_cache,   (N, G, P, D)  N blocks of P positions, G key/value heads (the paged cache's
    value_cache                layout; a contiguous (B, G, S, D) cache is B blocks of S positions)
    block_tables (S, nb) int   sequence s's blocks in position order (padding never read)
    query_seq    (T,) int      which sequence query t belongs to
    query_pos    (T,) int      query t's position: it attends to keys 0 .. query_pos[t]
    -> out       (T, H, D)

For query t and head h (key/value head g = h // R, R = H / G) the kernel computes, in this order:

    s_j = (sum over d = 0..D-1 of q[t,h,d] * k_j[d]) * (1 / sqrt(D))     j = 0 .. pos, in order
    m = max_j s_j;   e_j = exp(s_j - m);   Z = sum_j e_j                    (j in order)
    out[t,h,d] = (sum_j e_j * v_j[d]) / Z                                   (j in order)

Nothing in it depends on T, on the other queries, on the padding of the tables, on how the keys
are split into blocks, or on how many threads run: one query row is one task, and a task reads
only its own sequence's keys 0..pos. So a row gives the same bits alone, in a batch of 32, inside
a 300-token prefill chunk or one token at a time. The price is that it is a loop per row instead
of a few big BLAS calls; lessons/08-serving.py measures it.

Two kernels compute this. `one_row` is the formula as plain loops, and it reads like the formulas
above. `one_row_tiled` (the section "the explicit-vector step" below) holds a key/value head's query
heads in registers as LLVM vectors and sums each score's d-products in a fixed tree of lanes instead
of left to right: the same math, another fixed order, so it agrees with one_row and the twin to
rounding and is just as batch-invariant. The engine uses it for float32 caches with head_dim a
multiple of 16 (head_tile says when); attention_rows(..., tiled=False) runs the plain loops.

attention_rows_reference is the NumPy twin (one row at a time too, with NumPy's own sums): the
tests check the two agree to rounding on awkward shapes, and that the kernel is bit for bit
invariant. TINYINFER_REFERENCE=1 runs the twin everywhere.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from . import threads  # the thread policy; importing it selects the threading layer before any launch
from .quant.formats import use_reference
from .row_ops import exp_of
from .quant.simd import _pointer, prefetch_at

__all__ = ["attention_rows", "attention_rows_reference", "head_tile", "supports"]

# Below this many multiply-adds a call runs on one thread: a parallel region costs tens of
# microseconds to start (tinyinfer/threads.py), more than a decode step's attention for a small model.
PARALLEL_MIN_WORK = 200_000

# While a row works through one block of keys (or values) it asks the cache for the next block's
# first PREFETCH_POSITIONS positions, and for the first values while it scores the last keys. A
# server's cache holds a few hundred MB (SmolLM2, 32 sequences of ~160 tokens: 7 MB a layer), so
# every step reads it from memory, and each block is a short run of 4 KB that the hardware
# prefetcher meets cold. Measured on a 2-core Zen 5 EPYC with that cache, the 30 layers cycled:
# 0.36-0.43 ms a layer with the hints against 0.47-0.59 without (the same bits: a hint changes no
# arithmetic); with one layer's cache in L3, 0.25-0.27 either way.
PREFETCH_POSITIONS = 16


def supports(q_dtype, cache_dtype) -> bool:
    """Whether the kernel handles these dtypes (float32 or float64, the same for q and the cache).
    A float16 cache takes the NumPy path (tinyinfer/kv_cache.py says so)."""
    return np.dtype(q_dtype) == np.dtype(cache_dtype) and np.dtype(q_dtype) in (np.float32, np.float64)


def _check(q, key_cache, value_cache, block_tables, query_seq, query_pos):
    """Cheap checks of shapes and ranges (a wrong table would read another sequence's keys)."""
    if q.ndim != 3 or key_cache.ndim != 4 or key_cache.shape != value_cache.shape:
        raise ValueError(f"attention_rows needs q (T, H, D) and caches (N, G, P, D) of one shape; got q "
                         f"{q.shape}, key_cache {key_cache.shape}, value_cache {value_cache.shape}")
    T, H, D = q.shape
    N, G, P, Dk = key_cache.shape
    if Dk != D or H % G:
        raise ValueError(f"q has {H} heads of {D} dims but the cache {G} key/value heads of {Dk}: H must be "
                         f"a multiple of G and the head dims equal")
    if query_seq.shape != (T,) or query_pos.shape != (T,):
        raise ValueError(f"query_seq and query_pos must have shape ({T},), got {query_seq.shape} and "
                         f"{query_pos.shape}")
    if T == 0:
        return
    if block_tables.ndim != 2:
        raise ValueError(f"block_tables must be (S, nb), got shape {block_tables.shape}")
    if query_seq.min() < 0 or query_seq.max() >= block_tables.shape[0]:
        raise ValueError(f"query_seq holds sequence numbers {query_seq.min()}..{query_seq.max()} but "
                         f"block_tables has {block_tables.shape[0]} rows")
    if query_pos.min() < 0 or query_pos.max() >= block_tables.shape[1] * P:
        raise ValueError(f"query_pos reaches {query_pos.max()} but the tables hold {block_tables.shape[1]} "
                         f"blocks of {P} positions")
    used = np.unique(query_seq)
    for s in used:  # only the blocks the queries read must be real blocks
        nb = int(query_pos[query_seq == s].max()) // P + 1
        row = block_tables[s, :nb]
        if row.min() < 0 or row.max() >= N:
            raise ValueError(f"block_tables[{s}] names blocks {row.min()}..{row.max()} but the cache has {N}")


# ---- the NumPy twin ---------------------------------------------------------------------------


def attention_rows_reference(q, key_cache, value_cache, block_tables, query_seq, query_pos):
    """What attention_rows computes, in NumPy, one query and one key/value head at a time."""
    q = np.asarray(q)
    T, H, D = q.shape
    N, G, P, _ = key_cache.shape
    R = H // G
    out = np.empty_like(q)
    for t in range(T):
        L = int(query_pos[t]) + 1
        blocks = np.asarray(block_tables[query_seq[t]])[:(L - 1) // P + 1]  # (nb,)
        for g in range(G):
            keys = key_cache[blocks, g].reshape(-1, D)[:L]  # (L, D) this sequence's past, in order
            values = value_cache[blocks, g].reshape(-1, D)[:L]
            scores = (q[t, g * R:(g + 1) * R] @ keys.T) * q.dtype.type(1.0 / math.sqrt(D))  # (R, L)
            e = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[t, g * R:(g + 1) * R] = (e @ values) / e.sum(axis=-1, keepdims=True)  # (R, D)
    return out


# ---- the kernel -------------------------------------------------------------------------------

# reassoc lets LLVM split the d-sums over SIMD lanes, contract fuses multiply-adds. Both are
# decided when the kernel is compiled, per loop, never from the data or the batch, so a row's sums
# still happen in one fixed order (tests/test_invariant_attention.py checks it bit for bit).
# One caveat, measured (Numba 0.68, Zen 5): the plain loops of one_row give last-bit-different
# results (~1e-16 relative in float64) when the kernel was compiled in this process and when it was
# loaded from Numba's disk cache; without reassoc the two agree, at twice one_row's time. The
# register-tile kernel (one_row_tiled, which float32 models with head dims of 16, 32 ... 128 run)
# gave the same bits both ways. So one process is always consistent with itself, but two processes
# running one_row can part at a near tie.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True)
def ask_for(cache, block, g, n):
    """A hint: bring the first min(n, P, PREFETCH_POSITIONS) positions of cache[block, g] toward the
    core, every 64-byte line of them. Reads nothing, changes nothing, never faults."""
    positions = min(n, cache.shape[2], PREFETCH_POSITIONS)
    step = max(1, 64 // cache.itemsize)  # elements a cache line
    for off in range(positions):
        for d in range(0, cache.shape[3], step):
            prefetch_at(cache, (block, g, off, d))


@njit(cache=True, fastmath=FASTMATH)
def one_row(q, key_cache, value_cache, table, t, g, L, scale, out):
    """Query t, key/value head g: the R query heads that share g, over keys 0..L-1 -> out[t, those heads]."""
    H, D = q.shape[1], q.shape[2]
    G, P = key_cache.shape[1], key_cache.shape[2]
    R = H // G
    h0 = g * R
    zero = scale - scale  # a 0 of q's dtype, so float32 sums stay float32
    scores = np.empty((R, L), q.dtype)  # (R, L)
    for j0 in range(0, L, P):  # block by block: positions in order
        block = table[j0 // P]
        if j0 + P < L:  # the next block of keys is on its way while this one is scored
            ask_for(key_cache, table[j0 // P + 1], g, L - j0 - P)
        else:  # the last block of keys: the first values next
            ask_for(value_cache, table[0], g, L)
        for off in range(min(P, L - j0)):
            for r in range(R):  # the R heads share this key: read it once
                acc = zero
                for d in range(D):
                    acc += q[t, h0 + r, d] * key_cache[block, g, off, d]
                scores[r, j0 + off] = acc * scale
    totals = np.empty(R, q.dtype)  # (R,)
    for r in range(R):
        m = scores[r, 0]
        for j in range(1, L):
            if scores[r, j] > m:
                m = scores[r, j]
        total = zero
        for j in range(L):
            e = exp_of(scores[r, j] - m)  # float32: row_ops.exp32, which vectorizes (np.exp is a libm call)
            scores[r, j] = e
            total += e
        totals[r] = total
    acc_out = np.zeros((R, D), q.dtype)  # (R, D)
    for j0 in range(0, L, P):
        block = table[j0 // P]
        if j0 + P < L:
            ask_for(value_cache, table[j0 // P + 1], g, L - j0 - P)
        for off in range(min(P, L - j0)):
            for r in range(R):
                w = scores[r, j0 + off]
                for d in range(D):
                    acc_out[r, d] += w * value_cache[block, g, off, d]
    for r in range(R):
        for d in range(D):
            out[t, h0 + r, d] = acc_out[r, d] / totals[r]


# ---- the explicit-vector step -------------------------------------------------------------------
#
# one_row above is the formula as loops, and LLVM vectorizes only part of it: each key's d-sums
# become vector multiply-adds and a horizontal sum, but the values' accumulators acc_out[r, d] live in
# an array, so every key's weighted value is a load, a multiply-add and a store per element.
# Measured on a 2-core Zen 5 EPYC, one thread, 32 rows x 3 key/value heads of 163 positions, cache
# in L2: 29-37 ns per (row, key/value head, key), of which 16-18 ns go to the values, 10-15 ns to the
# scores and 2-3 ns to the softmax.
#
# one_row_tiled computes the same three phases with the R query heads of a key/value head held in
# registers as a RowTile: rows x cols vectors of VECTOR_LANES float32, a head's D numbers in cols
# vectors (D = cols * VECTOR_LANES). Each key (and each value) is loaded once as cols vectors and
# used by all `rows` heads:
#
#   scores   p = q[:, 0:16] * k[0:16]; p = fma(q[:, 16c:16c+16], k[16c:16c+16], p) for c = 1 .. cols-1;
#            s = the 16 lanes of p summed as a tree (lane l + lane l+8, then l+4, l+2, l+1) * scale
#   softmax  as one_row (plain loops; exp32 vectorizes)
#   values   acc[:, 16c:16c+16] = fma(e_j, v_j[16c:16c+16], acc) for j = 0 .. L-1, in order; out = acc / Z
#
# The values' sums are one_row's (each output element adds its keys in order, fused); the scores
# are summed in another fixed order, so the two kernels differ by rounding (they agree with the
# NumPy twin alike), and a row still gets the same bits in any batch: the order depends on D only.
# Measured the same way: 8.3 ns scores, 2.2 softmax, 4.2 values (15 ns in all, 2.1-2.5x one_row);
# both threads, each sequence's own blocks from memory, 1.4-1.6x. SmolLM2's whole engine decode step
# (Q4_1, ~130 positions, the two kernels alternated in one process, 8 rounds): 1.25x at 32 sequences
# (1.04-1.36x), 1.07x at one.

VECTOR_LANES = 16
_F32 = ir.FloatType()
_F32xV = ir.VectorType(_F32, VECTOR_LANES)
_I32 = ir.IntType(32)


class RowTile(types.Type):
    """Numba type of rows x cols vectors of <VECTOR_LANES x float>: an LLVM array value indexed by
    constants only, so LLVM keeps it in registers."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols
        super().__init__(name=f"attention_rowtile{rows}x{cols}")


@register_model(RowTile)
class _RowTileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.ArrayType(_F32xV, fe_type.rows * fe_type.cols))


class ZeroRows:
    """A RowTile of zeros as a Python argument (each shape is compiled on its first call)."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols

    def __repr__(self):
        return f"ZeroRows({self.rows}, {self.cols})"


@typeof_impl.register(ZeroRows)
def _typeof_zero_rows(val, c):
    return RowTile(val.rows, val.cols)


@unbox(RowTile)
def _unbox_zero_rows(typ, obj, c):
    return NativeValue(ir.Constant(c.context.get_value_type(typ), None))


def head_tile(n_head, n_kv_head, head_dim, dtype=np.float32):
    """The RowTile prototype one_row_tiled uses for these heads, or None where it does not apply
    (then one_row runs): float32, head_dim a multiple of VECTOR_LANES up to 128; rows = the most
    query heads of one key/value head (4, 3, 2 or 1, dividing n_head // n_kv_head) whose
    accumulators fit in 16 vectors (AVX-512 has 32 registers: the rest hold the key or value)."""
    if np.dtype(dtype) != np.float32 or head_dim % VECTOR_LANES or not 0 < head_dim <= 128:
        return None
    cols, per_kv = head_dim // VECTOR_LANES, n_head // n_kv_head
    rows = next(r for r in (4, 3, 2, 1) if per_kv % r == 0 and r * cols <= 16)
    return ZeroRows(rows, cols)


def _intp(context, builder, value, ty):
    return context.cast(builder, value, ty, types.intp)


def _const(context, value):
    return context.get_constant(types.intp, value)


def _vector_at(context, builder, aryty, ary, inds):
    """The VECTOR_LANES float32 starting at ary[inds] (the last axis contiguous)."""
    ptr = _pointer(context, builder, aryty, ary, inds)
    return builder.bitcast(ptr, _F32xV.as_pointer())


def _splat(builder, value):
    one = builder.insert_element(ir.Constant(_F32xV, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_F32xV, None),
                                  ir.Constant(ir.VectorType(_I32, VECTOR_LANES), [0] * VECTOR_LANES))


def _fma(builder, a, b, c):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32xV, [_F32xV] * 3),
                                        f"llvm.fma.v{VECTOR_LANES}f32")
    return builder.call(fn, [a, b, c])


def _lane_sum(builder, v):
    """The lanes of v summed as a tree: lane l + lane l + 8, then l + 4, l + 2, l + 1."""
    half = VECTOR_LANES // 2
    while half:
        partner = [(lane + half) % VECTOR_LANES for lane in range(VECTOR_LANES)]
        v = builder.fadd(v, builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, VECTOR_LANES), partner)))
        half //= 2
    return builder.extract_element(v, ir.Constant(_I32, 0))


@intrinsic
def tile_rows(typingctx, tile):
    """The tile's number of rows (query heads at a time): a compile-time constant."""
    return types.intp(tile), lambda context, builder, sig, args: _const(context, sig.args[0].rows)


@intrinsic
def load_heads(typingctx, tile, q, t, h):
    """A RowTile holding q[t, h + i, :] in row i."""
    def codegen(context, builder, sig, args):
        shape = sig.args[0]
        acc, qa = args[0], args[1]
        t, h = _intp(context, builder, args[2], sig.args[2]), _intp(context, builder, args[3], sig.args[3])
        for i in range(shape.rows):
            head = builder.add(h, _const(context, i))
            for c in range(shape.cols):
                ptr = _vector_at(context, builder, sig.args[1], qa, [t, head, _const(context, VECTOR_LANES * c)])
                acc = builder.insert_value(acc, builder.load(ptr, align=4), i * shape.cols + c)
        return acc
    return tile(tile, q, t, h), codegen


@intrinsic
def score_key(typingctx, heads, key_cache, block, g, off, scale, scores, r0, j):
    """scores[r0 + i, j] = (heads row i . key_cache[block, g, off, :]) * scale for every row i,
    summed in the order the comment above gives."""
    def codegen(context, builder, sig, args):
        shape = sig.args[0]
        heads, cache, scale, out = args[0], args[1], args[5], args[6]
        block, g, off = (_intp(context, builder, args[a], sig.args[a]) for a in (2, 3, 4))
        r0, j = _intp(context, builder, args[7], sig.args[7]), _intp(context, builder, args[8], sig.args[8])
        key = [builder.load(_vector_at(context, builder, sig.args[1], cache,
                                       [block, g, off, _const(context, VECTOR_LANES * c)]), align=4)
               for c in range(shape.cols)]
        for i in range(shape.rows):
            p = builder.fmul(builder.extract_value(heads, i * shape.cols), key[0])
            for c in range(1, shape.cols):
                p = _fma(builder, builder.extract_value(heads, i * shape.cols + c), key[c], p)
            s = builder.fmul(_lane_sum(builder, p), scale)
            builder.store(s, _pointer(context, builder, sig.args[6], out, [builder.add(r0, _const(context, i)), j]))
        return context.get_dummy_value()
    return types.none(heads, key_cache, block, g, off, scale, scores, r0, j), codegen


@intrinsic
def add_value(typingctx, acc, weights, r0, j, value_cache, block, g, off):
    """acc row i + weights[r0 + i, j] * value_cache[block, g, off, :] (fused), for every row i."""
    def codegen(context, builder, sig, args):
        shape = sig.args[0]
        acc, weights, cache = args[0], args[1], args[4]
        r0, j = _intp(context, builder, args[2], sig.args[2]), _intp(context, builder, args[3], sig.args[3])
        block, g, off = (_intp(context, builder, args[a], sig.args[a]) for a in (5, 6, 7))
        value = [builder.load(_vector_at(context, builder, sig.args[4], cache,
                                         [block, g, off, _const(context, VECTOR_LANES * c)]), align=4)
                 for c in range(shape.cols)]
        for i in range(shape.rows):
            w = _splat(builder, builder.load(_pointer(context, builder, sig.args[1], weights,
                                                      [builder.add(r0, _const(context, i)), j])))
            for c in range(shape.cols):
                a = i * shape.cols + c
                acc = builder.insert_value(acc, _fma(builder, w, value[c], builder.extract_value(acc, a)), a)
        return acc
    return acc(acc, weights, r0, j, value_cache, block, g, off), codegen


@intrinsic
def store_heads(typingctx, acc, totals, r0, out, t, h):
    """out[t, h + i, :] = acc row i / totals[r0 + i], for every row i."""
    def codegen(context, builder, sig, args):
        shape = sig.args[0]
        acc, totals, out = args[0], args[1], args[3]
        r0 = _intp(context, builder, args[2], sig.args[2])
        t, h = _intp(context, builder, args[4], sig.args[4]), _intp(context, builder, args[5], sig.args[5])
        for i in range(shape.rows):
            z = _splat(builder, builder.load(_pointer(context, builder, sig.args[1], totals,
                                                      [builder.add(r0, _const(context, i))])))
            for c in range(shape.cols):
                ptr = _vector_at(context, builder, sig.args[3], out,
                                 [t, builder.add(h, _const(context, i)), _const(context, VECTOR_LANES * c)])
                builder.store(builder.fdiv(builder.extract_value(acc, i * shape.cols + c), z), ptr, align=4)
        return context.get_dummy_value()
    return types.none(acc, totals, r0, out, t, h), codegen


@njit(cache=True, fastmath=FASTMATH)
def one_row_tiled(q, key_cache, value_cache, table, t, g, L, scale, out, tile):
    """one_row with the query heads of key/value head g in registers (tile: a RowTile prototype of
    head_tile's shape); the same three phases, the scores summed as the comment above says."""
    H = q.shape[1]
    G, P = key_cache.shape[1], key_cache.shape[2]
    R = H // G
    h0 = g * R
    rows = tile_rows(tile)
    zero = scale - scale
    scores = np.empty((R, L), np.float32)  # (R, L)
    for r0 in range(0, R, rows):
        heads = load_heads(tile, q, t, h0 + r0)
        for j0 in range(0, L, P):
            block = table[j0 // P]
            if j0 + P < L:
                ask_for(key_cache, table[j0 // P + 1], g, L - j0 - P)
            elif r0 + rows >= R:
                ask_for(value_cache, table[0], g, L)
            for off in range(min(P, L - j0)):
                score_key(heads, key_cache, block, g, off, scale, scores, r0, j0 + off)
    totals = np.empty(R, np.float32)  # (R,)
    for r in range(R):
        m = scores[r, 0]
        for j in range(1, L):
            if scores[r, j] > m:
                m = scores[r, j]
        total = zero
        for j in range(L):
            e = exp_of(scores[r, j] - m)
            scores[r, j] = e
            total += e
        totals[r] = total
    for r0 in range(0, R, rows):
        acc = tile
        for j0 in range(0, L, P):
            block = table[j0 // P]
            if j0 + P < L:
                ask_for(value_cache, table[j0 // P + 1], g, L - j0 - P)
            for off in range(min(P, L - j0)):
                acc = add_value(acc, scores, r0, j0 + off, value_cache, block, g, off)
        store_heads(acc, totals, r0, out, t, h0 + r0)


@njit(cache=True)
def attention_serial(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out, tile):
    """tile: head_tile's prototype (one_row_tiled) or None (one_row)."""
    G = key_cache.shape[1]
    for task in range(q.shape[0] * G):
        t, g = task // G, task % G
        if tile is None:
            one_row(q, key_cache, value_cache, block_tables[query_seq[t]], t, g, query_pos[t] + 1, scale, out)
        else:
            one_row_tiled(q, key_cache, value_cache, block_tables[query_seq[t]], t, g, query_pos[t] + 1, scale,
                          out, tile)


@njit(cache=True, parallel=True)
def attention_parallel(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out, tile):
    G = key_cache.shape[1]
    for task in prange(q.shape[0] * G):  # one (query, key/value head) per task, any thread
        t, g = task // G, task % G
        if tile is None:
            one_row(q, key_cache, value_cache, block_tables[query_seq[t]], t, g, query_pos[t] + 1, scale, out)
        else:
            one_row_tiled(q, key_cache, value_cache, block_tables[query_seq[t]], t, g, query_pos[t] + 1, scale,
                          out, tile)


def attention_rows(q, key_cache, value_cache, block_tables, query_seq, query_pos, parallel=None, check=True,
                   tiled=True):
    """Causal attention of T query rows over their sequences' cached keys/values -> (T, H, D).

    Shapes in the module docstring. q and the caches float32 or float64 (the same); q is copied to
    C order if it is not. parallel: None decides by the amount of work (the result is the same
    bits either way). check=False skips the shape and range checks (the engine's own tables).
    tiled=False runs the plain loops (one_row) where the register tiles (one_row_tiled) would apply.
    """
    q = np.ascontiguousarray(q)
    block_tables = np.ascontiguousarray(block_tables, dtype=np.int64)
    query_seq = np.ascontiguousarray(query_seq, dtype=np.int64)
    query_pos = np.ascontiguousarray(query_pos, dtype=np.int64)
    if check:
        _check(q, key_cache, value_cache, block_tables, query_seq, query_pos)
        if not supports(q.dtype, key_cache.dtype) or value_cache.dtype != key_cache.dtype:
            raise TypeError(f"attention_rows needs q and the caches all float32 or all float64, got "
                            f"{q.dtype}, {key_cache.dtype}, {value_cache.dtype}")
        if not (key_cache.flags.c_contiguous and value_cache.flags.c_contiguous):
            raise ValueError("key_cache and value_cache must be C-contiguous (the cache's own arrays)")
    if use_reference():
        return attention_rows_reference(q, key_cache, value_cache, block_tables, query_seq, query_pos)
    T, H, D = q.shape
    out = np.empty_like(q)
    if T == 0:
        return out
    if parallel is None:
        parallel = int(query_pos.sum() + T) * H * D >= PARALLEL_MIN_WORK
    scale = q.dtype.type(1.0 / math.sqrt(D))  # as ops.attention_forward scales: in q's dtype
    tile = head_tile(H, key_cache.shape[1], D, q.dtype) if tiled else None
    if parallel:
        threads.apply()  # Numba's threads own the cores from now on, BLAS's stop spinning (tinyinfer/threads.py)
        attention_parallel(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out, tile)
    else:
        attention_serial(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out, tile)
    return out
