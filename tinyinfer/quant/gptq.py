"""GPTQ (Frantar et al. 2022) writing ggml blocks: better 4-bit weights for the same bits per weight.

Lesson: lessons/04-quantization.py (section 6; round-to-nearest and the imatrix come first)

Round-to-nearest (RTN) rounds every weight on its own. GPTQ rounds the columns of a weight matrix
W: (N, K) one after another and, after each, nudges the columns not yet rounded so that the
layer's *output* on real inputs moves as little as possible. The quantity it minimises is

    || W X^T - What X^T ||^2      X: (M, K) the layer's inputs, M tokens of calibration text

which depends on the inputs only through H = 2 X^T X / M (K, K). Rounding column j makes an error
e = w_j - q_j in every row; the best correction of the remaining columns (Optimal Brain Surgeon)
is  W[:, rest] -= e / [H^-1]_jj * [H^-1]_{j, rest}.  Writing H^-1 = U^T U with U upper triangular
(the "Cholesky of the inverse"), row j of U holds exactly the numbers that step needs once the
earlier columns are gone, so one factorisation serves all K steps:

    err = (w_j - q_j) / U[j, j];    W[:, j+1:] -= outer(err, U[j, j+1:])

How it meets ggml's blocks (the "groups" of the GPTQ paper are ggml's blocks of 32 along K): a
block's scale (and minimum) is chosen once, with the format's own rule (blocks.py: block_scales),
when GPTQ reaches the first of the block's columns, on the block's weights *as the earlier
errors have updated them*; then each of its columns is rounded against that grid
(blocks.py: round_to_grid, ggml's rounding clamped to the format's range, since the updates may
push a weight past it) and its error spread over the rest. The errors of 32 processed columns reach
the later columns in one matrix product ("lazy batch" updates in the paper). Any format works:
q4_0, q4_1, q5_0, q5_1, iq4_nl, q8_0.

With H = identity nothing spreads (U is the identity), and the result is byte for byte the
format's round-to-nearest (for every format without importance weights).

The three refinements of the paper, and ours:
- act_order: columns in descending diag(H) order, the ones with the largest inputs first, while
  the most columns remain to absorb their errors. ggml's blocks must still hold 32 consecutive
  columns, so a block's scale is chosen when act-order first touches one of its columns (the
  paper's "static groups" choose all scales before any update; ours see the updates so far).
- damping: H += damp * mean(diag H) * I keeps H invertible and the corrections modest. The paper
  uses damp = 0.01; `damp` may be a list of candidates, and then each layer takes the one whose
  GPTQ, fitted on half of the calibration windows, leaves the smallest output error on the other
  half (choose_damp). The chosen values are reported.
- importance-weighted scales (imatrix): the block scale search weights each column's error by
  the mean square of its input, diag(H) / 2 = llama.cpp's imatrix of the inputs GPTQ sees
  (blocks.py: "importance-weighted scale searches").
- an input feature that never fires (diag H = 0) gets H[j, j] = 1: its weight is rounded as RTN
  would and no error flows through it (the paper zeroes such weights instead; we keep them, since
  held-out text may use the feature).
- sequential calibration: layers are quantized in the order the data meets them, and each one's
  inputs are collected from the model whose earlier layers are already quantized (the paper's
  "true sequential" variant; the walk is tinyinfer/hessian.py's, shared with SparseGPT), so later
  layers learn to correct the earlier layers' error. While collecting, quantized weights are
  used as their dequantized floats; the real QTensor.matmul also rounds activations to Q8_0.

Per layer (gptq_quantize_model's report): the relative output error ||(W - What) X^T|| / ||W X^T||
of the format's round-to-nearest and of GPTQ on the calibration inputs (the paper's per-layer
view), and predicted_error_ratio: how much GPTQ *can* gain, read off H alone. It is small only when
a layer's inputs are redundant (each predictable from the others); where they are not, no
ordering or damping helps much.

The last section adds AWQ's activation-aware scaling (awq_scale_model): a rescaled float model
that computes the same function and quantizes better; feed it to quantize_model or to GPTQ.

Shapes: N output features, K input features, M calibration tokens, W windows, T tokens a window,
NB = K // 32 blocks a row.
"""
from __future__ import annotations

