"""Explicit-vector Numba kernels: the same products as loops.py, written with LLVM vectors.

Lesson: lessons/04-quantization.py (section 4: plain loops, then this step beyond them)

The arithmetic is the plain loops' (loops.py) and the NumPy twin's (formats.quantized_matmul_reference):

    out[b, n] = sum_k float32(sum_j q_w[n,k,j] xq[b,k,j]) * wd[n,k] xd[b,k]  (+ sum_k wm[n,k] xs[b,k])

Why explicit vectors: LLVM's loop vectorizer does not find this shape in plain loops (measured,
numba 0.68 / LLVM 20): a block's 32 products summed in an int32 loop become an 8-wide loop plus a
horizontal sum every block; float accumulators held in an array are reloaded and stored every
block. So `Float32Tile` is a Numba type whose value is an LLVM array of `<LANES x float>` with
constant indices only (registers), and `tile_block_step` is an intrinsic of generic LLVM vector
IR that updates a whole tile of accumulators from one block of each row:

  1. the weight block as 32 int8 in element order (`_weight_block`): q8_0 loaded as is; the 4-bit
     formats' 16 bytes split into [low nibbles, high nibbles] (and, shift, one shuffle); q5_*
     add their 5th bits (the 4 bytes spread to 32 lanes by a shuffle, masked, compared, 16 or 0);
     q4_0 / q5_0 subtract 8 / 16; iq4_nl looks its 16 levels up with a byte shuffle (x86's pshufb,
     the one non-generic instruction here: other CPUs use the plain loops for iq4_nl);
  2. neighbouring products added in int32 lanes (`_pair_dots`): on AVX2 with vpmaddubsw and
     vpmaddwd (4 products a lane, 8 lanes), elsewhere from generic IR (sext, mul, shuffles, which
     LLVM turns into vpmaddwd on AVX-512: 2 products a lane, 16 lanes);
  3. the lanes converted to float32 and fused-multiply-added into the accumulator with the
     block's scale wd[n,k] * xd[b,k] (precomputed per tile, LANES at a time).
The lanes are summed once per output; the minimum's term of q4_1 / q5_1 is a separate sum over
blocks. Batches (B >= 2) use TILE_W rows of W by TILE_X rows of x per tile (each weight block
loaded and unpacked once for TILE_X rows of x); decode (B = 1) uses one row at a time, read as one
sequential stream (`decode_rows`), with the same lanes and order, so a sequence's logits are the
same whether it decodes alone or in a batch (tests/test_quant_kernels.py checks bit equality).

Tiles: on AVX-512 (32 zmm registers) a 4 x 4 tile of 16-lane accumulators fits; on AVX2 (16 ymm)
the accumulators are 8 lanes and the tile 4 x 2, so accumulators and the 4 weight vectors fit.

Measured step by step (4096 x 4096 decode, one thread, CPU time per block, a busy 2-core Zen 3
with AVX2, so absolute times are inflated; old and new alternated twice): the generic pair dots
(vpmovsxbw + vpmaddwd on int16 x) took 2.2-2.4 ns a block for q4_1, 3.2-4.5 for q5_1, 3.5-4.4 for
q8_0; vpmaddubsw on int8 x 1.7, 2.0-2.1 and 2.7-3.1. A second accumulator per row (to hide the
fused multiply-add's latency) changed nothing (0.98-1.2x), nor did a 4-row tile for decode.
Decode then lost three costs per row (same bits): the nibbles split in 256-bit registers, x's
offset sums for q4_0 / q5_0 computed once per call instead of once per row, and each row's
scales converted eight at a time (`row_scales8`); 4096 x 4096 from memory, 2 threads, alternated
in one process: q4_0 1.06-1.17x, q4_1 1.0-1.11x, q5_0 1.12x, iq4_nl 1.11-1.14x, q8_0 ~1.0x.
What is left is the fused multiply-add chain: one accumulator per row adds one block every 4
cycles at best (Zen 3's latency), 1.6 ns a block at 2.45 GHz, against ~2.0 ns measured in cache.
Two rows at once (two chains, x loaded once for both) take 1.5 ns a block in cache, but from
memory they measured 0.78-0.93x of one row at a time (two streams a thread, four prefetch
distances tried), so decode keeps one row.
With AVX-512 VNNI (VNNI, PAIR_FORMATS: every format here) a step takes two blocks in one
zmm register: `vpdpbusd` adds each four neighbouring byte products into 16 int32 lanes (lanes
0..7 block 2p, 8..15 block 2p + 1), converted and fused-multiply-added with each block's scale
spread over its 8 lanes (`pair_rows` for batches, `pair_decode_rows` for decode: the same lanes and
order, so still the same bits alone or batched; an odd last block is paired with zeros). Measured
against the 16-lane pair dots alternately in one process, 2 threads, SmolLM2's four Q4_1 products
(2-core Zen 5): B = 32 1.21-1.35x, decode 1.14-1.38x; the q8_0 head (49152 x 576, signed on both
sides: x goes in as x + 128) 1.42x at B = 32, 1.07x decode; the register tile in L1 (bench.roofline's
tile_rate) q4_1 142 vs 108 G multiply-adds/s on one core. What limits it now: per lane pair a
scale product (w's times x's) and a fused multiply-add, both on the two FMA pipes.
quant/interleaved.py removes that limit for q4_0, q4_1 and q8_0 by storing 16 rows of W side by side
(one output a lane); with VNNI those formats' products go there, the others stay here.
The x86 intrinsics (pmadd.ub.sw, pmadd.wd, vpdpbusd) are the only non-generic IR besides pshufb.
`simd_rows.inspect_asm(sig)` shows the loop (compile with cache off to inspect).
"""
from __future__ import annotations

import os
import platform

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from .blocks import IQ4_NL_VALUES, WITH_HIGH_BITS, WITH_MIN
from .half import half_to_float


def _host_has(feature):
    try:
        return bool(llvm_binding.get_host_cpu_features().get(feature, False))
    except Exception:  # noqa: BLE001 - unknown host: assume the narrower vectors
        return False


