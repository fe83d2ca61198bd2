"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning that updates the weights it keeps.

Lesson: lessons/05-pruning.py

Magnitude and Wanda pruning only *choose* which weights to drop; the survivors keep their values,
so the layer's output moves by exactly the dropped weights times their inputs. SparseGPT drops
them and then corrects the survivors, so that the layer's output on calibration text moves as
little as possible:

    minimise || W X^T - W' X^T ||^2   over W' with the mask's zeros,   H = 2 X^T X / M   (K, K)

It is GPTQ's algorithm with "round this weight" replaced by "zero this weight" (same Hessian
machinery: tinyinfer/hessian.py). Columns are visited left to right. Zeroing w_j in every row
makes an error e = w_j - 0; the Optimal Brain Surgeon update that best compensates it with the
columns not yet visited is, with U upper triangular and U^T U = H^-1 (damped),

    err = (w_j - w'_j) / U[j, j];   W[:, j:] -= outer(err, U[j, j:])

which leaves column j at w'_j (0 where pruned, unchanged where kept) and moves the later columns.
Earlier columns are never touched again, so one factorisation serves the whole matrix.

Which weights to drop. Dropping w costs about w^2 / [H^-1]_jj in output error (OBS's saliency),
and at column j, after the earlier columns are fixed, [H^-1]_jj of what remains is U[j, j]^2. So:

- unstructured: every block of `block_size` columns (128 in the paper) chooses its mask when the
  sweep reaches it, from the weights *as the earlier blocks' updates left them*: the lowest
  w^2 / U[j, j]^2 over the block's N x block_size entries. The paper thresholds at a quantile; we
  drop an exact count per block, chosen so the whole matrix has exactly round(sparsity * N * K)
  zeros (rows may differ; the block is ranked as a whole, as in the paper).
- n:m (e.g. 2:4): at the first column of each group of m, the m - n lowest w^2 / U[j, j]^2 of
  each row within the group are dropped, again from the updated weights.

With H = identity nothing flows between columns (U is diagonal) and the saliency is |w|: the
result is magnitude pruning (per block; with block_size >= K exactly prune.magnitude_masks), which
the tests check.

Damping and dead inputs are GPTQ's (tinyinfer/hessian.py): H += 0.01 * mean(diag H) * I, and an
input feature that never fires on the calibration text (diag H = 0) is treated as if it had unit
size, so its weights are ranked by |w| and kept or dropped like the rest (the reference code zeroes
them all; held-out text may use the feature).

Shapes: N output features, K input features, M calibration tokens.
"""
from __future__ import annotations

import numpy as np

from ..hessian import DAMP, calibrate_layers, inverse_cholesky_upper, layer_objective
from ..model import Model
from .prune import count_to_prune, linear_weight_names

BLOCK_SIZE = 128  # the paper's lazy-update block; also the width over which an unstructured mask is chosen


def _check_inputs(w, H, n, m, block_size):
    w = np.asarray(w)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"w must be a float (N, K) matrix, got {w.dtype} of shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("w has NaN/Inf values")
    N, K = w.shape
    H = np.asarray(H)
    if H.shape != (K, K):
        raise ValueError(f"H must be (K, K) = {(K, K)} for w of shape {(N, K)}, got {H.shape}")
    if not np.isfinite(H).all():
        raise ValueError("H has NaN/Inf values; check the calibration activations")
    if not (isinstance(block_size, (int, np.integer)) and block_size >= 1):
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if n or m:
        if not (isinstance(n, int) and isinstance(m, int) and 0 <= n <= m and m >= 1):
            raise ValueError(f"n:m must be ints with 0 <= n <= m, m >= 1, got {n}:{m}")
        if K % m:
            raise ValueError(f"w has K = {K} input features, not a multiple of m = {m}")
        if block_size % m:
            raise ValueError(f"block_size = {block_size} must be a multiple of m = {m} (groups may not straddle blocks)")
    return w, H


def sparsegpt_prune_matrix(w, H, sparsity=0.5, n=0, m=0, block_size=BLOCK_SIZE, damp=DAMP):
    """w: float (N, K); H: (K, K) = 2 X^T X / M of the layer's inputs -> (pruned float32 (N, K), mask float32 (N, K)).

    Unstructured with n = m = 0: exactly round(sparsity * N * K) zeros. n:m (n kept of every m
    consecutive weights along K, e.g. n=2, m=4): `sparsity` is ignored. See the module docstring.
    """
    w, H = _check_inputs(w, H, n, m, block_size)
    N, K = w.shape
    structured = m > 0
    total = 0 if structured else count_to_prune(float(sparsity), N * K, "sparsity")
    U = inverse_cholesky_upper(H, damp)  # (K, K) upper, U^T U = (H + damping)^-1
    work = w.astype(np.float64)  # (N, K): the weights, updated as errors flow in
    mask = np.ones((N, K), dtype=bool)
    for lo in range(0, K, block_size):
        hi = min(lo + block_size, K)
        block, U_block = work[:, lo:hi], U[lo:hi, lo:hi]  # views: block is updated in place
        d2 = np.diag(U_block) ** 2  # (hi - lo,) [H^-1]_jj of what is left at column j
        if not structured:
            # this block's share of the exact total: the counts telescope to `total`
            k = round(total * hi / K) - round(total * lo / K)
            saliency = (block ** 2 / d2[None, :]).reshape(-1)  # (N * width,) row-major
            drop = np.argsort(saliency, kind="stable")[:k]  # ties: the earlier entry goes first
            keep = np.ones(saliency.size, dtype=bool)
            keep[drop] = False
            mask[:, lo:hi] = keep.reshape(N, hi - lo)
        errors = np.zeros((N, hi - lo))  # (N, width): the scaled errors, for the lazy update
        for j in range(hi - lo):
            if structured and j % m == 0:  # choose this group's n:m pattern from the updated weights
                saliency = block[:, j:j + m] ** 2 / d2[None, j:j + m]  # (N, m)
                drop = np.argsort(saliency, axis=1, kind="stable")[:, : m - n]  # (N, m - n)
                group = np.ones((N, m), dtype=bool)
                np.put_along_axis(group, drop, False, axis=1)
                mask[:, lo + j:lo + j + m] = group
            column = block[:, j]  # (N,)
            target = np.where(mask[:, lo + j], column, 0.0)  # the column as it will stay
            err = (column - target) / U_block[j, j]  # (N,)
            block[:, j:] -= np.outer(err, U_block[j, j:])  # column j becomes `target`; later ones compensate
            errors[:, j] = err
        work[:, hi:] -= errors @ U[lo:hi, hi:]  # (N, width) @ (width, K - hi): the later blocks at once
    pruned = np.where(mask, work, 0.0).astype(np.float32)  # exact zeros (the update leaves ~1e-17 residue)
    return pruned, mask.astype(np.float32)


def reconstruction_error(w, w_new, x):
    """|| W X^T - W' X^T ||_F / || W X^T ||_F for inputs x (M, K): the relative output error of a layer."""
    x = np.asarray(x, dtype=np.float64)
    ref = x @ np.asarray(w, dtype=np.float64).T  # (M, N)
    return float(np.linalg.norm(ref - x @ np.asarray(w_new, dtype=np.float64).T) / np.linalg.norm(ref))


# --------------------------------------------------------------------------------------------
# a whole model


def sparsegpt_prune_model(model: Model, calib_ids, sparsity=0.5, n=0, m=0, block_size=BLOCK_SIZE, damp=DAMP,
                          within_block="group", batch=8, progress=True, report=None):
    """SparseGPT on every block linear layer, sequentially calibrated on calib_ids (W, T).

    Returns (pruned Model, masks name -> (N, K) float32: prune.to_param_layout turns them into the
    params' layout for fine-tuning). Embedding, head and norms stay dense. report: a dict that, when
    given, receives per layer {"objective": ||(W - W') X^T||^2 / M on the layer's own calibration
    inputs, "objective_dense": ||W X^T||^2 / M} so the relative error of each layer can be plotted.
    """
    masks = {}

    def update(name, w, H):
        pruned, mask = sparsegpt_prune_matrix(w, H, sparsity, n, m, block_size, damp)
        masks[name + ".weight"] = mask
        if report is not None:
            report[name + ".weight"] = {"objective": layer_objective(w, pruned, H),
                                        "objective_dense": layer_objective(w, np.zeros_like(w), H)}
        return pruned

    label = f"SparseGPT {n}:{m}" if m else f"SparseGPT {sparsity:.0%}"
    params = calibrate_layers(model, calib_ids, update, within_block=within_block, batch=batch,
                              progress=progress, desc=label)
    params = {k: v.astype(np.asarray(model.params[k]).dtype, copy=False) for k, v in params.items()}
    names = linear_weight_names(model.config)
    return Model(model.config, params, model.tokenizer), {name: masks[name] for name in names}
