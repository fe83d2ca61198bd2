"""Second-order calibration shared by GPTQ and SparseGPT: each linear layer's Hessian, layer by layer.

Lessons: lessons/05-pruning.py (SparseGPT), lessons/04-quantization.py (GPTQ)

GPTQ (rounding) and SparseGPT (zeroing) solve the same problem: change a layer's weights W: (N, K)
under a constraint so that its *output* on real inputs X: (M, K) moves as little as possible,

    minimise || W X^T - W' X^T ||^2,   which depends on the inputs only through  H = 2 X^T X / M.

The numerics (H itself, the damped "Cholesky of the inverse" U with U^T U = H^-1, the objective
tr((W - W') H (W - W')^T) / 2) are GPTQ's, in tinyinfer/quant/gptq.py, and are imported from there.
This module adds what both need around them: a walk through a model that hands every block linear
layer its H, in the order the data meets the layers, and puts the changed weights back before the
next layers' inputs are collected ("sequential" calibration: later layers see, and can partly undo,
the earlier layers' error).

    new_params = calibrate_layers(model, calib_ids, update)    # update(name, w (N, K), H (K, K)) -> w'

Granularity (`within_block`):
- "group" (default): layers reading the same input form a group (q/k/v, o, gate/up, down); each
  group's H comes from a forward pass of the block whose earlier groups are already changed. Four
  passes of the block per group set, plus one for its output: the most faithful, the slowest.
- "block": all of a block's H from one pass of the unchanged block, then every layer of the block
  changed at once (what the SparseGPT reference code does); two passes per block.

Shapes: W windows, T tokens a window, C channels, K input features, N output features.
"""
from __future__ import annotations

import numpy as np

from .model import Model, block_forward, embedding_name, layer_names, linear_weight
from .ops import embedding_forward
from .quant.gptq import DAMP, calibration_windows, hessian, inverse_cholesky_upper, layer_objective

__all__ = ["DAMP", "block_input_hessians", "calibrate_layers", "calibration_windows", "hessian",
           "inverse_cholesky_upper", "layer_groups", "layer_objective"]


def layer_groups(config):
    """Block roles in the order the data meets them; roles in one group read the same input."""
    if config.family == "gpt2":
        return [("qkv",), ("o",), ("up",), ("down",)]
    return [("q", "k", "v"), ("o",), ("gate", "up"), ("down",)]


def stored_float(w_nk, config):
    """A dense (N, K) weight as model.params stores it (GPT-2's Conv1D wants (K, N))."""
    return np.ascontiguousarray(w_nk.T if config.family == "gpt2" else w_nk)


def block_input_hessians(x, params, config, i, positions, names, batch=8):
    """Run block i on x (W, T, C) in batches -> {layer name: H = 2 X^T X / M (K, K) float64}.

    X is each named layer's input over all W * T tokens; X^T X is summed batch by batch in float64,
    so the result does not depend on the batch size (up to rounding).
    """
    sums = {}
    for start in range(0, len(x), batch):
        cache = {}
        block_forward(x[start:start + batch], params, config, i, positions, caches=cache)
        for name in names:
            xin = cache[name][0]  # ops.linear_forward keeps (x, w, has_bias); x: (B, T, K)
            tokens = xin.shape[0] * xin.shape[1]
            sums[name] = sums.get(name, 0.0) + hessian(xin) * tokens  # 2 X^T X of this batch
    total = len(x) * x.shape[1]
    return {name: h / total for name, h in sums.items()}


def _block_output(x, params, config, i, positions, batch):
    """Block i applied to x (W, T, C), batch by batch -> (W, T, C)."""
    return np.concatenate([block_forward(x[s:s + batch], params, config, i, positions)
                           for s in range(0, len(x), batch)])


def calibrate_layers(model: Model, calib_ids, update, within_block="group", batch=8, progress=True,
                     desc="calibrating", hessians=None) -> dict:
    """Visit every block linear layer in data order; replace its weight by update(name, w, H).

    model: float weights; calib_ids: (W, T) token ids of calibration text (the training split).
    update(name, w, H): name like "model.layers.0.self_attn.q_proj", w float32 (N, K), H float64
    (K, K) of that layer's inputs -> the new float (N, K) weight. Returns a new params dict (float32
    copies; model.params is left as it was). hessians: a dict that, when given, receives each
    layer's H (for per-layer error reports). See the module docstring for `within_block`.
    """
    if within_block not in ("group", "block"):
        raise ValueError(f"within_block must be 'group' or 'block', got {within_block!r}")
    config = model.config
    ids, _ = model.check_ids(calib_ids, "calib_ids")  # (W, T) int64
    for name, value in model.params.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name} is a {type(value).__name__}; calibration needs float weights "
                             "(load the model with dtype='float32')")
    from tqdm import tqdm

    params = {k: np.array(v, dtype=np.float32) for k, v in model.params.items()}  # copies: we edit them
    positions = np.arange(ids.shape[1])
    x, _ = embedding_forward(ids, params[embedding_name(config)])  # (W, T, C)
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]
    groups = layer_groups(config)
    bar = tqdm(total=config.n_layer * sum(len(g) for g in groups), desc=desc, unit="layer", disable=not progress)
    for i in range(config.n_layer):
        names = layer_names(config, i)
        group_layers = [[names[role] for role in group] for group in groups]
        if within_block == "block":  # every H of the block from the unchanged block
            H_all = block_input_hessians(x, params, config, i, positions, [layer for layers in group_layers for layer in layers], batch)
        for layers in group_layers:
            H = (H_all if within_block == "block" else
                 block_input_hessians(x, params, config, i, positions, layers, batch))
            for layer in layers:
                w = np.asarray(linear_weight(params, config, layer), dtype=np.float32)  # (N, K)
                new = np.asarray(update(layer, w, H[layer]), dtype=np.float32)
                if new.shape != w.shape:
                    raise ValueError(f"update returned shape {new.shape} for {layer}, expected {w.shape}")
                params[layer + ".weight"] = stored_float(new, config)
                if hessians is not None:
                    hessians[layer] = H[layer]
                bar.update(1)
        x = _block_output(x, params, config, i, positions, batch)  # the next block sees this one changed
    bar.close()
    return params