X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
WIDE = _host_has("avx512f")
# TINYINFER_SIMD_GENERIC=1 uses the generic-IR block dots even on AVX2 (to test the path other CPUs
# take; give it its own NUMBA_CACHE_DIR, since Numba's disk cache does not see this switch)
AVX2 = X86 and _host_has("avx2") and os.environ.get("TINYINFER_SIMD_GENERIC", "") != "1"
LANES = 16 if WIDE else 8  # float32 lanes of one accumulator: one zmm (AVX-512) or one ymm (AVX2)
TILE_W = 4  # rows of W in one register tile: each loaded x block serves TILE_W rows of W
TILE_X = 4 if WIDE else 2  # rows of x in one register tile: each loaded weight block serves TILE_X rows
PREFETCH_ROWS = 2 * TILE_W  # the block step asks for W's blocks this many rows ahead (the tile after next)
UNSIGNED = WITH_MIN  # q4_1, q5_1: q in 0..15 / 0..31
OFFSETS = {"q4_0": 8, "q5_0": 16}  # q = stored q - offset
# q4_0 / q5_0 on AVX2 multiply their stored (unsigned) q and take the offset's share off once per
# x block (_raw_pair_dots); q8_0 and iq4_nl span -128..127, too wide for that, and keep the sign trick
RAW_OFFSET_FORMATS = ("q4_0", "q5_0") if (LANES == 8 and AVX2) else ()
SIMD_FORMATS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1") + (("iq4_nl",) if X86 else ())
# The formats whose blocks take work to unpack (nibbles, 5th bits, a table lookup). A batch unpacks
# a row tile's blocks once into a small buffer (TILE_W x NB x 32 bytes, in L1), and every x tile
# reads them from there: with B = 32 each block was otherwise unpacked 16 times. Measured on
# SmolLM2's shapes (1536 x 576 and 576 x 1536), B = 32, one thread, the two ways alternating in one
# process, 15 rounds: q4_1 1.18x and 1.27x faster, q4_0 1.14x and 1.18x (same bits; q8_0's
# blocks need no unpacking and keep the direct path).
UNPACKED_FORMATS = tuple(f for f in SIMD_FORMATS if f != "q8_0")
# AVX-512 VNNI's vpdpbusd multiplies 64 unsigned bytes by 64 signed bytes and adds each four
# neighbouring products into one of 16 int32 lanes: one instruction for two whole blocks, where the
# 16-lane path above (vpmovsxbw, vpmaddwd) takes one for 32 products. The formats whose weights are
# unsigned (q4_1, q5_1) or made so (q4_0, q5_0's stored q, their offset taken off x's side) use it:
# lanes 0..7 hold block 2p's quads, lanes 8..15 block 2p+1's, each scaled by its own block's scale
# (pair_rows, pair_decode_rows).
# TINYINFER_SIMD_NO_VNNI=1 turns it off (give that process its own NUMBA_CACHE_DIR).
VNNI = (WIDE and X86 and _host_has("avx512vnni") and _host_has("avx512bw")
        and os.environ.get("TINYINFER_SIMD_NO_VNNI", "") != "1")
PAIR_FORMATS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl") if VNNI else ()
PAIR_RAW_FORMATS = tuple(f for f in PAIR_FORMATS if f in OFFSETS)  # multiplied raw, x's offset sums subtracted
# q8_0 and iq4_nl are signed on both sides, and vpdpbusd wants one side unsigned: x + 128 is (x's
# bytes with the top bit flipped, once per call), and sum (x + 128) w - 128 sum w = sum x w, with
# 128 sum w one more vpdpbusd per weight pair, shared by the tile's rows of x. Exact in int32.
PAIR_SIGNED_FORMATS = tuple(f for f in PAIR_FORMATS if f in ("q8_0", "iq4_nl"))

_F32xL = ir.VectorType(ir.FloatType(), LANES)
_I8x4, _I8xq, _I8x32 = (ir.VectorType(ir.IntType(8), n) for n in (4, 16, 32))
_I32x32 = ir.VectorType(ir.IntType(32), 32)
_I32 = ir.IntType(32)
_I32x8 = ir.VectorType(_I32, 8)
_I64x4 = ir.VectorType(ir.IntType(64), 4)
_I8x64 = ir.VectorType(ir.IntType(8), 64)
_I32x16 = ir.VectorType(_I32, 16)
_F32x16 = ir.VectorType(ir.FloatType(), 16)


# --------------------------------------------------------------------------------------------
# two compile-time arguments: the format, and a tile of zeros (its shape)


class FormatType(types.Type):
    """Numba type of a Format: the format name (and the weights' layout) is part of the type, so
    each format compiles its own kernel and the block step knows at compile time how to unpack."""

    def __init__(self, fmt, layout="rows"):
        self.fmt, self.layout = fmt, layout
        super().__init__(name=f"ggml_format_{fmt}" + ("" if layout == "rows" else f"_{layout}"))


class Format:
    """A format name as a kernel argument (Format("q4_1")): chooses the compiled kernel. layout:
    "rows" (QTensor's arrays, these kernels) or "interleaved" (QTensor.records, quant/interleaved.py)."""

    def __init__(self, fmt, layout="rows"):
        self.fmt, self.layout = fmt, layout


@typeof_impl.register(Format)
def _typeof_format(val, c):
    return FormatType(val.fmt, val.layout)


@register_model(FormatType)
class _FormatModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.IntType(8))


@unbox(FormatType)
def _unbox_format(typ, obj, c):
    return NativeValue(ir.Constant(ir.IntType(8), 0))


class Float32Tile(types.Type):
    """Numba type of rows x cols accumulators of <LANES x float>: an LLVM array value that lives in
    registers (all its indices are constants, so LLVM splits it into rows * cols vectors)."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols
        super().__init__(name=f"float32x{LANES}_tile{rows}x{cols}")


@register_model(Float32Tile)
class _Float32TileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.ArrayType(_F32xL, fe_type.rows * fe_type.cols))


class ZeroTile:
    """A tile of zeros as a Python argument: Numba types it as Float32Tile(rows, cols), so each
    tile shape is compiled on its first call only."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols


@typeof_impl.register(ZeroTile)
def _typeof_zero_tile(val, c):
    return Float32Tile(val.rows, val.cols)


@unbox(Float32Tile)
def _unbox_zero_tile(typ, obj, c):
    return NativeValue(ir.Constant(c.context.get_value_type(typ), None))


@intrinsic
def has_min(typingctx, tag):
    """True for q4_1 / q5_1 (a compile-time constant: the other branch is compiled away)."""
    return types.boolean(tag), lambda context, builder, sig, args: context.get_constant(
        types.boolean, sig.args[0].fmt in WITH_MIN)


@intrinsic
def tile_cols(typingctx, tile):
    """The tile's number of columns (x rows): a compile-time constant."""
    return types.intp(tile), lambda context, builder, sig, args: context.get_constant(types.intp, sig.args[0].cols)


def _raw(fmt):
    """Whether fmt's blocks are multiplied as stored (q4_0 / q5_0 before their offset), the offset's
    share taken off with x's offset sums: on AVX2 (RAW_OFFSET_FORMATS) and on the VNNI pair path."""
    return fmt in RAW_OFFSET_FORMATS or fmt in PAIR_RAW_FORMATS


@intrinsic
def raw_offsets(typingctx, tag):
    """True for the formats whose products subtract x's offset sums (RAW_OFFSET_FORMATS; compile-time constant)."""
    return types.boolean(tag), lambda context, builder, sig, args: context.get_constant(
        types.boolean, _raw(sig.args[0].fmt))


@intrinsic
def pairs(typingctx, tag):
    """True for the formats multiplied two blocks at a time with VNNI (PAIR_FORMATS; compile-time constant)."""
    return types.boolean(tag), lambda context, builder, sig, args: context.get_constant(
        types.boolean, sig.args[0].fmt in PAIR_FORMATS)


@intrinsic
def signed_pairs(typingctx, tag):
    """True for PAIR_SIGNED_FORMATS (compile-time constant): x goes in as x + 128."""
    return types.boolean(tag), lambda context, builder, sig, args: context.get_constant(
        types.boolean, sig.args[0].fmt in PAIR_SIGNED_FORMATS)


@intrinsic
def unpacks(typingctx, tag):
    """True for the formats a batch unpacks once per row tile (UNPACKED_FORMATS; compile-time constant)."""
    return types.boolean(tag), lambda context, builder, sig, args: context.get_constant(
        types.boolean, sig.args[0].fmt in UNPACKED_FORMATS)


# --------------------------------------------------------------------------------------------
# LLVM IR pieces


def _indices(*values):
    return ir.Constant(ir.VectorType(_I32, len(values)), list(values))


