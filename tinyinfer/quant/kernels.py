"""Numba kernels for x @ W.T with W in Q8_0 / Q4_0 blocks: the fast twins of tinyinfer/quant/formats.py.

Lesson: lessons/04-quantization.py

The arithmetic is llama.cpp's: the activations x are first rounded to Q8_0 blocks (int8 quants and
one scale per 32 numbers, `quantize_activations`), so each block's dot product is a sum of small
integer products, exact, times the two scales:

    out[b, n] = sum over blocks k of  (sum_j xq[b,k,j] * wq[n,k,j]) * xd[b,k] * wd[n,k]

`formats.quantized_matmul_reference` is the same formula in NumPy; tests/test_quant_kernels.py
checks every kernel against it. Two shapes of work need two loop orders:

* decode, x: (1, K) -> `*_matvec_rows`. One long row of W at a time; each block's 32 products
  are summed in an int32 slot. Numba widens small integers to int64 (slow: vpmuldq); an int32
  accumulator over a loop whose length is a run-time value (32, but not a literal) lets LLVM's loop
  vectorizer emit vpmaddwd, int16 pairs multiplied and added into int32. The per-block sums go
  to a float32 buffer and a second, vectorized loop multiplies them by the scales.
* prefill/batch, x: (B, K) -> `*_matmul_rows`. The batch goes innermost: for each weight w[n,k,j],
  `sums[b] += w * xq[b,k,j]` over b is a plain vector multiply-add with no horizontal sums. It is
  done in float32, which is still exact: every partial sum is an integer below 32*127*127 < 2**24.
  Four rows of W share each load of x.

Q4_0 weights: 16 packed bytes a block. The matvec unpacks them eight bytes at a time with 64-bit
masks (low nibbles = elements 0..15, high nibbles = 16..31) into unsigned 0..15 and subtracts
8 * sum(xq) per block afterwards: sum((q - 8) * x) = sum(q * x) - 8 * sum(x).

Threads: `parallel=True` kernels split the rows over Numba's threads. Numba's default OpenMP
layer cost ~8 ms per parallel region on this kind of machine; the workqueue layer ~44 us
(FACTS.md), so this module selects workqueue unless NUMBA_THREADING_LAYER is set. The layer is
chosen once per process, at the first parallel call anywhere in Numba. Workqueue does not allow
two Python threads to run parallel kernels at once: call from one thread, or set another layer.
By default only batches (B > 1) of at least PARALLEL_MIN_WORK multiply-adds run in parallel;
decode (B = 1) runs serial (see quantized_matmul for the measurement); `parallel=True/False`
forces either, `numba.set_num_threads(1)` forces serial everywhere.

fastmath=True on every kernel: it let LLVM vectorize the float32 sums over blocks (~2x on the
matvec here); the integer parts are exact either way. Kernels are compiled on first use and cached
on disk (cache=True).
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

from .formats import BLOCK

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"  # read at the first parallel launch, not before

PARALLEL_MIN_WORK = 1 << 22  # multiply-adds (B * N * K) below which one thread is faster
ROWS_PER_TASK = 64  # rows of W a thread takes at a time (a multiple of the 4-row tile)

# --------------------------------------------------------------------------------------------
# activations to Q8_0 blocks (bit-identical to formats.quantize_activations; no fastmath, so the
# float32 products and roundings are exactly the C ones)


@njit(cache=True)
def quantize_activations(x, xq, xd):
    """x: float32 (B, K) -> fills xq int8 (B, NB, 32) and xd float32 (B, NB)."""
    B, K = x.shape
    NB = K // BLOCK
    for b in range(B):
        for k in range(NB):
            amax = np.float32(0.0)
            for j in range(BLOCK):
                amax = max(amax, abs(x[b, k * BLOCK + j]))
            d = amax / np.float32(127.0)
            inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
            if not np.isfinite(inv):  # |d| so small that 1/d overflows: an all-zero block
                inv = np.float32(0.0)
            xd[b, k] = d
            for j in range(BLOCK):
                v = x[b, k * BLOCK + j] * inv  # float32 * float32, rounded to float32 as in C
                r = np.floor(abs(np.float64(v)) + 0.5)  # roundf: halves away from zero, exact in float64
                xq[b, k, j] = np.int8(r if v >= 0 else -r)


# --------------------------------------------------------------------------------------------
# decode: one activation row, rows n0..n1 of W


@njit(cache=True, fastmath=True)
def q8_0_matvec_rows(wd, wq, xd, xq, out, n0, n1):
    """wd float32 (N, NB), wq int8 (N, NB, 32), xd float32 (NB,), xq int8 (NB, 32) -> out[n0:n1]."""
    NB, bs = xq.shape  # bs = 32, read at run time so LLVM vectorizes the loop as a reduction
    block_sums = np.empty(NB, np.float32)
    acc = np.zeros(1, np.int32)  # an int32 slot keeps the products' sum in int32 (vpmaddwd)
    for n in range(n0, n1):
        for k in range(NB):
            acc[0] = 0
            for j in range(bs):
                acc[0] += wq[n, k, j] * xq[k, j]
            block_sums[k] = acc[0]
        total = np.float32(0.0)
        for k in range(NB):  # vectorized with fastmath: the blocks' order is free
            total += block_sums[k] * wd[n, k] * xd[k]
        out[n] = total


@njit(cache=True, fastmath=True)
def q4_0_matvec_rows(wd, wq64, xd, xq, out, n0, n1):
    """wq64: the packed nibbles viewed as uint64 (N, NB, 2); otherwise as q8_0_matvec_rows."""
    NB, bs = xq.shape
    xsum = np.empty(NB, np.int32)  # sum of each x block, for the -8 offset
    for k in range(NB):
        s = np.int32(0)
        for j in range(bs):
            s += xq[k, j]
        xsum[k] = s
    nibbles64 = np.empty(4, np.uint64)  # one block unpacked: 32 bytes of 0..15
    nibbles = nibbles64.view(np.int8)  # int8 (not uint8), so the products stay int8 x int8
    low = np.uint64(0x0F0F0F0F0F0F0F0F)
    four = np.uint64(4)
    block_sums = np.empty(NB, np.float32)
    acc = np.zeros(1, np.int32)
    for n in range(n0, n1):
        for k in range(NB):
            w0 = wq64[n, k, 0]  # bytes 0..7: elements 0..7 (low nibbles), 16..23 (high)
            w1 = wq64[n, k, 1]  # bytes 8..15: elements 8..15, 24..31
            nibbles64[0] = w0 & low
            nibbles64[1] = w1 & low
            nibbles64[2] = (w0 >> four) & low
            nibbles64[3] = (w1 >> four) & low
            acc[0] = 0
            for j in range(bs):
                acc[0] += nibbles[j] * xq[k, j]
            block_sums[k] = acc[0] - 8 * xsum[k]
        total = np.float32(0.0)
        for k in range(NB):
            total += block_sums[k] * wd[n, k] * xd[k]
        out[n] = total


# --------------------------------------------------------------------------------------------
# batch: B activation rows, rows n0..n1 of W, four at a time


@njit(cache=True, fastmath=True)
def q8_0_matmul_rows(wd, wq, xdT, xqT, out, n0, n1):
    """xqT float32 (NB, 32, B) and xdT float32 (NB, B): the activation blocks, batch innermost.

    out: float32 (B, N); fills columns n0..n1.
    """
    NB, bs, B = xqT.shape
    half = bs // 2
    sums = np.empty((4, B), np.float32)  # exact integers (< 2**24) held in float32
    acc = np.empty((4, B), np.float32)
    for r0 in range(n0, n1, 4):
        R = min(4, n1 - r0)
        acc[:] = 0
        for k in range(NB):
            sums[:] = 0
            for j in range(half):  # elements j and j + 16 in one pass: half the loads/stores of sums
                for r in range(R):
                    w0 = np.float32(wq[r0 + r, k, j])
                    w1 = np.float32(wq[r0 + r, k, j + half])
                    for b in range(B):
                        sums[r, b] += w0 * xqT[k, j, b] + w1 * xqT[k, j + half, b]
            for r in range(R):
                s = wd[r0 + r, k]
                for b in range(B):
                    acc[r, b] += sums[r, b] * (s * xdT[k, b])
        for r in range(R):
            for b in range(B):
                out[b, r0 + r] = acc[r, b]


@njit(cache=True, fastmath=True)
def q4_0_matmul_rows(wd, wq, xdT, xqT, out, n0, n1):
    """As q8_0_matmul_rows, wq the packed nibbles uint8 (N, NB, 16)."""
    NB, bs, B = xqT.shape
    half = bs // 2
    sums = np.empty((4, B), np.float32)
    acc = np.empty((4, B), np.float32)
    for r0 in range(n0, n1, 4):
        R = min(4, n1 - r0)
        acc[:] = 0
        for k in range(NB):
            sums[:] = 0
            for j in range(half):
                for r in range(R):
                    byte = np.int32(wq[r0 + r, k, j])
                    w_low = np.float32((byte & 15) - 8)  # element j
                    w_high = np.float32((byte >> 4) - 8)  # element j + 16
                    for b in range(B):
                        sums[r, b] += w_low * xqT[k, j, b] + w_high * xqT[k, j + half, b]
            for r in range(R):
                s = wd[r0 + r, k]
                for b in range(B):
                    acc[r, b] += sums[r, b] * (s * xdT[k, b])
        for r in range(R):
            for b in range(B):
                out[b, r0 + r] = acc[r, b]


# --------------------------------------------------------------------------------------------
# the same kernels over all rows, split among threads (each task takes ROWS_PER_TASK rows)


@njit(cache=True, parallel=True)
def q8_0_matvec_parallel(wd, wq, xd, xq, out, rows_per_task):
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        q8_0_matvec_rows(wd, wq, xd, xq, out, t * rows_per_task, min(N, (t + 1) * rows_per_task))


@njit(cache=True, parallel=True)
def q4_0_matvec_parallel(wd, wq64, xd, xq, out, rows_per_task):
    N = wq64.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        q4_0_matvec_rows(wd, wq64, xd, xq, out, t * rows_per_task, min(N, (t + 1) * rows_per_task))


@njit(cache=True, parallel=True)
def q8_0_matmul_parallel(wd, wq, xdT, xqT, out, rows_per_task):
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        q8_0_matmul_rows(wd, wq, xdT, xqT, out, t * rows_per_task, min(N, (t + 1) * rows_per_task))


@njit(cache=True, parallel=True)
def q4_0_matmul_parallel(wd, wq, xdT, xqT, out, rows_per_task):
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        q4_0_matmul_rows(wd, wq, xdT, xqT, out, t * rows_per_task, min(N, (t + 1) * rows_per_task))


# --------------------------------------------------------------------------------------------
# the entry point QTensor.matmul calls


def quantized_matmul(fmt, w_scales, w_quants, x, parallel=None):
    """x: float32 (B, K) -> float32 (B, N); same meaning as formats.quantized_matmul_reference.

    w_scales float32 (N, NB); w_quants int8 (N, NB, 32) for q8_0, uint8 (N, NB, 16) for q4_0.
    parallel: None chooses by size (see the module docstring); True/False forces it.
    """
    B, K = x.shape
    N, NB = w_scales.shape
    xq = np.empty((B, NB, BLOCK), dtype=np.int8)
    xd = np.empty((B, NB), dtype=np.float32)
    quantize_activations(x, xq, xd)
    out = np.empty((B, N), dtype=np.float32)
    if B == 0:
        return out
    if parallel is None:
        # Decode stays serial: a 4096 x 4096 matvec takes ~1.6 ms on one core, and on a 2-core
        # machine whose other core is busy the parallel one waited for its slow thread (2-4x
        # slower, measured). A batch gained ~1.5x from the second thread even then.
        parallel = B > 1 and numba.get_num_threads() > 1 and B * N * K >= PARALLEL_MIN_WORK
    if B == 1:
        args = (w_scales, w_quants if fmt == "q8_0" else w_quants.view(np.uint64), xd[0], xq[0], out[0])
        if parallel:
            (q8_0_matvec_parallel if fmt == "q8_0" else q4_0_matvec_parallel)(*args, ROWS_PER_TASK)
        else:
            (q8_0_matvec_rows if fmt == "q8_0" else q4_0_matvec_rows)(*args, 0, N)
        return out
    xqT = np.ascontiguousarray(xq.astype(np.float32).transpose(1, 2, 0))  # (NB, 32, B)
    xdT = np.ascontiguousarray(xd.T)  # (NB, B)
    args = (w_scales, w_quants, xdT, xqT, out)
    if parallel:
        (q8_0_matmul_parallel if fmt == "q8_0" else q4_0_matmul_parallel)(*args, ROWS_PER_TASK)
    else:
        (q8_0_matmul_rows if fmt == "q8_0" else q4_0_matmul_rows)(*args, 0, N)
    return out
