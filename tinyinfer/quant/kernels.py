"""Numba kernels for x @ W.T with W in Q8_0 / Q4_0 blocks: the fast twins of tinyinfer/quant/formats.py.

Lesson: lessons/04-quantization.py

The arithmetic is llama.cpp's: the activations x are first rounded to Q8_0 blocks (int8 quants and
one scale per 32 numbers, `quantize_activations`), so each block's dot product is a sum of small
integer products, exact, times the two scales:

    out[b, n] = sum over blocks k of  (sum_j xq[b,k,j] * wq[n,k,j]) * xd[b,k] * wd[n,k]

`formats.quantized_matmul_reference` is the same formula in NumPy; tests/test_quant_kernels.py
checks every kernel against it.

One kernel, `*_rows`, serves decode (B = 1) and batches, in llama.cpp's shape: no horizontal sum
per block. A block's 32 int8 products are added in neighbouring pairs into 16 int32 lanes (exact;
x86's vpmaddwd does exactly this), the lanes are converted to float32 and multiplied by the
block's combined scale wd[n,k] * xd[b,k] into 16 float32 accumulator lanes (one fused multiply-add),
and the lanes are summed once per output. On AVX-512 that is 4 instructions a block:
vpmovsxbw (load + widen 32 weights), vpmaddwd, vcvtdq2ps, vfmadd231ps with the scale broadcast.
x is widened to int16 once per call. Q4_0 unpacks its 16 bytes to [low nibbles, high nibbles] - 8,
which is the block's 32 signed values in order, and then takes the same path.

Why explicit vectors: LLVM's loop vectorizer did not find this shape from plain loops (measured,
4096 x 4096, numba 0.68 / LLVM 20): the old kernel summed each block with a run-time-length int32
loop, which LLVM vectorized for 64+ elements, so a 32-element block ran in its 8-wide remainder
loop plus a horizontal sum (~9 cycles a block, 1.5 ms); 16-lane float accumulators in an array
were vectorized but reloaded and stored every block, behind per-block aliasing checks (2.0 ms);
with a constant 32 LLVM unrolled the block and vectorized across blocks with shuffles (10-25 ms).
So `float32x16` below is a Numba type whose value is an LLVM `<16 x float>` (a register), and
`q8_0_block_step` / `q4_0_block_step` are intrinsics of a few lines of generic LLVM vector IR
(sext, mul, shufflevector, sitofp, fmul/fadd with "contract"): portable IR, from which LLVM picks
vpmaddwd on x86. `kernel.inspect_asm(kernel.signatures[0])` shows the loop.
Measured (busy 2-core EPYC, load average 5-8, interleaved, minimum of 21 rounds; the quiet-machine
NumPy `W @ x` is 1.85 ms): serial matvec Q8_0 0.59-0.69 ms (old kernel 1.50 ms), Q4_0 0.64 ms
(old 2.1 ms). Summation order: lanes and two accumulators instead of block after block, so the
result differs from the twin by float32 rounding only (tests bound it by 1e-5 of sum |terms|).

Threads: `parallel=True` kernels split the rows over Numba's threads. Numba's default OpenMP
layer cost ~8 ms per parallel region on this kind of machine; the workqueue layer ~44 us
(FACTS.md), so this module selects workqueue unless NUMBA_THREADING_LAYER is set. The layer is
chosen once per process, at the first parallel call anywhere in Numba. Workqueue does not allow
two Python threads to run parallel kernels at once: call from one thread, or set another layer.
By default only batches (B > 1) of at least PARALLEL_MIN_WORK multiply-adds run in parallel;
decode (B = 1) runs serial: on the busy 2-core machine the parallel matvec was 1.8-3.5x slower than
the serial one (the second thread waits for a core another process holds; with the old kernel the
"parallel is slower" report came from the same cause as far as we could tell, not from inlining).
Re-measure on an idle machine with `python -m tinyinfer.bench.quant --variants`. `parallel=True/False`
forces either, `numba.set_num_threads(1)` forces serial everywhere.

fastmath=True on the row kernels only lets LLVM vectorize the short scale loop; the block step's
vector IR carries its own flags ("contract": fuse multiply and add), and its integer parts are
exact either way. Kernels are compiled on first use and cached
on disk (cache=True).
"""
from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .formats import BLOCK

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"  # read at the first parallel launch, not before

PARALLEL_MIN_WORK = 1 << 22  # multiply-adds (B * N * K) below which one thread is faster
ROWS_PER_TASK = 64  # rows of W a thread takes at a time

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
# explicit SIMD: a 16-lane float32 vector that Numba can hold in a variable, and the block step
#
# Each intrinsic below is a few lines of LLVM IR written with llvmlite. The IR is generic (vector
# types, sext, mul, shufflevector), not x86 intrinsics: LLVM picks the instructions, so the code
# runs on any CPU Numba supports; on x86 the shapes below are the ones LLVM turns into vpmaddwd.