def _pointer(context, builder, aryty, ary, inds):
    """The address of ary[inds] (no bounds check, no negative indices)."""
    array = context.make_array(aryty)(context, builder, value=ary)
    return cgutils.get_item_pointer(context, builder, aryty, array, inds, wraparound=False)


def _load(context, builder, aryty, ary, inds, vector_type):
    """The vector starting at ary[inds] (the last axis contiguous; unaligned load)."""
    ptr = _pointer(context, builder, aryty, ary, inds)
    return builder.load(builder.bitcast(ptr, vector_type.as_pointer()), align=1)


def _load_block(context, builder, aryty, ary, row, k, vector_type):
    """The vector at ary[row, k, 0] of a C-contiguous (R, NB, L) array whose L * itemsize is the
    vector's size: row's start plus k times a compile-time constant, so LLVM can step a pointer
    along the row instead of multiplying by the run-time shape every block."""
    zero = context.get_constant(types.intp, 0)
    start = builder.bitcast(_pointer(context, builder, aryty, ary, [row, zero, zero]), vector_type.as_pointer())
    return builder.load(builder.gep(start, [k], inbounds=True), align=1)


def _splat8(value, n=32):
    return ir.Constant(ir.VectorType(ir.IntType(8), n), [value] * n)


def _pshufb16(builder, table, idx):
    """table[idx] for <16 x i8> table and indices in 0..15: x86's pshufb (SSSE3)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I8xq, [_I8xq, _I8xq]),
                                        "llvm.x86.ssse3.pshuf.b.128")
    return builder.call(fn, [table, idx])


def _weight_block(context, builder, fmt, wq_ty, wq, wh_ty, wh, n, k, raw=False):
    """Block k of row n of W as <32 x i8>: the integers q_w of the block, in element order
    (raw: q4_0 / q5_0's stored q, 0..15 / 0..31, before their offset 8 / 16 is subtracted)."""
    zero = context.get_constant(types.intp, 0)
    if fmt == "q8_0":
        return _load_block(context, builder, wq_ty, wq, n, k, _I8x32)
    packed = _load_block(context, builder, wq_ty, wq, n, k, _I8xq)  # (16,) bytes
    if AVX2:
        # the 16 bytes in both halves of a 256-bit vector (vbroadcasti128), the upper half shifted
        # right by 4 (vpsrlvq by 0, 0, 4, 4), then & 15: [low nibbles, high nibbles] = elements
        # 0..15, 16..31 in three instructions, where splitting two 128-bit halves and joining them
        # (vinserti128) took four and a longer chain (measured with the rest of this change, 4096 x
        # 4096 decode from memory, 2 threads: q4_0 1.06-1.17x, q4_1 1.0-1.11x, same bits)
        both = builder.shuffle_vector(packed, packed, _indices(*range(16), *range(16)))
        shifted = builder.lshr(builder.bitcast(both, _I64x4), ir.Constant(_I64x4, [0, 0, 4, 4]))
        q = builder.and_(builder.bitcast(shifted, _I8x32), _splat8(15))
        if fmt == "iq4_nl":  # the levels, looked up 32 at a time (vpshufb looks up within each half)
            table = ir.Constant(_I8x32, [int(v) for v in IQ4_NL_VALUES] * 2)
            q = _x86(builder, "llvm.x86.avx2.pshuf.b", _I8x32, table, q)
    else:
        low, high = builder.and_(packed, _splat8(15, 16)), builder.lshr(packed, _splat8(4, 16))
        if fmt == "iq4_nl":  # the levels, looked up 16 at a time
            table = ir.Constant(_I8xq, [int(v) for v in IQ4_NL_VALUES])
            low, high = _pshufb16(builder, table, low), _pshufb16(builder, table, high)
        q = builder.shuffle_vector(low, high, _indices(*range(32)))  # (32,): elements 0..15, then 16..31
    if fmt in WITH_HIGH_BITS:
        bits = _load_block(context, builder, wh_ty, wh, n, k, _I8x4)  # the uint32 of 5th bits
        spread = builder.shuffle_vector(bits, bits, _indices(*[j // 8 for j in range(32)]))  # byte j//8 to lane j
        mask = ir.Constant(_I8x32, [1 << (j % 8) for j in range(32)])
        is_set = builder.icmp_unsigned("!=", builder.and_(spread, mask), _splat8(0))
        q = builder.or_(q, builder.select(is_set, _splat8(16), _splat8(0)))
    offset = OFFSETS.get(fmt)
    return builder.sub(q, _splat8(offset)) if offset and not raw else q


def _x86(builder, name, ret, *args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, list(args))


def _pair_dots(builder, w, x, unsigned):
    """w, x <32 x i8> -> <LANES x i32>: sums of neighbouring products, exact.

    16 lanes (AVX-512): lane l = w[2l] x[2l] + w[2l+1] x[2l+1], what vpmaddwd does (LLVM picks it
    from this shape). 8 lanes (AVX2): lane l = the four products 4l..4l+3. On AVX2 that is two
    instructions: vpmaddubsw multiplies unsigned by signed bytes and adds neighbours into int16
    (exact here: at most 2 x 128 x 127 < 32767), then vpmaddwd by ones adds neighbouring int16s
    into int32. Its first operand must be unsigned: q4_1 / q5_1's q are; for the signed formats
    |w| goes first and x takes w's sign (vpsignb: one instruction a pair, where the same rule
    written as selects compiles to five), so the products are unchanged. Elsewhere the same lanes come from generic IR (sext, mul, shuffles)."""
    if LANES == 8 and AVX2:
        if not unsigned:
            x = _x86(builder, "llvm.x86.avx2.psign.b", _I8x32, x, w)  # x with w's sign (0 where w is 0): vpsignb
            negative = builder.icmp_signed("<", w, _splat8(0))
            w = builder.select(negative, builder.sub(_splat8(0), w), w)  # |w|; -128 stays 0x80 = 128 unsigned
        pairs16 = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(ir.IntType(16), 16), w, x)
        ones = ir.Constant(ir.VectorType(ir.IntType(16), 16), [1] * 16)
        return _x86(builder, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8), pairs16, ones)
    extend = builder.zext if unsigned else builder.sext
    prod = builder.mul(extend(w, _I32x32), builder.sext(x, _I32x32))  # (32,) int32
    pairs = builder.add(builder.shuffle_vector(prod, prod, _indices(*range(0, 32, 2))),
                        builder.shuffle_vector(prod, prod, _indices(*range(1, 32, 2))))  # (16,)
    if LANES == 16:
        return pairs
    return builder.add(builder.shuffle_vector(pairs, pairs, _indices(*range(0, 16, 2))),
                       builder.shuffle_vector(pairs, pairs, _indices(*range(1, 16, 2))))  # (8,): quads


def _offset_sums(builder, x, offset):
    """offset times the sums of x's neighbouring quads, <8 x i32> (AVX2): what the offset of q4_0 /
    q5_0 contributes to each lane of _pair_dots, computed once per x block, not once per weight row."""
    quads16 = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(ir.IntType(16), 16), _splat8(offset), x)
    ones = ir.Constant(ir.VectorType(ir.IntType(16), 16), [1] * 16)
    return _x86(builder, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8), quads16, ones)


