"""GPTQ (Frantar et al. 2022) writing ggml Q4_0 blocks: better 4-bit weights for the same 4.5 bits.

Lesson: lessons/04-quantization.py (round-to-nearest Q4_0, which this improves on)

Round-to-nearest (RTN) rounds every weight on its own. GPTQ rounds the columns of a weight matrix
W: (N, K) one after another and, after each, nudges the columns not yet rounded so that the
layer's *output* on real inputs moves as little as possible. The quantity it minimises is

    || W X^T - What X^T ||^2      X: (M, K) the layer's inputs, M tokens of calibration text

which depends on the inputs only through H = 2 X^T X (K, K). Rounding column j makes an error
e = w_j - q_j in every row; the best correction of the remaining columns (Optimal Brain Surgeon)
is  W[:, j+1:] -= e / [H^-1]_jj * [H^-1]_{j, j+1:}.  Writing H^-1 = U^T U with U upper triangular
(the "Cholesky of the inverse"), row j of U holds exactly the numbers that step needs once the
earlier columns are gone, so one factorisation serves all K steps:

    err = (w_j - q_j) / U[j, j];    W[:, j+1:] -= outer(err, U[j, j+1:])

The output stays ggml Q4_0 (see formats.py): along K, blocks of 32 weights share one float16
scale d and hold 4-bit q with value (q - 8) * d. So the columns are processed in blocks of 32:
when a block starts, its scale is chosen once with ggml's own rule (d = signed max / -8) on the
block's weights *as the earlier blocks' errors have updated them*, then each of its 32 columns is
rounded with that scale (ggml's truncation rule, clamped to 0..15 since the updates may push a
weight past the block's range) and its error spread over the rest. The block's accumulated errors
reach the later blocks in one matrix product ("lazy batch" updates in the paper).

With H = identity nothing spreads (U is the identity), and the result is byte for byte RTN Q4_0.

Choices, and why:
- dampening: H += 0.01 * mean(diag H) * I (the paper's default) keeps H invertible and the
  corrections modest when the calibration set is small.
- an input feature that never fires (diag H = 0) gets H[j, j] = 1: its weight is rounded as RTN
  would and no error flows through it (the paper zeroes such weights instead; we keep them, since
  held-out text may use the feature).
- sequential calibration: layers are quantized in the order the data meets them, and each one's
  inputs are collected from the model whose earlier layers are already quantized (the paper's
  "true sequential" variant), so later layers learn to correct the earlier layers' error. While
  collecting, quantized weights are used as their dequantized floats (the training-mode forward
  wants dense arrays); the real QTensor.matmul also rounds activations to Q8_0, a far smaller error.
- no act-order (columns in descending diag H order): it would need ggml's blocks to hold permuted
  columns, which the format cannot express.

The last section adds AWQ's activation-aware scaling (awq_scale_model): a rescaled float model
that computes the same function and quantizes better; feed it to quantize_model or to GPTQ.

Shapes: N output features, K input features, M calibration tokens, W windows, T tokens a window.
"""
from __future__ import annotations

import numpy as np

from ..model import Model, block_forward, embedding_name, layer_names, linear_weight
from ..ops import embedding_forward
from .blocks import BLOCK, inverse_scale as _inverse_scale, pack_nibbles, to_float16 as _to_float16
from .formats import QTensor, _check_scales, _check_weights, quantize

DAMP = 0.01  # lambda = DAMP * mean(diag H), the paper's default percdamp


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


def _q4_0_block_scale(block):
    """block: float32 (N, 32) -> (d float32 (N,), 1/d float32 (N,), d as float16 (N,)). ggml's rule."""
    first = np.abs(block).argmax(axis=-1)[:, None]  # (N, 1): first element of largest magnitude
    signed_max = np.take_along_axis(block, first, axis=-1)[:, 0]  # (N,)
    d = signed_max / np.float32(-8)  # float32, as quantize_row_q4_0_ref computes it
    return d, _inverse_scale(d), _to_float16(d)


def _q4_0_round_column(w, inv):
    """w: float32 (N,) one column, inv: float32 (N,) its blocks' 1/d -> q uint8 (N,) in 0..15.

    ggml's truncation of w/d + 8.5 (round half up around 8); clamped below as well as above,
    because GPTQ's updates can carry a weight past the range the block's scale was chosen for.
    """
    shifted = w * inv + np.float32(8.5)  # float32, as in C
    return np.clip(np.trunc(shifted), 0, 15).astype(np.uint8)