import numpy as np

from ..model import Model, block_forward, embedding_name, layer_names, linear_weight
from ..ops import embedding_forward
from . import blocks
from .blocks import BLOCK, FORMATS
from .formats import QTensor, _check_scales, _check_weights, quantize

DAMP = 0.01  # lambda = DAMP * mean(diag H), the paper's default percdamp
DAMP_CANDIDATES = (0.001, 0.01, 0.1)  # a small sweep, chosen per layer on held-out calibration
LAZY = 32  # columns whose errors are collected before they reach the rest in one product


# --------------------------------------------------------------------------------------------
# one matrix


def hessian(x):
    """x: (..., K) inputs of a linear layer -> H = 2 X^T X / M, float64 (K, K).

    Dividing by the token count M does not change GPTQ's result (the damping is relative to
    diag H), but keeps the numbers comparable across calibration sizes.
    """
    x2 = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])  # (M, K)
    return 2.0 * (x2.T @ x2) / max(1, x2.shape[0])


def inverse_cholesky_upper(H, damp=DAMP):
    """U upper triangular (K, K) with U^T U = (H + damp * mean(diag H) * I)^-1, float64.

    Dead inputs (diag H = 0) get H[j, j] = 1 first, so the matrix is positive definite.
    """
    H = np.array(H, dtype=np.float64)  # a copy: the caller's H stays as it was
    K = H.shape[0]
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    H[np.arange(K), np.arange(K)] += damp * np.mean(np.diag(H))
    L = np.linalg.cholesky(H)  # H = L L^T
    L_inv = np.linalg.solve(L, np.eye(K))  # (K, K) lower: H^-1 = L_inv^T L_inv
    H_inv = L_inv.T @ L_inv
    return np.linalg.cholesky(H_inv).T  # upper U: H^-1 = U^T U


def _check_matrix_args(w, H, fmt):
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    w = _check_weights(w)  # float32 (N, K), K % 32 == 0, finite
    N, K = w.shape
    H = np.asarray(H)
    if H.shape != (K, K):
        raise ValueError(f"H must be (K, K) = {(K, K)} for w of shape {(N, K)}, got {H.shape}")
    if not np.isfinite(H).all():
        raise ValueError("H has NaN/Inf values; check the calibration activations")
    return w, H


class _BlockGrids:
    """The grid (float32 d and m, their float16 values) of each block of 32 columns, chosen the
    first time GPTQ reaches one of the block's columns."""

    def __init__(self, fmt, N, K, importance, row_sigma2):
        NB = K // BLOCK
        self.fmt, self.importance, self.row_sigma2 = fmt, importance, row_sigma2
        self.d = np.zeros((N, NB), np.float32)
        self.m = np.zeros((N, NB), np.float32) if fmt in blocks.WITH_MIN else None
        self.d16 = np.zeros((N, NB), np.float16)
        self.m16 = np.zeros((N, NB), np.float16) if fmt in blocks.WITH_MIN else None
        self.chosen = np.zeros(NB, bool)

    def choose(self, b, current):
        """current: float32 (N, 32), block b's weights as the updates left them."""
        imp = None if self.importance is None else self.importance[b * BLOCK:(b + 1) * BLOCK]
        d, m = blocks.block_scales(self.fmt, current, imp, self.row_sigma2)
        self.d[:, b], self.d16[:, b] = d, blocks.to_float16(d)
        _check_scales(self.d16[:, b:b + 1], self.fmt, "w (after GPTQ updates)")
        if m is not None:
            self.m[:, b], self.m16[:, b] = m, blocks.to_float16(m)
            _check_scales(self.m16[:, b:b + 1], self.fmt, "w (after GPTQ updates)", what="minimum")
        self.chosen[b] = True

    def round(self, column, b):
        """column: float64 (N,) of block b -> (codes (N,), the values they stand for, float64 (N,))."""
        m = None if self.m is None else self.m[:, b]
        codes = blocks.round_to_grid(self.fmt, column.astype(np.float32)[:, None], self.d[:, b], m)[:, 0]
        value = blocks.code_levels(self.fmt, codes).astype(np.float64) * self.d16[:, b].astype(np.float64)
        if self.m16 is not None:
            value += self.m16[:, b].astype(np.float64)
        return codes, value


