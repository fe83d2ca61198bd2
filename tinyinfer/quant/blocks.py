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


def quantize_q8_0(w, importance=None):
    """w: float32 (N, K) -> {"d": float16 (N, NB), "qs": int8 (N, NB, 32)} (quantize_row_q8_0_ref).

    importance is accepted and unused, as ggml's quantize_q8_0 ignores an imatrix: with 255 levels
    there is no scale search to weight."""
    blocks = _blocks(w)
    d = np.abs(blocks).max(axis=-1) / np.float32(127)  # float32, *not* yet float16: ggml divides by this one
    q = roundf(blocks * inverse_scale(d)[..., None])  # float32 product, as in C
    return {"d": to_float16(d), "qs": q.astype(np.int8)}


# --------------------------------------------------------------------------------------------
# Q4_0: d = signed max / -8, q = min(15, trunc(w / d + 8.5)), value (q - 8) * d


def quantize_q4_0(w, importance=None):
    """w: float32 (N, K) -> {"d", "qs": packed nibbles uint8 (N, NB, 16)} (quantize_row_q4_0_ref).

    With importance (K,) or (N, K): ggml's weighted scale search instead (quantize_row_q4_0_impl,
    see the section "importance-weighted scale searches" below)."""
    if importance is not None:
        d, L = weighted_q_search(w, importance, nmax=8)  # L in 0..15, value (L - 8) * d
        return {"d": to_float16(d), "qs": pack_nibbles(L)}
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


def quantize_q4_1(w, importance=None):
    """w: float32 (N, K) -> {"d", "m": float16 (N, NB), "qs": nibbles (N, NB, 16)} (quantize_row_q4_1_ref).

    With importance: ggml's weighted search for d and m (quantize_row_q4_1_impl)."""
    if importance is not None:
        d, m, q = weighted_qk_search(w, importance, nmax=15)
        return {"d": to_float16(d), "m": to_float16(m), "qs": pack_nibbles(q)}
    d, m, q = _quantize_with_min(w, 15)
    return {"d": d, "m": m, "qs": pack_nibbles(q)}


# --------------------------------------------------------------------------------------------
# Q5_0: d = signed max / -16, q = min(31, trunc(w / d + 16.5)), value (q - 16) * d


def quantize_q5_0(w, importance=None):
    """w: float32 (N, K) -> {"d", "qh": uint8 (N, NB, 4), "qs": nibbles} (quantize_row_q5_0_ref).

    With importance: ggml's weighted scale search (quantize_row_q5_0_impl)."""
    if importance is not None:
        d, q = weighted_q_search(w, importance, nmax=16)  # q in 0..31, value (q - 16) * d
        return {"d": to_float16(d), "qh": pack_high_bits(q), "qs": pack_nibbles(q & 0x0F)}
    blocks = _blocks(w)
    d = _signed_max(blocks) / np.float32(-16)
    shifted = blocks * inverse_scale(d)[..., None] + np.float32(16.5)
    q = np.minimum(31, np.trunc(shifted)).astype(np.uint8)  # 0..31
    return {"d": to_float16(d), "qh": pack_high_bits(q), "qs": pack_nibbles(q & 0x0F)}


# --------------------------------------------------------------------------------------------
# Q5_1: d = (max - min) / 31, m = min, value q * d + m


