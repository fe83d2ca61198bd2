"""Sparse models: masks applied, and each sparse-enough linear weight becomes a CSRMatrix.

Lesson: lessons/05-pruning.py

The model code calls `matmul(w, x)` for every linear layer (tinyinfer/model.py), so a sparse model
is the same Model with CSRMatrix objects in place of the (N, K) weight arrays, as a quantized
model holds QTensors (tinyinfer/quant/model.py). CSRMatrix is always (N, K); GPT-2's Conv1D
weights, stored (K, N), are transposed on the way in.

Only the block linear layers are converted: the embedding is a lookup, and the (often tied) head
stays dense. A layer goes to CSR only if at least `min_sparsity` of its weights are zero: CSR
costs 8 bytes a nonzero, and its product beats dense float32 only well below 50% density.
DEFAULT_MIN_SPARSITY comes from tinyinfer/bench/sparse.py (4096 x 4096, busy 2-core EPYC, serial
kernels vs single-threaded OpenBLAS): decode (x: (K,)) broke even between 20% and 15% density
(0.88x at 20%, 1.26x at 15%, 1.7x at 10%, 3.5x at 5%); a batch of 16 between 30% and 25% (0.98x,
1.09x). Small matrices (the tiny test models) are dominated by call overhead instead.
"""
from __future__ import annotations

import numpy as np

from ..model import Model, linear_weight
from .csr import CSRMatrix
from .prune import apply_masks, linear_weight_names

DEFAULT_MIN_SPARSITY = 0.8  # at density >= ~0.2 dense BLAS decoded faster than CSR (see above)


def sparsify_model(model: Model, masks: dict | None = None, min_sparsity: float = DEFAULT_MIN_SPARSITY) -> Model:
    """A new Model: masks (param layout, or None) applied, then sparse linear weights as CSRMatrix.

    Its logits equal those of `prune.apply_masks(model, masks)` up to float32 summation order.
    """
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity!r}")
    masked = apply_masks(model, masks) if masks else model
    config = masked.config
    params = dict(masked.params)
    for name in linear_weight_names(config):
        if isinstance(params[name], CSRMatrix):
            raise ValueError(f"{name} is already a CSRMatrix; sparsify the dense model instead")
        if not isinstance(params[name], np.ndarray):
            raise ValueError(f"{name} is a {type(params[name]).__name__}, not a dense array; "
                             f"sparsify before quantizing")
        w_nk = linear_weight(params, config, name[: -len(".weight")])  # (N, K), GPT-2's (K, N) transposed
        sparsity = 1.0 - np.count_nonzero(w_nk) / w_nk.size
        if sparsity >= min_sparsity:
            params[name] = CSRMatrix.from_dense(w_nk)
    return Model(config, params, masked.tokenizer)


def sparsity_report(model: Model) -> dict:
    """name -> (fraction of zeros, "csr" | "dense") for every block linear layer."""
    report = {}
    for name in linear_weight_names(model.config):
        w = model.params[name]
        if isinstance(w, CSRMatrix):
            report[name] = (1.0 - w.density, "csr")
        else:
            report[name] = (1.0 - np.count_nonzero(w) / w.size, "dense")
    return report
