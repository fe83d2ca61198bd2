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

attention_rows_reference is the NumPy twin (one row at a time too, with NumPy's own sums): the
tests check the two agree to rounding on awkward shapes, and that the kernel is bit for bit
invariant. TINYINFER_REFERENCE=1 runs the twin everywhere.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import threads  # the thread policy; importing it selects the threading layer before any launch
from .quant.formats import use_reference
from .row_ops import exp_of
from .quant.simd import prefetch_at

__all__ = ["attention_rows", "attention_rows_reference", "supports"]

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


@njit(cache=True)
def attention_serial(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out):
    G = key_cache.shape[1]
    for task in range(q.shape[0] * G):
        t, g = task // G, task % G
        one_row(q, key_cache, value_cache, block_tables[query_seq[t]], t, g, query_pos[t] + 1, scale, out)


@njit(cache=True, parallel=True)
def attention_parallel(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out):
    G = key_cache.shape[1]
    for task in prange(q.shape[0] * G):  # one (query, key/value head) per task, any thread
        t, g = task // G, task % G
        one_row(q, key_cache, value_cache, block_tables[query_seq[t]], t, g, query_pos[t] + 1, scale, out)


def attention_rows(q, key_cache, value_cache, block_tables, query_seq, query_pos, parallel=None, check=True):
    """Causal attention of T query rows over their sequences' cached keys/values -> (T, H, D).

    Shapes in the module docstring. q and the caches float32 or float64 (the same); q is copied to
    C order if it is not. parallel: None decides by the amount of work (the result is the same
    bits either way). check=False skips the shape and range checks (the engine's own tables).
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
    if parallel:
        threads.apply()  # Numba's threads own the cores from now on, BLAS's stop spinning (tinyinfer/threads.py)
        attention_parallel(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out)
    else:
        attention_serial(q, key_cache, value_cache, block_tables, query_seq, query_pos, scale, out)
    return out