def quantize_q5_1(w, importance=None):
    """w: float32 (N, K) -> {"d", "m", "qh", "qs"} (quantize_row_q5_1_ref).

    With importance: ggml's weighted search for d and m (quantize_row_q5_1_impl)."""
    if importance is not None:
        d, m, q = weighted_qk_search(w, importance, nmax=31)
        return {"d": to_float16(d), "m": to_float16(m), "qh": pack_high_bits(q), "qs": pack_nibbles(q & 0x0F)}
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

    importance: optional float32 (K,) or (N, K) weights of the errors (an imatrix: one value per
    input column, the same for every row);
    ntry = 7 as llama-quantize, -1 for quantize_row_iq4_nl_ref. Works through `chunk` blocks at a
    time so memory stays bounded on an embedding-sized matrix.
    """
    N, K = w.shape
    x = w.reshape(-1, BLOCK)  # (M, 32), M = N * NB
    qw = None if importance is None else np.broadcast_to(np.asarray(importance, np.float32), (N, K)).reshape(-1, BLOCK)
    d = np.empty(x.shape[0], np.float32)
    levels = np.empty(x.shape, np.uint8)
    for s in range(0, x.shape[0], chunk):
        d[s:s + chunk], levels[s:s + chunk] = _iq4_nl_blocks(x[s:s + chunk], None if qw is None else qw[s:s + chunk],
                                                              ntry)
    NB = K // BLOCK
    return {"d": to_float16(d).reshape(N, NB), "qs": pack_nibbles(levels).reshape(N, NB, HALF)}


# --------------------------------------------------------------------------------------------
# importance-weighted scale searches: what llama-quantize does with an imatrix
#
# Round-to-nearest fixes a block's scale from its largest weight(s) and rounds every weight on its
# own. Given an importance vector (llama.cpp's "imatrix": for every input column k of a layer, the
# mean of x_k^2 over calibration tokens; tinyinfer/quant/imatrix.py collects it), ggml instead
# searches each block for the scale that minimises the weighted squared error
#
#     sum_j wt_j (w_j - value_j)^2,    wt_j = imatrix_k * sqrt(sigma2 + w_j^2),
#
# sigma2 = the mean of w^2 over the whole row. Why imatrix_k: the layer's output moves by
# sum_k x_k (w_k - value_k), whose expected square, for inputs uncorrelated across columns, is
# sum_k E[x_k^2] (w_k - value_k)^2: an error in a column that carries large activations costs
# more. The sqrt(sigma2 + w^2) factor keeps part of the unweighted search's wish to get the large
# weights right. (IQ4_NL's search above takes the same weights, with sigma2 per block.)
#
# Q4_0 / Q5_0 (ggml's make_qx_quants, nmax = 8 or 16): 19 trial inverse scales -(nmax + 0.1 t) / max,
# t = 0, +-1, .., +-9; for each, every weight rounds to l in -nmax..nmax-1, the best scale for those
# levels is d = sum(wt l w) / sum(wt l^2), which lowers the weighted error by d * sum(wt l w); the
# trial that lowers it most wins. Q4_1 / Q5_1 (make_qkx3_quants, nmax = 15 or 31): the min/max
# grid, then 37 trial ranges (max - min) / (nmax - 0.9 + 0.05 t), t = 0..36; for each, the least-
# squares d and m for its levels (m clipped at 0: this minimum is never positive); the smallest
# weighted error wins. Note what the searches return: the levels found with a *trial* scale and
# the least-squares d for them, so a level is not always the one nearest to w / d.
#
# As everywhere in this file the float32 arithmetic follows ggml's C in order (sums added
# j = 0..31 one after another), so the bytes equal llama-quantize's: tests/test_quant_llamacpp.py
# compares them with ggml_quantize_chunk given the same imatrix.


def nearest_int(v):
    """ggml's nearest_int: float32 -> the nearest whole number, halves to *even* (it adds 1.5 * 2^23
    and reads the bits; the float32 addition rounds to even). Kept as float32 for the products."""
    return np.rint(v)


def _in_order(terms):
    """terms: float32 (..., n) -> (...): t_0 + t_1 + ... added left to right in float32, as a C loop
    adds them (np.sum adds pairwise, which rounds differently)."""
    return np.add.accumulate(terms, axis=-1)[..., -1]


def importance_weights(w, importance, row_sigma2=None):
    """ggml's per-weight weights of the _impl searches: float32 (N, K) = qw * sqrt(sigma2 + w^2).

    w: float32 (N, K); importance: (K,) or (N, K); sigma2 = sum(w^2) / K of each row, added in
    order (quantize_row_q4_0_impl and its siblings), unless row_sigma2 (N,) gives it.
    """
    N, K = w.shape
    qw = np.broadcast_to(np.asarray(importance, np.float32), (N, K))
    sigma2 = _in_order(w * w) / np.float32(K) if row_sigma2 is None else np.asarray(row_sigma2, np.float32)
    return qw * np.sqrt(sigma2[:, None] + w * w)


def make_qx_quants(x, wt, nmax):
    """x, wt: float32 (M, 32) blocks and weights -> (d float32 (M,), L uint8 (M, 32) in 0..2 nmax - 1).

    ggml's make_qx_quants with weights (rmse_type 1): value = (L - nmax) * d. A block whose largest
    |x| is below GROUP_MAX_EPS gets d = 0 and L = 0.
    """
    signed_max = x[np.arange(len(x)), np.abs(x).argmax(axis=1)]  # (M,): the first largest |x|, with its sign
    zero = np.abs(signed_max) < GROUP_MAX_EPS
    safe_max = np.where(zero, np.float32(1), signed_max)  # zero blocks: any finite number, result discarded
    wx = wt * x  # (M, 32): C computes w * x[i] * l as (w * x[i]) * l

    def fit(iscale):  # (M,) trial inverse scales -> levels l (float32), sum(wt x l), sum(wt l^2)
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        return l, _in_order(wx * l), _in_order(wt * l * l)

    with np.errstate(divide="ignore", invalid="ignore"):  # only all-zero (or zero-weight) blocks divide by 0
        l, sumlx, suml2 = fit(np.float32(-nmax) / safe_max)  # the largest weight on level -nmax
        d = np.where(suml2 != 0, sumlx / suml2, np.float32(0))
        best = d * sumlx
        for t in range(-9, 10):
            if t == 0:
                continue
            trial, sumlx, suml2 = fit(-(np.float32(nmax) + np.float32(0.1) * np.float32(t)) / safe_max)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)  # lowers the error more than the best so far
            l = np.where(better[:, None], trial, l)
            d = np.where(better, sumlx / suml2, d)
            best = np.where(better, d * sumlx, best)
    d = np.where(zero, np.float32(0), d).astype(np.float32)
    l[zero] = -nmax
    return d, (l + nmax).astype(np.uint8)


def make_qkx3_quants(x, wt, nmax, rmin=-0.9, rdelta=0.05, nstep=36):
    """x, wt: float32 (M, 32) -> (d float32 (M,), m float32 (M,), L uint8 (M, 32) in 0..nmax).

    ggml's make_qkx3_quants with weights (use_mad false): value = L * d + m, m <= 0 always.
    """
    f32 = np.float32
    sum_w, sum_x = _in_order(wt), _in_order(wt * x)  # (M,)
    m = _first_extreme(x, x.min(axis=1))  # ggml keeps the first of equal minima (the sign of a zero)
    m = np.where(m > 0, f32(0), m)
    hi = x.max(axis=1)
    flat = hi <= m  # nothing to spread over the levels: d = 0, all levels 0
    hi = np.where(flat, m + f32(1), hi)  # any span, result discarded

    def levels(iscale, m):  # the levels of x for inverse scale iscale and minimum m
        return np.clip(nearest_int(iscale[:, None] * (x - m[:, None])), 0, nmax)

    def error(d, m, L):  # sum wt (L d + m - x)^2, in order
        diff = d[:, None] * L + m[:, None] - x
        return _in_order(wt * (diff * diff))

    iscale = f32(nmax) / (hi - m)
    d = f32(1) / iscale
    L = levels(iscale, m)
    best = error(d, m, L)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(nstep + 1):
            # ggml's loop reads the *current* minimum here, which an earlier trial may have lowered
            iscale = (f32(rmin) + f32(rdelta) * f32(t) + f32(nmax)) / (hi - m)
            trial = levels(iscale, m)
            wl = wt * trial
            sum_l, sum_l2, sum_xl = _in_order(wl), _in_order(wl * trial), _in_order(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_d = (sum_w * sum_xl - sum_x * sum_l) / D  # least squares for d and m ...
            this_m = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_m > 0  # ... unless m comes out positive: then m = 0 and d alone
            this_m = np.where(positive, f32(0), this_m)
            this_d = np.where(positive, sum_xl / sum_l2, this_d)
            better = (D > 0) & (error(this_d, this_m, trial) < best)
            best = np.where(better, error(this_d, this_m, trial), best)
            L = np.where(better[:, None], trial, L)
            d = np.where(better, this_d, d)
            m = np.where(better, this_m, m)
    d = np.where(flat, f32(0), d).astype(np.float32)
    L[flat] = 0
    return d, m.astype(np.float32), L.astype(np.uint8)


def _weighted_blocks(w, importance, search, chunk=1 << 16):
    """Run `search(x, wt)` over the blocks of w (N, K), `chunk` blocks at a time -> its outputs,
    each reshaped to (N, NB) or (N, NB, 32)."""
    N, K = w.shape
    wt = importance_weights(w, importance).reshape(-1, BLOCK)  # (M, 32)
    x = w.reshape(-1, BLOCK)
    parts = [search(x[s:s + chunk], wt[s:s + chunk]) for s in range(0, len(x), chunk)]
    return tuple(np.concatenate(p).reshape(N, K // BLOCK, *p[0].shape[1:]) for p in zip(*parts))


def weighted_q_search(w, importance, nmax):
    """Q4_0 (nmax 8) / Q5_0 (nmax 16) with an imatrix: w (N, K) -> (d float32 (N, NB), L uint8 (N, NB, 32))."""
    return _weighted_blocks(w, importance, lambda x, wt: make_qx_quants(x, wt, nmax))


def weighted_qk_search(w, importance, nmax):
    """Q4_1 (nmax 15) / Q5_1 (nmax 31) with an imatrix: w (N, K) -> (d, m float32 (N, NB), L uint8 (N, NB, 32))."""
    return _weighted_blocks(w, importance, lambda x, wt: make_qkx3_quants(x, wt, nmax))


# --------------------------------------------------------------------------------------------
# one block's grid, then rounding against it: what GPTQ (gptq.py) needs
#
# GPTQ rounds a matrix one column at a time and changes the columns not yet rounded, so it cannot
# call a format's quantizer once on the finished matrix. It asks for each block's scale (and
# minimum) when it reaches the block, from the block's weights as they are then, and afterwards
# rounds every column of the block against that grid.


def block_scales(fmt, x, importance=None, row_sigma2=None):
    """x: float32 (M, 32) blocks -> (d float32 (M,), m float32 (M,) or None): the scale (and minimum)
    ggml's rule for fmt gives each block, before rounding to float16; with importance ((32,) or
    (M, 32)) the weighted search's (row_sigma2 (M,): the sigma2 of each block's row, default the
    block's own mean of x^2)."""
    if fmt == "iq4_nl":
        qw = None if importance is None else np.broadcast_to(np.asarray(importance, np.float32), x.shape)
        return _iq4_nl_blocks(x, qw, ntry=7)[0], None
    if importance is not None and fmt != "q8_0":
        sigma2 = _in_order(x * x) / np.float32(BLOCK) if row_sigma2 is None else row_sigma2
        wt = importance_weights(x, importance, sigma2)
        if fmt in WITH_MIN:
            d, m, _ = make_qkx3_quants(x, wt, {"q4_1": 15, "q5_1": 31}[fmt])
            return d, m
        return make_qx_quants(x, wt, {"q4_0": 8, "q5_0": 16}[fmt])[0], None
    if fmt == "q8_0":
        return np.abs(x).max(axis=-1) / np.float32(127), None
    if fmt in WITH_MIN:
        lo, hi = _first_extreme(x, x.min(axis=-1)), _first_extreme(x, x.max(axis=-1))
        with np.errstate(over="ignore"):
            return (hi - lo) / np.float32(SCALE_DIVISOR[fmt]), lo  # 15 or 31 steps
    return _signed_max(x) / np.float32(-SCALE_DIVISOR[fmt]), None  # max / -8 or max / -16