def refit_scales(w, H, fmt, codes, damp=DAMP, rows=32):
    """The scales (and minima) that minimise ||(W - What) X^T||^2 for fixed codes -> float16 d, m (N, NB).

    With the integer levels fixed, each row's output error is a quadratic function of its NB
    scales (and NB minima): What_n = sum_b d_b L_b + m_b 1_b, with L_b the row's levels on block b's
    columns. Least squares, row by row: theta = (A^T H A)^-1 A^T H w, A: (K, P) those P vectors as
    columns. H is damped as GPTQ damps it, which also keeps the solve defined for a block of zeros.
    codes: (N, K) as round_to_grid gives them.
    """
    N, K = w.shape
    NB = K // BLOCK
    Hd = np.array(H, dtype=np.float64)
    dead = np.diag(Hd) <= 0
    Hd[dead, dead] = 1.0
    Hd[np.arange(K), np.arange(K)] += damp * np.mean(np.diag(Hd))
    levels = blocks.code_levels(fmt, codes).astype(np.float64)  # (N, K)
    owner = np.arange(K) // BLOCK  # (K,) the block of each column
    with_min = fmt in blocks.WITH_MIN
    P = 2 * NB if with_min else NB
    d, m = np.zeros((N, NB)), np.zeros((N, NB))
    for r0 in range(0, N, rows):
        lv = levels[r0:r0 + rows]  # (n, K)
        A = np.zeros((len(lv), K, P))  # (n, K, P): column b is the levels on block b, zero elsewhere
        A[:, np.arange(K), owner] = lv
        if with_min:
            A[:, np.arange(K), NB + owner] = 1.0  # the minimum of block b adds 1 * m_b to its columns
        AtH = A.transpose(0, 2, 1) @ Hd  # (n, P, K)
        lhs = AtH @ A  # (n, P, P)
        rhs = AtH @ w[r0:r0 + rows, :, None].astype(np.float64)  # (n, P, 1)
        lhs[:, np.arange(P), np.arange(P)] += 1e-12 * np.trace(Hd) / K  # a block of zero levels: d = 0
        theta = np.linalg.solve(lhs, rhs)[..., 0]  # (n, P)
        d[r0:r0 + rows] = theta[:, :NB]
        if with_min:
            m[r0:r0 + rows] = theta[:, NB:]
    return blocks.to_float16(d), (blocks.to_float16(m) if with_min else None)


