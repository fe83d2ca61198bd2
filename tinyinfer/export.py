"""Out of tinyinfer: a plain Hugging Face folder for transformers, and dense copies of any model.

Lesson: lessons/10-formats.py

    export_hf(model, "folder/")          transformers: config.json + model.safetensors + tokenizer.json
    dense_model(model)                   every quantized or sparse weight expanded to float32

The other exit, GGUF for llama.cpp, is tinyinfer/gguf_model.py (export_gguf, and load_gguf back in).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .config import ModelConfig
from .model import Model
from .quant.formats import QTensor

__all__ = ["export_hf", "dense_model", "dense_weight"]

HF_DTYPES = ("float32", "float16")


# --------------------------------------------------------------------------------------------
# dense copies (HF export, f32/f16 GGUF)


def dense_weight(w, config: ModelConfig, hf_name: str):
    """A dense float32 array in the parameter's own layout (GPT-2 Conv1D: (K, N)).

    QTensor / CSRMatrix are always (N, K); a GPT-2 weight is transposed back to Conv1D's (K, N).
    """
    if isinstance(w, np.ndarray):
        return w.astype(np.float32, copy=False)
    dense = w.dequantize() if isinstance(w, QTensor) else w.to_dense()  # (N, K)
    dense = np.asarray(dense, dtype=np.float32)
    return np.ascontiguousarray(dense.T) if config.family == "gpt2" and dense.ndim == 2 else dense


def dense_model(model: Model) -> Model:
    """The same model with every quantized or sparse weight expanded to a float32 array."""
    params = {name: dense_weight(w, model.config, name) for name, w in model.params.items()}
    return Model(model.config, params, model.tokenizer)


# --------------------------------------------------------------------------------------------
# Hugging Face export


def export_hf(model: Model, path, dtype: str = "float32") -> Path:
    """config.json + model.safetensors + tokenizer.json that transformers loads as is.

    A quantized or sparse model is expanded to float32 first (transformers has no QTensor),
    so the folder holds exactly the function the quantized model computes with its weights
    dequantized: logits match tinyinfer's dequantized model, not the integer kernels' rounding.
    """
    if dtype not in HF_DTYPES:
        raise CheckpointError(f"dtype must be one of {HF_DTYPES}, got {dtype!r}")
    from .checkpoint import save

    eos = model.tokenizer.eos_id if model.tokenizer is not None else None
    save(dense_model(model), path, dtype=dtype, eos_token_id=eos)
    return Path(path)