CODE_RANGE = {"q8_0": (-127, 127), "q4_0": (0, 15), "q4_1": (0, 15), "q5_0": (0, 31), "q5_1": (0, 31),
              "iq4_nl": (0, 15)}  # what a block stores per weight (IQ4_NL: an index into its table)


def round_to_grid(fmt, x, d, m=None):
    """x: float32 (M, n) weights, d (and m): float32 (M,) their blocks' scale (and minimum) ->
    the codes a block stores, (M, n) int8 for q8_0 and uint8 otherwise.

    ggml's rounding rules (Q8_0 roundf; Q4_0/Q5_0 trunc(x/d + 8.5 or 16.5); Q4_1/Q5_1
    trunc((x - m)/d + 0.5); IQ4_NL the nearest table level), clamped to the format's range on both
    sides: GPTQ's updates can carry a weight past the range its block's scale was chosen for.
    """
    inv = inverse_scale(np.asarray(d, np.float32))[:, None]  # (M, 1)
    lo, hi = CODE_RANGE[fmt]
    if fmt == "q8_0":
        return np.clip(roundf(x * inv), lo, hi).astype(np.int8)
    if fmt == "iq4_nl":
        return iq4_nl_nearest(inv * x)
    if fmt in WITH_MIN:
        shifted = (x - np.asarray(m, np.float32)[:, None]) * inv + np.float32(0.5)
    else:
        shifted = x * inv + np.float32({"q4_0": 8.5, "q5_0": 16.5}[fmt])
    return np.clip(np.trunc(shifted), lo, hi).astype(np.uint8)


def code_levels(fmt, codes):
    """codes as round_to_grid returns them -> the integer level each stands for, float32:
    q8_0 q; q4_0 q - 8; q5_0 q - 16; q4_1 / q5_1 q; iq4_nl IQ4_NL_VALUES[q]. value = level * d (+ m)."""
    if fmt == "iq4_nl":
        return _LEVELS[codes]
    offset = {"q4_0": 8, "q5_0": 16}.get(fmt, 0)
    return codes.astype(np.float32) - np.float32(offset)


def pack_codes(fmt, codes, d, m=None):
    """codes (N, NB, 32) and float16 d (and m) (N, NB) -> the block fields {"d", "m", "qh", "qs"} fmt has."""
    if fmt == "q8_0":
        return {"d": d, "qs": codes.astype(np.int8)}
    parts = {"d": d, "qs": pack_nibbles(codes & 0x0F)}
    if fmt in WITH_MIN:
        parts["m"] = m
    if fmt in WITH_HIGH_BITS:
        parts["qh"] = pack_high_bits(codes)
    return parts


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
