"""Numba kernels for x @ W.T with W in Q8_0 / Q4_0 blocks: the fast twins of tinyinfer/quant/formats.py.

Lesson: lessons/04-quantization.py

The arithmetic is llama.cpp's: the activations x are first rounded to Q8_0 blocks (int8 quants and
one scale per 32 numbers, `quantize_activations`), so each block's dot product is a sum of small
integer products, exact, times the two scales:

    out[b, n] = sum over blocks k of  (sum_j xq[b,k,j] * wq[n,k,j]) * xd[b,k] * wd[n,k]

`formats.quantized_matmul_reference` is the same formula in NumPy; tests/test_quant_kernels.py
checks every kernel against it.

`quantized_rows` serves batches (B >= 2), in llama.cpp's shape (decode, B = 1, has `decode_rows`,
the same block step one row of W at a time): the output
is cut into register tiles of TILE_W = 4 rows of W by TILE_X = 4 rows of x (a narrower last tile
for B % 4 rows), and each tile keeps one 16-lane float32 accumulator per (W row, x row) in a
register for all of K. A block step loads the tile's 4 weight blocks (sign-extended to int16 once,
Q4_0 first unpacked to [low nibbles, high nibbles] - 8, the block's 32 values in order) and 4 x
blocks (widened to int16 once per call), and for each of the 16 pairs adds neighbouring int8
products into 16 int32 lanes (exact; x86's vpmaddwd does exactly this), converts them to float32
and adds them times the pair's combined block scale wd[n,k] * xd[b,k] (one fused multiply-add; the
scales are precomputed per tile, 16 per instruction). The 16 lanes are summed once per output.
On AVX-512 the loop is, per block step: 4 vpmovsxbw, 4 x loads, 16 x (vpmaddwd, vcvtdq2ps,
vfmadd231ps with the scale broadcast from memory), and 4 prefetches of the W rows two tiles ahead
(without them the 4 interleaved short row streams left B = 1 1.3-2x slower than reading one row
after another). `quantized_rows.inspect_asm(sig)` shows it (compile with cache off to inspect).

Why explicit vectors: LLVM's loop vectorizer did not find this shape from plain loops (measured,
4096 x 4096, numba 0.68 / LLVM 20): summing each block with a run-time-length int32 loop ran in
its 8-wide remainder loop plus a horizontal sum (~9 cycles a block); 16-lane float accumulators in
an array were reloaded and stored every block; with a constant 32 LLVM vectorized across blocks
with shuffles (10-25 ms). So `Float32Tile` below is a Numba type whose value is an LLVM array of
`<16 x float>` with constant indices only (registers), and `tile_block_step` is an intrinsic of
generic LLVM vector IR (sext, mul, shufflevector, sitofp, fmul/fadd with "contract"): portable IR,
from which LLVM picks vpmaddwd on x86. 16 accumulators + 4 weight vectors fit AVX-512's 32 zmm
registers; on an AVX2 machine (16 ymm, each accumulator two of them) the tile would spill.

Measured (4096 x 4096, busy 2-core EPYC Zen 4, load average 7-8, so timings are 2-4x their quiet
values; old = the previous one-row kernel, interleaved in one process, minimum of 9-21 rounds):
B = 32 Q8_0 18-26 ms (old 27-38 ms, NumPy float32 x @ W.T 32-63 ms in the same rounds; 1.4-1.5x
the old kernel, `bench.quant` ratio 2.3x NumPy), Q4_0 22-29 ms (old 35-49); B = 64 Q8_0 45-47 ms
(NumPy 71-79); B = 2..8 1.1-2x the old kernel. B = 1 matvec was 0.74-1.0x the old kernel through the
tile, so decode has its own kernel again (`decode_rows`, below). Summation order: lanes, not block after block, so the result differs
from the twin by float32 rounding only (tests bound it by 1e-5 of sum |terms|).

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

fastmath=True on quantized_rows only lets LLVM vectorize the scale loop; the block step's vector IR
carries its own flags ("contract": fuse multiply and add), and its integer parts are exact either way.
Kernels are compiled on first use (one per format, tile shape and serial/parallel) and cached on
disk (cache=True).
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from .formats import BLOCK

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"  # read at the first parallel launch, not before

PARALLEL_MIN_WORK = 1 << 22  # multiply-adds (B * N * K) below which one thread is faster
ROWS_PER_TASK = 64  # rows of W a thread takes at a time

# --------------------------------------------------------------------------------------------
# activations to Q8_0 blocks (bit-identical to formats.quantize_activations; no fastmath, so the
# float32 products and roundings are exactly the C ones)


@njit(cache=True)
def float16_round(v):
    """float32 v -> the nearest float16 value (half to even; inf past 65504), as a float32.

    Numba has no float16 type on the CPU, so the rounding is spelled out: a float16 has 11
    significant bits, so v is rounded to a multiple of 2^(e - 11) where 2^(e-1) <= |v| < 2^e,
    and never finer than 2^-24 (float16's subnormals). Scaling by powers of two is exact."""
    if v == 0 or not np.isfinite(v):
        return v
    m, e = math.frexp(np.float64(v))
    step = max(e - 11, -24)
    r = np.rint(math.ldexp(np.float64(v), -step))  # an integer below 2^11: exact
    out = math.ldexp(r, step)
    if abs(out) > 65504.0:
        return np.float32(np.inf) if out > 0 else np.float32(-np.inf)
    return np.float32(out)


@njit(cache=True)
def quantize_activations(x, xq, xd, xs):
    """x: float32 (B, K) -> fills xq int8 (B, NB, 32), xd and xs float32 (B, NB): blocks.quantize_activations.

    d = amax / 127 and s = d * sum q, both rounded to float16; q = rint(x * (127 / amax)).
    No fastmath, so every float32 product and rounding is the C one."""
    B, K = x.shape
    NB = K // BLOCK
    for b in range(B):
        for k in range(NB):
            amax = np.float32(0.0)
            for j in range(BLOCK):
                amax = max(amax, abs(x[b, k * BLOCK + j]))
            d = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            if not np.isfinite(inv):  # amax so small that 127/amax overflows: an all-zero block
                inv = np.float32(0.0)
            total = 0
            for j in range(BLOCK):
                v = x[b, k * BLOCK + j] * inv  # float32 * float32, rounded to float32 as in C
                q = np.int8(np.rint(np.float64(v)))  # half to even, as _mm256_round_ps does
                xq[b, k, j] = q
                total += q
            xd[b, k] = float16_round(d)
            xs[b, k] = float16_round(d * np.float32(total))


# --------------------------------------------------------------------------------------------
# explicit SIMD: a tile of 16-lane float32 accumulators that Numba holds in registers, and the
# block step that updates the whole tile
#
# Each intrinsic below is a few lines of LLVM IR written with llvmlite. The IR is generic (vector
# types, sext, mul, shufflevector), not x86 intrinsics: LLVM picks the instructions, so the code
# runs on any CPU Numba supports; on x86 the shapes below are the ones LLVM turns into vpmaddwd.

LANES = 16  # float32 lanes of one accumulator: one zmm register (AVX-512) or two ymm (AVX2)
TILE_W = 4  # rows of W in one register tile: each loaded weight block serves TILE_X rows of x
TILE_X = 4  # rows of x in one register tile: each loaded x block serves TILE_W rows of W
PREFETCH_ROWS = 8  # the block step asks for W's blocks this many rows ahead (the tile after next)
_F32xL = ir.VectorType(ir.FloatType(), LANES)
_I8x16, _I8x32 = ir.VectorType(ir.IntType(8), 16), ir.VectorType(ir.IntType(8), 32)
_I16x32, _I32x32 = ir.VectorType(ir.IntType(16), 32), ir.VectorType(ir.IntType(32), 32)


class Float32Tile(types.Type):
    """Numba type of rows x cols accumulators of <16 x float>: an LLVM array value that lives in
    registers (all its indices are constants, so LLVM splits it into rows * cols vectors)."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols
        super().__init__(name=f"float32x16_tile{rows}x{cols}")


@register_model(Float32Tile)
class _Float32TileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.ArrayType(_F32xL, fe_type.rows * fe_type.cols))


class ZeroTile:
    """A tile of zeros as a Python argument: Numba types it as Float32Tile(rows, cols), so each
    tile shape is compiled on its first call only (not every shape whenever any is needed)."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols


@typeof_impl.register(ZeroTile)
def _typeof_zero_tile(val, c):
    return Float32Tile(val.rows, val.cols)


@unbox(Float32Tile)
def _unbox_zero_tile(typ, obj, c):
    return NativeValue(ir.Constant(c.context.get_value_type(typ), None))


def _indices(*values):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), list(values))


