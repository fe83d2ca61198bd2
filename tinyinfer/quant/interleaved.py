"""Sixteen rows of W side by side: the products with one output row per vector lane.

Lesson: lessons/04-quantization.py (section 4, the step after the pair kernels)

quant/simd.py's kernels keep W as QTensor stores it, row after row, and give a vector's lanes to
neighbouring *elements* of one row: after each block the lanes hold partial sums of one output,
each converted to float and scaled (a conversion, a scale product and a fused multiply-add per
vector of products), and summed across the lanes at the end. With AVX-512 VNNI one `vpdpbusd`
does 64 multiply-adds, and those three float operations per `vpdpbusd` became the limit: the
register tile ran at ~142 G multiply-adds/s on one core of a Zen 5 (bench.roofline's tile_rate).

Here the lanes belong to 16 neighbouring *rows* of W instead. A block of 32 elements of 16 rows
is stored as

    record (g, b) = quants, then d (16 float16), then m (16 float16, q4_1 only)
    quants, 4-bit formats: 4 vectors of 64 bytes; vector h, bytes 4r..4r+3 = the packed bytes
        4h..4h+3 of row 16g + r's block b (low nibbles: elements 4h..4h+3; high: 16+4h..16+4h+3)
    quants, q8_0: 8 vectors of 64 bytes; vector h, bytes 4r..4r+3 = elements 4h..4h+3 of row
        16g + r's block b, plus 128 (as unsigned bytes)

so that one `vpdpbusd` of a weight vector with four bytes of x copied to every lane adds four
products to each of the 16 rows' int32 sums. A block's 32 products per row are whole after 8 of
them, exact; then once per block and row of x: one conversion, one scale product and one fused
multiply-add for 16 outputs, and no sum across lanes at the end (each lane is an output):

    out[r, n] = sum over blocks b, in order, of  float32(sum_j q_w[n,b,j] q_x[r,b,j] - c[r,b])
                * (d_w[n,b] * d_x[r,b])  (+ m_w[n,b] * s_x[r,b] for q4_1, one more fused step)

with c = 128 sum_j q_x (q8_0: the weights' +128) or 8 sum_j q_x (q4_0: its stored q is q + 8),
the formula of formats.quantized_matmul_reference with a different rounding order. A batch takes
TILE_ROWS rows of x at a time (each weight vector unpacked once for them), decode one row; the
arithmetic for one output is the same either way, so a sequence's logits are the same bits alone
or in a batch (tests/test_interleaved.py checks that, and the NumPy twin `reference_matmul`).

Measured on a 2-core Zen 5 (AVX-512 VNNI), one process, alternating with quant/simd.py's pair
kernels on the same weights, two threads: the register tile in L1 ~258 G multiply-adds/s on one
core (pair tile: 142); Q4_1 B = 32 on SmolLM2's shapes 1.9-3.5x (3072 x 576: ~320 G
multiply-adds/s), B = 2 and 4 2.2-3.9x, B = 1 1.3-2.5x (in cache); the Q8_0 head (49152 x 576)
B = 32 1.5-1.8x. Decode from memory (eight 4096 x 4096 matrices cycled) reads the same bytes as
before (the records hold d and m as float16): Q4_1 1.07-1.21x, Q8_0 0.98-1.03x, both ~40 GB/s,
the machine's bandwidth.

The price: a second copy of the weights in memory for the formats that use it (QTensor.records,
made on first use), and a layout a porter has to reproduce (it is llama.cpp's idea of "repacked"
weights, Q4_0_8x8 and friends, at the width of a zmm register). Without VNNI the same IR runs
with generic vector products (correct, slow): quant/simd.py's kernels are used there instead.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, models, register_model

from .simd import VNNI, Format, _indices, _pointer, _prefetch, _quad_dots, _x86

GROUP = 16  # rows of W per record: one int32 lane each in a 512-bit vector
TILE_ROWS = 4  # rows of x per tile in a batch (each weight vector unpacked once for them)
FORMATS = ("q4_0", "q4_1", "q8_0")
USED_FORMATS = FORMATS if VNNI else ()  # the formats QTensor.matmul and the fused step send here
# Decode (one row of x) asks for the record this many bytes ahead (every line of it): it streams the
# records from memory once. Measured on SmolLM2's shapes, two threads: 1.2-1.5x faster than with no
# hint (1024 and 4096 bytes within noise of 2048). A batch's tiles read a group's records from memory
# in the first tile and from L1 in the others, so each tile step asks for the *next group's* record
# instead, which is then on its way while this group's later tiles compute: SmolLM2's whole Q4_1
# decode step (2-core Zen 5, the two versions alternated in three pairs of runs) at 8 sequences
# 6.7-7.6 vs 8.6-8.9 ms, at 32 23.2-25.2 vs 23.4-27.2 ms, at 2 4.3-4.7 vs 4.6-5.0 ms; the 49152 x 576
# Q8_0 output layer alone 1.48x at B = 8, 1.10x at B = 32.
PREFETCH_BYTES = 2048
OFFSETS = {"q4_0": 8, "q8_0": 128}  # c[r, b] = OFFSET * sum_j q_x[r, b, j]
_QUANT_BYTES = {"q4_0": 4 * 64, "q4_1": 4 * 64, "q8_0": 8 * 64}
RECORD_BYTES = {fmt: q + 2 * GROUP * (2 if fmt == "q4_1" else 1) for fmt, q in _QUANT_BYTES.items()}

_I8x64 = ir.VectorType(ir.IntType(8), 64)
_I32 = ir.IntType(32)
_I32x16 = ir.VectorType(_I32, 16)
_F32x16 = ir.VectorType(ir.FloatType(), 16)
_F16x16 = ir.VectorType(ir.HalfType(), 16)


# --------------------------------------------------------------------------------------------
# the layout


def groups(N: int) -> int:
    return -(-N // GROUP)


def repack(fmt: str, quants: np.ndarray, scales: np.ndarray, mins=None) -> np.ndarray:
    """QTensor's arrays -> records uint8 (groups(N), NB, RECORD_BYTES[fmt]) (module docstring).
    quants as QTensor stores them, scales / mins float16 (N, NB). Rows past N are zeros."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    N, NB = scales.shape
    G = groups(N)
    per_row = quants.shape[2]  # 16 packed bytes or 32 int8
    q = np.zeros((G * GROUP, NB, per_row), np.uint8)
    q[:N] = quants.view(np.uint8) ^ (0x80 if fmt == "q8_0" else 0)  # q8_0: q + 128 as unsigned bytes
    # (G, 16 rows, NB, H, 4) -> (G, NB, H, 16 rows, 4): each vector holds 4 bytes of every row
    q = q.reshape(G, GROUP, NB, per_row // 4, 4).transpose(0, 2, 3, 1, 4).reshape(G, NB, -1)
    parts = [q]
    for a in (scales, mins) if fmt == "q4_1" else (scales,):
        pad = np.zeros((G * GROUP, NB), np.float16)
        pad[:N] = a
        parts.append(pad.reshape(G, GROUP, NB).transpose(0, 2, 1).copy().view(np.uint8))  # (G, NB, 32)
    return np.ascontiguousarray(np.concatenate(parts, axis=2))


def unpack(fmt: str, records: np.ndarray, N: int):
    """The inverse of repack: (quants, scales, mins or None) as QTensor stores them."""
    G, NB, _ = records.shape
    qb = _QUANT_BYTES[fmt]
    per_row = 16 if qb == 256 else 32  # bytes per row and block: packed nibbles or q8_0's int8
    q = records[:, :, :qb].reshape(G, NB, per_row // 4, GROUP, 4).transpose(0, 3, 1, 2, 4).reshape(G * GROUP, NB,
                                                                                                   per_row)[:N]
    quants = (q ^ 0x80).view(np.int8).copy() if fmt == "q8_0" else q.copy()
    halves = lambda at: records[:, :, at:at + 32].copy().view(np.float16).transpose(0, 2, 1).reshape(-1, NB)[:N]  # noqa: E731
    scales = halves(qb)
    mins = halves(qb + 32) if fmt == "q4_1" else None
    return quants, scales, mins


def reference_matmul(fmt: str, records: np.ndarray, N: int, xq, xd, xs) -> np.ndarray:
    """The NumPy twin of the kernels: float32 (B, N) from the records and x's blocks (xq int8 (B, NB,
    32), xd, xs float32 (B, NB), as kernels.quantize_x gives them), block by block in the kernels'
    order; the integer sums are exact, the float steps are rounded to float32 as the kernels round
    them (a fused multiply-add differs from NumPy's multiply-then-add in the last bit at most)."""
    quants, scales, mins = unpack(fmt, records, N)
    B, NB, _ = xq.shape
    if fmt == "q8_0":
        w = quants.astype(np.int64)
    else:
        w = np.concatenate([quants & 15, quants >> 4], axis=2).astype(np.int64)
        if fmt == "q4_0":
            w -= 8
    d = scales.astype(np.float32)
    out = np.zeros((B, N), np.float32)
    for b in range(NB):
        dots = (xq[:, b, :].astype(np.int64) @ w[:, b, :].T).astype(np.float32)  # exact, (B, N)
        out = out + dots * (d[None, :, b] * xd[:, b, None])
        if fmt == "q4_1":
            out = out + mins[:, b].astype(np.float32)[None, :] * xs[:, b, None]
    return out


# --------------------------------------------------------------------------------------------
# compile-time arguments: the format (quant/simd.py's Format with layout "interleaved"), and a row of
# 16-lane accumulators


class Lanes16(types.Type):
    """Numba type of `rows` accumulators of <16 x float> (registers: constant indices only)."""

    def __init__(self, rows):
        self.rows = rows
        super().__init__(name=f"float32x16_rows{rows}")


@register_model(Lanes16)
class _Lanes16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.ArrayType(_F32x16, fe_type.rows))