LANES = 16  # float32 lanes of one accumulator: one zmm register (AVX-512) or two ymm (AVX2)
_F32xL = ir.VectorType(ir.FloatType(), LANES)
_I8x16, _I8x32 = ir.VectorType(ir.IntType(8), 16), ir.VectorType(ir.IntType(8), 32)
_I16x32, _I32x32 = ir.VectorType(ir.IntType(16), 32), ir.VectorType(ir.IntType(32), 32)


class Float32Lanes(types.Type):
    """Numba type of a <16 x float> LLVM vector: a register, not an array in memory."""

    def __init__(self):
        super().__init__(name="float32x16")


float32x16 = Float32Lanes()


@register_model(Float32Lanes)
class _Float32LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F32xL)


def _indices(*values):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), list(values))


def _load(context, builder, aryty, ary, inds, vector_type):
    """The vector starting at ary[inds] (the last axis contiguous; unaligned load)."""
    array = context.make_array(aryty)(context, builder, value=ary)
    ptr = cgutils.get_item_pointer(context, builder, aryty, array, inds, wraparound=False)
    return builder.load(builder.bitcast(ptr, vector_type.as_pointer()), align=1)


def _pair_dots(builder, w, x):
    """w <32 x i8>, x <32 x i16> -> <16 x i32>: lane l = w[2l] x[2l] + w[2l+1] x[2l+1], exact.

    Products of neighbours added in int32: exactly what x86's vpmaddwd does in one instruction
    (and LLVM recognizes this shape as it)."""
    prod = builder.mul(builder.sext(w, _I32x32), builder.sext(x, _I32x32))  # (32,) int32
    return builder.add(builder.shuffle_vector(prod, prod, _indices(*range(0, 32, 2))),
                       builder.shuffle_vector(prod, prod, _indices(*range(1, 32, 2))))


def _scaled_add(context, builder, acc, pairs, scales_ty, scales, inds):
    """acc + float32(pairs) * scales[inds] (one scale, broadcast to all lanes; fused multiply-add)."""
    s = builder.load(_scalar_ptr(context, builder, scales_ty, scales, inds))
    s = builder.insert_element(ir.Constant(_F32xL, None), s, ir.Constant(ir.IntType(32), 0))
    s = builder.shuffle_vector(s, s, _indices(*[0] * LANES))  # broadcast
    prod = builder.fmul(builder.sitofp(pairs, _F32xL), s, flags=("contract",))
    return builder.fadd(acc, prod, flags=("contract",))


def _scalar_ptr(context, builder, aryty, ary, inds):
    array = context.make_array(aryty)(context, builder, value=ary)
    return cgutils.get_item_pointer(context, builder, aryty, array, inds, wraparound=False)


@intrinsic
def lanes_zero(typingctx):
    """A float32x16 of zeros."""
    return float32x16(), lambda context, builder, sig, args: ir.Constant(_F32xL, None)


@intrinsic
def lanes_sum(typingctx, v):
    """float32: the sum of the 16 lanes, as a tree (8 + 8, 4 + 4, 2 + 2, 1 + 1)."""
    def codegen(context, builder, sig, args):
        (v,) = args
        n = LANES
        while n > 1:
            n //= 2
            v = builder.fadd(builder.shuffle_vector(v, v, _indices(*range(n))),
                             builder.shuffle_vector(v, v, _indices(*range(n, 2 * n))))
        return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
    return types.float32(v), codegen


@intrinsic
def q8_0_block_step(typingctx, acc, wq, n, k, x16, scales, b):
    """acc + float32(pairs) * scales[b, k], pairs the <16 x i32> pair dots of wq[n, k, :] and x16[b, k, :].

    wq int8 (N, NB, 32); x16 int16 (B, NB, 32); scales float32 (B, NB) = wd[n, :] * xd[b, :].
    On AVX-512: vpmovsxbw (load + widen w), vpmaddwd, vcvtdq2ps, vfmadd231ps: 4 instructions a block.
    """
    def codegen(context, builder, sig, args):
        acc, wq, n, k, x16, scales, b = args
        zero = context.get_constant(types.intp, 0)
        w = _load(context, builder, sig.args[1], wq, [n, k, zero], _I8x32)  # (32,) int8
        x = _load(context, builder, sig.args[4], x16, [b, k, zero], _I16x32)  # (32,) int16
        return _scaled_add(context, builder, acc, _pair_dots(builder, w, x), sig.args[5], scales, [b, k])
    return float32x16(acc, wq, n, k, x16, scales, b), codegen