def _pointer(context, builder, aryty, ary, inds):
    """The address of ary[inds] (no bounds check, no negative indices)."""
    array = context.make_array(aryty)(context, builder, value=ary)
    return cgutils.get_item_pointer(context, builder, aryty, array, inds, wraparound=False)


def _load(context, builder, aryty, ary, inds, vector_type):
    """The vector starting at ary[inds] (the last axis contiguous; unaligned load)."""
    ptr = _pointer(context, builder, aryty, ary, inds)
    return builder.load(builder.bitcast(ptr, vector_type.as_pointer()), align=1)


def _pair_dots(builder, w, x):
    """w <32 x i8>, x <32 x i16> -> <16 x i32>: lane l = w[2l] x[2l] + w[2l+1] x[2l+1], exact.

    Products of neighbours added in int32: exactly what x86's vpmaddwd does in one instruction
    (and LLVM recognizes this shape as it)."""
    prod = builder.mul(builder.sext(w, _I32x32), builder.sext(x, _I32x32))  # (32,) int32
    return builder.add(builder.shuffle_vector(prod, prod, _indices(*range(0, 32, 2))),
                       builder.shuffle_vector(prod, prod, _indices(*range(1, 32, 2))))


def _scaled_add(builder, acc, pairs, scale_ptr):
    """acc + float32(pairs) * *scale_ptr (one scale, broadcast to all lanes; fused multiply-add)."""
    s = builder.load(scale_ptr)
    s = builder.insert_element(ir.Constant(_F32xL, None), s, ir.Constant(ir.IntType(32), 0))
    s = builder.shuffle_vector(s, s, _indices(*[0] * LANES))  # broadcast
    prod = builder.fmul(builder.sitofp(pairs, _F32xL), s, flags=("contract",))
    return builder.fadd(acc, prod, flags=("contract",))


