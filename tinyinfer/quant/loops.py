"""Plain-loop Numba kernels, one per format: each reads like its formula.

Lesson: lessons/04-quantization.py (section 4, and the roofline plot: "plain loops")

Every kernel computes, for x already rounded to Q8_0 / Q8_1 blocks (xq int8 (B, NB, 32), scales
xd (B, NB), sums xs (B, NB); tinyinfer/quant/kernels.py: quantize_activations),

    out[b, n] = sum over blocks k of  float32(sum_j q_w[n,k,j] * xq[b,k,j]) * (wd[n,k] * xd[b,k])
              ( + sum over k of wm[n,k] * xs[b,k]          for q4_1 and q5_1 )

where q_w are the block's small integers, unpacked from its bytes as blocks.py defines them. The
integer sum is exact (int32), so the only rounding is in the float32 sums, as in
formats.quantized_matmul_reference, these kernels' NumPy twin.

One idiom is not the formula's: `sumi = np.int32(sumi + a * b)`. Numba types integer arithmetic
as int64, so a plain `sumi += a * b` is vectorized with 64-bit lanes (vpmuldq: 4 products an
instruction on AVX2); truncating every partial sum to int32 (which changes nothing: the sums fit)
lets LLVM use 32-bit lanes and vpmaddwd, and measured ~2x faster (4096 x 4096 Q8_0 matvec, one
thread, 29.5 -> 15.5 ms on a busy machine).

Threads: `prange(N)` splits the rows of W among Numba's threads in contiguous slabs (so each
thread streams its own part of W and writes its own part of out: no false sharing except at the
slab edges). For each row, all B rows of x are done while the row's bytes are in L1.

What plain loops leave on the table is measured by tinyinfer.bench.quant (the roofline table) and
explained in simd.py, where the same products are written with explicit vectors.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .blocks import IQ4_NL_VALUES
from .half import half_to_float

HALF = 16  # a block's nibble bytes: element j in the low nibble, element j + 16 in the high one


@njit(cache=True, fastmath=True, parallel=True)
def q8_0_loop(wd, wq, xq, xd, out):
    """wq int8 (N, NB, 32): out[b, n] = sum_k wd xd sum_j q xq."""
    N, NB = wd.shape
    for n in prange(N):
        for b in range(xq.shape[0]):
            acc = np.float32(0)
            for k in range(NB):
                sumi = np.int32(0)
                for j in range(32):
                    sumi = np.int32(sumi + np.int32(wq[n, k, j]) * np.int32(xq[b, k, j]))
                acc += np.float32(sumi) * (half_to_float(wd[n, k]) * xd[b, k])
            out[b, n] = acc


@njit(cache=True, fastmath=True, parallel=True)
def q4_0_loop(wd, wq, xq, xd, out):
    """wq uint8 (N, NB, 16) nibbles: q - 8 in -8..7."""
    N, NB = wd.shape
    for n in prange(N):
        for b in range(xq.shape[0]):
            acc = np.float32(0)
            for k in range(NB):
                sumi = np.int32(0)
                for j in range(HALF):
                    byte = np.int32(wq[n, k, j])
                    sumi = np.int32(sumi + ((byte & 15) - 8) * np.int32(xq[b, k, j])
                                    + ((byte >> 4) - 8) * np.int32(xq[b, k, j + HALF]))
                acc += np.float32(sumi) * (half_to_float(wd[n, k]) * xd[b, k])
            out[b, n] = acc


@njit(cache=True, fastmath=True, parallel=True)
def q4_1_loop(wd, wm, wq, xq, xd, xs, out):
    """wq uint8 (N, NB, 16) nibbles, q in 0..15; w = q d + m, so the minimum adds m * s_x."""
    N, NB = wd.shape
    for n in prange(N):
        for b in range(xq.shape[0]):
            acc = np.float32(0)
            mins = np.float32(0)
            for k in range(NB):
                sumi = np.int32(0)
                for j in range(HALF):
                    byte = np.int32(wq[n, k, j])
                    sumi = np.int32(sumi + (byte & 15) * np.int32(xq[b, k, j]) + (byte >> 4) * np.int32(xq[b, k, j + HALF]))
                acc += np.float32(sumi) * (half_to_float(wd[n, k]) * xd[b, k])
                mins += half_to_float(wm[k, n]) * xs[b, k]  # wm: the minima transposed, (NB, N)
            out[b, n] = acc + mins


@njit(cache=True, fastmath=True, parallel=True)
def q5_0_loop(wd, wh, wq, xq, xd, out):
    """wq nibbles + wh uint8 (N, NB, 4), the 5th bits: bit j of the 32 is element j's bit 4; q - 16."""
    N, NB = wd.shape
    for n in prange(N):
        for b in range(xq.shape[0]):
            acc = np.float32(0)
            for k in range(NB):
                high = (np.int32(wh[n, k, 0]) | (np.int32(wh[n, k, 1]) << 8) | (np.int32(wh[n, k, 2]) << 16)
                        | (np.int32(wh[n, k, 3]) << 24))  # the little-endian uint32
                sumi = np.int32(0)
                for j in range(HALF):
                    byte = np.int32(wq[n, k, j])
                    lo = (byte & 15) | (((high >> j) & 1) << 4)
                    hi = (byte >> 4) | (((high >> (j + HALF)) & 1) << 4)
                    sumi = np.int32(sumi + (lo - 16) * np.int32(xq[b, k, j]) + (hi - 16) * np.int32(xq[b, k, j + HALF]))
                acc += np.float32(sumi) * (half_to_float(wd[n, k]) * xd[b, k])
            out[b, n] = acc


