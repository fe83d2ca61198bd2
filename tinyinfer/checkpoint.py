"""Hugging Face checkpoints: config.json + model.safetensors (+ tokenizer.json), GPT-2 and LLaMA.

Lesson: lessons/01-transformer.py

A Hugging Face model folder is three plain files:

    config.json          the sizes, in transformers' own field names (n_embd, hidden_size, ...)
    model.safetensors    the weights, named as transformers names them (tinyinfer/safetensors.py)
    tokenizer.json       the tokenizer (optional here; tinyinfer/tokenizer/)

tinyinfer keeps its parameters under exactly those names and shapes (model.py: param_shapes), so
loading is mostly checking: translate the config, read the tensors, make sure every tensor
the config implies is there with the right shape and finite values, and nothing else is.
The same folder then loads in transformers (GPT2LMHeadModel / LlamaForCausalLM) and back.

Two real-world wrinkles are handled on load:
  * GPT-2 files on the Hub were saved from GPT2Model, so their names lack the
    "transformer." prefix ("h.0.attn.c_attn.weight"), and they carry the causal-mask buffers
    "h.N.attn.bias" / "h.N.attn.masked_bias", which are constants, not parameters.
  * A model with a tied head may still store "lm_head.weight" (a copy of the embedding).

Everything here raises CheckpointError (a ValueError) naming the file, tensor or field that
is wrong, what was expected and what was found. Files from elsewhere are held to limits before
they are believed (tinyinfer/limits.py): JSON is read with bounded size and depth
(tinyinfer/jsonfile.py), every size in config.json is checked under its own name, and the bytes
the weights will take are compared with the memory available before a tensor is read.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .jsonfile import JSONFileError, load_json
from .limits import (CONFIG_JSON_BYTES, CONFIG_JSON_VALUES, INDEX_JSON_BYTES, INDEX_JSON_VALUES, MAX_JSON_DEPTH,
                     MAX_TENSORS, MODEL_LIMITS, NORM_EPS_RANGE, ROPE_THETA_RANGE, check_limit, check_memory)
from .model import Model, embedding_name, param_shapes
from .safetensors import loaded_nbytes, read_safetensors, read_safetensors_header, write_safetensors

__all__ = ["CheckpointError", "config_from_hf", "config_to_hf", "param_shapes", "load", "save"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # sharded checkpoints: {"weight_map": {name: shard}}
TOKENIZER_FILE = "tokenizer.json"

# Dtypes a checkpoint may be written in (what config.json's "torch_dtype" can say) and the
# dtypes load() may compute in. float16 is for storage only: NumPy float16 math is slow and
# overflows easily, so we always widen to float32 (or float64) on load.
SAVE_DTYPES = ("float32", "float16")
LOAD_DTYPES = ("float32", "float64")

# GPT-2's per-layer causal mask buffers: "h.3.attn.bias" and "h.3.attn.masked_bias", with or
# without the "transformer." prefix. Careful: "h.3.attn.c_attn.bias" is a real parameter.
_GPT2_BUFFER = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")


class CheckpointError(ValueError):
    """A config.json or set of weights that does not describe a tinyinfer model."""


# ----------------------------------------------------------------------------- config.json -> ModelConfig


def config_from_hf(d: dict) -> ModelConfig:
    """Translate a transformers config.json dict (gpt2 or llama) into a ModelConfig.

    Missing optional fields take transformers' defaults, so a file means the same model here
    as there. Fields that would change the math in ways tinyinfer does not implement (another
    activation, biases in LLaMA, scaled RoPE, ...) are rejected rather than silently ignored.
    """
    if not isinstance(d, dict):
        raise CheckpointError(f"config must be a dict (parsed config.json), got {type(d).__name__}")
    model_type = d.get("model_type")
    readers = {"gpt2": _gpt2_from_hf, "llama": _llama_from_hf}
    if model_type in readers:
        try:
            return readers[model_type](d)
        except CheckpointError:
            raise
        except ValueError as e:  # ModelConfig's own checks: still a problem of this config file
            raise CheckpointError(f"config describes no valid model: {e}") from None
    raise CheckpointError(f"config model_type must be 'gpt2' or 'llama', got {model_type!r}")


def _required(d: dict, key: str):
    if key not in d:
        raise CheckpointError(f"{d.get('model_type')} config is missing required field {key!r}")
    return d[key]


def _size(d: dict, key: str, field: str, optional: bool = False, default=None):
    """A size from config.json: a positive int within the limit for ModelConfig.<field>, named as the file names it."""
    value = d.get(key, default) if optional else _required(d, key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{d['model_type']} config {key} must be a positive int, got {value!r:.80}")
    limit, why = MODEL_LIMITS[field]
    check_limit(f"{d['model_type']} config {key}", value, limit, why, error=CheckpointError)
    return value


def _scalar(d: dict, key: str, default: float, bounds: tuple) -> float:
    """A float from config.json that must lie in bounds, or the logits could turn NaN (tinyinfer/limits.py)."""
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{d['model_type']} config {key} must be a finite number, got {value!r:.80}")
    if not bounds[0] <= value <= bounds[1]:
        raise CheckpointError(f"{d['model_type']} config {key} = {value!r} is outside [{bounds[0]:g}, {bounds[1]:g}]; "
                              f"outside it the model computes NaN or nonsense")
    return float(value)


def _expect(d: dict, key: str, default, allowed: tuple, why: str):
    """Check an optional field whose value tinyinfer cannot vary (e.g. the activation)."""
    value = d.get(key, default)
    if value not in allowed:
        raise CheckpointError(
            f"{d['model_type']} config {key} must be {' or '.join(map(repr, allowed))} ({why}), got {value!r}")
    return value


def _gpt2_from_hf(d: dict) -> ModelConfig:
    _expect(d, "activation_function", "gelu_new", ("gelu_new",), "tinyinfer's GELU is the tanh approximation")
    _expect(d, "scale_attn_weights", True, (True,), "attention scores are divided by sqrt(D)")
    _expect(d, "scale_attn_by_inverse_layer_idx", False, (False,), "tinyinfer does not rescale by layer")
    _expect(d, "tie_word_embeddings", True, (True,), "GPT-2's output head is its token embedding")
    # n_positions is the size of the position table; very old configs only had n_ctx.
    n_ctx = _size(d, "n_positions" if "n_positions" in d else "n_ctx", "n_ctx")
    return ModelConfig(
        family="gpt2",
        vocab_size=_size(d, "vocab_size", "vocab_size"),
        n_layer=_size(d, "n_layer", "n_layer"),
        n_embd=_size(d, "n_embd", "n_embd"),
        n_head=_size(d, "n_head", "n_head"),
        n_ctx=n_ctx,
        ffn_hidden=_size(d, "n_inner", "ffn_hidden", optional=True),  # None means 4 * n_embd, as in transformers
        norm_eps=_scalar(d, "layer_norm_epsilon", 1e-5, NORM_EPS_RANGE),
        tie_word_embeddings=True,
    )


def _llama_from_hf(d: dict) -> ModelConfig:
    _expect(d, "hidden_act", "silu", ("silu",), "SwiGLU uses SiLU")
    _expect(d, "attention_bias", False, (False,), "tinyinfer's LLaMA attention has no biases")
    _expect(d, "mlp_bias", False, (False,), "tinyinfer's LLaMA MLP has no biases")
    hidden, heads = _size(d, "hidden_size", "n_embd"), _size(d, "num_attention_heads", "n_head")
    head_dim = _size(d, "head_dim", "head_dim", optional=True)  # None: hidden_size / heads; may differ
    return ModelConfig(
        family="llama",
        vocab_size=_size(d, "vocab_size", "vocab_size"),
        n_layer=_size(d, "num_hidden_layers", "n_layer"),
        n_embd=hidden,
        n_head=heads,
        n_kv_head=_size(d, "num_key_value_heads", "n_kv_head", optional=True),  # None: one KV head per query head
        n_ctx=_size(d, "max_position_embeddings", "n_ctx", optional=True, default=2048),
        ffn_hidden=_size(d, "intermediate_size", "ffn_hidden"),
        norm_eps=_scalar(d, "rms_norm_eps", 1e-6, NORM_EPS_RANGE),  # LlamaConfig's default, not LayerNorm's
        rope_theta=_rope_theta(d),
        tie_word_embeddings=d.get("tie_word_embeddings", False),  # untied unless the file says so
        head_dim=head_dim,
    )


def _rope_theta(d: dict) -> float:
    """RoPE's base, from transformers-4 "rope_theta" or transformers-5 "rope_parameters".

    Both "rope_scaling" (v4) and "rope_parameters" (v5) may name a rope_type; only the plain
    one ("default") is what tinyinfer computes. llama3 / yarn / linear scaling would change
    the rotation frequencies, so we refuse instead of producing a subtly different model.
    """
    thetas = []
    for key in ("rope_scaling", "rope_parameters"):
        block = d.get(key)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise CheckpointError(f"llama config {key} must be an object or null, got {block!r}")
        rope_type = block.get("rope_type", block.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(
                f"llama config {key} has rope_type {rope_type!r}; tinyinfer implements only "
                f"'default' (unscaled) RoPE")
        if "rope_theta" in block:
            thetas.append(block["rope_theta"])
    if "rope_theta" in d:
        thetas.append(d["rope_theta"])
    if not thetas:
        return 10000.0  # LlamaConfig's default
    low, high = ROPE_THETA_RANGE
    for theta in thetas:
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not low <= theta <= high:
            raise CheckpointError(f"llama config rope_theta must be a number in [{low:g}, {high:g}] (RoPE's base; "
                                  f"outside it the rotation angles make no sense or overflow to NaN), got {theta!r}")
    if len(set(thetas)) > 1:
        raise CheckpointError(f"llama config gives different rope_theta values {thetas}, expected one")
    return float(thetas[0])


# ----------------------------------------------------------------------------- ModelConfig -> config.json


def config_to_hf(cfg: ModelConfig, dtype="float32", bos_token_id: int | None = None,
                 eos_token_id: int | None = None) -> dict:
    """The config.json transformers needs to load `cfg` as GPT2LMHeadModel / LlamaForCausalLM.

    `dtype` ("float32" or "float16") is recorded under both "torch_dtype" (transformers 4) and
    "dtype" (transformers 5). Token ids are written as null when not given, on purpose:
    omitting them would make transformers fill in its defaults (50256 for GPT-2, 1 and 2 for
    LLaMA), which may not even exist in a small vocabulary.
    """
    dtype_name = _dtype_name(dtype, SAVE_DTYPES, "dtype")
    for name, token in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if token is not None and not (isinstance(token, int) and 0 <= token < cfg.vocab_size):
            raise CheckpointError(f"{name} must be an int in [0, {cfg.vocab_size}), got {token!r}")
    family = _gpt2_to_hf(cfg) if cfg.family == "gpt2" else _llama_to_hf(cfg)
    common = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
              "torch_dtype": dtype_name, "dtype": dtype_name, "use_cache": True}
    return dict(sorted({**family, **common}.items()))  # sorted keys, like transformers writes


def _gpt2_to_hf(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_ctx,
        "n_ctx": cfg.n_ctx,  # older transformers read this name too
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None if cfg.ffn_hidden == 4 * cfg.n_embd else cfg.ffn_hidden,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": 0.02,
        # tinyinfer has no dropout; zero keeps fine-tuning in transformers the same model.
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
    }


def _llama_to_hf(cfg: ModelConfig) -> dict:
    theta = float(cfg.rope_theta)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.n_ctx,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        # Both spellings of the RoPE base: transformers 4 reads the first, 5 the second.
        "rope_theta": theta,
        "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
    }


def _dtype_name(dtype, allowed: tuple, arg: str) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in allowed:
        raise CheckpointError(f"{arg} must be one of {allowed}, got {name}")
    return name


# ----------------------------------------------------------------------------- load


def load(path, dtype=np.float32):
    """Load a Hugging Face model folder as a tinyinfer Model (weights cast to `dtype`)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    dtype_name = _dtype_name(dtype, LOAD_DTYPES, "dtype")
    config_path = folder / CONFIG_FILE
    try:
        config = config_from_hf(_read_json(config_path))
    except CheckpointError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    tensors, source, metadata = _read_weights(folder, dtype_name)
    params = _normalise_names(tensors, config, source)
    params = _join_packed(params, metadata, source)  # QTensors, CSRMatrix objects from their stored tensors
    packed = frozenset(name for name, value in params.items() if not isinstance(value, np.ndarray))
    params = _check_params(params, config, source, skip=packed)
    params = {name: array if name in packed else array.astype(dtype_name, copy=False)
              for name, array in params.items()}
    tokenizer = _load_tokenizer(folder)

    return Model(config, params, tokenizer=tokenizer)