def _prefetch(builder, ptr):
    """Ask the cache for the line at ptr (read, keep in all levels): a hint, never a fault."""
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                        "llvm.prefetch." + ("p0" if getattr(ptr.type, "is_opaque", False) else "p0i8"))
    builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _weight_block(context, builder, wq_ty, wq, n, k):
    """Block k of row n of W as <32 x i8>: int8 quants as stored (q8_0), or unpacked nibbles (q4_0).

    A q4_0 block's 16 bytes hold elements 0..15 in their low nibbles and 16..31 in their high ones,
    so [low nibbles, high nibbles] - 8 is the block's 32 signed values in order."""
    zero = context.get_constant(types.intp, 0)
    if wq_ty.dtype == types.int8:
        return _load(context, builder, wq_ty, wq, [n, k, zero], _I8x32)
    packed = _load(context, builder, wq_ty, wq, [n, k, zero], _I8x16)  # (16,) bytes
    low = builder.and_(packed, ir.Constant(_I8x16, [15] * 16))
    high = builder.lshr(packed, ir.Constant(_I8x16, [4] * 16))
    return builder.sub(builder.shuffle_vector(low, high, _indices(*range(32))), ir.Constant(_I8x32, [8] * 32))


@intrinsic
def tile_cols(typingctx, tile):
    """The tile's number of columns (x rows): a compile-time constant."""
    return types.intp(tile), lambda context, builder, sig, args: context.get_constant(types.intp, sig.args[0].cols)


