"""Golden fixtures for porters (llm.c style): one file with inputs, activations, logits, loss, grads.

Lesson: lessons/03-training.py; how a port uses the file: README.md, "Porting".

A port in C, Rust or for an accelerator loads the shipped tiny model (models/tiny), runs the same
input, and compares every array below with its own, layer by layer, so a bug shows up at the first
layer where the numbers part ways instead of as a wrong final answer. Everything is float32, the
precision a port computes in; names are stable across versions of the file (FORMAT_VERSION).

    input_ids, targets          int32 (B, T)
    act/embed                   (B, T, C) token embeddings
    act/layers.{i}.q            (B, H, T, D) queries after RoPE
    act/layers.{i}.k, .v        (B, G, T, D) keys after RoPE, values
    act/layers.{i}.attn_probs   (B, H, T, T) softmax attention weights (0 above the diagonal)
    act/layers.{i}.out          (B, T, C) residual stream after block i
    act/final_norm              (B, T, C) input of the output head
    logits                      (B, T, V)
    loss                        () mean cross-entropy of targets
    grad/<parameter name>       d loss / d parameter, Hugging Face names and shapes
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import model as M
from . import ops

FORMAT_VERSION = "1"
B, T, SEED = 2, 16, 1234


def golden_inputs(vocab_size: int):
    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, vocab_size, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def compute_golden(model) -> dict:
    """Every array of the fixture, computed by tinyinfer's reference NumPy path."""
    params, config = model.params, model.config
    ids, targets = golden_inputs(config.vocab_size)
    positions = np.arange(T)
    out = {"input_ids": ids.astype(np.int32), "targets": targets.astype(np.int32)}
    x, _ = ops.embedding_forward(ids, params[M.embedding_name(config)])
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]
    out["act/embed"] = x
    for i in range(config.n_layer):
        layer_cache = {}
        x = M.block_forward(x, params, config, i, positions, caches=layer_cache)
        qg, k, v, p = layer_cache["attn"]
        out[f"act/layers.{i}.q"] = qg.reshape(B, config.n_head, T, config.head_dim)
        out[f"act/layers.{i}.k"], out[f"act/layers.{i}.v"] = k, v
        out[f"act/layers.{i}.attn_probs"] = p.reshape(B, config.n_head, T, T)
        out[f"act/layers.{i}.out"] = x
    caches = {}
    logits = M.forward(params, config, ids, caches=caches)
    out["act/final_norm"] = caches["head_in"]
    out["logits"] = logits
    loss, grads = M.loss_and_grads(params, config, ids, targets)
    out["loss"] = np.array(loss, dtype=np.float32)
    out.update({f"grad/{name}": g for name, g in grads.items()})
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in out.items()}


def weights_sha256(model_dir) -> str:
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()


def write_golden(model_dir, path):
    """Write the fixture for the model in model_dir (run: python -m tinyinfer.golden)."""
    from . import load
    from .safetensors import write_safetensors

    model = load(model_dir)
    meta = {"format_version": FORMAT_VERSION, "model": str(model_dir),
            "model_sha256": weights_sha256(model_dir), "batch": str(B), "seq_len": str(T), "seed": str(SEED)}
    write_safetensors(path, compute_golden(model), meta)


if __name__ == "__main__":
    import sys

    root = Path(__file__).resolve().parents[1]
    write_golden(root / "models" / "tiny", root / "tests" / "golden" / f"tiny_v{FORMAT_VERSION}.safetensors")
    print("wrote", root / "tests" / "golden" / f"tiny_v{FORMAT_VERSION}.safetensors", file=sys.stderr)