@intrinsic
def q4_0_block_step(typingctx, acc, wq, n, k, x16, scales, b):
    """As q8_0_block_step, wq the packed nibbles uint8 (N, NB, 16).

    The 16 bytes hold elements 0..15 in their low nibbles and 16..31 in their high ones, so
    [low nibbles, high nibbles] - 8 is the block's 32 signed values in order, as int8.
    """
    def codegen(context, builder, sig, args):
        acc, wq, n, k, x16, scales, b = args
        zero = context.get_constant(types.intp, 0)
        packed = _load(context, builder, sig.args[1], wq, [n, k, zero], _I8x16)  # (16,) bytes
        low = builder.and_(packed, ir.Constant(_I8x16, [15] * 16))
        high = builder.lshr(packed, ir.Constant(_I8x16, [4] * 16))
        w = builder.sub(builder.shuffle_vector(low, high, _indices(*range(32))), ir.Constant(_I8x32, [8] * 32))
        x = _load(context, builder, sig.args[4], x16, [b, k, zero], _I16x32)
        return _scaled_add(context, builder, acc, _pair_dots(builder, w, x), sig.args[5], scales, [b, k])
    return float32x16(acc, wq, n, k, x16, scales, b), codegen


# --------------------------------------------------------------------------------------------
# rows n0..n1 of W against every activation row b: out[b, n] for n in n0..n1
#
# One loop order serves decode (B = 1) and batches: for each row of W, its 128 block scales are
# multiplied by each x row's (a short vectorized loop), then each x row takes one pass over the
# W row, two accumulators (two independent FMA chains) of 16 lanes each. The W row (K bytes) is
# read from memory once and stays in L1 for the other x rows; x (B * K * 2 bytes) stays in L2.


@njit(cache=True, fastmath=True)
def q8_0_rows(wd, wq, xd, x16, out, n0, n1):
    """wd float32 (N, NB), wq int8 (N, NB, 32), xd float32 (B, NB), x16 int16 (B, NB, 32) -> out[:, n0:n1]."""
    B, NB = xd.shape
    scales = np.empty((B, NB), np.float32)  # wd[n, k] * xd[b, k]: the scale of block k's pair sums
    for n in range(n0, n1):
        for b in range(B):
            for k in range(NB):
                scales[b, k] = wd[n, k] * xd[b, k]
        for b in range(B):
            acc0 = lanes_zero()
            acc1 = lanes_zero()
            for k in range(0, NB - 1, 2):
                acc0 = q8_0_block_step(acc0, wq, n, k, x16, scales, b)
                acc1 = q8_0_block_step(acc1, wq, n, k + 1, x16, scales, b)
            if NB % 2:
                acc0 = q8_0_block_step(acc0, wq, n, NB - 1, x16, scales, b)
            out[b, n] = lanes_sum(acc0) + lanes_sum(acc1)


@njit(cache=True, fastmath=True)
def q4_0_rows(wd, wq, xd, x16, out, n0, n1):
    """As q8_0_rows, wq the packed nibbles uint8 (N, NB, 16)."""
    B, NB = xd.shape
    scales = np.empty((B, NB), np.float32)
    for n in range(n0, n1):
        for b in range(B):
            for k in range(NB):
                scales[b, k] = wd[n, k] * xd[b, k]
        for b in range(B):
            acc0 = lanes_zero()
            acc1 = lanes_zero()
            for k in range(0, NB - 1, 2):
                acc0 = q4_0_block_step(acc0, wq, n, k, x16, scales, b)
                acc1 = q4_0_block_step(acc1, wq, n, k + 1, x16, scales, b)
            if NB % 2:
                acc0 = q4_0_block_step(acc0, wq, n, NB - 1, x16, scales, b)
            out[b, n] = lanes_sum(acc0) + lanes_sum(acc1)


# --------------------------------------------------------------------------------------------
# the same kernels over all rows, split among threads (each task takes ROWS_PER_TASK rows)


@njit(cache=True, parallel=True)
def q8_0_parallel(wd, wq, xd, x16, out, rows_per_task):
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        q8_0_rows(wd, wq, xd, x16, out, t * rows_per_task, min(N, (t + 1) * rows_per_task))


@njit(cache=True, parallel=True)
def q4_0_parallel(wd, wq, xd, x16, out, rows_per_task):
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        q4_0_rows(wd, wq, xd, x16, out, t * rows_per_task, min(N, (t + 1) * rows_per_task))


ROW_KERNELS = {"q8_0": q8_0_rows, "q4_0": q4_0_rows}
PARALLEL_KERNELS = {"q8_0": q8_0_parallel, "q4_0": q4_0_parallel}


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
    x16 = xq.astype(np.int16)  # (B, NB, 32): widened once here, not once per row of W
    w_quants = np.ascontiguousarray(w_quants)  # the block steps load each block as one vector
    if parallel is None:
        # decode stays serial: see the module docstring for the measurement
        parallel = B > 1 and numba.get_num_threads() > 1 and B * N * K >= PARALLEL_MIN_WORK
    if parallel:
        PARALLEL_KERNELS[fmt](w_scales, w_quants, xd, x16, out, ROWS_PER_TASK)
    else:
        ROW_KERNELS[fmt](w_scales, w_quants, xd, x16, out, 0, N)
    return out