def _read_json(path: Path, max_bytes: int = CONFIG_JSON_BYTES, max_values: int = CONFIG_JSON_VALUES) -> dict:
    """A JSON object from a file, bounded in size, depth and value count (tinyinfer/jsonfile.py)."""
    try:
        return load_json(path, what=str(path), max_bytes=max_bytes, max_depth=MAX_JSON_DEPTH, max_values=max_values)
    except JSONFileError as e:
        raise CheckpointError(str(e)) from None


def _read_weights(folder: Path, dtype_name: str = "float32") -> tuple[dict[str, np.ndarray], Path, dict]:
    """All tensors of the checkpoint (from one model.safetensors or from shards), and metadata."""
    single, index = folder / WEIGHTS_FILE, folder / INDEX_FILE
    if single.is_file():
        _check_weights_fit([single], dtype_name, single)
        tensors, metadata = read_safetensors(single)
        return tensors, single, metadata
    if index.is_file():
        return _read_shards(index, dtype_name), index, {}
    raise FileNotFoundError(f"no weights in {folder}: expected {single} or {index}")


# What read_safetensors returns each stored float dtype as (BF16 is widened to float32 on reading).
_READ_AS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "float32"}


def _check_weights_fit(files: list[Path], dtype_name: str, source: Path) -> None:
    """Before any tensor is read: the bytes read, plus the float copies cast to dtype, must fit in memory.

    Only the headers are read here. Tensors the file already holds in `dtype` are not copied by
    the cast; packed tensors (ggml blocks, CSR indices) are kept as stored.
    """
    itemsize = np.dtype(dtype_name).itemsize
    needed = 0
    for path in files:
        infos, _metadata = read_safetensors_header(path)
        needed += loaded_nbytes(infos)
        needed += sum(math.prod(info["shape"]) * itemsize for info in infos.values()
                      if _READ_AS.get(info["dtype"], dtype_name) != dtype_name)
    check_memory(needed, f"{source}: the weights as {dtype_name}")