def _raw_pair_dots(builder, w_raw, x, offset_sums):
    """_pair_dots of (w_raw - offset) and x for q4_0 / q5_0 on AVX2, from the raw unsigned q:
    lane l = sum (w_raw - offset) x over the quad = sum w_raw x - offset * sum x, both exact in
    int32 (w_raw <= 31, so vpmaddubsw's int16 pairs stay below 2 x 31 x 128), so the lanes are the
    same integers as the sign trick gives, without it: a signed w needs |w| and x with w's sign
    for every (w, x) pair, ~7 instructions, and its registers pushed the tile's accumulators to
    the stack (measured 1.4-2x slower tiles)."""
    pairs16 = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(ir.IntType(16), 16), w_raw, x)
    ones = ir.Constant(ir.VectorType(ir.IntType(16), 16), [1] * 16)
    return builder.sub(_x86(builder, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8), pairs16, ones), offset_sums)


def _scaled_add(builder, acc, pairs, scale_ptr):
    """acc + float32(pairs) * *scale_ptr (one scale, broadcast to all lanes; fused multiply-add)."""
    s = builder.load(scale_ptr)
    s = builder.insert_element(ir.Constant(_F32xL, None), s, ir.Constant(_I32, 0))
    s = builder.shuffle_vector(s, s, _indices(*[0] * LANES))  # broadcast
    prod = builder.fmul(builder.sitofp(pairs, _F32xL), s, flags=("contract",))
    return builder.fadd(acc, prod, flags=("contract",))


