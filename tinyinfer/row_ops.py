"""The token-wise steps of a LLaMA block as Numba row kernels, for InferenceModel's decode.

Lesson: lessons/11-real-model.py (where the time of one token goes)

tinyinfer/ops.py computes RMSNorm, RoPE and SwiGLU with a handful of NumPy calls each. That is the
clearest way to write them, and for a prompt of hundreds of tokens it is fast. For one decoded
token it is not: every NumPy call costs a few microseconds whatever the array's size, and a token
of SmolLM2-135M makes ~60 norms, 60 rotations and 30 gates, about 400 small NumPy calls, ~6 ms of a
~25 ms token on a 2-core EPYC. Each function here does one of those steps in a single compiled
loop over the rows, with the same formula (`ops.*` is the NumPy twin; tests/test_row_ops.py checks
they agree). Every row is computed alone, in a fixed order, so a row's result does not depend on
the other rows in the batch (the engine's batch invariance, tinyinfer/invariant_attention.py).

    rmsnorm_rows(x, w, eps)          x (R, C) -> (R, C)        ops.rmsnorm_forward
    rope_heads(qkv, cos, sin, T, heads, D)   in place          ops.rope_forward on q and k heads
    swiglu_rows(gate_up)             (R, 2F) -> (R, F)         ops.swiglu_forward(gate, up)

The sum of squares in RMSNorm is accumulated in float64 (NumPy's float32 mean sums pairwise; both
are within float32 rounding of the exact value, not bit-identical to each other).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .quant.half import float_from_bits

__all__ = ["rmsnorm_rows", "rope_heads", "swiglu_rows"]


@njit(cache=True)
def _rmsnorm(x, w, eps, rstd, out):
    R, C = x.shape
    for r in range(R):
        ss = 0.0
        for c in range(C):
            v = np.float64(x[r, c])
            ss += v * v
        rstd[r] = 1.0 / np.sqrt(ss / C + eps)  # rounded to x's dtype here, as ops' rstd is
        for c in range(C):
            out[r, c] = x[r, c] * rstd[r] * w[c]  # (x * rstd) * w in x's dtype, as ops computes it


def rmsnorm_rows(x, w, eps):
    """RMSNorm of every row: x (R, C) float, w (C,) -> (R, C), as ops.rmsnorm_forward(x, w, eps)[0]."""
    out = np.empty_like(x)
    _rmsnorm(x, w.astype(x.dtype, copy=False), float(eps), np.empty(x.shape[0], x.dtype), out)
    return out


@njit(cache=True)
def _rope(qkv, cos, sin, T, heads, D):
    R = qkv.shape[0]
    half = D // 2
    for r in range(R):
        t = r % T  # rows are (b, t) in order: row r is position t of sequence r // T
        for h in range(heads):
            base = h * D
            for i in range(half):
                a = qkv[r, base + i]
                b = qkv[r, base + half + i]
                # rotate_half(x) = (-x2, x1): out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin
                qkv[r, base + i] = a * cos[t, i] - b * sin[t, i]
                qkv[r, base + half + i] = b * cos[t, half + i] + a * sin[t, half + i]


def rope_heads(qkv, cos, sin, T, heads, D):
    """Rotate, in place, the first `heads` heads of D columns of every row of qkv (R, >= heads*D),
    row r at position index r % T of cos, sin (T, D): ops.rope_forward on each head."""
    _rope(qkv, cos, sin, T, heads, D)


# exp in float32 that LLVM can vectorize (Numba's np.exp is a libm call per element: SwiGLU of
# SmolLM2's 1536 gates took ~7 us a row, ~5 ms of a 32-row decode step; measured on a 2-core Zen 5).
# exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in two parts (Cody and Waite), exp(r) for
# |r| <= ln 2 / 2 by its Taylor polynomial to degree 7 (truncation < 5e-9 relative), 2^n built in
# the exponent bits. Past 88 the result is inf (float32 overflows at 88.72), below -87 it is
# exp(-87) (2^n stays a normal number; what SwiGLU does with it is ~1e-38 from the exact value),
# NaN passes through.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO, the first exact in 9 bits
_LN2_LO = np.float32(-2.1219444005469057e-4)


@njit(cache=True)
def exp32(x):
    """exp(x) for float32 x in straight-line float32 code (vectorizable): relative error at most
    3.0e-7 (4.5 ulp) over 20M random points in [-87, 88] (tests/test_row_ops.py holds it to 4e-7)."""
    over = x > np.float32(88.0)  # inf from here on (float32 overflows at 88.72)
    x = np.float32(88.0) if over else x  # comparisons are false for NaN: it stays NaN
    x = np.float32(-87.0) if x < np.float32(-87.0) else x
    # n = floor(x / ln 2 + 0.5) by truncating a positive number (x >= -87 keeps it positive): no libm
    # floor (it would not vectorize), and no (t + 1.5 * 2^23) - 1.5 * 2^23 rounding trick, which a
    # caller compiled with fastmath may fold away (Numba compiles callees with the caller's flags)
    ni = np.int32(x * _LOG2E + np.float32(128.5)) - np.int32(128)
    n = np.float32(ni)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = np.float32(1.0 / 5040)
    p = p * r + np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    v = p * float_from_bits(np.int32((ni + np.int32(127)) << np.int32(23)))
    return np.float32(np.inf) if over else v


def exp_of(x):
    """exp(x): exp32 for float32 x, np.exp otherwise (compiled code only: the overload below)."""
    raise TypeError("exp_of is only called from compiled code")


@overload(exp_of, inline="always")
def _exp_of_for(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: np.exp(x)


def _silu_times(g, u):
    """silu(g) * u = g / (1 + exp(-g)) * u (compiled code only: the overload below)."""
    raise TypeError("_silu_times is only called from compiled code")


@overload(_silu_times, inline="always")
def _silu_times_for(g, u):
    if g == types.float32:  # float32 throughout, exp32: vectorized
        return lambda g, u: g / (np.float32(1.0) + exp32(-g)) * u
    return lambda g, u: g / (1.0 + np.exp(-g)) * u  # float64 (and others) as NumPy computes it


@njit(cache=True, inline="always")
def _swiglu_row(gate_up, r, out):
    F = gate_up.shape[1] // 2
    gate, up, o = gate_up[r, :F], gate_up[r, F:], out[r]  # 1-D views: a loop LLVM vectorizes
    for f in range(F):
        o[f] = _silu_times(gate[f], up[f])


@njit(cache=True, error_model="numpy")  # a float division by zero gives inf, no check that stops vectorizing
def _swiglu(gate_up, out):
    for r in range(gate_up.shape[0]):
        _swiglu_row(gate_up, r, out)


@njit(cache=True, parallel=True)
def _swiglu_parallel(gate_up, out):
    """_swiglu with the rows split over the threads (each row alone: the same bits)."""
    for r in prange(gate_up.shape[0]):
        _swiglu_row(gate_up, r, out)


def swiglu_rows(gate_up):
    """silu(gate) * up for gate_up (R, 2F) holding gate then up: -> (R, F), as ops.swiglu_forward."""
    R, F2 = gate_up.shape
    out = np.empty((R, F2 // 2), gate_up.dtype)
    _swiglu(gate_up, out)
    return out
