"""Pruning and sparse weights: masks (magnitude, global, Wanda, N:M, structured) and CSR kernels.

Lesson: lessons/05-pruning.py

    from tinyinfer.sparse import CSRMatrix
    m = CSRMatrix.from_dense(w)       # w: float32 (N, K); m.indptr, m.indices, m.data as SciPy builds them
    y = m.matmul(x)                   # x: (K,) or (..., K) -> (N,) or (..., N)
    w = m.to_dense()

    from tinyinfer.sparse import prune, sparsify_model
    masks = prune.magnitude_masks(prune.linear_weights(model), 0.5)    # name -> 0/1 float32
    sparse = sparsify_model(model, masks, min_sparsity=0.5)            # CSR where it pays
    smaller = prune.prune_heads(model, 0.5)                            # LLaMA: fewer heads, same head_dim
    tinyinfer.save(sparse, "out/")                                     # CSR as indptr / indices / data

prune.py makes masks (and smaller dense models by structured pruning), csr.py holds the format and
its NumPy product (the reference), kernels.py the Numba fast paths, model.py the model swap.
TINYINFER_REFERENCE=1 in the environment makes CSRMatrix.matmul use the NumPy reference.
"""
from . import prune
from .csr import CSRMatrix
from .model import sparsify_model

__all__ = ["CSRMatrix", "prune", "sparsify_model"]
