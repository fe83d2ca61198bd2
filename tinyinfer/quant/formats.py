"""ggml's Q8_0 and Q4_0 block formats in plain NumPy: the reference that the Numba kernels follow.

Lesson: lessons/04-quantization.py

A weight matrix W: (N, K) is cut along K into blocks of 32 numbers. Each block keeps one float16
scale d and 32 small integers q, and stands for the values q * d:

    Q8_0   d = amax / 127            q = roundf(w / d)            in -127..127   34 bytes a block
    Q4_0   d = max / -8 (signed)     q = min(15, trunc(w/d + 8.5)) in 0..15, value (q - 8) * d
                                                                                 18 bytes a block

The rules and the byte layout are ggml's (ggml/src/ggml-quants.c: quantize_row_q8_0_ref,
quantize_row_q4_0_ref, dequantize_row_*; ggml/src/ggml-common.h: block_q8_0, block_q4_0), down to
the float32 arithmetic, so `QTensor.to_bytes()` is exactly what a GGUF file stores and a GGUF
tensor loads with `QTensor.from_bytes`.

Multiplying: like llama.cpp, `QTensor.matmul(x)` first quantizes the activations x to Q8_0 blocks,
then each block's dot product is a sum of small-integer products (exact, in int32) times the two
scales. `quantized_matmul_reference` below is that computation in NumPy, the twin of the Numba
kernels in tinyinfer/quant/kernels.py. Because x is rounded too, the result differs slightly from
`x @ W.dequantize().T`; tests/test_quant_kernels.py bounds the difference.

Set the environment variable TINYINFER_REFERENCE=1 and `QTensor.matmul` runs this NumPy twin
instead of the kernels (read at every call, so a notebook can flip it).

Shapes: N output features, K input features, B rows of activations, NB = K // 32 blocks a row.
"""
from __future__ import annotations

import os

import numpy as np

from ..checks import check_matmul_input, check_weight_matrix

BLOCK = 32  # QK8_0 = QK4_0 = 32 in ggml: every block covers 32 consecutive weights of one row

# One block as ggml lays it out in memory (no padding: the structs are packed to 34 and 18 bytes).
BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (BLOCK,))])
BLOCK_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", (BLOCK // 2,))])
BLOCK_DTYPES = {"q8_0": BLOCK_Q8_0, "q4_0": BLOCK_Q4_0}
FORMATS = tuple(BLOCK_DTYPES)

FP16_MAX = 65504.0  # a scale past this becomes inf in float16 (the exact cut is 65520)


def use_reference() -> bool:
    """True when TINYINFER_REFERENCE is set to 1 (or true/yes): matmul then runs the NumPy twin."""
    return os.environ.get("TINYINFER_REFERENCE", "").strip().lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------------------------
# rounding helpers: C's float -> int conversions, reproduced exactly


def roundf(v):
    """C's roundf: to the nearest integer, halves away from zero (NumPy's np.round goes to even).

    v is float32; in float64 the sum |v| + 0.5 is exact, so floor() sees the true value.
    (Computing it in float32 would round 0.49999997 + 0.5 up to 1.0.)
    """
    a = np.abs(v.astype(np.float64))
    return np.copysign(np.floor(a + 0.5), v)


def _inverse_scale(d):
    """ggml's `id = d ? 1.0f/d : 0.0f`, in float32.

    If d is so small that 1/d overflows float32 (|d| < ~3e-39), ggml's C goes on to convert inf or
    NaN to an integer, which C leaves undefined. Such a block's float16 scale is 0 anyway, so we
    treat it as an all-zero block (id = 0): the same dequantized values, defined bytes.
    """
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1.0) / d  # float32 / float32 stays float32
    return np.where((d == 0) | ~np.isfinite(inv), np.float32(0.0), inv).astype(np.float32)


def _to_float16(d):
    """ggml's GGML_FP32_TO_FP16: round to nearest even, as NumPy's cast does. Too large -> inf,
    which quantize() then reports as an error."""
    with np.errstate(over="ignore"):
        return d.astype(np.float16)


# --------------------------------------------------------------------------------------------
# quantize / dequantize (pure functions on arrays)


