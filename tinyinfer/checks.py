"""Input checks shared by the weight types that multiply (quant.QTensor, sparse.CSRMatrix).

Bad input gets a clear error naming the argument, what was expected and what came, before a
Numba kernel sees it (a kernel given the wrong dtype or shape crashes or returns garbage).
"""
from __future__ import annotations

import numpy as np


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
