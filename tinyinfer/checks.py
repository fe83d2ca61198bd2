"""Input checks shared by the weight types that multiply (quant.QTensor, sparse.CSRMatrix):
the weight matrix they are built from, and the x they multiply.

Bad input gets a clear error naming the argument, what was expected and what came, before a
Numba kernel sees it (a kernel given the wrong dtype or shape crashes or returns garbage).
"""
from __future__ import annotations

import numpy as np


def check_weight_matrix(w, nan_reason: str):
    """w: float (N, K) -> float32 (N, K) contiguous, or a clear error (dtype, shape, NaN/Inf).

    float16 / float64 go through float32, as ggml does; nan_reason ends the NaN/Inf error."""
    w = np.asarray(w)
    if w.dtype == object or not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"w must be a float array (float32; float16/float64 are converted), got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (N, K), got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    bad = ~np.isfinite(w)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"w has {int(bad.sum())} NaN/Inf values, the first at [{row}, {col}] ({w[row, col]}); "
                         f"{nan_reason}")
    return w


def check_matmul_input(x, K: int, nan_reason: str = ""):
    """x: float (K,) or (..., K) -> (float32 (B, K) contiguous, the leading shape (...)).

    nan_reason is appended to the NaN/Inf error (why this weight type cannot take them)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype == object or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a float array (float32; float16/float64 are converted), got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[-1] != K:
        raise ValueError(f"x must have shape (K,) or (..., K) with K = {K}, got shape {x.shape}")
    x2 = np.ascontiguousarray(x.reshape(-1, K), dtype=np.float32)  # (B, K)
    if not np.isfinite(x2).all():
        bad = ~np.isfinite(x2)
        raise ValueError(f"x has {int(bad.sum())} NaN/Inf values (first at flat row {np.argwhere(bad)[0][0]})"
                         + (f"; {nan_reason}" if nan_reason else ""))
    return x2, x.shape[:-1]