def _read_shards(index_path: Path, dtype_name: str = "float32") -> dict[str, np.ndarray]:
    """A sharded checkpoint: the index maps each tensor name to the file holding it."""
    index = _read_json(index_path, max_bytes=INDEX_JSON_BYTES, max_values=INDEX_JSON_VALUES)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: expected a 'weight_map' object of name -> shard file name")
    check_limit(f"{index_path}: the number of tensors in weight_map", len(weight_map), MAX_TENSORS,
                error=CheckpointError)
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard:  # a bare file name: the index must not point outside the folder
            raise CheckpointError(f"{index_path}: shard names must be plain file names, got {shard!r}")
    _check_weights_fit([index_path.parent / shard for shard in shards], dtype_name, index_path)
    tensors = {}
    for shard in shards:
        shard_tensors, _metadata = read_safetensors(index_path.parent / shard)
        listed = {name for name, file in weight_map.items() if file == shard}
        if set(shard_tensors) != listed:
            raise CheckpointError(
                f"{index_path}: shard {shard} holds {sorted(set(shard_tensors) - listed)} that the index "
                f"does not list there, and lacks {sorted(listed - set(shard_tensors))} that it does")
        tensors.update(shard_tensors)
    return tensors


def _normalise_names(tensors: dict, cfg: ModelConfig, source: Path) -> dict[str, np.ndarray]:
    """Map file names onto param_shapes names: add GPT-2's prefix, drop buffers and tied copies."""
    params = {}
    for name, array in tensors.items():
        if cfg.family == "gpt2":
            if _GPT2_BUFFER.match(name):
                continue  # causal-mask constants, rebuilt by the model, not parameters
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name  # Hub files were saved from GPT2Model (no prefix)
        if name in params:
            raise CheckpointError(f"{source}: tensor {name!r} appears twice (with and without 'transformer.')")
        params[name] = array
    if cfg.tie_word_embeddings and "lm_head.weight" in params:
        _drop_tied_head(params, cfg, source)
    return params


