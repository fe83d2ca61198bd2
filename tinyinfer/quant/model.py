"""Quantized models: every linear layer's weight becomes a QTensor; nothing else changes.

Lesson: lessons/04-quantization.py

The model code calls `matmul(w, x)` for every linear layer (tinyinfer/model.py), so a quantized
model is the same Model with QTensor objects in place of the (N, K) weight arrays.

What stays in float: the token embedding (a lookup, not a product: quantizing it saves memory but
no time) and therefore a tied output head; norm gains and biases (a few hundred numbers a layer).
`quantize_head=True` also quantizes an untied `lm_head` (llama.cpp keeps it at higher precision
by default, because the logits are sensitive to it).

On disk a quantized model is the usual folder; model.safetensors stores each QTensor as a uint8
tensor of ggml's block bytes under the weight's own name, and the header's `__metadata__` says
which names are quantized, in which format and with which (N, K) shape.
"""
from __future__ import annotations

import json

import numpy as np

from ..model import Model, head_name, linear_weight
from .formats import FORMATS, QTensor, quantize

QUANT_METADATA_KEY = "tinyinfer.quantization"


def linear_weight_names(config) -> list[str]:
    """The parameter names (HF) of every linear layer inside the blocks."""
    from ..model import layer_names

    roles = ("qkv", "o", "up", "down") if config.family == "gpt2" else ("q", "k", "v", "o", "gate", "up", "down")
    return [layer_names(config, i)[role] + ".weight" for i in range(config.n_layer) for role in roles]


def quantize_model(model: Model, fmt: str = "q8_0", quantize_head: bool = False, imatrix: dict | None = None) -> Model:
    """A new Model sharing the float parameters and holding QTensors for the linear weights.

    imatrix: {weight name: (K,) mean squared input of each column} (tinyinfer/quant/imatrix.py:
    collect_imatrix): every linear layer's blocks are then rounded with ggml's importance-weighted
    scale search, as llama-quantize --imatrix does. A layer it does not cover (an untied head)
    is rounded without it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FORMATS)}, got {fmt!r}")
    config = model.config
    params = dict(model.params)
    if imatrix is not None:
        from .imatrix import check_imatrix

        imatrix = check_imatrix(imatrix, config, params)
    names = linear_weight_names(config)
    if quantize_head and not config.tie_word_embeddings:
        names.append(head_name(config))
    for name in names:
        w = params[name]
        if isinstance(w, QTensor):
            raise ValueError(f"{name} is already quantized ({w.fmt}); quantize the float model instead")
        # GPT-2 stores Conv1D weights (K, N); QTensors are always (N, K), the layout the product reads
        w_nk = linear_weight(params, config, name[: -len(".weight")])
        importance = None if imatrix is None else imatrix.get(name)
        params[name] = quantize(np.ascontiguousarray(w_nk, dtype=np.float32), fmt, importance=importance)
    return Model(config, params, model.tokenizer)


def weight_bytes(model: Model) -> int:
    """Bytes of all parameters as stored (a tied head counted once)."""
    return int(sum(p.nbytes for p in model.params.values()))


def split_for_saving(model: Model):
    """(tensors, metadata) for write_safetensors: QTensors as uint8 ggml bytes, described in metadata."""
    tensors, described = {}, {}
    for name, value in model.params.items():
        if isinstance(value, QTensor):
            tensors[name] = value.to_bytes()
            described[name] = {"format": value.fmt, "shape": list(value.shape)}
        else:
            tensors[name] = value
    return tensors, {QUANT_METADATA_KEY: json.dumps(described, sort_keys=True)}


def join_after_loading(tensors: dict, metadata: dict) -> dict:
    """Inverse of split_for_saving: rebuild the QTensors the metadata names."""
    described = json.loads(metadata.get(QUANT_METADATA_KEY, "{}"))
    params = dict(tensors)
    for name, info in described.items():
        if name not in params:
            raise ValueError(f"quantization metadata names {name!r}, which the file does not hold")
        params[name] = QTensor.from_bytes(params[name], info["format"], tuple(info["shape"]))
    return params
