"""The importance matrix (llama.cpp's "imatrix"): how much activation each input column of each layer carries.

Lesson: lessons/04-quantization.py (section 6, importance-weighted rounding)

A linear layer y = x W^T, W: (N, K), whose weights are rounded to W' moves its output by
dy = x (W - W')^T. Averaged over real inputs x,

    E[dy_n^2] = sum_{k,l} (W - W')_{nk} E[x_k x_l] (W - W')_{nl}
              ~ sum_k E[x_k^2] (W - W')_{nk}^2        (keeping the diagonal of E[x x^T])

so a rounding error in column k costs in proportion to the mean square of the activation that
column meets. llama.cpp's imatrix tool measures that vector for every weight matrix,

    imatrix[k] = mean over calibration tokens of x_k^2,        one float per input column,

and llama-quantize passes it to the scale searches of each block (tinyinfer/quant/blocks.py:
"importance-weighted scale searches"). GPTQ (gptq.py) keeps the whole matrix E[x x^T] instead
of its diagonal and moves errors between columns; the imatrix only chooses better scales.

    imatrix = collect_imatrix(model, calib_ids)          # {weight name: float32 (K,)}
    qmodel = quantize_model(model, "iq4_nl", imatrix=imatrix)
    save_imatrix(path, imatrix, info); imatrix, info = load_imatrix(path, model.config)

The inputs are those of the float model (as llama.cpp's tool runs the unquantized model), from
calibration text of the corpus's *training* split, so held-out evaluation stays held out.

Shapes: W windows, T tokens a window, C channels, K input features of a layer.
"""
from __future__ import annotations

import json

import numpy as np

from ..model import Model, block_forward, embedding_name, linear_weight
from ..ops import embedding_forward
from .model import linear_weight_names

IMATRIX_METADATA_KEY = "tinyinfer.imatrix"
IMATRIX_FILE = "imatrix.safetensors"


def collect_imatrix(model: Model, calib_ids, batch: int = 8, progress: bool = True) -> dict:
    """Run calibration windows calib_ids (W, T) through the float model, block by block ->
    {linear weight name: float32 (K,) mean of x_k^2 over all W * T tokens}.

    One block at a time (the windows' hidden states (W, T, C) carried from block to block), so only
    one block's activations are alive at once: SmolLM2's 30 blocks fit where a whole forward with
    its caches would not.
    """
    config = model.config
    ids, _ = model.check_ids(calib_ids, "calib_ids")  # (W, T) int64
    for name in linear_weight_names(config):
        if not isinstance(model.params[name], np.ndarray):
            raise TypeError(f"{name} is a {type(model.params[name]).__name__}; the imatrix is measured on float "
                            f"weights (load the model with dtype='float32')")
    from tqdm import tqdm

    params = {k: np.asarray(v, dtype=np.float32) if isinstance(v, np.ndarray) else v for k, v in model.params.items()}
    positions = np.arange(ids.shape[1])
    x, _ = embedding_forward(ids, params[embedding_name(config)])  # (W, T, C)
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]
    per_block = len(linear_weight_names(config)) // config.n_layer
    layers = [name[: -len(".weight")] for name in linear_weight_names(config)]
    sums = {}  # layer -> float64 (K,) sum of x^2
    for i in tqdm(range(config.n_layer), desc="imatrix", unit="block", disable=not progress):
        mine = layers[i * per_block:(i + 1) * per_block]  # this block's linear layers
        outputs = []
        for start in range(0, len(x), batch):
            cache = {}
            outputs.append(block_forward(x[start:start + batch], params, config, i, positions, caches=cache))
            for layer in mine:
                xin = cache[layer][0]  # ops.linear_forward keeps (x, w, has_bias); x: (B, T, K)
                flat = xin.reshape(-1, xin.shape[-1]).astype(np.float64)  # (B * T, K)
                sums[layer] = sums.get(layer, 0.0) + np.einsum("mk,mk->k", flat, flat)
        x = np.concatenate(outputs)  # (W, T, C): the next block's input
    tokens = ids.size
    return {layer + ".weight": (total / tokens).astype(np.float32) for layer, total in sums.items()}


def training_windows(tokenizer, n_windows: int = 64, seq_len: int = 256, seed: int = 0, max_docs=None):
    """(n_windows, seq_len) token windows at random offsets of the corpus's training split."""
    from ..corpus import token_stream
    from .gptq import calibration_windows

    stream = token_stream(tokenizer, "train", max_docs=max_docs, progress=False)
    return calibration_windows(stream, n_windows, seq_len, seed=seed)


def check_imatrix(imatrix, config, params=None) -> dict:
    """imatrix: {weight name: (K,)} covering every linear layer of config, finite, >= 0 -> float32 copies.

    With params, each vector's length is checked against its weight's K."""
    if not isinstance(imatrix, dict):
        raise TypeError(f"imatrix must be a dict of weight name -> (K,) array, got {type(imatrix).__name__}")
    missing = [n for n in linear_weight_names(config) if n not in imatrix]
    if missing:
        raise ValueError(f"imatrix has no entry for {len(missing)} linear layers, e.g. {missing[0]!r}; "
                         f"was it collected on another model?")
    out = {}
    for name in linear_weight_names(config):
        v = np.asarray(imatrix[name], dtype=np.float32)
        if v.ndim != 1:
            raise ValueError(f"imatrix[{name!r}] must be a (K,) vector, got shape {v.shape}")
        if params is not None:
            K = np.shape(linear_weight(params, config, name[: -len(".weight")]))[1]
            if v.shape[0] != K:
                raise ValueError(f"imatrix[{name!r}] has {v.shape[0]} values but the layer has K = {K} inputs")
        if not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"imatrix[{name!r}] must be finite and >= 0 (mean squared activations)")
        out[name] = v
    return out


def save_imatrix(path, imatrix: dict, info: dict | None = None) -> None:
    """Write {weight name: float32 (K,)} as a safetensors file; info (JSON-able: tokens, source, ...)
    goes into its metadata."""
    from ..safetensors import write_safetensors

    tensors = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in imatrix.items()}
    write_safetensors(path, tensors, {IMATRIX_METADATA_KEY: json.dumps(info or {}, sort_keys=True)})


def load_imatrix(path, config=None, params=None) -> tuple[dict, dict]:
    """Read a file save_imatrix wrote -> (imatrix, info); checked against config (and params) when given."""
    from ..jsonfile import load_json
    from ..safetensors import read_safetensors

    tensors, metadata = read_safetensors(path)
    if IMATRIX_METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not an imatrix file (no {IMATRIX_METADATA_KEY!r} in its metadata)")
    info = load_json(metadata[IMATRIX_METADATA_KEY].encode(), what=f"{path}: {IMATRIX_METADATA_KEY}",
                     max_bytes=1 << 16, max_depth=8)
    if config is not None:
        tensors = check_imatrix(tensors, config, params)
    return tensors, info