@intrinsic
def tile_sums(typingctx, acc, sums):
    """sums[i, j] = the sum of accumulator (i, j)'s 16 lanes, as a tree (8 + 8, 4 + 4, 2 + 2, 1 + 1)."""
    def codegen(context, builder, sig, args):
        acc, sums = args
        for i in range(sig.args[0].rows):
            for j in range(sig.args[0].cols):
                v, n = builder.extract_value(acc, i * sig.args[0].cols + j), LANES
                while n > 1:
                    n //= 2
                    v = builder.fadd(builder.shuffle_vector(v, v, _indices(*range(n))),
                                     builder.shuffle_vector(v, v, _indices(*range(n, 2 * n))))
                inds = [context.get_constant(types.intp, i), context.get_constant(types.intp, j)]
                builder.store(builder.extract_element(v, ir.Constant(ir.IntType(32), 0)),
                              _pointer(context, builder, sig.args[1], sums, inds))
        return context.get_dummy_value()
    return types.none(acc, sums), codegen


@intrinsic
def tile_block_step(typingctx, acc, wq, n0, n_last, k, x16, b0, scales):
    """acc[i, j] + float32(pair dots of block k of W row min(n0 + i, n_last) and x row b0 + j) * scales[i, j, k].

    wq int8 (N, NB, 32) for q8_0 or uint8 (N, NB, 16) for q4_0; x16 int16 (B, NB, 32);
    scales float32 (TILE_W, cols, NB): wd[n, k] * xd[b, k] for the tile's rows n and b.
    Rows of W past n_last repeat row n_last (the caller drops their sums), so one tile shape
    serves every N. Each weight block is loaded (and unpacked) once for the tile's cols x rows,
    each x block once for its rows; on AVX-512 a (row, col) pair then costs vpmaddwd, vcvtdq2ps
    and a vfmadd231ps with the scale broadcast from memory.
    """
    tile = acc

    def codegen(context, builder, sig, args):
        acc, wq, n0, n_last, k, x16, b0, scales = args
        wq_ty, x16_ty, scales_ty = sig.args[1], sig.args[5], sig.args[7]
        n0, n_last, k, b0 = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (2, 3, 4, 6))
        const = lambda v: context.get_constant(types.intp, v)  # noqa: E731
        clamp = lambda n, top: builder.select(builder.icmp_signed("<=", n, top), n, top)  # noqa: E731
        # Rows PREFETCH_ROWS ahead: the tile after next. The hardware prefetcher does not follow
        # TILE_W interleaved short streams well (measured: B = 1 was 1.3-2x slower without this).
        last_row = builder.sub(cgutils.unpack_tuple(builder, context.make_array(wq_ty)(
            context, builder, value=wq).shape)[0], const(1))
        for i in range(tile.rows):
            ahead = clamp(builder.add(n0, const(PREFETCH_ROWS + i)), last_row)
            _prefetch(builder, _pointer(context, builder, wq_ty, wq, [ahead, k, const(0)]))
        w = [_weight_block(context, builder, wq_ty, wq, clamp(builder.add(n0, const(i)), n_last), k)
             for i in range(tile.rows)]  # (32,) int8 each
        x = [_load(context, builder, x16_ty, x16, [builder.add(b0, const(j)), k, const(0)], _I16x32)
             for j in range(tile.cols)]  # (32,) int16 each
        for i in range(tile.rows):
            for j in range(tile.cols):
                a = builder.extract_value(acc, i * tile.cols + j)
                scale_ptr = _pointer(context, builder, scales_ty, scales, [const(i), const(j), k])
                a = _scaled_add(builder, a, _pair_dots(builder, w[i], x[j]), scale_ptr)
                acc = builder.insert_value(acc, a, i * tile.cols + j)
        return acc
    return tile(acc, wq, n0, n_last, k, x16, b0, scales), codegen