def gptq_quantize_matrix(w, H, fmt="q4_0", damp=DAMP, act_order=False, importance=None, refit=False):
    """w: float (N, K), K a multiple of 32; H: (K, K) = 2 X^T X / M of the layer's inputs -> QTensor.

    Minimises ||(W - What) X^T||^2 column by column (see the module docstring), What in ggml's
    `fmt` blocks. act_order: columns in descending diag(H) order. importance: (K,) weights for the
    blocks' scale search (an imatrix, e.g. diag(H) / 2), or None for the format's plain rule.
    refit: afterwards, replace every block's scale (and minimum) by the least-squares ones for the
    codes GPTQ chose (refit_scales); the scales were chosen before the block's errors were known.
    """
    w, H = _check_matrix_args(w, H, fmt)
    N, K = w.shape
    if importance is not None:
        from .formats import check_importance

        importance = check_importance(importance, (N, K))
        if importance.ndim != 1:
            raise ValueError(f"importance must be one weight per column, (K,) = ({K},), got {importance.shape}")
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)  # processing order
    position = np.empty(K, np.int64)
    position[order] = np.arange(K)  # column k is processed at position[k]
    U = inverse_cholesky_upper(H[np.ix_(order, order)], damp)  # (K, K) float64, in processing order
    work = w[:, order].astype(np.float64)  # (N, K): the weights, updated as errors flow in
    row_sigma2 = blocks._in_order(w * w) / np.float32(K)  # (N,) ggml's sigma2 of each row, from the original
    grids = _BlockGrids(fmt, N, K, importance, row_sigma2)
    codes = np.zeros((N, K), np.int8 if fmt == "q8_0" else np.uint8)
    for start in range(0, K, LAZY):
        stop = min(start + LAZY, K)
        pending = np.zeros((N, stop - start))  # (N, LAZY): scaled errors not yet sent past `stop`
        for p in range(start, stop):
            col = order[p]
            b = col // BLOCK
            if not grids.chosen[b]:  # the first of block b's columns: choose its grid now
                cols = position[b * BLOCK:(b + 1) * BLOCK]  # where the block's columns sit in `work`
                current = work[:, cols].copy()  # (N, 32)
                later = cols >= stop  # these have not yet received this batch's pending errors
                current[:, later] -= pending[:, :p - start] @ U[start:p][:, cols[later]]
                grids.choose(b, current.astype(np.float32))
            codes[:, col], value = grids.round(work[:, p], b)
            err = (work[:, p] - value) / U[p, p]  # (N,)
            work[:, p + 1:stop] -= np.outer(err, U[p, p + 1:stop])  # the rest of this batch, now ...
            pending[:, p - start] = err
        work[:, stop:] -= pending @ U[start:stop, stop:]  # ... and everything after it in one product
    d16, m16 = grids.d16, grids.m16
    if refit:
        d16, m16 = refit_scales(w, H, fmt, codes, damp)
        _check_scales(d16, fmt, "w (refitted scales)")
        if m16 is not None:
            _check_scales(m16, fmt, "w (refitted minima)", what="minimum")
    parts = blocks.pack_codes(fmt, codes.reshape(N, K // BLOCK, BLOCK), d16, m16)
    return QTensor(fmt, (N, K), parts["d"], parts["qs"], parts.get("m"), parts.get("qh"))


def layer_objective(w, w_hat, H):
    """||W X^T - What X^T||^2 / M = tr((W - What) H (W - What)^T) / 2 with H = 2 X^T X / M."""
    delta = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)  # (N, K)
    return float(np.einsum("nk,kl,nl->", delta, H, delta) / 2)


def relative_output_error(w, w_hat, H):
    """||(W - What) X^T|| / ||W X^T||: how far the layer's output moves, relative to its size."""
    return float(np.sqrt(layer_objective(w, w_hat, H) / max(layer_objective(w, 0.0 * np.asarray(w), H), 1e-300)))


def predicted_error_ratio(H, damp=DAMP, act_order=False):
    """What GPTQ can gain over round-to-nearest on inputs with second moments H, before any weight is seen.

    Round-to-nearest leaves each weight an error e_j of about the same size everywhere (uniform over
    a rounding step), so its output error is  E ~ sum_j e^2 H_jj  (no cross terms on average).
    GPTQ's error at column j is what the later columns cannot absorb: e_j^2 / U_jj^2, where
    1 / (U_jj^2 H_jj) = 1 - R_j^2 is the share of input j that the not-yet-rounded inputs cannot
    predict (linear regression). So
        ||GPTQ's output error|| / ||RTN's|| ~ sqrt( sum_j 1 / U_jj^2  /  sum_j H_jj ):
    1 for uncorrelated inputs (nothing to move errors to), small when inputs are redundant.
    """
    H = np.asarray(H, dtype=np.float64)
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(len(H))
    U = inverse_cholesky_upper(H[np.ix_(order, order)], damp)
    return float(np.sqrt(np.sum(1.0 / np.diag(U) ** 2) / max(np.sum(np.diag(H)), 1e-300)))


def choose_damp(w, H_fit, H_check, fmt="q4_0", candidates=DAMP_CANDIDATES, act_order=False, importance=None,
                refit=False):
    """The damping among candidates whose GPTQ on H_fit leaves the smallest output error on H_check
    (two halves of the calibration windows) -> (damp, {damp: relative error on H_check})."""
    errors = {}
    for damp in candidates:
        q = gptq_quantize_matrix(w, H_fit, fmt, damp, act_order, importance, refit).dequantize()
        errors[float(damp)] = relative_output_error(w, q, H_check)
    return min(errors, key=errors.get), errors


# --------------------------------------------------------------------------------------------
# a whole model, layer after layer


def _groups(config):
    """Block roles in the order the data meets them; roles in one group read the same input."""
    if config.family == "gpt2":
        return [("qkv",), ("o",), ("up",), ("down",)]
    return [("q", "k", "v"), ("o",), ("gate", "up"), ("down",)]


def _stored_float(w_nk, config):
    """A dense (N, K) weight as the params dict stores it (GPT-2's Conv1D wants (K, N))."""
    return np.ascontiguousarray(w_nk.T if config.family == "gpt2" else w_nk)


def gptq_quantize_model(model: Model, calib_ids, fmt="q4_0", progress=True, damp=DAMP, batch=8,
                        sequential=True, act_order=False, imatrix=None, refit=False, report=None) -> Model:
    """A new Model whose linear weights are GPTQ QTensors in `fmt`, calibrated on calib_ids (W, T).

    calib_ids should come from the *training* split (see calibration_windows), so held-out
    evaluation stays held out. Embedding, norms and a tied head stay float, as in quantize_model.
    damp: a float, or a sequence of candidates to choose from per layer (choose_damp; the windows
    are split in two halves for it). act_order: see the module docstring. imatrix: None (the
    format's plain scale rule), True (each layer's diag(H) / 2: the imatrix of the inputs GPTQ
    sees) or a dict {weight name: (K,)} (tinyinfer/quant/imatrix.py). refit: least-squares block
    scales after GPTQ (refit_scales). sequential=False collects
    every layer's inputs from the float model instead (for comparison). report: a dict that, when
    given, receives per layer {"damp", "rtn_error", "gptq_error", "predicted_ratio"} (relative output
    errors on the calibration inputs; rtn_error is the format's round-to-nearest with the same scale
    rule; predicted_ratio what H alone says GPTQ can reach, predicted_error_ratio).
    """
    from ..hessian import block_input_hessians

    config = model.config
    ids, _ = model.check_ids(calib_ids, "calib_ids")  # (W, T) int64
    for name, value in model.params.items():
        if isinstance(value, QTensor):
            raise ValueError(f"{name} is already quantized ({value.fmt}); GPTQ needs the float model")
    candidates = None if np.ndim(damp) == 0 else [float(v) for v in damp]
    if candidates is not None and len(ids) < 2:
        raise ValueError("choosing damp per layer needs at least 2 calibration windows (two halves)")
    if isinstance(imatrix, dict):
        from .imatrix import check_imatrix

        imatrix = check_imatrix(imatrix, config, model.params)
    from tqdm import tqdm

    params = {k: np.asarray(v, dtype=np.float32) for k, v in model.params.items()}  # float, updated as we go
    out = dict(model.params)  # what the returned model holds: QTensors for the linear weights
    positions = np.arange(ids.shape[1])
    x, _ = embedding_forward(ids, params[embedding_name(config)])  # (W, T, C)
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]
    half = len(ids) // 2
    bar = tqdm(total=config.n_layer * sum(len(g) for g in _groups(config)), desc=f"GPTQ {fmt}", unit="layer",
               disable=not progress)
    for i in range(config.n_layer):
        names = layer_names(config, i)
        for group in _groups(config):
            layer_list = [names[role] for role in group]
            # inputs of this group, from the model whose earlier layers are already quantized;
            # in two halves when damp is chosen on one and checked on the other
            if candidates is None:
                H = block_input_hessians(x, params, config, i, positions, layer_list, batch)
            else:
                H_a = block_input_hessians(x[:half], params, config, i, positions, layer_list, batch)
                H_b = block_input_hessians(x[half:], params, config, i, positions, layer_list, batch)
                H = {n: (H_a[n] * half + H_b[n] * (len(x) - half)) / len(x) for n in layer_list}
            for layer in layer_list:
                w_nk = np.asarray(linear_weight(params, config, layer), dtype=np.float32)  # (N, K)
                name = layer + ".weight"
                importance = (np.diag(H[layer]) / 2 if imatrix is True else
                              imatrix[name] if isinstance(imatrix, dict) else None)
                chosen = damp if candidates is None else choose_damp(w_nk, H_a[layer], H_b[layer], fmt, candidates,
                                                                      act_order, importance, refit)[0]
                qt = gptq_quantize_matrix(w_nk, H[layer], fmt, chosen, act_order, importance, refit)
                out[name] = qt
                if report is not None:
                    rtn = quantize(w_nk, fmt, importance=importance).dequantize()
                    report[name] = {"damp": chosen, "rtn_error": relative_output_error(w_nk, rtn, H[layer]),
                                    "gptq_error": relative_output_error(w_nk, qt.dequantize(), H[layer]),
                                    "predicted_ratio": predicted_error_ratio(H[layer], chosen, act_order)}
                if sequential:  # later layers see this one's rounding error, and can undo some of it
                    params[name] = _stored_float(qt.dequantize(), config)
                bar.update(1)
        # the next block sees this block's fully quantized output (its float output if not sequential)
        x = np.concatenate([block_forward(x[s:s + batch], params, config, i, positions)
                            for s in range(0, len(x), batch)])
    bar.close()
    return Model(config, out, model.tokenizer)


