"""Sparse models: masks applied, and each sparse-enough linear weight becomes a CSRMatrix.

Lesson: lessons/05-pruning.py

The model code calls `matmul(w, x)` for every linear layer (tinyinfer/model.py), so a sparse model
is the same Model with CSRMatrix objects in place of the (N, K) weight arrays, as a quantized
model holds QTensors (tinyinfer/quant/model.py). CSRMatrix is always (N, K); GPT-2's Conv1D
weights, stored (K, N), are transposed on the way in.

Only the block linear layers are converted: the embedding is a lookup, and the (often tied) head
stays dense. A layer goes to CSR only if at least `min_sparsity` of its weights are zero: CSR
costs 6 bytes a nonzero (uint16 columns; 8 with int32), and its product beats dense float32 only
well below 67% density.
DEFAULT_MIN_SPARSITY comes from tinyinfer/bench/sparse.py (4096 x 4096, busy 2-core EPYC, serial
kernels vs single-threaded OpenBLAS): decode (x: (K,)) broke even between 20% and 15% density
(0.88x at 20%, 1.26x at 15%, 1.7x at 10%, 3.5x at 5%); a batch of 16 between 30% and 25% (0.98x,
1.09x). Small matrices (the tiny test models) are dominated by call overhead instead. Those
figures are the earlier serial kernels with int32 columns; the current ones use both cores and
uint16 columns, so re-measure with `tinyinfer bench sparse` on a quiet machine before moving it.

On disk a sparse model is the usual folder (tinyinfer/checkpoint.py save / load). model.safetensors
stores each CSRMatrix as its three arrays, `<name>.indptr`, `<name>.indices` (as held: uint16 "U16"
for the compact columns sparsify_model builds when K <= 65,536; int32 or int64 otherwise, and in
files written before compact columns, which load as they are) and `<name>.data` (float32, whatever
dtype the dense tensors are saved in), and the header's
`__metadata__` key "tinyinfer.sparse" says which names are CSR and with which (N, K) shape, as
"tinyinfer.quantization" does for QTensors. transformers cannot load such a file (nor a quantized
one); `prune.apply_masks` / `CSRMatrix.to_dense` give a dense model that it can.
"""
from __future__ import annotations

import json

import numpy as np

from ..model import Model, linear_weight
from .csr import CSRMatrix
from . import prune
from .prune import apply_masks, linear_weight_names

DEFAULT_MIN_SPARSITY = 0.8  # at density >= ~0.2 dense BLAS decoded faster than CSR (see above)
SPARSE_METADATA_KEY = "tinyinfer.sparse"  # safetensors __metadata__: {name: {"shape": [N, K]}}
CSR_PARTS = ("indptr", "indices", "data")  # stored as "<name>.indptr", ...


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


PRUNE_METHODS = ("magnitude", "global", "wanda", "2:4", "heads", "neurons")


def prune_model(model: Model, method: str, amount=0.5, calib_ids=None) -> Model:
    """One-shot pruning (no fine-tuning) by name, as `tinyinfer prune` offers it: a dense Model.

    magnitude / global / wanda / 2:4: the same config with masks applied (zeros in place; pass
    the result to sparsify_model to store the sparse layers as CSR). wanda needs calib_ids, (B, T)
    token ids; 2:4 always keeps half, so amount must be 0.5. heads / neurons: structured, a smaller
    dense model (GPT-2 heads are zeroed instead, see prune.prune_heads).
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"method must be one of {PRUNE_METHODS}, got {method!r}")
    if method == "heads":
        return prune.prune_heads(model, amount)
    if method == "neurons":
        return prune.prune_mlp_neurons(model, amount)
    weights = prune.linear_weights(model)  # name -> (N, K)
    if method == "magnitude":
        masks = prune.magnitude_masks(weights, amount)
    elif method == "global":
        masks = prune.global_magnitude_masks(weights, amount)
    elif method == "2:4":
        if amount != 0.5:
            raise ValueError(f"2:4 keeps 2 of every 4 weights, so amount must be 0.5, got {amount!r}")
        masks = prune.nm_masks(weights, 2, 4)
    else:
        if calib_ids is None:
            raise ValueError("wanda needs calib_ids (token ids of calibration text) to weigh each input feature")
        norms = prune.collect_input_norms(model, calib_ids, batch_size=8)
        masks = prune.wanda_masks(weights, norms, amount)
    return apply_masks(model, prune.to_param_layout(masks, model.config))


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


def weight_stats(model: Model) -> dict:
    """{"params", "nonzeros", "bytes"} of model.params as stored (a tied head counted once).

    params counts every entry of the config's matrices, stored or not (a CSRMatrix's N * K);
    nonzeros counts the entries that are not zero; bytes is what the arrays occupy in memory.
    """
    stats = {"params": 0, "nonzeros": 0, "bytes": 0}
    for value in model.params.values():
        stats["params"] += int(np.prod(value.shape))
        stored = value.data if isinstance(value, CSRMatrix) else value
        stats["nonzeros"] += int(np.count_nonzero(stored))
        stats["bytes"] += int(value.nbytes)
    return stats


# --------------------------------------------------------------------------------------------
# safetensors: each CSRMatrix as three plain tensors, described in the metadata


def split_for_saving(model: Model):
    """(tensors, metadata) for write_safetensors: each CSRMatrix as <name>.indptr / .indices / .data."""
    tensors, described = {}, {}
    for name, value in model.params.items():
        if isinstance(value, CSRMatrix):
            for part in CSR_PARTS:
                tensors[f"{name}.{part}"] = getattr(value, part)
            described[name] = {"shape": list(value.shape)}
        else:
            tensors[name] = value
    return tensors, {SPARSE_METADATA_KEY: json.dumps(described, sort_keys=True)}


def join_after_loading(tensors: dict, metadata: dict) -> dict:
    """Inverse of split_for_saving: rebuild the CSRMatrix objects the metadata names."""
    described = json.loads(metadata.get(SPARSE_METADATA_KEY, "{}"))
    if not isinstance(described, dict):
        raise ValueError(f"metadata {SPARSE_METADATA_KEY!r} must be a JSON object of name -> {{'shape': [N, K]}}, "
                         f"got {type(described).__name__}")
    params = dict(tensors)
    for name, info in described.items():
        keys = [f"{name}.{part}" for part in CSR_PARTS]
        missing = [k for k in keys if k not in params]
        if missing:
            raise ValueError(f"sparse metadata names {name!r}, but the file lacks {missing}")
        indptr, indices, data = (params.pop(k) for k in keys)
        params[name] = CSRMatrix(indptr, indices, data, tuple(info["shape"]))  # checks every array
    return params