def _prefetch(builder, ptr):
    """Ask the cache for the line at ptr (read, keep in all levels): a hint, never a fault."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, _I32, _I32, _I32]),
                                        "llvm.prefetch." + ("p0" if getattr(ptr.type, "is_opaque", False) else "p0i8"))
    builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


@intrinsic
def tile_sums(typingctx, acc, sums):
    """sums[i, j] = the sum of accumulator (i, j)'s lanes, as a tree: halves added until one is left
    (lane l + lane l + LANES/2, then l + LANES/4, ...).

    All the tile's accumulators go down the tree together: two vectors' halves are gathered into
    one by two shuffles and added, so each level halves the number of vectors and the last one
    holds LANES sums, in accumulator order, stored at once. Every lane is added to the same
    partner as when each accumulator is reduced alone (decode's 1 x 1 tile), so the sums are the
    same bits; a 4 x 4 tile of 16 lanes takes 45 shuffles and adds instead of ~190. Measured with
    the one-accumulator-at-a-time tree in the same process, alternated 9 times, 2 threads, B = 32 on
    SmolLM2's products (2-core Zen 5): gate/up 1.05x, output 1.06x, the q8_0 head 1.06x, same bits."""
    def codegen(context, builder, sig, args):
        acc, sums = args
        tile = sig.args[0]
        n = tile.rows * tile.cols
        vectors = [builder.extract_value(acc, a) for a in range(n)]
        zero = ir.Constant(_F32xL, None)
        width = LANES  # each vector holds LANES // width groups of `width` partial sums
        while width > 1:
            half = width // 2
            if len(vectors) % 2:
                vectors.append(zero)
            # groups g of a, then of b: lanes g*width .. g*width+half-1 (low) and +half.. (high)
            low = [g * width + l for g in range(LANES // width) for l in range(half)]
            high = [x + half for x in low]
            low = low + [LANES + x for x in low]
            high = high + [LANES + x for x in high]
            vectors = [builder.fadd(builder.shuffle_vector(a, b, _indices(*low)),
                                    builder.shuffle_vector(a, b, _indices(*high)))
                       for a, b in zip(vectors[::2], vectors[1::2])]
            width = half
        for a in range(n):  # vector a // LANES, lane a % LANES: accumulator a = (i, j) = divmod(a, cols)
            i, j = divmod(a, tile.cols)
            inds = [context.get_constant(types.intp, i), context.get_constant(types.intp, j)]
            builder.store(builder.extract_element(vectors[a // LANES], ir.Constant(_I32, a % LANES)),
                          _pointer(context, builder, sig.args[1], sums, inds))
        return context.get_dummy_value()
    return types.none(acc, sums), codegen


# --------------------------------------------------------------------------------------------
# the block steps


def _tile_products(context, builder, fmt, tile, acc, w, xq_ty, xq, b0, k, scales_ty, scales, osum_ty, osum):
    """acc[i, j] + float32(pair dots of w[i] and block k of x row b0 + j) * scales[i, j, k], for the
    tile's weight blocks w (TILE_W <32 x i8>, raw for RAW_OFFSET_FORMATS, whose x offset sums are
    read from osum (B, NB, 8) int32: computed once per call by simd_rows, not once per row tile)."""
    const = lambda v: context.get_constant(types.intp, v)  # noqa: E731
    raw = fmt in RAW_OFFSET_FORMATS
    x = [_load_block(context, builder, xq_ty, xq, builder.add(b0, const(j)), k, _I8x32)
         for j in range(tile.cols)]  # (32,) int8 each
    offset_sums = [_load(context, builder, osum_ty, osum, [builder.add(b0, const(j)), k, const(0)], _I32x8)
                   for j in range(tile.cols)] if raw else None
    for i in range(tile.rows):
        for j in range(tile.cols):
            a = builder.extract_value(acc, i * tile.cols + j)
            scale_ptr = _pointer(context, builder, scales_ty, scales, [const(i), const(j), k])
            pairs = (_raw_pair_dots(builder, w[i], x[j], offset_sums[j]) if raw
                     else _pair_dots(builder, w[i], x[j], fmt in UNSIGNED))
            a = _scaled_add(builder, a, pairs, scale_ptr)
            acc = builder.insert_value(acc, a, i * tile.cols + j)
    return acc


@intrinsic
def tile_block_step(typingctx, tag, acc, wq, wh, n0, n_last, k, xq, b0, scales, osum):
    """acc[i, j] + float32(pair dots of block k of W row min(n0 + i, n_last) and x row b0 + j) * scales[i, j, k].

    wq, wh: the QTensor's quants and 5th bits (wh is not read for formats without them);
    xq int8 (B, NB, 32); scales float32 (TILE_W, cols, NB): wd[n, k] * xd[b, k].
    Rows of W past n_last repeat row n_last (the caller drops their sums), so one tile shape
    serves every N. Each weight block is loaded and unpacked once for the tile's cols, each x
    block once for its rows.
    """
    tile = acc

    def codegen(context, builder, sig, args):
        _, acc, wq, wh, n0, n_last, k, xq, b0, scales, osum = args
        fmt = sig.args[0].fmt
        wq_ty, wh_ty = sig.args[2], sig.args[3]
        n0, n_last, k, b0 = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (4, 5, 6, 8))
        const = lambda v: context.get_constant(types.intp, v)  # noqa: E731
        clamp = lambda n, top: builder.select(builder.icmp_signed("<=", n, top), n, top)  # noqa: E731
        # Rows PREFETCH_ROWS ahead: the tile after next. The hardware prefetcher does not follow
        # TILE_W interleaved short streams well (measured: B = 1 was 1.3-2x slower without this).
        last_row = builder.sub(cgutils.unpack_tuple(builder, context.make_array(wq_ty)(
            context, builder, value=wq).shape)[0], const(1))
        for i in range(tile.rows):
            ahead = clamp(builder.add(n0, const(PREFETCH_ROWS + i)), last_row)
            _prefetch(builder, _pointer(context, builder, wq_ty, wq, [ahead, k, const(0)]))
        raw = fmt in RAW_OFFSET_FORMATS
        w = [_weight_block(context, builder, fmt, wq_ty, wq, wh_ty, wh, clamp(builder.add(n0, const(i)), n_last), k,
                           raw) for i in range(tile.rows)]  # (32,) int8 each
        return _tile_products(context, builder, fmt, tile, acc, w, sig.args[7], xq, b0, k, sig.args[9], scales,
                              sig.args[10], osum)
    return tile(tag, acc, wq, wh, n0, n_last, k, xq, b0, scales, osum), codegen


@intrinsic
def unpack_block(typingctx, tag, wq, wh, n, k, buf, i):
    """buf[i, k, :] = block k of W row n as the tile step multiplies it (_weight_block: raw q for
    q4_0 / q5_0); buf int8 (TILE_W, NB, 32). Asks for row n + PREFETCH_ROWS's block k as well."""
    def codegen(context, builder, sig, args):
        _, wq, wh, n, k, buf, i = args
        fmt = sig.args[0].fmt
        n, k, i = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (3, 4, 6))
        const = lambda v: context.get_constant(types.intp, v)  # noqa: E731
        last_row = builder.sub(cgutils.unpack_tuple(builder, context.make_array(sig.args[1])(
            context, builder, value=wq).shape)[0], const(1))
        ahead = builder.add(n, const(PREFETCH_ROWS))
        ahead = builder.select(builder.icmp_signed("<=", ahead, last_row), ahead, last_row)
        _prefetch(builder, _pointer(context, builder, sig.args[1], wq, [ahead, k, const(0)]))
        w = _weight_block(context, builder, fmt, sig.args[1], wq, sig.args[2], wh, n, k, _raw(fmt))
        ptr = _pointer(context, builder, sig.args[5], buf, [i, k, const(0)])
        builder.store(w, builder.bitcast(ptr, _I8x32.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(tag, wq, wh, n, k, buf, i), codegen


@intrinsic
def unpacked_block_step(typingctx, tag, acc, buf, k, xq, b0, scales, osum):
    """tile_block_step with the row tile's weight blocks already unpacked into buf (unpack_block):
    the same integers, so the same sums, bit for bit."""
    tile = acc

    def codegen(context, builder, sig, args):
        _, acc, buf, k, xq, b0, scales, osum = args
        k, b0 = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (3, 5))
        w = [_load_block(context, builder, sig.args[2], buf, context.get_constant(types.intp, i), k, _I8x32)
             for i in range(tile.rows)]
        return _tile_products(context, builder, sig.args[0].fmt, tile, acc, w, sig.args[4], xq, b0, k, sig.args[6],
                              scales, sig.args[7], osum)
    return tile(tag, acc, buf, k, xq, b0, scales, osum), codegen


# ---- two blocks a vector: the VNNI pair path (PAIR_FORMATS) -----------------------------------


def _weight_offsets(builder, w):
    """128 sum w over each quad of signed w <64 x i8>: what x + 128 adds to the quad dots."""
    return _quad_dots(builder, _splat8(128 - 256, 64), w)


def _signed_quad_dots(builder, w, x_flipped, w128):
    """_quad_dots for signed w (q8_0, iq4_nl) and x given as x + 128 (its bytes' top bit flipped):
    sum (x + 128) w over each quad, less w128 = _weight_offsets(w)."""
    return builder.sub(_quad_dots(builder, x_flipped, w), w128)


def _quad_dots(builder, u, v):
    """u unsigned, v signed <64 x i8> -> <16 x i32> quad sums of u v (vpdpbusd's operand order)."""
    if VNNI:
        return _x86(builder, "llvm.x86.avx512.vpdpbusd.512", _I32x16, ir.Constant(_I32x16, None),
                    builder.bitcast(u, _I32x16), builder.bitcast(v, _I32x16))
    prod = builder.mul(builder.zext(u, ir.VectorType(_I32, 64)), builder.sext(v, ir.VectorType(_I32, 64)))
    two = builder.add(builder.shuffle_vector(prod, prod, _indices(*range(0, 64, 2))),
                      builder.shuffle_vector(prod, prod, _indices(*range(1, 64, 2))))  # (32,)
    return builder.add(builder.shuffle_vector(two, two, _indices(*range(0, 32, 2))),
                       builder.shuffle_vector(two, two, _indices(*range(1, 32, 2))))  # (16,)


def _format_quad_dots(builder, fmt, w, x):
    """The quad dots of one weight pair w and one x pair as fmt's path takes them: signed w with
    flipped x (PAIR_SIGNED_FORMATS), else unsigned (or raw) w."""
    if fmt in PAIR_SIGNED_FORMATS:
        return _signed_quad_dots(builder, w, x, _weight_offsets(builder, w))
    return _quad_dots(builder, w, x)


def _pair_add(builder, acc, dots, scale):
    """acc + float32(dots) * scale, lane by lane (one fused multiply-add), scale <16 x float>."""
    prod = builder.fmul(builder.sitofp(dots, _F32x16), scale, flags=("contract",))
    return builder.fadd(acc, prod, flags=("contract",))


@intrinsic
def spread_pair_scales(typingctx, src, r, p, dst):
    """dst[r, p, :] = 8 x src[r, 2p], then 8 x src[r, 2p + 1]: the scales of block pair p, one per
    lane (src float32 (R, 2P), padded with a zero column when the blocks are odd)."""
    def codegen(context, builder, sig, args):
        src, r, p, dst = args
        r, p = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (1, 2))
        two = builder.load(builder.bitcast(_pointer(context, builder, sig.args[0], src, [r, builder.add(p, p)]),
                                           ir.VectorType(ir.FloatType(), 2).as_pointer()), align=4)
        spread = builder.shuffle_vector(two, two, _indices(*([0] * 8 + [1] * 8)))
        zero = context.get_constant(types.intp, 0)
        builder.store(spread, builder.bitcast(_pointer(context, builder, sig.args[3], dst, [r, p, zero]),
                                              _F32x16.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(src, r, p, dst), codegen


@intrinsic
def pair_block_step(typingctx, tag, acc, buf, p, xq, b0, w16, x16, osum):
    """acc[i, j] + float32(quad dots of block pair p of buf row i and x row b0 + j) * (w16[i, p] *
    x16[b0 + j, p]): the tile's step on two blocks at once (PAIR_FORMATS).

    buf int8 (TILE_W, 2P, 32): the row tile's blocks, unpacked (raw q for q4_0 / q5_0); xq int8
    (B, 2P, 32); w16 (TILE_W, P, 16), x16 (B, P, 16): each block's scale spread over its 8 lanes
    (spread_pair_scales); osum int32 (B, 2P, 8): x's offset sums (q4_0 / q5_0; else not read).
    Every array is padded to whole pairs with zero blocks and zero scales."""
    tile = acc

    def codegen(context, builder, sig, args):
        _, acc, buf, p, xq, b0, w16, x16, osum = args
        fmt = sig.args[0].fmt
        p, b0 = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (3, 5))
        const = lambda v: context.get_constant(types.intp, v)  # noqa: E731
        rows = [builder.add(b0, const(j)) for j in range(tile.cols)]
        x = [_load_block(context, builder, sig.args[4], xq, b, p, _I8x64) for b in rows]
        xs = [_load_block(context, builder, sig.args[7], x16, b, p, _F32x16) for b in rows]
        offsets = ([_load_block(context, builder, sig.args[8], osum, b, p, _I32x16) for b in rows]
                   if fmt in PAIR_RAW_FORMATS else None)
        for i in range(tile.rows):
            w = _load_block(context, builder, sig.args[2], buf, const(i), p, _I8x64)
            ws = _load_block(context, builder, sig.args[6], w16, const(i), p, _F32x16)
            if fmt in PAIR_SIGNED_FORMATS:  # 128 sum w: once per weight pair, for every row of x
                w128 = _weight_offsets(builder, w)
            for j in range(tile.cols):
                if fmt in PAIR_SIGNED_FORMATS:
                    dots = _signed_quad_dots(builder, w, x[j], w128)
                else:
                    dots = _quad_dots(builder, w, x[j])
                if offsets is not None:
                    dots = builder.sub(dots, offsets[j])
                a = _pair_add(builder, builder.extract_value(acc, i * tile.cols + j), dots, builder.fmul(ws, xs[j]))
                acc = builder.insert_value(acc, a, i * tile.cols + j)
        return acc
    return tile(tag, acc, buf, p, xq, b0, w16, x16, osum), codegen


def _pair_row_codegen(single):
    def codegen(context, builder, sig, args):
        _, acc, wq, wh, wd, n, p, xq, x16, osum = args
        fmt = sig.args[0].fmt
        n, p = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (5, 6))
        zero = context.get_constant(types.intp, 0)
        k = builder.add(p, p)
        raw = fmt in PAIR_RAW_FORMATS
        first = _weight_block(context, builder, fmt, sig.args[2], wq, sig.args[3], wh, n, k, raw)
        halves = ir.VectorType(ir.IntType(16), 2)
        if single:  # the odd last block: zeros in the second half, and a zero scale
            second = ir.Constant(_I8x32, None)
            bits = builder.insert_element(ir.Constant(halves, None), builder.load(
                _pointer(context, builder, sig.args[4], wd, [n, k])), ir.Constant(_I32, 0))
        else:
            second = _weight_block(context, builder, fmt, sig.args[2], wq, sig.args[3], wh, n,
                                   builder.add(k, context.get_constant(types.intp, 1)), raw)
            bits = builder.load(builder.bitcast(_pointer(context, builder, sig.args[4], wd, [n, k]),
                                                halves.as_pointer()), align=2)
        w = builder.shuffle_vector(first, second, _indices(*range(64)))
        two = builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 2)), ir.VectorType(ir.FloatType(), 2))
        ws = builder.shuffle_vector(two, two, _indices(*([0] * 8 + [1] * 8)))
        x = _load_block(context, builder, sig.args[7], xq, zero, p, _I8x64)
        dots = _format_quad_dots(builder, fmt, w, x)
        if raw:
            dots = builder.sub(dots, _load_block(context, builder, sig.args[9], osum, zero, p, _I32x16))
        xs = _load_block(context, builder, sig.args[8], x16, zero, p, _F32x16)
        return builder.insert_value(acc, _pair_add(builder, builder.extract_value(acc, 0), dots,
                                                   builder.fmul(ws, xs)), 0)
    return codegen