def quantize_q8_0(w):
    """w: float32 (N, K) -> (scales float16 (N, NB), quants int8 (N, NB, 32)). ggml's rule."""
    N, K = w.shape
    blocks = w.reshape(N, K // BLOCK, BLOCK)  # (N, NB, 32)
    amax = np.abs(blocks).max(axis=-1)  # (N, NB) float32
    d = amax / np.float32(127)  # float32, *not* yet rounded to float16: ggml divides by this one
    inv = _inverse_scale(d)  # (N, NB)
    q = roundf(blocks * inv[..., None])  # (N, NB, 32); float32 product, as in C
    return _to_float16(d), q.astype(np.int8)


def quantize_q4_0(w):
    """w: float32 (N, K) -> (scales float16 (N, NB), packed nibbles uint8 (N, NB, 16)). ggml's rule."""
    N, K = w.shape
    blocks = w.reshape(N, K // BLOCK, BLOCK)  # (N, NB, 32)
    # max: the element of largest magnitude, with its sign; the first one on ties (ggml tests `<`).
    first = np.abs(blocks).argmax(axis=-1)[..., None]  # (N, NB, 1)
    signed_max = np.take_along_axis(blocks, first, axis=-1)[..., 0]  # (N, NB)
    d = signed_max / np.float32(-8)  # so the max element lands on q = 0, i.e. value -8 * d
    inv = _inverse_scale(d)
    # + 8.5 in float32 then truncation (the int8_t cast): round half up around the offset 8.
    # The sum must be rounded to float32 first, as C does: that decides some near-ties.
    shifted = blocks * inv[..., None] + np.float32(8.5)  # (N, NB, 32) float32, all > 0
    q = np.minimum(15, np.trunc(shifted).astype(np.int8))  # 0..15
    return _to_float16(d), pack_q4_0(q.astype(np.uint8))


def pack_q4_0(q):
    """q: uint8 (..., 32) in 0..15 -> (..., 16): byte j = element j (low nibble) | element j+16 (high)."""
    return (q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << 4)).astype(np.uint8)


def unpack_q4_0(packed):
    """packed: uint8 (..., 16) -> the signed values q - 8, int8 (..., 32) in -8..7."""
    low = (packed & 0x0F).astype(np.int8) - 8  # elements 0..15
    high = (packed >> 4).astype(np.int8) - 8  # elements 16..31
    return np.concatenate([low, high], axis=-1)


def dequantize_blocks(fmt, scales, quants):
    """scales float16 (N, NB), quants as stored -> float32 (N, K) = q * d (ggml's dequantize_row_*)."""
    values = quants if fmt == "q8_0" else unpack_q4_0(quants)  # int8 (N, NB, 32)
    out = values.astype(np.float32) * scales.astype(np.float32)[..., None]  # (N, NB, 32)
    return out.reshape(out.shape[0], -1)


# --------------------------------------------------------------------------------------------
# the multiply, as the kernels do it: activations to Q8_0 on the fly, integer dot per block


def quantize_activations(x):
    """x: float32 (B, K) -> (xq int8 (B, NB, 32), xd float32 (B, NB)): Q8_0's rule, float32 scale.

    ggml rounds the activation scale to float16 too, because its block struct has room for no more;
    ours never leaves memory, so it stays float32 (one rounding fewer, no float16 overflow).
    """
    B, K = x.shape
    blocks = x.reshape(B, K // BLOCK, BLOCK)  # (B, NB, 32)
    xd = np.abs(blocks).max(axis=-1) / np.float32(127)  # (B, NB) float32
    xq = roundf(blocks * _inverse_scale(xd)[..., None]).astype(np.int8)  # (B, NB, 32)
    return xq, xd.astype(np.float32)


def quantized_matmul_reference(fmt, w_scales, w_quants, x):
    """The NumPy twin of the Numba kernels. x: float32 (B, K) -> float32 (B, N).

    out[b, n] = sum over blocks k of  float(sum_j xq[b,k,j] * wq[n,k,j]) * (xd[b,k] * wd[n,k]),
    the blocks added one after another in float32, as the kernels add them.
    w_scales: float32 (N, NB) (the float16 scales, widened); w_quants: as QTensor stores them.
    """
    xq, xd = quantize_activations(x)  # (B, NB, 32), (B, NB)
    wq = w_quants if fmt == "q8_0" else unpack_q4_0(w_quants)  # int8 (N, NB, 32)
    B, NB = xd.shape
    out = np.zeros((B, w_scales.shape[0]), dtype=np.float32)  # (B, N)
    for k in range(NB):
        # int32 products: |sum| <= 32 * 127 * 127, far inside int32, so this is exact.
        sumi = xq[:, k].astype(np.int32) @ wq[:, k].astype(np.int32).T  # (B, N)
        scale = xd[:, k, None] * w_scales[None, :, k]  # (B, N) float32
        out += sumi.astype(np.float32) * scale
    return out


# --------------------------------------------------------------------------------------------
# checks that turn bad input into an error that says what came


def _check_fmt(fmt):
    if fmt not in BLOCK_DTYPES:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def _check_shape(shape, name="shape"):
    try:
        N, K = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two ints (N, K), got {shape!r}") from None
    if N < 1 or K < 1:
        raise ValueError(f"{name} must be positive (N, K), got {(N, K)}")
    if K % BLOCK:
        raise ValueError(f"{name}: K = {K} is not a multiple of {BLOCK}; ggml's Q8_0/Q4_0 blocks cover "
                         f"{BLOCK} weights of a row, so K must be a multiple of {BLOCK}")
    return N, K


def _check_weights(w):
    w = check_weight_matrix(w, "they cannot be quantized")
    _check_shape(w.shape, "w.shape")
    return w


def _check_scales(scales, fmt, where):
    bad = ~np.isfinite(scales)
    if bad.any():
        row, block = np.argwhere(bad)[0]
        limit = FP16_MAX * (127 if fmt == "q8_0" else 8)
        raise ValueError(f"{where}: the float16 scale of block {block} of row {row} is {scales[row, block]}; "
                         f"{fmt} can only hold weights with |w| below about {limit:.4g}")


# --------------------------------------------------------------------------------------------
# QTensor: what the model holds in place of a dense weight


class QTensor:
    """A (N, K) weight matrix in ggml's Q8_0 or Q4_0 blocks.

    Stored as two arrays rather than interleaved blocks, so the kernels read them directly:
    `scales` float16 (N, NB) and `quants`, int8 (N, NB, 32) for q8_0 or the packed nibble bytes
    uint8 (N, NB, 16) for q4_0. `to_bytes()` interleaves them into ggml's blocks.
    """

    def __init__(self, fmt, shape, scales, quants):
        _check_fmt(fmt)
        self.fmt = fmt
        self.shape = _check_shape(shape)
        self.scales = scales  # float16 (N, NB)
        self.quants = quants  # int8 (N, NB, 32) | uint8 (N, NB, 16)
        # The kernels want float32 scales; float16 -> float32 is exact, so this is the same number.
        self._scales_f32 = scales.astype(np.float32)  # (N, NB)

    # --- sizes ---

    @property
    def bits_per_weight(self) -> float:
        return BLOCK_DTYPES[self.fmt].itemsize * 8 / BLOCK  # 8.5 for q8_0, 4.5 for q4_0

    @property
    def nbytes(self) -> int:
        """Bytes of the ggml blocks (what a GGUF file stores for this tensor)."""
        N, K = self.shape
        return N * (K // BLOCK) * BLOCK_DTYPES[self.fmt].itemsize

    def __repr__(self):
        return f"QTensor({self.fmt}, shape={self.shape}, {self.nbytes} bytes)"

    # --- bytes in, bytes out ---

    def to_bytes(self):
        """uint8 (nbytes,): ggml's blocks, row after row, exactly as a GGUF file stores them."""
        blocks = np.empty(self.scales.shape, dtype=BLOCK_DTYPES[self.fmt])  # (N, NB) structs
        blocks["d"] = self.scales
        blocks["qs"] = self.quants
        return blocks.reshape(-1).view(np.uint8)

    @classmethod
    def from_bytes(cls, b, fmt, shape):
        """The inverse of to_bytes: b (bytes or uint8 array) holding ggml blocks of a (N, K) matrix."""
        _check_fmt(fmt)
        N, K = _check_shape(shape)
        raw = np.frombuffer(b, dtype=np.uint8) if not isinstance(b, np.ndarray) else b.reshape(-1)
        if raw.dtype != np.uint8:
            raise TypeError(f"b must be bytes or a uint8 array, got dtype {raw.dtype}")
        block = BLOCK_DTYPES[fmt]
        expected = N * (K // BLOCK) * block.itemsize
        if raw.size != expected:
            raise ValueError(f"b has {raw.size} bytes but a {fmt} matrix of shape {(N, K)} takes {expected} "
                             f"({N} rows x {K // BLOCK} blocks x {block.itemsize} bytes)")
        blocks = np.ascontiguousarray(raw).view(block).reshape(N, K // BLOCK)  # (N, NB) structs
        scales = blocks["d"].astype(np.float16)  # copies out of the struct layout
        _check_scales(scales, fmt, "b")
        return cls(fmt, (N, K), scales, np.ascontiguousarray(blocks["qs"]))

    # --- arithmetic ---

    def dequantize(self):
        """float32 (N, K): every weight as q * d, the values the blocks stand for."""
        return dequantize_blocks(self.fmt, self.scales, self.quants)

    def matmul(self, x):
        """x: (K,) or (..., K) -> float32 (N,) or (..., N), approximately x @ dequantize().T.

        x is rounded to Q8_0 blocks first (see the module docstring). float16/float64 x is
        converted to float32; the result is always float32.
        """
        N, K = self.shape
        x2, lead = check_matmul_input(x, K, "they cannot be quantized to Q8_0 blocks")  # (B, K) float32
        if use_reference():
            out = quantized_matmul_reference(self.fmt, self._scales_f32, self.quants, x2)
        else:
            from . import kernels  # imports Numba only when a fast path is first needed

            out = kernels.quantized_matmul(self.fmt, self._scales_f32, self.quants, x2)
        return out.reshape(*lead, N)


def quantize(w, fmt="q8_0"):
    """w: float (N, K), K a multiple of 32 -> QTensor in ggml's `fmt` ("q8_0" or "q4_0")."""
    _check_fmt(fmt)
    w = _check_weights(w)
    scales, quants = quantize_q8_0(w) if fmt == "q8_0" else quantize_q4_0(w)
    _check_scales(scales, fmt, "w")
    return QTensor(fmt, w.shape, scales, quants)