def gptq_quantize_matrix(w, H, fmt="q4_0", damp=DAMP):
    """w: float (N, K), K a multiple of 32; H: (K, K) = 2 X^T X of the layer's inputs -> QTensor q4_0.

    Minimises ||(W - What) X^T||^2 column by column (see the module docstring), with What in
    ggml's Q4_0 blocks.
    """
    if fmt != "q4_0":
        raise ValueError(f"gptq_quantize_matrix writes ggml q4_0 blocks only, got fmt={fmt!r}")
    w = _check_weights(w)  # float32 (N, K), K % 32 == 0, finite
    N, K = w.shape
    H = np.asarray(H)
    if H.shape != (K, K):
        raise ValueError(f"H must be (K, K) = {(K, K)} for w of shape {(N, K)}, got {H.shape}")
    if not np.isfinite(H).all():
        raise ValueError("H has NaN/Inf values; check the calibration activations")
    U = inverse_cholesky_upper(H, damp)  # (K, K) float64
    work = w.astype(np.float64)  # (N, K): the weights, updated as errors flow in
    NB = K // BLOCK
    scales = np.zeros((N, NB), dtype=np.float16)
    q = np.zeros((N, NB, BLOCK), dtype=np.uint8)
    for b in range(NB):
        lo, hi = b * BLOCK, (b + 1) * BLOCK
        # the block's scale: ggml's rule, once, on the weights as the earlier blocks left them
        _, inv, d16 = _q4_0_block_scale(work[:, lo:hi].astype(np.float32))
        _check_scales(d16[:, None], "q4_0", "w (after GPTQ updates)")
        scales[:, b] = d16
        d_value = d16.astype(np.float64)  # what the block will really stand for
        block_err = np.zeros((N, BLOCK))  # (N, 32): the scaled errors, for the lazy update
        for j in range(BLOCK):
            col = lo + j
            column = work[:, col]  # (N,)
            qj = _q4_0_round_column(column.astype(np.float32), inv)  # (N,)
            q[:, b, j] = qj
            err = (column - (qj.astype(np.float64) - 8.0) * d_value) / U[col, col]  # (N,)
            # spread this column's error over the rest of the block now ...
            work[:, col + 1:hi] -= np.outer(err, U[col, col + 1:hi])
            block_err[:, j] = err
        # ... and over all later blocks in one product
        work[:, hi:] -= block_err @ U[lo:hi, hi:]  # (N, 32) @ (32, K - hi)
    return QTensor("q4_0", (N, K), scales, pack_nibbles(q))


def layer_objective(w, w_hat, H):
    """||W X^T - What X^T||^2 / M = tr((W - What) H (W - What)^T) / 2 with H = 2 X^T X / M."""
    delta = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)  # (N, K)
    return float(np.einsum("nk,kl,nl->", delta, H, delta) / 2)


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


def _block_input_hessians(x, params, config, i, positions, names, batch):
    """Run block i on x (W, T, C) in batches -> {layer name: H (K, K)} for the given layer names."""
    H = {}
    for start in range(0, len(x), batch):
        cache = {}
        block_forward(x[start:start + batch], params, config, i, positions, caches=cache)
        for name in names:
            xin = cache[name][0]  # ops.linear_forward keeps (x, w, has_bias); x: (B, T, K)
            rows = xin.shape[0] * xin.shape[1]
            h = hessian(xin) * rows
            H[name] = H.get(name, 0) + h
    tokens = len(x) * x.shape[1]
    return {name: h / tokens for name, h in H.items()}


def gptq_quantize_model(model: Model, calib_ids, fmt="q4_0", progress=True, damp=DAMP, batch=8,
                        sequential=True) -> Model:
    """A new Model whose linear weights are GPTQ Q4_0 QTensors, calibrated on calib_ids (W, T).

    calib_ids should come from the *training* split (see calibration_windows), so held-out
    evaluation stays held out. Embedding, norms and a tied head stay float, as in quantize_model.
    sequential=False collects every layer's inputs from the float model instead (for comparison).
    """
    if fmt != "q4_0":
        raise ValueError(f"gptq_quantize_model writes q4_0 only (GPTQ for q8_0 gains little), got {fmt!r}")
    config = model.config
    ids, _ = model.check_ids(calib_ids, "calib_ids")  # (W, T) int64
    for name, value in model.params.items():
        if isinstance(value, QTensor):
            raise ValueError(f"{name} is already quantized ({value.fmt}); GPTQ needs the float model")
    from tqdm import tqdm

    params = {k: np.asarray(v, dtype=np.float32) for k, v in model.params.items()}  # float, updated as we go
    out = dict(model.params)  # what the returned model holds: QTensors for the linear weights
    positions = np.arange(ids.shape[1])
    x, _ = embedding_forward(ids, params[embedding_name(config)])  # (W, T, C)
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]
    bar = tqdm(total=config.n_layer * sum(len(g) for g in _groups(config)), desc="GPTQ", unit="layer",
               disable=not progress)
    for i in range(config.n_layer):
        names = layer_names(config, i)
        for group in _groups(config):
            layer_list = [names[role] for role in group]
            # inputs of this group, from the model whose earlier layers are already quantized
            H = _block_input_hessians(x, params, config, i, positions, layer_list, batch)
            for layer in layer_list:
                w_nk = np.asarray(linear_weight(params, config, layer), dtype=np.float32)  # (N, K)
                qt = gptq_quantize_matrix(w_nk, H[layer], fmt, damp)
                out[layer + ".weight"] = qt
                if sequential:  # later layers see this one's rounding error, and can undo some of it
                    params[layer + ".weight"] = _stored_float(qt.dequantize(), config)
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