@intrinsic
def pair_row_step(typingctx, tag, acc, wq, wh, wd, n, p, xq, x16, osum):
    """Decode's pair_block_step: acc + float32(quad dots of blocks 2p, 2p+1 of W row n and x) *
    (their scales float32(wd[n, 2p:2p+2]) spread over 8 lanes each, times x16[0, p]); xq (1, 2P, 32),
    x16 (1, P, 16), osum (1, 2P, 8) padded as pair_block_step's. The same lanes, products and order
    as a batch, so a row gives the same bits alone or in a batch."""
    return acc(tag, acc, wq, wh, wd, n, p, xq, x16, osum), _pair_row_codegen(single=False)


@intrinsic
def last_row_step(typingctx, tag, acc, wq, wh, wd, n, p, xq, x16, osum):
    """pair_row_step for an odd number of blocks' last one (2p): its second half is zeros."""
    return acc(tag, acc, wq, wh, wd, n, p, xq, x16, osum), _pair_row_codegen(single=True)


@intrinsic
def row_block_step(typingctx, tag, acc, wq, wh, n, k, xq, osum, scales):
    """acc + float32(pair dots of block k of W row n and xq[0, k]) * scales[k]: one accumulator
    (decode_rows asks for later rows' blocks with prefetch_at). osum int32 (NB, 8): x's offset
    sums (store_offset_sums), read by q4_0 / q5_0 on AVX2 only."""
    def codegen(context, builder, sig, args):
        _, acc, wq, wh, n, k, xq, osum, scales = args
        n, k = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (4, 5))
        zero = context.get_constant(types.intp, 0)
        fmt = sig.args[0].fmt
        raw = fmt in RAW_OFFSET_FORMATS
        w = _weight_block(context, builder, fmt, sig.args[2], wq, sig.args[3], wh, n, k, raw)
        x = _load_block(context, builder, sig.args[6], xq, zero, k, _I8x32)  # (32,) int8
        if raw:  # x's offset sums were computed once for all rows (store_offset_sums)
            offset_sums = _load(context, builder, sig.args[7], osum, [k, zero], _I32x8)
            pairs = _raw_pair_dots(builder, w, x, offset_sums)
        else:
            pairs = _pair_dots(builder, w, x, fmt in UNSIGNED)
        a = _scaled_add(builder, builder.extract_value(acc, 0), pairs, _pointer(context, builder, sig.args[8], scales, [k]))
        return builder.insert_value(acc, a, 0)
    return acc(tag, acc, wq, wh, n, k, xq, osum, scales), codegen