def _drop_tied_head(params: dict, cfg: ModelConfig, source: Path) -> None:
    """A tied head may be saved as a copy of the embedding; it must really be a copy."""
    head, embedding = params["lm_head.weight"], params.get(embedding_name(cfg))
    if embedding is not None and not (head.shape == embedding.shape and np.array_equal(head, embedding)):
        raise CheckpointError(
            f"{source}: config says tie_word_embeddings=True, but lm_head.weight differs from "
            f"{embedding_name(cfg)}; expected an identical copy (or no lm_head.weight)")
    del params["lm_head.weight"]


def _packed_kinds() -> dict:
    """metadata key -> (class, module) of each kind of non-dense weight a file may hold.

    Each module's split_for_saving(model) stores its weights as plain tensors and describes them
    under its own key; join_after_loading(tensors, metadata) rebuilds them.
    """
    from .quant import model as quant_model
    from .sparse import model as sparse_model

    return {quant_model.QUANT_METADATA_KEY: (quant_model.QTensor, quant_model),  # ggml block bytes
            sparse_model.SPARSE_METADATA_KEY: (sparse_model.CSRMatrix, sparse_model)}  # indptr, indices, data


def _join_packed(params: dict, metadata: dict, source) -> dict:
    for key, (_cls, module) in _packed_kinds().items():
        if key in metadata:
            try:
                params = module.join_after_loading(params, metadata)
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                raise CheckpointError(f"{source}: metadata {key!r}: {e}") from None
    return params


