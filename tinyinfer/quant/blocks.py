"""ggml's legacy block formats, rule by rule, in plain NumPy: the specification the rest of quant/ follows.

Lesson: lessons/04-quantization.py

A weight matrix W: (N, K) is cut along K into blocks of 32 consecutive weights of a row. Each block
keeps a float16 scale d (some formats also a float16 minimum m) and 32 small integers q:

    format  block (bytes)                       value of element j         bits a weight
    q8_0    d, 32 x int8 q                (34)  q * d                      8.5
    q4_0    d, 16 bytes of nibbles        (18)  (q - 8) * d                4.5
    q4_1    d, m, 16 bytes of nibbles     (20)  q * d + m                  5.0
    q5_0    d, 4 bytes of 5th bits, nibbles (22) (q - 16) * d              5.5
    q5_1    d, m, 5th bits, nibbles       (24)  q * d + m                  6.0
    iq4_nl  d, 16 bytes of nibbles        (18)  IQ4_NL_VALUES[q] * d       4.5

Nibbles: byte j of a block holds element j in its low 4 bits and element j + 16 in its high 4 bits.
5th bits (q5_*): a little-endian uint32 whose bit j is bit 4 of element j's q (0..31).

Every rule below is ggml's (ggml/src/ggml-quants.c: quantize_row_*_ref, quantize_iq4_nl,
dequantize_row_*; ggml/src/ggml-common.h: block_*), down to the float32 arithmetic and C's
conversions (roundf, truncation toward zero), so the bytes are what llama.cpp writes. The tests
compare them byte for byte with gguf-py (llama.cpp's own NumPy port) for every format it quantizes.

The last section is the *activation* side of a product: ggml's CPU backend rounds x to Q8_0 blocks
(for q8_0, q4_0, q5_0 and iq4_nl weights) or Q8_1 blocks (for q4_1 and q5_1: Q8_0 plus s = d * sum q,
which carries the minimum's term) before its integer dot products; `quantize_activations` does
the same, as the x86/ARM SIMD code does it (see its docstring).

Shapes: N rows, K columns, NB = K // 32 blocks a row, B rows of activations.
"""
from __future__ import annotations

import numpy as np

BLOCK = 32  # QK8_0 = QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK4_NL = 32: every block covers 32 weights of a row
HALF = BLOCK // 2

# One block as ggml lays it out in memory (packed structs, no padding).
BLOCK_DTYPES = {
    "q8_0": np.dtype([("d", "<f2"), ("qs", "i1", (BLOCK,))]),
    "q4_0": np.dtype([("d", "<f2"), ("qs", "u1", (HALF,))]),
    "q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (HALF,))]),
    "q5_0": np.dtype([("d", "<f2"), ("qh", "u1", (4,)), ("qs", "u1", (HALF,))]),
    "q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "u1", (4,)), ("qs", "u1", (HALF,))]),
    "iq4_nl": np.dtype([("d", "<f2"), ("qs", "u1", (HALF,))]),
}
FORMATS = tuple(BLOCK_DTYPES)
WITH_MIN = ("q4_1", "q5_1")  # formats with a minimum m; their products take Q8_1 activations
WITH_HIGH_BITS = ("q5_0", "q5_1")

# IQ4_NL's 16 levels (kvalues_iq4nl): denser near zero, where most weights are.
IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)

GROUP_MAX_EPS = np.float32(1e-15)  # ggml: an IQ4_NL block whose largest |w| is below this is all zero
FP16_MAX = 65504.0  # a float16 past this is inf (the exact cut is 65520)

# |w| a format can hold before its float16 scale (or minimum) overflows: d ~ range / LEVELS[fmt]
SCALE_DIVISOR = {"q8_0": 127, "q4_0": 8, "q4_1": 15, "q5_0": 16, "q5_1": 31, "iq4_nl": 127}


# --------------------------------------------------------------------------------------------
# C's conversions, reproduced exactly


def roundf(v):
    """C's roundf: to the nearest integer, halves away from zero (NumPy's np.round goes to even).

    v is float32; in float64 the sum |v| + 0.5 is exact, so floor() sees the true value.
    (Computing it in float32 would round 0.49999997 + 0.5 up to 1.0.)
    """
    a = np.abs(v.astype(np.float64))
    return np.copysign(np.floor(a + 0.5), v)


