"""GGUF <-> Model: a llama.cpp file becomes a tinyinfer Model, and a Model becomes one.

Lessons: lessons/10-formats.py (the format taken apart), lessons/11-real-model.py (a real model).

    model = load_gguf("m.gguf")                  quantized tensors stay quantized (QTensor)
    model = load_gguf("m.gguf", dtype="float32") every weight expanded to float32
    export_gguf(model, "m.gguf", quant="q4_0")   llama.cpp (and everything built on it) runs it

tinyinfer/gguf.py is the container (header, key/values, tensor table, bytes); this file is the
mapping between that container and a LLaMA-family Model:

  1. names: Hugging Face's `model.layers.3.self_attn.q_proj.weight` is ggml's `blk.3.attn_q.weight`
     (gguf_tensor_names). A tied head has no `output.weight`: llama.cpp then reuses `token_embd`.
  2. shapes: ggml's ne is the NumPy shape reversed; a (N, K) weight is written as it is and the
     writer reverses the dims. Nothing is transposed.
  3. RoPE layout: tinyinfer (like transformers) rotates dimension i with i + D/2 in each head
     ("rotate half", tinyinfer/ops.py: rope_forward). ggml's default RoPE rotates neighbours
     (2i, 2i+1). So the rows of q_proj and k_proj are reordered, head by head, to put each pair
     side by side (rope_permute, the same reshape as llama.cpp's convert_hf_to_gguf.py), and
     the reading side undoes it (rope_unpermute). The dot products q.k are unchanged: the same
     pairs are rotated by the same angles, just stored in another order.
  4. quantized weights: a QTensor holds ggml's block bytes (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
     IQ4_NL), row by row, so it is read and written byte for byte (a RoPE permutation moves whole
     rows, hence whole blocks). The token embedding stays quantized too when the file has it so:
     a lookup dequantizes only the rows it needs (QTensor.take_rows), and a tied head multiplies
     by the same blocks. Nothing is expanded to float32 unless dtype asks for it.
  5. metadata: the sizes under llama.cpp's key names (llama_metadata) and the tokenizer
     (tinyinfer/tokenizer: its GGUF vocabulary reader and writer).

Errors are CheckpointError (a ValueError) naming what is wrong and what was expected.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .checkpoint import LOAD_DTYPES, CheckpointError, _check_params, _dtype_name
from .config import ModelConfig
from .export import dense_model, dense_weight
from .gguf import GGUFError, GGUFTensor, TensorType, read_gguf, write_gguf
from .limits import check_memory, model_bytes
from .model import Model, embedding_name, layer_names
from .quant.formats import QTensor
from .tokenizer.gguf_vocab import (
    TokenizerMetadataError,
    from_gguf_metadata,
    to_gguf_metadata,
)

__all__ = ["GGUF_QUANTS", "export_gguf", "load_gguf", "rope_permute", "rope_unpermute",
           "gguf_tensor_names", "llama_metadata"]

# QTensor format -> ggml tensor type: every ggml block format tinyinfer computes with
QTENSOR_TYPES = {"q8_0": TensorType.Q8_0, "q4_0": TensorType.Q4_0, "q4_1": TensorType.Q4_1,
                 "q5_0": TensorType.Q5_0, "q5_1": TensorType.Q5_1, "iq4_nl": TensorType.IQ4_NL}
GGUF_QUANTS = ("f32", "f16", *QTENSOR_TYPES)  # what --quant may ask for

# llama.cpp's enum llama_ftype: what the file's weights mostly are (informational for llama.cpp).
FILE_TYPES = {TensorType.F32: 0, TensorType.F16: 1, TensorType.Q4_0: 2, TensorType.Q4_1: 3, TensorType.Q8_0: 7,
              TensorType.Q5_0: 8, TensorType.Q5_1: 9, TensorType.IQ4_NL: 25}

# Hugging Face role (tinyinfer/model.py: layer_names) -> ggml tensor name inside blk.N
GGUF_ROLES = {"norm1": "attn_norm", "q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
              "norm2": "ffn_norm", "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}


# --------------------------------------------------------------------------------------------
# names and the RoPE row order


def gguf_tensor_names(config: ModelConfig) -> dict[str, str]:
    """Hugging Face parameter name -> GGUF tensor name, for every parameter of a LLaMA config."""
    names = {embedding_name(config): "token_embd.weight"}
    for i in range(config.n_layer):
        for role, hf in layer_names(config, i).items():
            names[hf + ".weight"] = f"blk.{i}.{GGUF_ROLES[role]}.weight"
    names["model.norm.weight"] = "output_norm.weight"
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    return names


def _rope_order(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that puts HF's pair (i, i + D/2) of every head at rows (2i, 2i + 1).

    Rows of one head, HF: [x0 .. x(D/2-1) | y0 .. y(D/2-1)]  (pair i is x_i, y_i)
                    ggml: [x0 y0 x1 y1 ...]
    """
    rows = np.arange(n_heads * head_dim).reshape(n_heads, 2, head_dim // 2)  # (heads, x|y, D/2)
    return rows.swapaxes(1, 2).reshape(-1)  # (heads, D/2, x|y) flattened: x0 y0 x1 y1 ...


def _take_rows(w, order: np.ndarray):
    """w[order] for a dense (N, K) array or a QTensor: whole rows move, so every block stays intact
    (the QTensor's ggml bytes are cut into rows, reordered and read back, whatever its format)."""
    if isinstance(w, QTensor):
        rows = w.to_bytes().reshape(w.shape[0], -1)  # (N, bytes per row)
        return QTensor.from_bytes(np.ascontiguousarray(rows[order]), w.fmt, w.shape)
    return w[order]


def rope_permute(w, n_heads: int, head_dim: int):
    """q_proj / k_proj rows from HF's rotate-half layout to ggml's interleaved one."""
    return _take_rows(w, _rope_order(n_heads, head_dim))


def rope_unpermute(w, n_heads: int, head_dim: int):
    """The inverse of rope_permute: GGUF rows back to tinyinfer's (HF's) layout."""
    return _take_rows(w, np.argsort(_rope_order(n_heads, head_dim)))


def _rope_heads(config: ModelConfig, hf_name: str) -> int | None:
    """How many heads a weight's rows hold if RoPE rotates its output (q: H, k: G), else None."""
    if hf_name.endswith("self_attn.q_proj.weight"):
        return config.n_head
    if hf_name.endswith("self_attn.k_proj.weight"):
        return config.n_kv_head
    return None


# --------------------------------------------------------------------------------------------
# GGUF export


def _check_llama(model) -> None:
    if not isinstance(model, Model):
        raise CheckpointError(f"model must be a tinyinfer Model, got {type(model).__name__}")
    if model.config.family != "llama":
        raise CheckpointError(
            f"GGUF export supports LLaMA-family models only (config.family 'llama'), got "
            f"{model.config.family!r}; llama.cpp's gpt2 architecture needs other tensors (fused QKV, "
            f"biases, position table). Use export_hf for a GPT-2 model")


def _prepare(model: Model, quant: str | None) -> Model:
    """The model whose weights the file will hold, exactly: quantized, dequantized or as is.

    quant None keeps QTensors as they are and makes sparse weights dense; "f32" / "f16" expand
    everything; a block format ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl") quantizes a float
    model's linear layers the way tinyinfer.quant.model.quantize_model does (embedding and a tied head
    stay float).
    """
    if quant is not None and quant not in GGUF_QUANTS:
        raise CheckpointError(f"quant must be one of {GGUF_QUANTS} or None, got {quant!r}")
    fmts = {w.fmt for w in model.params.values() if isinstance(w, QTensor)}
    if quant in ("f32", "f16"):
        return dense_model(model)
    if quant in QTENSOR_TYPES:
        if fmts and fmts != {quant}:
            raise CheckpointError(f"the model is already quantized to {sorted(fmts)}; cannot export it as "
                                  f"{quant!r} (requantizing compounds the rounding). Export the float model")
        if fmts:
            return _densify_sparse(model)
        from .quant.model import quantize_model

        return quantize_model(dense_model(model), quant)
    return _densify_sparse(model)


def _densify_sparse(model: Model) -> Model:
    """GGUF has no sparse type: CSR weights become dense arrays; QTensors are kept."""
    params = {n: w if isinstance(w, (np.ndarray, QTensor)) else dense_weight(w, model.config, n)
              for n, w in model.params.items()}
    return Model(model.config, params, model.tokenizer)


def _gguf_tensor(gguf_name: str, w, float_type: TensorType) -> GGUFTensor:
    if isinstance(w, QTensor):
        return GGUFTensor(gguf_name, QTENSOR_TYPES[w.fmt], w.shape, w.to_bytes())
    # llama.cpp keeps 1-D tensors (norm gains) in float32 whatever the file type is.
    return GGUFTensor.from_array(gguf_name, w, float_type if w.ndim == 2 else TensorType.F32)


def llama_metadata(config: ModelConfig, file_type: int, name: str) -> dict:
    """general.* and llama.* keys: the sizes llama.cpp reads, under its names and types."""
    return {
        "general.architecture": "llama",
        "general.name": name,
        "general.alignment": 32,
        "general.file_type": file_type,
        "llama.vocab_size": config.vocab_size,
        "llama.context_length": config.n_ctx,
        "llama.embedding_length": config.n_embd,
        "llama.block_count": config.n_layer,
        "llama.feed_forward_length": config.ffn_hidden,
        "llama.attention.head_count": config.n_head,
        "llama.attention.head_count_kv": config.n_kv_head,
        # D may differ from C / H (pruned heads): llama.cpp reads it from these two keys.
        "llama.attention.key_length": config.head_dim,
        "llama.attention.value_length": config.head_dim,
        "llama.rope.dimension_count": config.head_dim,  # the whole head is rotated
        "llama.rope.freq_base": float(config.rope_theta),
        "llama.attention.layer_norm_rms_epsilon": float(config.norm_eps),
    }


def _file_type(model: Model, float_type: TensorType) -> int:
    """The most common type among the linear layers, as llama_ftype."""
    from .quant.model import linear_weight_names

    kinds = Counter(QTENSOR_TYPES[w.fmt] if isinstance(w, QTensor) else float_type
                    for w in (model.params[n] for n in linear_weight_names(model.config)))
    return FILE_TYPES[kinds.most_common(1)[0][0]]


def export_gguf(model: Model, path, quant: str | None = None, name: str | None = None) -> Path:
    """Write a LLaMA-family model as a GGUF v3 file that llama.cpp loads.

    quant: None (as the model is: QTensors as their blocks, the rest float32), "f32", "f16",
    or a block format (see _prepare). Returns the path.
    """
    _check_llama(model)
    prepared = _prepare(model, quant)
    config = prepared.config
    float_type = TensorType.F16 if quant == "f16" else TensorType.F32
    tensors = []
    for hf_name, gguf_name in gguf_tensor_names(config).items():
        w = prepared.params[hf_name]
        heads = _rope_heads(config, hf_name)
        if heads is not None:
            w = rope_permute(w, heads, config.head_dim)
        tensors.append(_gguf_tensor(gguf_name, w, float_type))
    file_type = _file_type(prepared, float_type)
    metadata = llama_metadata(config, file_type, name or Path(path).stem)
    if file_type not in (FILE_TYPES[TensorType.F32], FILE_TYPES[TensorType.F16]):
        metadata["general.quantization_version"] = 2  # GGML_QNT_VERSION: the block layout's version
    try:
        metadata.update(to_gguf_metadata(prepared.tokenizer, config.vocab_size))
    except ValueError as e:
        raise CheckpointError(f"cannot write {path}: {e}") from None
    try:
        write_gguf(path, metadata, tensors)
    except GGUFError as e:
        raise CheckpointError(f"cannot write {path}: {e}") from None
    return Path(path)


# --------------------------------------------------------------------------------------------
# GGUF import


def _key(meta: dict, key: str, kind, default=None, required=True):
    """A metadata value of the expected Python kind, or a CheckpointError naming the key."""
    if key not in meta:
        if required and default is None:
            raise CheckpointError(f"GGUF metadata lacks {key!r}, which a llama model needs")
        return default
    value = meta[key]
    if isinstance(value, np.ndarray) or isinstance(value, bool) or not isinstance(value, kind):
        raise CheckpointError(f"GGUF metadata {key!r} must be a single {getattr(kind, '__name__', kind)}, "
                              f"got {value!r:.80}")
    return value


def _shortest(value: float) -> float:
    """The shortest decimal that is this float32: GGUF's 1e-5 is 9.99999974e-06, and we want 1e-5 back."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _config_from_gguf(meta: dict, tensors: dict, source) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{source}: general.architecture is {arch!r}; tinyinfer loads only 'llama' GGUF files")
    for key in ("llama.rope.scaling.type", "llama.rope.scaling.factor"):
        if key in meta and meta[key] not in ("none", 1.0):
            raise CheckpointError(f"{source}: {key} = {meta[key]!r}; tinyinfer implements only unscaled RoPE")
    if "rope_freqs.weight" in tensors:
        raise CheckpointError(f"{source}: has rope_freqs.weight (Llama-3.1-style scaled RoPE); tinyinfer "
                              f"implements only unscaled RoPE")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{source}: no token_embd.weight tensor")
    num = (int, float)
    n_embd = _key(meta, "llama.embedding_length", int)
    n_head = _key(meta, "llama.attention.head_count", int)
    head_dim = _key(meta, "llama.attention.key_length", int, default=n_embd // max(n_head, 1))
    if _key(meta, "llama.attention.value_length", int, default=head_dim) != head_dim:
        raise CheckpointError(f"{source}: llama.attention.value_length differs from key_length; tinyinfer "
                              f"needs one head size")
    rope_dims = _key(meta, "llama.rope.dimension_count", int, default=head_dim)
    if rope_dims != head_dim:
        raise CheckpointError(f"{source}: llama.rope.dimension_count is {rope_dims} but heads have {head_dim} "
                              f"dims; tinyinfer rotates whole heads (no partial RoPE)")
    vocab = tensors["token_embd.weight"].shape[0]
    if _key(meta, "llama.vocab_size", int, default=vocab) != vocab:
        raise CheckpointError(f"{source}: llama.vocab_size is {meta['llama.vocab_size']} but token_embd has "
                              f"{vocab} rows")
    try:
        return ModelConfig(
            family="llama", vocab_size=vocab, n_layer=_key(meta, "llama.block_count", int),
            n_embd=n_embd, n_head=n_head, n_kv_head=_key(meta, "llama.attention.head_count_kv", int, default=n_head),
            n_ctx=_key(meta, "llama.context_length", int), ffn_hidden=_key(meta, "llama.feed_forward_length", int),
            norm_eps=_shortest(_key(meta, "llama.attention.layer_norm_rms_epsilon", num)),
            rope_theta=_shortest(_key(meta, "llama.rope.freq_base", num, default=10000.0)),
            tie_word_embeddings="output.weight" not in tensors, head_dim=head_dim)
    except ValueError as e:
        raise CheckpointError(f"{source}: metadata describes no valid model: {e}") from None


def _quant_format(tensor_type: TensorType) -> str | None:
    """The QTensor format of a ggml tensor type ("q4_1" for Q4_1, ...), or None if QTensor lacks it."""
    from .quant.formats import FORMATS

    fmt = tensor_type.name.lower()
    return fmt if fmt in FORMATS else None


def _read_param(f, gguf_name: str, source):
    """One tensor as tinyinfer holds it: a float32 array (F32, F16) or a QTensor (ggml blocks)."""
    info = f.tensors[gguf_name]
    if info.type in (TensorType.F32, TensorType.F16):
        return f.tensor_array(gguf_name).astype(np.float32)
    fmt = _quant_format(info.type)
    if fmt is None or len(info.shape) != 2:
        from .quant.formats import FORMATS

        raise CheckpointError(f"{source}: tensor {gguf_name} is {info.type.name} {info.shape}; tinyinfer reads "
                              f"F32 and F16 tensors and 2-D matrices in {', '.join(f.upper() for f in FORMATS)}")
    try:
        return QTensor.from_bytes(f.tensor_bytes(gguf_name), fmt, info.shape)
    except ValueError as e:
        raise CheckpointError(f"{source}: tensor {gguf_name}: {e}") from None


def load_gguf(path, dtype=None) -> Model:
    """A tinyinfer Model from a llama-architecture GGUF file.

    dtype None: tensors stay as the file holds them — ggml blocks as QTensors (the token embedding
    included: lookups dequantize only the rows they need), F32/F16 as float32 arrays — so the
    model takes about the file's size in memory. dtype "float32" / "float64": every weight
    expanded to that dtype (a float model; ~8x the memory of 4-bit blocks).
    """
    source = Path(path)
    dtype_name = None if dtype is None else _dtype_name(dtype, LOAD_DTYPES, "dtype")
    try:
        f = read_gguf(source)
    except GGUFError as e:
        raise CheckpointError(str(e)) from None
    config = _config_from_gguf(f.metadata, f.tensors, source)
    # what the model will take once loaded, checked against the machine before anything is copied out
    check_memory(f.loaded_nbytes() if dtype_name is None else model_bytes(config, dtype_name),
                 f"{source}: its tensors")
    names = gguf_tensor_names(config)
    unexpected = sorted(set(f.tensors) - set(names.values()))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) for a {config.n_layer}-layer llama: {unexpected[:8]}")
    missing = sorted(g for g in names.values() if g not in f.tensors)
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) the metadata implies: {missing[:8]}")
    params = {}
    for hf_name, gguf_name in names.items():
        w = _read_param(f, gguf_name, source)
        heads = _rope_heads(config, hf_name)
        if heads is not None:
            shape = w.shape
            if shape[0] != heads * config.head_dim:
                raise CheckpointError(f"{source}: {gguf_name} has shape {shape}, expected "
                                      f"({heads * config.head_dim}, {config.n_embd})")
            w = rope_unpermute(w, heads, config.head_dim)
        params[hf_name] = w
    packed = frozenset(n for n, w in params.items() if isinstance(w, QTensor))
    params = _check_params(params, config, source, skip=packed)
    try:
        tokenizer = from_gguf_metadata(f.metadata, str(source))
    except TokenizerMetadataError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{source}: tokenizer has {tokenizer.vocab_size} tokens, token_embd {config.vocab_size}")
    model = Model(config, params, tokenizer=tokenizer)
    if dtype_name is None:
        return model
    dense = dense_model(model)  # float32 arrays everywhere
    return Model(config, {n: w.astype(dtype_name, copy=False) for n, w in dense.params.items()}, tokenizer)