def calibration_windows(stream, n_windows, seq_len, seed=0):
    """(n_windows, seq_len) int64 windows at random offsets of a token stream (the training split)."""
    stream = np.asarray(stream)
    if len(stream) < seq_len:
        raise ValueError(f"the stream has {len(stream)} tokens, too few for a window of {seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(stream) - seq_len + 1, size=n_windows)
    return stream[starts[:, None] + np.arange(seq_len)[None, :]].astype(np.int64)


# --------------------------------------------------------------------------------------------
# activation-aware scaling (AWQ, Lin et al. 2023): a float preconditioner for RTN or GPTQ
#
# A few input channels of a layer carry much larger activations than the rest, and the weights
# that meet them matter most. Multiplying weight column k by s_k > 1 and dividing the channel's
# activation by s_k leaves the product unchanged, but the scaled column takes a larger share of
# its block's 4-bit range, so it is rounded relatively more finely. The division is folded into
# the operation that produces the activation (a norm gain, or the rows of up_proj before down_proj),
# so the rescaled float model computes the same function and costs nothing at run time.
# s = mean|x|^alpha, with alpha picked from a grid to minimise the group's output error after
# quantization on the calibration inputs; alpha = 0 is s = 1, plain RTN, so the search never loses.


def _awq_pairs(config):
    """(role producing the input, roles of the layers reading it) for the scalings we can fold.

    o_proj is skipped: its input comes from v_proj through attention, and with grouped-query
    attention one v channel feeds several o channels, which then could not be scaled apart
    (AWQ skips it for the same reason). GPT-2's GELU between up and down is not linear: skipped.
    """
    if config.family == "gpt2":
        return [("norm1", ("qkv",)), ("norm2", ("up",))]
    return [("norm1", ("q", "k", "v")), ("norm2", ("gate", "up")), ("up", ("down",))]


def awq_search_scale(x, weights, fmt="q4_0", grid=20):
    """x: (M, K) inputs shared by the layers `weights` [(N_i, K)] -> (s float32 (K,), best alpha)."""
    x = np.asarray(x, dtype=np.float32)
    mean_abs = np.abs(x).mean(axis=0) + 1e-8  # (K,)
    reference = [x @ w.T for w in weights]  # [(M, N_i)]
    best = (np.inf, np.ones_like(mean_abs), 0.0)
    for alpha in np.arange(grid) / grid:
        s = mean_abs ** alpha
        s = np.maximum(s / np.sqrt(s.max() * s.min()), 1e-4).astype(np.float32)  # centred around 1
        err = sum(float(np.sum(((x / s) @ quantize(w * s, fmt).dequantize().T - ref) ** 2))
                  for w, ref in zip(weights, reference))
        if err < best[0]:
            best = (err, s, float(alpha))
    return best[1], best[2]


def _shared_input(x, params, config, i, positions, layer, batch, max_tokens):
    """The inputs of `layer` in block i for the first windows of x, up to max_tokens rows: (M, K)."""
    rows, count = [], 0
    for start in range(0, len(x), batch):
        if count >= max_tokens:
            break
        cache = {}
        block_forward(x[start:start + batch], params, config, i, positions, caches=cache)
        xin = cache[layer][0]  # (B, T, K)
        rows.append(xin.reshape(-1, xin.shape[-1]))
        count += len(rows[-1])
    return np.concatenate(rows)[:max_tokens]


def awq_scale_model(model: Model, calib_ids, fmt="q4_0", grid=20, max_tokens=8192, batch=8,
                    progress=True) -> Model:
    """A float Model computing the same function with AWQ-rescaled weights; quantize it afterwards
    (quantize_model for RTN, gptq_quantize_model for GPTQ). calib_ids: (W, T) training windows."""
    config = model.config
    ids, _ = model.check_ids(calib_ids, "calib_ids")
    for name, value in model.params.items():
        if isinstance(value, QTensor):
            raise ValueError(f"{name} is already quantized ({value.fmt}); AWQ rescales the float model")
    from tqdm import tqdm

    params = {k: np.array(v, dtype=np.float32) for k, v in model.params.items()}  # copies: we edit them
    positions = np.arange(ids.shape[1])
    x, _ = embedding_forward(ids, params[embedding_name(config)])  # (W, T, C)
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]
    for i in tqdm(range(config.n_layer), desc="AWQ", unit="block", disable=not progress):
        names = layer_names(config, i)
        for source, readers in _awq_pairs(config):
            layers = [names[role] for role in readers]
            xin = _shared_input(x, params, config, i, positions, layers[0], batch, max_tokens)  # (M, K)
            weights = [np.asarray(linear_weight(params, config, n), dtype=np.float32) for n in layers]
            s, _ = awq_search_scale(xin, weights, fmt, grid)  # (K,)
            for layer, w in zip(layers, weights):
                params[layer + ".weight"] = _stored_float(w * s, config)  # columns up
            if source == "up":  # down reads silu(gate) * up: scale up's output rows down
                params[names["up"] + ".weight"] /= s[:, None]
            else:  # a norm's gain (and GPT-2's LayerNorm bias) produces the input
                params[names[source] + ".weight"] /= s
                if config.family == "gpt2":
                    params[names[source] + ".bias"] /= s
        x = np.concatenate([block_forward(x[s0:s0 + batch], params, config, i, positions)
                            for s0 in range(0, len(x), batch)])
    return Model(config, params, model.tokenizer)