def _zeros(rows):
    @intrinsic
    def zeros(typingctx):
        typ = Lanes16(rows)
        return typ(), lambda context, builder, sig, args: ir.Constant(context.get_value_type(typ), None)
    return zeros


zeros_tile, zeros_one = _zeros(TILE_ROWS), _zeros(1)


@intrinsic
def offset_of(typingctx, tag):
    return types.int32(tag), lambda context, builder, sig, args: context.get_constant(
        types.int32, OFFSETS.get(sig.args[0].fmt, 0))


# --------------------------------------------------------------------------------------------
# the block step


def _splat(builder, value, vector_type):
    v = builder.insert_element(ir.Constant(vector_type, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, _indices(*[0] * vector_type.count))


def _dot_add(builder, acc, u, v):
    """acc + the sums of each 4 neighbouring products of u (unsigned) and v (signed) <64 x i8>, in
    16 int32 lanes: one vpdpbusd (accumulating) with VNNI, else quant/simd.py's generic quad dots."""
    if VNNI:
        return _x86(builder, "llvm.x86.avx512.vpdpbusd.512", _I32x16, acc, builder.bitcast(u, _I32x16),
                    builder.bitcast(v, _I32x16))
    return builder.add(acc, _quad_dots(builder, u, v))


@intrinsic
def block_step(typingctx, tag, acc, rec, g, b, xq, r0, xd, xs, corr):
    """acc[r] + record (g, b)'s products with block b of x row r0 + r, for the tile's rows r
    (module docstring). rec uint8 (G, NB, RECORD_BYTES); xq int8 (B, NB, 32); xd, xs float32 (B, NB);
    corr int32 (B, NB): c[r, b] (q4_0, q8_0; else not read)."""
    tile = acc

    def codegen(context, builder, sig, args):
        _, acc, rec, g, b, xq, r0, xd, xs, corr = args
        fmt = sig.args[0].fmt
        g, b, r0 = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (3, 4, 6))
        const = lambda v: context.get_constant(types.intp, v)  # noqa: E731
        R = tile.rows
        chains = 4 if R == 1 else 2  # independent int32 sums per row of x (hide vpdpbusd's latency)
        rows = [builder.add(r0, const(r)) for r in range(R)]
        start = _pointer(context, builder, sig.args[2], rec, [g, b, const(0)])
        at = lambda offset, typ: builder.load(builder.bitcast(builder.gep(start, [const(offset)]),  # noqa: E731
                                                              typ.as_pointer()), align=1)
        if R > 1:  # a tile asks for the next group's record b instead (see PREFETCH_BYTES)
            nb = builder.extract_value(context.make_array(sig.args[2])(context, builder, value=rec).shape, 1)
            ahead = builder.mul(nb, const(RECORD_BYTES[fmt]))
            for line in range(0, RECORD_BYTES[fmt], 64):
                _prefetch(builder, builder.gep(start, [builder.add(ahead, const(line))]))
        else:
            for line in range(0, RECORD_BYTES[fmt], 64):  # the record PREFETCH_BYTES ahead (a hint, never a fault)
                _prefetch(builder, builder.gep(start, [const(PREFETCH_BYTES + line)]))
        sums = [[ir.Constant(_I32x16, None)] * chains for _ in range(R)]
        used = [0] * R
        pieces = []  # (weight vector, element of x's block its lanes' first product takes)
        if fmt == "q8_0":
            pieces = [(at(64 * h, _I8x64), 4 * h) for h in range(8)]
        for h in range(4 if fmt != "q8_0" else 0):
            v = at(64 * h, _I8x64)
            pieces.append((builder.and_(v, ir.Constant(_I8x64, [15] * 64)), 4 * h))
            pieces.append((builder.lshr(v, ir.Constant(_I8x64, [4] * 64)), 16 + 4 * h))
        for w, e in pieces:
            for r in range(R):
                x4 = builder.load(builder.bitcast(_pointer(context, builder, sig.args[5], xq, [rows[r], b, const(e)]),
                                                  _I32.as_pointer()), align=1)
                c = used[r] % chains
                sums[r][c] = _dot_add(builder, sums[r][c], w, builder.bitcast(_splat(builder, x4, _I32x16), _I8x64))
                used[r] += 1
        qb = _QUANT_BYTES[fmt]
        d = builder.fpext(at(qb, _F16x16), _F32x16)
        m = builder.fpext(at(qb + 32, _F16x16), _F32x16) if fmt == "q4_1" else None
        scalar = lambda a, r: builder.load(_pointer(context, builder, sig.args[a], args[a], [rows[r], b]))  # noqa: E731
        for r in range(R):
            s = sums[r][0]
            for c in range(1, chains):
                s = builder.add(s, sums[r][c])
            if fmt in OFFSETS:
                s = builder.sub(s, _splat(builder, scalar(9, r), _I32x16))
            a = builder.extract_value(acc, r)
            scale = builder.fmul(d, _splat(builder, scalar(7, r), _F32x16))
            a = builder.fadd(a, builder.fmul(builder.sitofp(s, _F32x16), scale, flags=("contract",)),
                             flags=("contract",))
            if m is not None:
                a = builder.fadd(a, builder.fmul(m, _splat(builder, scalar(8, r), _F32x16), flags=("contract",)),
                                 flags=("contract",))
            acc = builder.insert_value(acc, a, r)
        return acc
    return tile(tag, acc, rec, g, b, xq, r0, xd, xs, corr), codegen