@intrinsic
def store_offset_sums(typingctx, tag, xq, k, osum):
    """osum[k, :] = _offset_sums of x block k (xq[0, k]): what q4_0 / q5_0's offset takes off each
    lane, the same for every row of W, so decode computes it once, not once per row (nothing is
    stored for the other formats)."""
    def codegen(context, builder, sig, args):
        _, xq, k, osum = args
        fmt = sig.args[0].fmt
        if _raw(fmt):
            k = context.cast(builder, k, sig.args[2], types.intp)
            zero = context.get_constant(types.intp, 0)
            x = _load_block(context, builder, sig.args[1], xq, zero, k, _I8x32)
            ptr = _pointer(context, builder, sig.args[3], osum, [k, zero])
            builder.store(_offset_sums(builder, x, OFFSETS[fmt]), builder.bitcast(ptr, _I32x8.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(tag, xq, k, osum), codegen


@intrinsic
def row_scales8(typingctx, wd, n, k, xd, scales):
    """scales[k:k+8] = float32(wd[n, k:k+8]) * xd[0, k:k+8], eight at a time (vcvtph2ps, vmulps):
    Numba's loop over the same formula compiled to one scale at a time."""
    def codegen(context, builder, sig, args):
        wd, n, k, xd, scales = args
        n, k = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (1, 2))
        zero = context.get_constant(types.intp, 0)
        f32x8 = ir.VectorType(ir.FloatType(), 8)
        bits = builder.load(builder.bitcast(_pointer(context, builder, sig.args[0], wd, [n, k]),
                                            ir.VectorType(ir.IntType(16), 8).as_pointer()), align=2)
        d = builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 8)), f32x8)
        xv = builder.load(builder.bitcast(_pointer(context, builder, sig.args[3], xd, [zero, k]), f32x8.as_pointer()),
                          align=4)
        builder.store(builder.fmul(d, xv), builder.bitcast(_pointer(context, builder, sig.args[4], scales, [k]),
                                                           f32x8.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(wd, n, k, xd, scales), codegen


@intrinsic
def tile_scales8(typingctx, w_scales, i, k, xd, b, scales, j):
    """scales[i, j, k:k+8] = w_scales[i, k:k+8] * xd[b, k:k+8], eight at a time (one vmulps): the
    tile's block scales, which Numba's loop over the same formula computed one at a time (measured
    single-thread at B = 32 on SmolLM2's 576-wide rows: q4_1 1.26x, q4_0 1.4x for the whole
    product). The arrays are padded to a multiple of 8 blocks (simd_rows)."""
    def codegen(context, builder, sig, args):
        i, k, b, j = (context.cast(builder, args[a], sig.args[a], types.intp) for a in (1, 2, 4, 6))
        f32x8 = ir.VectorType(ir.FloatType(), 8)
        load = lambda a, inds: builder.load(builder.bitcast(  # noqa: E731
            _pointer(context, builder, sig.args[a], args[a], inds), f32x8.as_pointer()), align=4)
        ptr = _pointer(context, builder, sig.args[5], args[5], [i, j, k])
        builder.store(builder.fmul(load(0, [i, k]), load(3, [b, k])), builder.bitcast(ptr, f32x8.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(w_scales, i, k, xd, b, scales, j), codegen


@intrinsic
def prefetch_at(typingctx, ary, index):
    """Ask the cache for the line holding ary[index] (index: a tuple of ary.ndim integers, all in
    range; a hint, never a fault). Decode asks for later rows' blocks of W with it
    (prefetch_at(wq, (n, k, 0))), invariant_attention.py for the next block of keys."""
    if not isinstance(index, types.BaseTuple) or len(index) != ary.ndim:
        return None

    def codegen(context, builder, sig, args):
        inds = [context.cast(builder, v, t, types.intp)
                for v, t in zip(cgutils.unpack_tuple(builder, args[1]), sig.args[1])]
        ptr = _pointer(context, builder, sig.args[0], args[0], inds)
        _prefetch(builder, builder.bitcast(ptr, cgutils.voidptr_t))  # the intrinsic takes a byte pointer
        return context.get_dummy_value()
    return types.none(ary, index), codegen


# Decode asks for the blocks of the row this many rows ahead. One row is one sequential stream, but
# the scales are a second one and a short row ends soon: measured from memory (4096 x 4096, eight
# matrices cycled, 2 threads, alternating runs) Q8_0 1.1-1.3x and Q4_1 1.05-1.4x faster with it.
DECODE_PREFETCH_ROWS = 4


# --------------------------------------------------------------------------------------------
# the kernels: rows n0..n1 of W against every row of x


@njit(cache=True, fastmath={"contract"})
def min_terms(wm_t, xs, b, n0, n1, m):
    """m[i] = sum_k wm_t[k, n0 + i] * xs[b, k] for rows n0..n1: what the minima of q4_1 / q5_1 add.

    wm_t is the minima transposed, float16 bits (NB, N), so the loop runs along rows (vectorized, each
    lane its own row) while every row adds its blocks in order with one fused multiply-add each
    ("contract", no reassociation): ggml's `summs += m * s`. So q4_1 / q5_1 rows come out
    bit-identical to llama.cpp's AVX2 vec_dot (tests/test_quant_llamacpp.py), and decode and
    batch (both call this) agree. A per-row loop over k in that order measured 1.3-1.9x slower
    for the whole matvec: a chain of dependent multiply-adds per row."""
    for i in range(n1 - n0):
        m[i] = 0
    for k in range(wm_t.shape[0]):
        s = xs[b, k]
        row = wm_t[k, n0:n1]  # a slice, so the index below is a plain 0..n loop LLVM can vectorize
        for i in range(row.size):
            m[i] += half_to_float(row[i]) * s


@njit(cache=True)
def pair_inputs(tag, xd, xq):
    """x padded to whole block pairs for the VNNI pair steps: xq (B, 2P, 32) int8 with a zero block
    when NB is odd (x + 128 as unsigned bytes for PAIR_SIGNED_FORMATS), x16 (B, P, 16) each block's scale xd[b, k] over its 8 lanes (zero for the pad),
    osum (B, 2P, 8) x's offset sums (q4_0 / q5_0; (1, 2P, 8) zeros otherwise)."""
    B, NB = xd.shape
    NP = (NB + 1) // 2
    # plain loops, not slice assignments: those compile their shape-mismatch error message
    # (string formatting, ~3 s from a fresh clone) for an error that cannot happen here
    xp = np.zeros((B, 2 * NP, 32), np.int8)
    flip = np.int8(-128) if signed_pairs(tag) else np.int8(0)  # x + 128 as unsigned bytes (PAIR_SIGNED_FORMATS)
    x_scales = np.zeros((B, 2 * NP), np.float32)
    for b in range(B):
        for k in range(NB):
            x_scales[b, k] = xd[b, k]
            for i in range(32):
                xp[b, k, i] = xq[b, k, i] ^ flip
    x16 = np.empty((B, NP, 16), np.float32)
    for b in range(B):
        for p in range(NP):
            spread_pair_scales(x_scales, b, p, x16)
    osum = np.zeros((B if raw_offsets(tag) else 1, 2 * NP, 8), np.int32)
    if raw_offsets(tag):
        for b in range(B):
            for k in range(NB):
                store_offset_sums(tag, xq[b:b + 1], k, osum[b])
    return xp, x16, osum


@njit(cache=True)
def pair_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, n0, n1, zero):
    """simd_rows for PAIR_FORMATS: the same tiles, two blocks a step (pair_block_step). No fastmath:
    the only float flags are the steps' own (contract: one fused multiply-add a lane and pair)."""
    B, NB = xd.shape
    NP = (NB + 1) // 2
    cols = tile_cols(zero)
    xp, x16, osum = pair_inputs(tag, xd, xq)
    w_scales = np.zeros((TILE_W, 2 * NP), np.float32)  # float32(wd[n, k]) of the row tile, zero pad
    w16 = np.empty((TILE_W, NP, 16), np.float32)
    unpacked = np.zeros((TILE_W, 2 * NP, 32), np.int8)  # the pad block stays zero
    sums = np.empty((TILE_W, cols), np.float32)
    mins = np.zeros((B if has_min(tag) else 1, n1 - n0), np.float32)
    if has_min(tag):
        for b in range(B):
            min_terms(wm, xs, b, n0, n1, mins[b])
    for n_first in range(n0, n1, TILE_W):
        n_last = min(n_first + TILE_W, n1) - 1  # the last tile repeats row n_last
        for i in range(TILE_W):
            n = min(n_first + i, n_last)
            for k in range(NB):
                w_scales[i, k] = half_to_float(wd[n, k])
                unpack_block(tag, wq, wh, n, k, unpacked, i)
            for p in range(NP):
                spread_pair_scales(w_scales, i, p, w16)
        for b0 in range(0, B, cols):
            acc = zero
            for p in range(NP):
                acc = pair_block_step(tag, acc, unpacked, p, xp, b0, w16, x16, osum)
            tile_sums(acc, sums)
            for i in range(n_last + 1 - n_first):
                for j in range(cols):
                    v = sums[i, j]
                    if has_min(tag):
                        v += mins[b0 + j, n_first + i - n0]
                    out[b0 + j, n_first + i] = v


@njit(cache=True)
def pair_decode_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, n0, n1, zero):
    """decode_rows for PAIR_FORMATS: one row of W at a time, two blocks a step (pair_row_step)."""
    NB = xd.shape[1]
    xp, x16, osum = pair_inputs(tag, xd, xq)
    sums = np.empty((1, 1), np.float32)
    mins = np.zeros(n1 - n0, np.float32)
    if has_min(tag):
        min_terms(wm, xs, 0, n0, n1, mins)
    for n in range(n0, n1):
        acc = zero
        ahead = min(n + DECODE_PREFETCH_ROWS, n1 - 1)
        for p in range(NB // 2):  # pairs in order, as pair_rows adds them
            prefetch_at(wq, (ahead, 2 * p, 0))
            acc = pair_row_step(tag, acc, wq, wh, wd, n, p, xp, x16, osum)
        if NB % 2:
            acc = last_row_step(tag, acc, wq, wh, wd, n, NB // 2, xp, x16, osum)
        tile_sums(acc, sums)
        v = sums[0, 0]
        if has_min(tag):
            v += mins[n - n0]
        out[0, n] = v


@njit(cache=True, fastmath=True)
def simd_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, n0, n1, zero):
    """out[:, n0:n1] for every row of x, tile by tile. wd float16 bits (N, NB); wm the minima transposed,
    float32 (NB, N) (q4_1 / q5_1; any float32 2-D array otherwise, not read); xd, xs (B, NB);
    xq int8 (B, NB, 32); zero: ZERO_TILES[cols], cols dividing B.

    What is the same for every tile is computed once: the minima's terms of all B rows of x for
    rows n0..n1 of W (one vectorized pass per row of x), and a row tile's float32 block scales
    before its loop over x (not once per x tile: with B = 32 that was 16 times, a third of the
    time on SmolLM2's 576-wide rows). The values are the same floats either way.
    PAIR_FORMATS (with AVX-512 VNNI) go to pair_rows."""
    if pairs(tag):
        pair_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, n0, n1, zero)
        return
    B, NB = xd.shape
    NB8 = (NB + 7) // 8 * 8  # the scales' arrays padded to whole vectors of 8 (tile_scales8)
    cols = tile_cols(zero)
    w_scales = np.zeros((TILE_W, NB8), np.float32)  # wd[n, k] as float32, for the row tile
    scales = np.empty((TILE_W, cols, NB8), np.float32)  # wd[n, k] * xd[b, k]: the pair sums' scales
    x_scales = np.zeros((B, NB8), np.float32)
    for b in range(B):  # a loop, not x_scales[:, :NB] = xd: see pair_inputs
        for k in range(NB):
            x_scales[b, k] = xd[b, k]
    osum = np.empty((B if raw_offsets(tag) else 1, NB, 8), np.int32)  # x's offset sums (q4_0 / q5_0 on AVX2)
    if raw_offsets(tag):
        for b in range(B):
            for k in range(NB):
                store_offset_sums(tag, xq[b:b + 1], k, osum[b])
    sums = np.empty((TILE_W, cols), np.float32)
    unpacked = np.empty((TILE_W, NB, 32), np.int8)  # the row tile's weight blocks, unpacked (UNPACKED_FORMATS)
    mins = np.zeros((B if has_min(tag) else 1, n1 - n0), np.float32)  # the minima's terms (q4_1 / q5_1)
    if has_min(tag):
        for b in range(B):
            min_terms(wm, xs, b, n0, n1, mins[b])
    for n_first in range(n0, n1, TILE_W):
        n_last = min(n_first + TILE_W, n1) - 1  # the last tile repeats row n_last
        for i in range(TILE_W):
            n = min(n_first + i, n_last)
            for k in range(NB):
                w_scales[i, k] = half_to_float(wd[n, k])
            if unpacks(tag):
                for k in range(NB):
                    unpack_block(tag, wq, wh, n, k, unpacked, i)
        for b0 in range(0, B, cols):
            for i in range(TILE_W):
                for j in range(cols):
                    for k in range(0, NB8, 8):
                        tile_scales8(w_scales, i, k, x_scales, b0 + j, scales, j)
            acc = zero
            if unpacks(tag):
                for k in range(NB):
                    acc = unpacked_block_step(tag, acc, unpacked, k, xq, b0, scales, osum)
            else:
                for k in range(NB):
                    acc = tile_block_step(tag, acc, wq, wh, n_first, n_last, k, xq, b0, scales, osum)
            tile_sums(acc, sums)
            for i in range(n_last + 1 - n_first):
                for j in range(cols):
                    v = sums[i, j]
                    if has_min(tag):
                        v += mins[b0 + j, n_first + i - n0]
                    out[b0 + j, n_first + i] = v


@njit(cache=True, parallel=True)
def simd_parallel(tag, wd, wm, wq, wh, xd, xs, xq, out, zero, rows_per_task):
    """simd_rows over all rows, split among threads (each task takes rows_per_task rows)."""
    N = wq.shape[0]
    for t in prange((N + rows_per_task - 1) // rows_per_task):
        simd_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, t * rows_per_task, min(N, (t + 1) * rows_per_task), zero)


@njit(cache=True, fastmath=True)
def decode_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, n0, n1, zero):
    """As simd_rows for B = 1 (xd (1, NB), xq (1, NB, 32)), one row of W at a time; zero: DECODE_TILE.
    PAIR_FORMATS (with AVX-512 VNNI) go to pair_decode_rows."""
    if pairs(tag):
        pair_decode_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, n0, n1, zero)
        return
    NB = xd.shape[1]
    NB8 = NB - NB % 8
    scales = np.empty(NB, np.float32)  # wd[n, k] * xd[0, k]
    osum = np.empty((NB, 8), np.int32)  # x's offset sums (q4_0 / q5_0 on AVX2; else not written or read)
    for k in range(NB):
        store_offset_sums(tag, xq, k, osum)
    sums = np.empty((1, 1), np.float32)
    mins = np.zeros(n1 - n0, np.float32)
    if has_min(tag):
        min_terms(wm, xs, 0, n0, n1, mins)
    for n in range(n0, n1):
        for k in range(0, NB8, 8):
            row_scales8(wd, n, k, xd, scales)
        for k in range(NB8, NB):
            scales[k] = half_to_float(wd[n, k]) * xd[0, k]
        acc = zero
        ahead = min(n + DECODE_PREFETCH_ROWS, n1 - 1)
        for k in range(NB):  # blocks in order, as simd_rows adds them
            prefetch_at(wq, (ahead, k, 0))
            acc = row_block_step(tag, acc, wq, wh, n, k, xq, osum, scales)
        tile_sums(acc, sums)
        v = sums[0, 0]
        if has_min(tag):
            v += mins[n - n0]
        out[0, n] = v


@njit(cache=True, parallel=True)
def decode_parallel(tag, wd, wm, wq, wh, xd, xs, xq, out, zero, parts):
    """decode_rows over all rows, in `parts` contiguous slabs (one or a few per thread)."""
    N = wq.shape[0]
    for p in prange(parts):
        decode_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, p * N // parts, (p + 1) * N // parts, zero)


ZERO_TILES = {cols: ZeroTile(TILE_W, cols) for cols in range(1, TILE_X + 1)}
DECODE_TILE = ZeroTile(1, 1)
TAGS = {fmt: Format(fmt) for fmt in SIMD_FORMATS}
NO_HIGH_BITS = np.zeros((1, 1, 4), np.uint8)  # stands in for wh where a format has no 5th bits (never read)
