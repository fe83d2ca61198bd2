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
from numba import njit, prange

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


@njit(cache=True, inline="always")
def _swiglu_row(gate_up, r, out):
    F = gate_up.shape[1] // 2
    for f in range(F):
        g = np.float64(gate_up[r, f])
        out[r, f] = g / (1.0 + np.exp(-g)) * gate_up[r, F + f]  # in float64, rounded once


@njit(cache=True)
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