@intrinsic
def store_lanes(typingctx, acc, buf):
    """buf[r, :] = the 16 lanes of accumulator r; buf float32 (rows, 16)."""
    def codegen(context, builder, sig, args):
        acc, buf = args
        for r in range(sig.args[0].rows):
            ptr = _pointer(context, builder, sig.args[1], buf, [context.get_constant(types.intp, r),
                                                                context.get_constant(types.intp, 0)])
            builder.store(builder.extract_value(acc, r), builder.bitcast(ptr, _F32x16.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(acc, buf), codegen


# --------------------------------------------------------------------------------------------
# the kernels


@njit(cache=True)
def corrections(tag, xq):
    """c (B, NB) int32: OFFSET * sum_j q_x[r, b, j] (q4_0, q8_0), zeros (1, 1) otherwise."""
    off = offset_of(tag)
    if off == 0:
        return np.zeros((1, 1), np.int32)
    B, NB, L = xq.shape
    c = np.empty((B, NB), np.int32)
    for r in range(B):
        for b in range(NB):
            s = np.int32(0)
            for j in range(L):
                s += np.int32(xq[r, b, j])
            c[r, b] = off * s
    return c


@njit(cache=True)
def _put(buf, out, r0, rows, n0):
    """out[r0 + r, n0 + i] = buf[r, i] for the rows and the lanes inside out."""
    n = min(GROUP, out.shape[1] - n0)
    for r in range(rows):
        for i in range(n):
            out[r0 + r, n0 + i] = buf[r, i]


@njit(cache=True)
def rows(tag, rec, xq, xd, xs, corr, out, g0, g1):
    """out[:, 16 g0 : 16 g1] for every row of x: groups g0..g1, x in tiles of TILE_ROWS rows, the
    rows left one at a time (the group's records stay in L1 while the tiles go by)."""
    B = xq.shape[0]
    NB = rec.shape[1]
    full = B - B % TILE_ROWS
    buf = np.empty((TILE_ROWS, GROUP), np.float32)
    for g in range(g0, g1):
        for r0 in range(0, full, TILE_ROWS):
            acc = zeros_tile()
            for b in range(NB):  # blocks in order
                acc = block_step(tag, acc, rec, g, b, xq, r0, xd, xs, corr)
            store_lanes(acc, buf)
            _put(buf, out, r0, TILE_ROWS, g * GROUP)
        for r0 in range(full, B):
            one = zeros_one()
            for b in range(NB):
                one = block_step(tag, one, rec, g, b, xq, r0, xd, xs, corr)
            store_lanes(one, buf)
            _put(buf, out, r0, 1, g * GROUP)


@njit(cache=True, parallel=True)
def rows_parallel(tag, rec, xq, xd, xs, corr, out, parts):
    """rows over all groups in `parts` contiguous slabs (one per thread)."""
    G = rec.shape[0]
    for p in prange(parts):
        rows(tag, rec, xq, xd, xs, corr, out, p * G // parts, (p + 1) * G // parts)


@njit(cache=True)
def product(tag, rec, xq, xd, xs, out, parts):
    """out (B, N) = x W^T from x's blocks, on `parts` threads (1: serial)."""
    corr = corrections(tag, xq)
    if parts > 1:
        rows_parallel(tag, rec, xq, xd, xs, corr, out, min(parts, rec.shape[0]))
    else:
        rows(tag, rec, xq, xd, xs, corr, out, np.int64(0), rec.shape[0])


TAGS = {fmt: Format(fmt, "interleaved") for fmt in FORMATS}