# --------------------------------------------------------------------------------------------
# rows n0..n1 of W against every activation row b: out[b, n] for n in n0..n1
#
# The output is cut into tiles of TILE_W rows of W by TILE_X rows of x. A tile's 16 accumulators
# stay in registers for the whole row (all K), so each block step loads TILE_W weight blocks and
# TILE_X x blocks for TILE_W * TILE_X block products. The W tile (TILE_W * K bytes) comes from
# memory for the first x tile and from cache for the others; x (B * K * 2 bytes) stays in L2.


@njit(cache=True, fastmath=True)
def quantized_rows(wd, wq, xd, x16, out, n0, n1, zero):
    """wd float32 (N, NB), wq int8 (N, NB, 32) or uint8 (N, NB, 16), xd float32 (B, NB),
    x16 int16 (B, NB, 32) -> out[:, n0:n1]. zero: ZERO_TILES[cols], cols dividing B (Numba compiles
    one kernel per tile shape: the tile's accumulators are registers)."""
    B, NB = xd.shape
    cols = tile_cols(zero)
    scales = np.empty((TILE_W, cols, NB), np.float32)  # wd[n, k] * xd[b, k]: the pair sums' scales
    sums = np.empty((TILE_W, cols), np.float32)
    for n_first in range(n0, n1, TILE_W):
        n_last = min(n_first + TILE_W, n1) - 1  # the last tile repeats row n_last
        for b0 in range(0, B, cols):
            for i in range(TILE_W):
                n = min(n_first + i, n_last)
                for j in range(cols):
                    for k in range(NB):  # vectorized: 16 scales per instruction
                        scales[i, j, k] = wd[n, k] * xd[b0 + j, k]
            acc = zero
            for k in range(NB):
                acc = tile_block_step(acc, wq, n_first, n_last, k, x16, b0, scales)
            tile_sums(acc, sums)
            for i in range(n_last + 1 - n_first):
                for j in range(cols):
                    out[b0 + j, n_first + i] = sums[i, j]


@njit(cache=True, parallel=True)
def quantized_parallel(wd, wq, xd, x16, out, zero, rows_per_task):
    """quantized_rows over all rows, split among threads (each task takes rows_per_task rows)."""
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        quantized_rows(wd, wq, xd, x16, out, t * rows_per_task, min(N, (t + 1) * rows_per_task), zero)


ZERO_TILES = {cols: ZeroTile(TILE_W, cols) for cols in range(1, TILE_X + 1)}


# --------------------------------------------------------------------------------------------
# decode (B = 1): nothing to reuse a weight block for, so one row of W at a time, read as one
# sequential stream. One accumulator, blocks in order, the same lane sums: every output is
# computed exactly as quantized_rows computes it, so a sequence's logits do not depend on
# whether it decodes alone or in a batch (tests/test_quant_kernels.py checks bit equality).
# Measured against quantized_rows with a 4 x 1 tile, interleaved in one process on a quiet
# machine: 1.22x (Q8_0) and 1.05x (Q4_0) faster at 4096 x 4096, 1.13-1.16x on the teacher's
# 512 x 192: the tile's interleaved rows and its setup are pure cost for one x row.