def _check_params(params: dict, cfg: ModelConfig, source: Path, skip=frozenset()) -> dict[str, np.ndarray]:
    """Exactly the expected tensors, each with its shape, a float dtype and finite values.

    Names in `skip` (quantized or sparse weights) must be present; their classes check their arrays.
    Returns them in param_shapes order, so a loaded model iterates like a freshly built one.
    """
    expected = param_shapes(cfg)
    missing = [f"{name} {shape}" for name, shape in expected.items() if name not in params]
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} tensor(s) the config needs: {', '.join(missing)}")
    unexpected = sorted(set(params) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) not used by a {cfg.family} model: {unexpected}")
    wrong = [f"{name} expected {shape}, found {tuple(params[name].shape)}"
             for name, shape in expected.items() if name not in skip and tuple(params[name].shape) != shape]
    if wrong:
        raise CheckpointError(f"{source}: wrong shape for {'; '.join(wrong)}")
    for name in expected:
        if name not in skip:
            _check_values(name, params[name], source)
    return {name: params[name] for name in expected}


def _check_values(name: str, array, source) -> None:
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise CheckpointError(f"{source}: tensor {name} must be a floating-point array, found {kind}")
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise CheckpointError(f"{source}: tensor {name} has {bad} NaN/Inf value(s), expected all finite")


def _load_tokenizer(folder: Path):
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        return None
    from .tokenizer import Tokenizer

    return Tokenizer.from_file(path)


# ----------------------------------------------------------------------------- save


def save(model, path, dtype=np.float32, bos_token_id: int | None = None,
         eos_token_id: int | None = None) -> None:
    """Write `model` as a Hugging Face folder: config.json, model.safetensors, tokenizer.json.

    Uses only model.config, model.params (dense arrays named as param_shapes says) and
    model.tokenizer. `dtype` is the storage dtype, "float32" or "float16"; values that do
    not fit in float16 raise instead of silently becoming Inf.
    """
    dtype_name = _dtype_name(dtype, SAVE_DTYPES, "dtype")
    cfg = model.config
    packed = frozenset(n for n, v in model.params.items() if not isinstance(v, np.ndarray))
    params = _check_params(dict(model.params), cfg, source="model.params", skip=packed)
    stored, metadata, kinds = {}, {}, _packed_kinds().values()
    for name in sorted(packed):
        if not any(isinstance(model.params[name], cls) for cls, _module in kinds):
            raise CheckpointError(f"model.params[{name!r}] is a {type(model.params[name]).__name__}; expected "
                                  f"a float array, a QTensor or a CSRMatrix")
    for cls, module in kinds:
        if any(isinstance(model.params[name], cls) for name in packed):  # only the kinds present
            tensors, described = module.split_for_saving(model)  # every param; keep this kind's tensors
            stored.update({n: t for n, t in tensors.items()
                           if isinstance(t, np.ndarray) and (n in packed or n not in params)})
            metadata.update(described)
    for name, array in params.items():
        if name in packed:
            continue  # already stored as its kind's plain tensors
        with np.errstate(over="ignore"):  # overflow is reported just below, naming the tensor
            stored[name] = array.astype(dtype_name, copy=False)
        _check_values(name, stored[name], source=f"model.params cast to {dtype_name}")
    hf_config = config_to_hf(cfg, dtype_name, bos_token_id=bos_token_id, eos_token_id=eos_token_id)

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    # transformers refuses safetensors files whose metadata does not say format "pt".
    write_safetensors(folder / WEIGHTS_FILE, stored, metadata={"format": "pt", **metadata})
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save(folder / TOKENIZER_FILE)