@njit(cache=True, fastmath=True, parallel=True)
def q5_1_loop(wd, wm, wh, wq, xq, xd, xs, out):
    """q5_0's 5-bit q, unsigned (0..31), plus the minimum's term as in q4_1."""
    N, NB = wd.shape
    for n in prange(N):
        for b in range(xq.shape[0]):
            acc = np.float32(0)
            mins = np.float32(0)
            for k in range(NB):
                high = (np.int32(wh[n, k, 0]) | (np.int32(wh[n, k, 1]) << 8) | (np.int32(wh[n, k, 2]) << 16)
                        | (np.int32(wh[n, k, 3]) << 24))
                sumi = np.int32(0)
                for j in range(HALF):
                    byte = np.int32(wq[n, k, j])
                    lo = (byte & 15) | (((high >> j) & 1) << 4)
                    hi = (byte >> 4) | (((high >> (j + HALF)) & 1) << 4)
                    sumi = np.int32(sumi + lo * np.int32(xq[b, k, j]) + hi * np.int32(xq[b, k, j + HALF]))
                acc += np.float32(sumi) * (half_to_float(wd[n, k]) * xd[b, k])
                mins += half_to_float(wm[k, n]) * xs[b, k]  # wm: the minima transposed, (NB, N)
            out[b, n] = acc + mins


@njit(cache=True, fastmath=True, parallel=True)
def iq4_nl_loop(wd, wq, xq, xd, out, table):
    """wq nibbles are indices into table (IQ4_NL_VALUES, int8 (16,)): q = table[nibble]."""
    N, NB = wd.shape
    for n in prange(N):
        for b in range(xq.shape[0]):
            acc = np.float32(0)
            for k in range(NB):
                sumi = np.int32(0)
                for j in range(HALF):
                    byte = wq[n, k, j]
                    sumi = np.int32(sumi + np.int32(table[byte & 15]) * np.int32(xq[b, k, j])
                                    + np.int32(table[byte >> 4]) * np.int32(xq[b, k, j + HALF]))
                acc += np.float32(sumi) * (half_to_float(wd[n, k]) * xd[b, k])
            out[b, n] = acc


TABLE = IQ4_NL_VALUES.copy()


def loop_matmul(fmt, wd, wm, wh, wq, xq, xd, xs, out):
    """Dispatch to the plain-loop kernel of fmt; arrays as QTensor and quantize_activations give them
    (wd float16 bits (N, NB), widened by half_to_float; wm the minima transposed, (NB, N); wh, wq as stored; xq (B, NB, 32), xd, xs
    (B, NB); out (B, N))."""
    if fmt == "q8_0":
        q8_0_loop(wd, wq, xq, xd, out)
    elif fmt == "q4_0":
        q4_0_loop(wd, wq, xq, xd, out)
    elif fmt == "q4_1":
        q4_1_loop(wd, wm, wq, xq, xd, xs, out)
    elif fmt == "q5_0":
        q5_0_loop(wd, wh, wq, xq, xd, out)
    elif fmt == "q5_1":
        q5_1_loop(wd, wm, wh, wq, xq, xd, xs, out)
    else:
        iq4_nl_loop(wd, wq, xq, xd, out, TABLE)
    return out