@intrinsic
def row_block_step(typingctx, acc, wq, n, k, x16, scales):
    """acc + float32(pair dots of block k of W row n and x16[0, k]) * scales[k]: one accumulator,
    no prefetch (one row is one sequential stream, which the hardware prefetcher follows)."""
    def codegen(context, builder, sig, args):
        acc, wq, n, k, x16, scales = args
        n, k = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (2, 3))
        zero = context.get_constant(types.intp, 0)
        w = _weight_block(context, builder, sig.args[1], wq, n, k)  # (32,) int8
        x = _load(context, builder, sig.args[4], x16, [zero, k, zero], _I16x32)  # (32,) int16
        a = _scaled_add(builder, builder.extract_value(acc, 0), _pair_dots(builder, w, x),
                        _pointer(context, builder, sig.args[5], scales, [k]))
        return builder.insert_value(acc, a, 0)
    return acc(acc, wq, n, k, x16, scales), codegen


@njit(cache=True, fastmath=True)
def decode_rows(wd, wq, xd, x16, out, n0, n1, zero):
    """As quantized_rows for B = 1 (xd (1, NB), x16 (1, NB, 32)); zero: DECODE_TILE."""
    NB = xd.shape[1]
    scales = np.empty(NB, np.float32)  # wd[n, k] * xd[0, k]
    sums = np.empty((1, 1), np.float32)
    for n in range(n0, n1):
        for k in range(NB):
            scales[k] = wd[n, k] * xd[0, k]
        acc = zero
        for k in range(NB):  # blocks in order, as quantized_rows adds them
            acc = row_block_step(acc, wq, n, k, x16, scales)
        tile_sums(acc, sums)
        out[0, n] = sums[0, 0]


@njit(cache=True, parallel=True)
def decode_parallel(wd, wq, xd, x16, out, zero, rows_per_task):
    """decode_rows over all rows, split among threads."""
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        decode_rows(wd, wq, xd, x16, out, t * rows_per_task, min(N, (t + 1) * rows_per_task), zero)


DECODE_TILE = ZeroTile(1, 1)


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
    xs = np.empty((B, NB), dtype=np.float32)
    quantize_activations(x, xq, xd, xs)
    out = np.empty((B, N), dtype=np.float32)
    if B == 0:
        return out
    x16 = xq.astype(np.int16)  # (B, NB, 32): widened once here, not once per row of W
    w_quants = np.ascontiguousarray(w_quants)  # the block steps load each block as one vector
    expected = np.int8 if fmt == "q8_0" else np.uint8
    if w_quants.dtype != expected:
        raise TypeError(f"w_quants must be {np.dtype(expected)} for {fmt}, got {w_quants.dtype}")
    if parallel is None:
        # decode stays serial: see the module docstring for the measurement
        parallel = B > 1 and numba.get_num_threads() > 1 and B * N * K >= PARALLEL_MIN_WORK
    if B == 1:
        if parallel:
            decode_parallel(w_scales, w_quants, xd, x16, out, DECODE_TILE, ROWS_PER_TASK)
        else:
            decode_rows(w_scales, w_quants, xd, x16, out, 0, N, DECODE_TILE)
        return out
    # x rows in tiles of TILE_X, then the B % TILE_X left over in one narrower tile
    full = B - B % TILE_X
    for b0, b1 in ((0, full), (full, B)):
        if b1 > b0:
            zero = ZERO_TILES[min(TILE_X, b1 - b0)]
            if parallel:
                quantized_parallel(w_scales, w_quants, xd[b0:b1], x16[b0:b1], out[b0:b1], zero, ROWS_PER_TASK)
            else:
                quantized_rows(w_scales, w_quants, xd[b0:b1], x16[b0:b1], out[b0:b1], 0, N, zero)
    return out


def qtensor_matmul(qt, x):
    """QTensor.matmul's fast path: x float32 (B, K) -> float32 (B, N)."""
    if qt.fmt in ("q8_0", "q4_0"):
        return quantized_matmul(qt.fmt, qt._scales_f32, qt.quants, x)
    from .formats import quantized_matmul_reference  # formats without a kernel yet: the NumPy twin

    return quantized_matmul_reference(qt.fmt, qt._scales_f32, qt.quants, x, qt._mins_f32, qt.high_bits)