def inverse_scale(d):
    """ggml's `id = d ? 1.0f/d : 0.0f`, in float32.

    If d is so small that 1/d overflows float32 (|d| < ~3e-39), ggml's C goes on to convert inf or
    NaN to an integer, which C leaves undefined. Such a block's float16 scale is 0 anyway, so we
    treat it as an all-zero block (id = 0): the same dequantized values, defined bytes.
    """
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1.0) / d  # float32 / float32 stays float32
    return np.where((d == 0) | ~np.isfinite(inv), np.float32(0.0), inv).astype(np.float32)


def to_float16(d):
    """GGML_FP32_TO_FP16: round to nearest even, as NumPy's cast does. Too large -> inf, which the
    callers report as an error."""
    with np.errstate(over="ignore"):
        return np.asarray(d).astype(np.float16)


def _blocks(w):
    """w: float32 (N, K) -> (N, NB, 32), a view."""
    N, K = w.shape
    return w.reshape(N, K // BLOCK, BLOCK)


def _signed_max(blocks):
    """The element of largest magnitude, with its sign; the first one on ties (ggml tests `<`).

    ggml starts from max = +0 and replaces it only for a strictly larger |v|, so a block of zeros
    (some of them -0) keeps +0: then d = +0 / -8 = -0, a float16 with its sign bit set."""
    first = np.abs(blocks).argmax(axis=-1)[..., None]  # (N, NB, 1)
    signed = np.take_along_axis(blocks, first, axis=-1)[..., 0]  # (N, NB)
    return np.where(signed == 0, np.float32(0), signed)


def _first_extreme(blocks, extreme):
    """blocks.min(-1) or .max(-1) as ggml's loop finds it: the first of equal values, which only
    matters for the sign of a zero (-0 and +0 compare equal)."""
    first = (blocks == extreme[..., None]).argmax(axis=-1)[..., None]
    return np.take_along_axis(blocks, first, axis=-1)[..., 0]


# --------------------------------------------------------------------------------------------
# nibbles and 5th bits


def pack_nibbles(q):
    """q: uint8 (..., 32), each < 16 -> (..., 16): byte j = element j (low nibble) | element j+16 (high)."""
    return (q[..., :HALF] | (q[..., HALF:] << 4)).astype(np.uint8)


def unpack_nibbles(packed):
    """packed: uint8 (..., 16) -> uint8 (..., 32) in 0..15, the elements in order."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1)


def pack_high_bits(q):
    """q: uint8 (..., 32) in 0..31 -> (..., 4): bit j of the little-endian uint32 is bit 4 of q[j]."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


def unpack_high_bits(qh):
    """qh: uint8 (..., 4) -> uint8 (..., 32): 16 where element j's bit 4 is set, else 0."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << 4


# kept for callers written against the Q4_0-only module
def pack_q4_0(q):
    return pack_nibbles(q)


# --------------------------------------------------------------------------------------------
# Q8_0: d = amax / 127, q = roundf(w / d)


def quantize_q8_0(w):
    """w: float32 (N, K) -> {"d": float16 (N, NB), "qs": int8 (N, NB, 32)} (quantize_row_q8_0_ref)."""
    blocks = _blocks(w)
    d = np.abs(blocks).max(axis=-1) / np.float32(127)  # float32, *not* yet float16: ggml divides by this one
    q = roundf(blocks * inverse_scale(d)[..., None])  # float32 product, as in C
    return {"d": to_float16(d), "qs": q.astype(np.int8)}


# --------------------------------------------------------------------------------------------
# Q4_0: d = signed max / -8, q = min(15, trunc(w / d + 8.5)), value (q - 8) * d


def quantize_q4_0(w):
    """w: float32 (N, K) -> {"d", "qs": packed nibbles uint8 (N, NB, 16)} (quantize_row_q4_0_ref)."""
    blocks = _blocks(w)
    d = _signed_max(blocks) / np.float32(-8)  # the max element lands on q = 0, i.e. value -8 * d
    # + 8.5 in float32 then truncation (the int8_t cast): round half up around the offset 8.
    # The sum must be rounded to float32 first, as C does: that decides some near-ties.
    shifted = blocks * inverse_scale(d)[..., None] + np.float32(8.5)  # float32, all > 0
    q = np.minimum(15, np.trunc(shifted)).astype(np.uint8)
    return {"d": to_float16(d), "qs": pack_nibbles(q)}


# --------------------------------------------------------------------------------------------
# Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((w - min) / d + 0.5)), value q * d + m


def _quantize_with_min(w, levels):
    """The Q4_1 / Q5_1 rule: levels = 15 or 31. -> (d float16, m float16, q uint8 (N, NB, 32))."""
    blocks = _blocks(w)
    lo, hi = _first_extreme(blocks, blocks.min(axis=-1)), _first_extreme(blocks, blocks.max(axis=-1))  # (N, NB)
    with np.errstate(over="ignore"):
        d = (hi - lo) / np.float32(levels)  # float32
    shifted = (blocks - lo[..., None]) * inverse_scale(d)[..., None] + np.float32(0.5)  # float32, >= 0.5
    # ggml clamps Q4_1 to 15; Q5_1 it leaves unclamped ((w - min)/d <= 31 + a rounding, so < 31.5)
    q = np.minimum(levels, np.trunc(shifted)).astype(np.uint8)
    return to_float16(d), to_float16(lo), q


def quantize_q4_1(w):
    """w: float32 (N, K) -> {"d", "m": float16 (N, NB), "qs": nibbles (N, NB, 16)} (quantize_row_q4_1_ref)."""
    d, m, q = _quantize_with_min(w, 15)
    return {"d": d, "m": m, "qs": pack_nibbles(q)}


# --------------------------------------------------------------------------------------------
# Q5_0: d = signed max / -16, q = min(31, trunc(w / d + 16.5)), value (q - 16) * d


def quantize_q5_0(w):
    """w: float32 (N, K) -> {"d", "qh": uint8 (N, NB, 4), "qs": nibbles} (quantize_row_q5_0_ref)."""
    blocks = _blocks(w)
    d = _signed_max(blocks) / np.float32(-16)
    shifted = blocks * inverse_scale(d)[..., None] + np.float32(16.5)
    q = np.minimum(31, np.trunc(shifted)).astype(np.uint8)  # 0..31
    return {"d": to_float16(d), "qh": pack_high_bits(q), "qs": pack_nibbles(q & 0x0F)}


# --------------------------------------------------------------------------------------------
# Q5_1: d = (max - min) / 31, m = min, value q * d + m


def quantize_q5_1(w):
    """w: float32 (N, K) -> {"d", "m", "qh", "qs"} (quantize_row_q5_1_ref)."""
    d, m, q = _quantize_with_min(w, 31)
    return {"d": d, "m": m, "qh": pack_high_bits(q), "qs": pack_nibbles(q & 0x0F)}


# --------------------------------------------------------------------------------------------
# IQ4_NL: 16 non-uniform levels; the scale is chosen by a weighted least-squares search
#
# For a block x with weights wt (x^2, or imatrix-style importances), and a trial scale, each x_j
# takes the nearest level q_j = VALUES[l_j] of x_j / scale; the best scale for those levels is
# d = sum(wt q x) / sum(wt q^2), and it reduces the weighted error by d * sum(wt q x). ggml tries
# the trial inverse scales (t - 127) / max for t = -ntry..ntry, keeps the d that reduces the error
# most, and rounds the block once more with it. quantize_iq4_nl (what llama-quantize writes) uses
# ntry = 7; quantize_row_iq4_nl_ref uses ntry = -1 (one trial: d = max / -127, then the
# least-squares d for those levels, without rounding again).

_LEVELS = IQ4_NL_VALUES.astype(np.float32)


def iq4_nl_nearest(v):
    """v: float32 (...) -> the index of the nearest level, uint8 (ggml's best_index_int8).

    Binary search for VALUES[mu-1] <= v < VALUES[mu], then the nearer of the two, the upper one
    on an exact tie; both distances in float32, as in C.
    """
    mu = np.clip(np.searchsorted(_LEVELS, v, side="right"), 1, 15)
    below, above = _LEVELS[mu - 1], _LEVELS[mu]
    idx = np.where(v - below < above - v, mu - 1, mu)
    idx = np.where(v <= _LEVELS[0], 0, np.where(v >= _LEVELS[15], 15, idx))
    return idx.astype(np.uint8)


def _weighted_sums(x, wt, levels):
    """sum(wt q x), sum(wt q^2) for q = VALUES[levels], added j = 0..31 in order in float32 as C does
    (np.sum would add pairwise and round differently). x, wt: float32 (M, 32) -> two (M,)."""
    q = _LEVELS[levels]  # (M, 32) float32
    sumqx = np.zeros(x.shape[0], np.float32)
    sumq2 = np.zeros(x.shape[0], np.float32)
    for j in range(BLOCK):
        wq = wt[:, j] * q[:, j]
        sumqx += wq * x[:, j]
        sumq2 += wq * q[:, j]
    return sumqx, sumq2


def _iq4_nl_blocks(x, importance, ntry):
    """x: float32 (M, 32) blocks -> (d float32 (M,), level indices uint8 (M, 32))."""
    if importance is None:
        wt = x * x
    else:  # imatrix weighting: qw * sqrt(sigma2 + x^2), sigma2 = 2 * mean(x^2) of the block
        sigma2 = np.zeros(x.shape[0], np.float32)
        for j in range(BLOCK):
            sigma2 += x[:, j] * x[:, j]
        sigma2 *= np.float32(2.0 / BLOCK)
        wt = importance * np.sqrt(sigma2[:, None] + x * x)
    signed_max = x[np.arange(x.shape[0]), np.abs(x).argmax(axis=1)]  # (M,): first of the largest |x|
    zero = np.abs(signed_max) < GROUP_MAX_EPS
    safe_max = np.where(zero, np.float32(1), signed_max)  # zero blocks: any finite number, result discarded
    # first trial: ntry > 0 puts the max on level +127 (d = -max / -127), ntry <= 0 on -127
    d = safe_max / (-_LEVELS[0] if ntry > 0 else _LEVELS[0])
    levels = iq4_nl_nearest((np.float32(1) / d)[:, None] * x)
    sumqx, sumq2 = _weighted_sums(x, wt, levels)
    with np.errstate(divide="ignore", invalid="ignore"):  # only all-zero blocks can have sumq2 = 0
        d = sumqx / sumq2
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):  # no trials when ntry < 0
        inv = np.float32(itry + int(IQ4_NL_VALUES[0])) / safe_max
        sumqx, sumq2 = _weighted_sums(x, wt, iq4_nl_nearest(inv[:, None] * x))
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    if ntry > 0:  # round once more with the chosen (float32) scale
        levels = iq4_nl_nearest(inverse_scale(d)[:, None] * x)
    # An all-zero block gets d = 0 and level 8 (value 1, the nearest to 0) everywhere: what
    # quantize_iq4_nl writes. (ggml's _ref variant leaves the previous block's levels in place there.)
    d = np.where(zero, np.float32(0), d).astype(np.float32)
    levels[zero] = 8
    return d, levels


def quantize_iq4_nl(w, importance=None, ntry=7, chunk=1 << 16):
    """w: float32 (N, K) -> {"d", "qs": nibbles of level indices} (ggml's quantize_iq4_nl).

    importance: optional float32 (N, K) weights of the errors (an imatrix row repeated, say);
    ntry = 7 as llama-quantize, -1 for quantize_row_iq4_nl_ref. Works through `chunk` blocks at a
    time so memory stays bounded on an embedding-sized matrix.
    """
    N, K = w.shape
    x = w.reshape(-1, BLOCK)  # (M, 32), M = N * NB
    qw = None if importance is None else np.asarray(importance, np.float32).reshape(-1, BLOCK)
    d = np.empty(x.shape[0], np.float32)
    levels = np.empty(x.shape, np.uint8)
    for s in range(0, x.shape[0], chunk):
        d[s:s + chunk], levels[s:s + chunk] = _iq4_nl_blocks(x[s:s + chunk], None if qw is None else qw[s:s + chunk],
                                                              ntry)
    NB = K // BLOCK
    return {"d": to_float16(d).reshape(N, NB), "qs": pack_nibbles(levels).reshape(N, NB, HALF)}


QUANTIZERS = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0, "q4_1": quantize_q4_1, "q5_0": quantize_q5_0,
              "q5_1": quantize_q5_1, "iq4_nl": quantize_iq4_nl}


# --------------------------------------------------------------------------------------------
# the integers a block stands for, and dequantize_row_*


def integer_values(fmt, qs, qh=None):
    """The small integers the dot products multiply, int8 (N, NB, 32), in element order:
    q8_0 q; q4_0 q - 8; q4_1 q (0..15); q5_0 q - 16; q5_1 q (0..31); iq4_nl VALUES[q]."""
    if fmt == "q8_0":
        return qs
    q = unpack_nibbles(qs)  # uint8 0..15
    if fmt in WITH_HIGH_BITS:
        q = q | unpack_high_bits(qh)  # 0..31
    if fmt == "iq4_nl":
        return IQ4_NL_VALUES[q]
    offset = {"q4_0": 8, "q5_0": 16}.get(fmt, 0)
    return (q.astype(np.int8) - np.int8(offset)).astype(np.int8)


def dequantize(fmt, d, qs, m=None, qh=None):
    """float32 (N, K): q * d (+ m), ggml's dequantize_row_* (a product, then a sum: no fused add)."""
    values = integer_values(fmt, qs, qh).astype(np.float32)  # (N, NB, 32)
    out = values * d.astype(np.float32)[..., None]
    if fmt in WITH_MIN:
        out = out + m.astype(np.float32)[..., None]
    return out.reshape(out.shape[0], -1)


# --------------------------------------------------------------------------------------------
# activations: Q8_0 / Q8_1 blocks, as ggml's CPU backend rounds x before its integer dot products


def quantize_activations(x):
    """x: float32 (B, K) -> (xq int8 (B, NB, 32), xd float32 (B, NB), xs float32 (B, NB)).

    As ggml's quantize_row_q8_0 / quantize_row_q8_1 on x86 (AVX) and ARM (NEON), the code
    llama.cpp runs on this kind of machine:
        d = amax / 127;  id = 127 / amax (not 1 / d);  q = x * id rounded half to *even*;
        s = d * sum(q)   (Q8_1 only; d the float32 one)
    and d and s stored as float16, because that is all ggml's block_q8_0 / block_q8_1 hold.
    (ggml's scalar _ref code, used only where no SIMD path exists, computes 1/d and rounds
    halves away from zero; the two differ on a few elements in a million.) xd and xs come back
    as float32 arrays holding those float16 values, ready to multiply.

    Why float16 d and s rather than float32 (one rounding fewer): parity with llama.cpp. Measured on
    the shipped teacher's linear weights with random x (16 rows, column scales 0.1-3), the float16
    rounding moves the product by 3% (Q8_0) and 11% (Q4_1, through s) of what rounding x to
    8 bits moves it (RMS 2.1e-4 and 7.1e-4 vs 6.3e-3 and 6.6e-3 of RMS |y|): small, but enough
    to flip near-ties between the top two logits if we computed it differently from llama.cpp.

    A block whose 127 / amax overflows (amax < ~4e-37) is taken as all zero; ggml would convert
    inf to an integer there, which is undefined. An |x| above ~8.3e6 makes d overflow float16:
    the caller checks xd for inf (QTensor.matmul reports it).
    """
    B, K = x.shape
    blocks = x.reshape(B, K // BLOCK, BLOCK)
    amax = np.abs(blocks).max(axis=-1)  # (B, NB) float32
    d = amax / np.float32(127)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(127) / amax
    inv = np.where((amax == 0) | ~np.isfinite(inv), np.float32(0), inv).astype(np.float32)
    xq = np.rint(blocks * inv[..., None]).astype(np.int8)  # float32 product, half to even
    xs = d * xq.sum(axis=-1, dtype=np.int32).astype(np.float32)  # float32 d times the exact integer sum
    return xq, to_float16(d).astype(np.float32), to_float16(xs).astype(np.float32)
