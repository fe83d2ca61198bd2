"""Files that lie about sizes: each one fails with a named error, allocating little.

Every case writes one hostile file (a config.json, a safetensors header, a shard index, a GGUF
header, a tokenizer.json) into an otherwise valid model folder, loads it through the public
tinyinfer.load (and, where the file has its own reader, through that reader too), and checks:

  * the error is the named one (CheckpointError, SafetensorsError, GGUFError, JSONFileError,
    NotEnoughMemoryError), not RecursionError, OverflowError or a MemoryError from deep inside
    NumPy, and its message names the field and the limit;
  * the peak of Python and NumPy allocations during the load (tracemalloc sees both) stays under
    50 MB. Before these checks, a 4.5 KB GGUF or a config.json with num_hidden_layers = 10^9
    allocated gigabytes, and a header of 1M zero-size tensors 1.2 GB.

Time is not asserted (timings on a shared machine are noise); allocation bounds the work. Run
`python tests/test_hostile_files.py` to print each case's time and peak allocation.
"""
from __future__ import annotations

import gc
import json
import os
import struct
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import tinyinfer
from tinyinfer.checkpoint import CheckpointError, config_from_hf
from tinyinfer.gguf import GGUFError, GGUFTensor, ValueType, read_gguf, write_gguf
from tinyinfer.jsonfile import JSONFileError, load_json
from tinyinfer.limits import (GGUF_MAX_ARRAY_LENGTH, MAX_TENSORS, TOKENIZER_JSON_BYTES, LimitError,
                              NotEnoughMemoryError, check_memory, model_bytes)
from tinyinfer.safetensors import SafetensorsError, read_safetensors, write_safetensors

PEAK_LIMIT = 50 << 20  # bytes allocated (tracemalloc peak) while a hostile file is refused

# ----------------------------------------------------------------------------------------------
# valid files, to be spoiled one field at a time

LLAMA = {"model_type": "llama", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
         "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True}
GPT2 = {"model_type": "gpt2", "vocab_size": 40, "n_embd": 16, "n_layer": 1, "n_head": 4, "n_positions": 32}


def hf_folder(folder: Path, config: dict = LLAMA) -> Path:
    """A complete, loadable Hugging Face folder for `config` (random weights)."""
    from tinyinfer.model import param_shapes

    folder.mkdir(parents=True, exist_ok=True)
    shapes = param_shapes(config_from_hf(config))
    rng = np.random.default_rng(0)
    write_safetensors(folder / "model.safetensors",
                      {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def with_config(folder: Path, config=None, raw: bytes | None = None, base: dict = LLAMA, **changes) -> Path:
    """A valid folder whose config.json is then replaced by `raw` or by base + changes."""
    hf_folder(folder, base)
    (folder / "config.json").write_bytes(raw if raw is not None else json.dumps({**base, **changes}).encode())
    return folder


def safetensors_file(path: Path, header: bytes, data: bytes = b"", size: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    if size is not None:
        with open(path, "r+b") as f:
            f.truncate(size)  # sparse: the file system stores none of the zeros
    return path


def with_weights(folder: Path, header: bytes, data: bytes = b"", size: int | None = None) -> Path:
    hf_folder(folder)
    safetensors_file(folder / "model.safetensors", header, data, size)
    return folder


def zero_size_tensors(n: int) -> bytes:
    """A header of n distinct zero-size tensors: valid safetensors, and absurd for a model."""
    body = b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(n))
    return b"{" + body + b"}"


# GGUF: a tiny but complete llama file (F32 tensors, llama.cpp's names), spoiled through its metadata.
C, H, G, D, F, V = 16, 4, 2, 4, 24, 40


def llama_gguf(path: Path, **metadata) -> Path:
    meta = {"general.architecture": "llama", "llama.block_count": 1, "llama.context_length": 32,
            "llama.embedding_length": C, "llama.feed_forward_length": F, "llama.attention.head_count": H,
            "llama.attention.head_count_kv": G, "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "llama.rope.freq_base": 10000.0}
    meta.update(metadata)
    shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,), "blk.0.attn_norm.weight": (C,),
              "blk.0.attn_q.weight": (H * D, C), "blk.0.attn_k.weight": (G * D, C),
              "blk.0.attn_v.weight": (G * D, C), "blk.0.attn_output.weight": (C, H * D),
              "blk.0.ffn_norm.weight": (C,), "blk.0.ffn_gate.weight": (F, C), "blk.0.ffn_up.weight": (F, C),
              "blk.0.ffn_down.weight": (C, F)}
    rng = np.random.default_rng(0)
    write_gguf(path, meta, [GGUFTensor.from_array(name, rng.standard_normal(shape).astype(np.float32))
                            for name, shape in shapes.items()])
    return path


def gguf_bytes(n_tensors=0, n_kv=0, body: bytes = b"", version=3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def deep(n: int) -> bytes:
    return b'{"a": ' + b"[" * n + b"]" * n + b"}"


# ----------------------------------------------------------------------------------------------
# the cases: (name, build(tmp) -> what to load, error class, words the message must contain)


@dataclass
class Case:
    name: str
    build: Callable[[Path], Path]
    error: type
    words: str
    read: Callable[[Path], object] = tinyinfer.load  # the reader under test


CASES = [
    # config.json: HF llama
    Case("config llama num_hidden_layers=1e9", lambda t: with_config(t, num_hidden_layers=10**9),
         CheckpointError, "llama config num_hidden_layers = 1000000000 exceeds the limit 4,096"),
    Case("config llama num_hidden_layers=1e9 (JSON float)", lambda t: with_config(t, raw=json.dumps(
         {**LLAMA, "num_hidden_layers": 1e9}).encode()), CheckpointError, "num_hidden_layers must be a positive int"),
    Case("config llama max_position_embeddings=1e12", lambda t: with_config(t, max_position_embeddings=10**12),
         CheckpointError, "max_position_embeddings = 1000000000000 exceeds the limit 1,048,576"),
    Case("config llama hidden_size=2^40", lambda t: with_config(t, hidden_size=2**40),
         CheckpointError, "hidden_size = 1099511627776 exceeds the limit 65,536"),
    Case("config llama intermediate_size=2^40", lambda t: with_config(t, intermediate_size=2**40),
         CheckpointError, "intermediate_size = 1099511627776 exceeds the limit"),
    Case("config llama vocab_size=2^40", lambda t: with_config(t, vocab_size=2**40),
         CheckpointError, "vocab_size = 1099511627776 exceeds the limit 4,194,304"),
    Case("config llama num_attention_heads=2^40", lambda t: with_config(t, num_attention_heads=2**40),
         CheckpointError, "num_attention_heads = 1099511627776 exceeds the limit"),
    Case("config llama head_dim=2^40", lambda t: with_config(t, head_dim=2**40),
         CheckpointError, "head_dim = 1099511627776 exceeds the limit"),
    Case("config llama num_key_value_heads=2^40", lambda t: with_config(t, num_key_value_heads=2**40),
         CheckpointError, "num_key_value_heads = 1099511627776 exceeds the limit"),
    Case("config llama 10^5000 layers", lambda t: with_config(t, raw=json.dumps(LLAMA).replace(
         '"num_hidden_layers": 1', '"num_hidden_layers": 1' + "0" * 5000).encode()), CheckpointError, "not valid JSON"),
    Case("config llama rms_norm_eps=-1", lambda t: with_config(t, rms_norm_eps=-1.0),
         CheckpointError, "rms_norm_eps = -1.0 is outside [1e-30, 1]"),
    Case("config llama rms_norm_eps=0", lambda t: with_config(t, rms_norm_eps=0), CheckpointError, "rms_norm_eps = 0"),
    Case("config llama rms_norm_eps=1e-300", lambda t: with_config(t, rms_norm_eps=1e-300),
         CheckpointError, "rms_norm_eps = 1e-300 is outside"),
    Case("config llama rms_norm_eps=NaN", lambda t: with_config(t, raw=json.dumps(
         {**LLAMA, "rms_norm_eps": float("nan")}).encode()), CheckpointError, "NaN is not JSON"),
    Case("config llama rms_norm_eps=1e999", lambda t: with_config(t, raw=json.dumps(LLAMA).replace(
         "1e-05", "1e999").encode()), CheckpointError, "overflows to infinity"),
    Case("config llama rope_theta=0", lambda t: with_config(t, rope_theta=0.0),
         CheckpointError, "rope_theta must be a number in [1, 1e+30]"),
    Case("config llama rope_theta=1e-300", lambda t: with_config(t, rope_theta=1e-300),
         CheckpointError, "rope_theta must be a number in"),
    Case("config llama rope_parameters.rope_theta=-5", lambda t: with_config(
         t, rope_parameters={"rope_type": "default", "rope_theta": -5}), CheckpointError, "got -5"),
    Case("config.json nested 10,000 deep", lambda t: with_config(t, raw=deep(10_000)),
         CheckpointError, "nests arrays/objects more than 64 deep (the limit)"),
    Case("config.json nested 100 deep", lambda t: with_config(t, raw=deep(99)),
         CheckpointError, "nests arrays/objects more than 64 deep (the limit)"),
    Case("config.json of 2 GB (sparse)", lambda t: _sparse(with_config(t) / "config.json", 2 << 30).parent,
         CheckpointError, "is 2,147,483,648 bytes, which exceeds the limit 1,048,576"),
    Case("config.json a list", lambda t: with_config(t, raw=b"[" + b"1," * 1000 + b"1]"),
         CheckpointError, "must be a JSON object at the top level, got JSON array"),
    Case("config.json 100k values", lambda t: with_config(t, raw=json.dumps(
         {**LLAMA, "id2label": list(range(100_000))}).encode()), CheckpointError, "which exceeds the limit 65,536"),
    # config.json: HF gpt2
    Case("config gpt2 n_layer=1e9", lambda t: with_config(t, base=GPT2, n_layer=10**9),
         CheckpointError, "gpt2 config n_layer = 1000000000 exceeds the limit 4,096"),
    Case("config gpt2 n_positions=1e12", lambda t: with_config(t, base=GPT2, n_positions=10**12),
         CheckpointError, "gpt2 config n_positions = 1000000000000 exceeds the limit"),
    Case("config gpt2 n_embd=2^40", lambda t: with_config(t, base=GPT2, n_embd=2**40),
         CheckpointError, "gpt2 config n_embd = 1099511627776 exceeds the limit"),
    Case("config gpt2 n_inner=2^40", lambda t: with_config(t, base=GPT2, n_inner=2**40),
         CheckpointError, "gpt2 config n_inner = 1099511627776 exceeds the limit"),
    Case("config gpt2 vocab_size=2^40", lambda t: with_config(t, base=GPT2, vocab_size=2**40),
         CheckpointError, "gpt2 config vocab_size = 1099511627776 exceeds the limit"),
    Case("config gpt2 layer_norm_epsilon=-1", lambda t: with_config(t, base=GPT2, layer_norm_epsilon=-1),
         CheckpointError, "layer_norm_epsilon = -1 is outside"),
    Case("config gpt2 layer_norm_epsilon='big'", lambda t: with_config(t, base=GPT2, layer_norm_epsilon="big"),
         CheckpointError, "layer_norm_epsilon must be a finite number, got 'big'"),
    # safetensors headers
    Case("safetensors 1M zero-size tensors (60 MB header)", lambda t: with_weights(t, zero_size_tensors(10**6)),
         SafetensorsError, "exceeds the limit 16,777,216"),
    Case("safetensors 200k zero-size tensors (12 MB header)", lambda t: with_weights(t, zero_size_tensors(200_000)),
         SafetensorsError, "JSON values, which exceeds the limit"),
    Case("safetensors 17k zero-size tensors", lambda t: with_weights(t, zero_size_tensors(MAX_TENSORS + 600)),
         SafetensorsError, f"header lists 16,984 tensors, which exceeds the limit {MAX_TENSORS:,}"),
    Case("safetensors header nested 100,000 deep", lambda t: with_weights(t, deep(100_000)),
         SafetensorsError, "more than 64 deep"),
    Case("safetensors header nested 1M deep", lambda t: with_weights(t, deep(10**6)),
         SafetensorsError, "holds up to 1,000,003 JSON values, which exceeds the limit 524,288"),
    Case("safetensors header length 2^63", lambda t: _length_field(with_weights(t, b"{}" + b" " * 6), 2**63),
         SafetensorsError, "header length 9,223,372,036,854,775,808 bytes exceeds the limit"),
    Case("safetensors rank-1000 shape", lambda t: with_weights(t, json.dumps(
         {"a": {"dtype": "F32", "shape": [1] * 1000, "data_offsets": [0, 4]}}).encode(), b"\0" * 4),
         SafetensorsError, "shape has 1000 dimensions, which exceeds the limit 16"),
    Case("safetensors honest 1 TB tensor (sparse file)", lambda t: _terabyte_tensor(hf_folder(t) / "model.safetensors")
         .parent, NotEnoughMemoryError, "the weights as float32 needs 1,099.51 GB (1,099,511,627,776 bytes) of memory"),
    Case("safetensors 1 TB tensor, read directly", lambda t: _terabyte_tensor(t / "x.safetensors"),
         NotEnoughMemoryError, "its tensors needs 1,099.51 GB", read=read_safetensors),
    Case("safetensors header nested, read directly", lambda t: safetensors_file(t / "x.safetensors", deep(10**5)),
         SafetensorsError, "more than 64 deep", read=read_safetensors),
    # the sharded index
    Case("index nested 10,000 deep", lambda t: _index(t, deep(10_000)), CheckpointError, "more than 64 deep"),
    Case("index weight_map of 17k tensors", lambda t: _index(t, json.dumps({"weight_map": {
         f"t{i}": "a.safetensors" for i in range(MAX_TENSORS + 600)}}).encode()),
         CheckpointError, "the number of tensors in weight_map = 16984 exceeds the limit 16,384"),
    Case("index weight_map of 100k tensors", lambda t: _index(t, json.dumps({"weight_map": {
         f"t{i}": "a.safetensors" for i in range(100_000)}}).encode()), CheckpointError, "JSON values"),
    Case("index of 1 GB (sparse)", lambda t: _sparse(_index(t, b"{}") / "model.safetensors.index.json", 1 << 30).parent,
         CheckpointError, "1,073,741,824 bytes, which exceeds the limit 16,777,216"),
    Case("index shard outside the folder", lambda t: _index(t, json.dumps(
         {"weight_map": {"a": "../../etc/passwd"}}).encode()), CheckpointError, "plain file names"),
    Case("index a list", lambda t: _index(t, b"[]"), CheckpointError, "got JSON array"),
    # GGUF: container
    Case("gguf tensor count 2^60", lambda t: write(t / "m.gguf", gguf_bytes(n_tensors=2**60)),
         CheckpointError, "the tensor count is 1,152,921,504,606,846,976, which exceeds the limit 16,384"),
    Case("gguf key count 2^60", lambda t: write(t / "m.gguf", gguf_bytes(n_kv=2**60)),
         CheckpointError, "the key/value count is 1,152,921,504,606,846,976, which exceeds the limit 65,536"),
    Case("gguf 16k tensor infos in 100 bytes", lambda t: write(t / "m.gguf", gguf_bytes(16_000) + bytes(76)),
         CheckpointError, "16,000 tensor infos needs 512,000 bytes at offset 24, but the file ends at 100"),
    Case("gguf key of 2^40 bytes", lambda t: write(t / "m.gguf", gguf_bytes(n_kv=1, body=struct.pack("<Q", 2**40) + bytes(16))),
         CheckpointError, "the length of key #0 is 1,099,511,627,776, which exceeds the limit 67,108,864"),
    Case("gguf string value of 2^40 bytes", lambda t: write(t / "m.gguf", gguf_bytes(
         n_kv=1, body=gguf_string(b"k") + struct.pack("<IQ", 8, 2**40))),
         CheckpointError, "the length of the value of 'k' is 1,099,511,627,776, which exceeds the limit"),
    Case("gguf array of 2^40 strings", lambda t: write(t / "m.gguf", gguf_bytes(
         n_kv=1, body=gguf_string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2**40))),
         CheckpointError, f"is 1,099,511,627,776, which exceeds the limit {GGUF_MAX_ARRAY_LENGTH:,}"),
    Case("gguf array of 2^40 uint64", lambda t: write(t / "m.gguf", gguf_bytes(
         n_kv=1, body=gguf_string(b"k") + struct.pack("<IIQ", 9, 10, 2**40))), CheckpointError, "exceeds the limit"),
    Case("gguf array of 500k strings, file of 50 bytes", lambda t: write(t / "m.gguf", gguf_bytes(
         n_kv=1, body=gguf_string(b"k") + struct.pack("<IIQ", 9, 8, 500_000))), CheckpointError, "500,000 x STRING"),
    Case("gguf array of arrays", lambda t: write(t / "m.gguf", gguf_bytes(
         n_kv=1, body=gguf_string(b"k") + struct.pack("<IIQ", 9, 9, 1))), CheckpointError, "array of arrays"),
    Case("gguf value type 13", lambda t: write(t / "m.gguf", gguf_bytes(
         n_kv=1, body=gguf_string(b"k") + struct.pack("<I", 13) + bytes(8))), CheckpointError, "known value types"),
    Case("gguf tensor type 99", lambda t: write(t / "m.gguf", gguf_bytes(
         n_tensors=1, body=gguf_string(b"t") + struct.pack("<IQIQ", 1, 4, 99, 0) + bytes(32))),
         CheckpointError, "ggml type 99"),
    Case("gguf 2^32-1 dimensions", lambda t: write(t / "m.gguf", gguf_bytes(
         n_tensors=1, body=gguf_string(b"t") + struct.pack("<IQIQ", 2**32 - 1, 4, 0, 0) + bytes(32))),
         CheckpointError, "4294967295 dimensions, expected 1..4"),
    Case("gguf tensor of 2^40 x 2^40", lambda t: write(t / "m.gguf", gguf_bytes(
         n_tensors=1, body=gguf_string(b"t") + struct.pack("<IQQIQ", 2, 2**40, 2**40, 0, 0) + bytes(32))),
         CheckpointError, "but the file ends at"),
    Case("gguf dimension 2^63", lambda t: write(t / "m.gguf", gguf_bytes(
         n_tensors=1, body=gguf_string(b"t") + struct.pack("<IQIQ", 1, 2**63, 0, 0) + bytes(32))),
         CheckpointError, "each must be in 1..2^40"),
    Case("gguf overlapping tensors", lambda t: write(t / "m.gguf", gguf_bytes(
         n_tensors=2, body=gguf_string(b"a") + struct.pack("<IQIQ", 1, 16, 0, 0) + gguf_string(b"b")
         + struct.pack("<IQIQ", 1, 16, 0, 32) + bytes(128))), CheckpointError, "overlap"),
    Case("gguf truncated", lambda t: _truncated(llama_gguf(t / "m.gguf")), CheckpointError, "truncated"),
    Case("gguf truncated, read directly", lambda t: _truncated(llama_gguf(t / "m.gguf")),
         GGUFError, "truncated", read=read_gguf),
    Case("gguf empty file", lambda t: write(t / "m.gguf", b""), CheckpointError, "the file ends at 0"),
    # GGUF: a valid container whose llama metadata declares huge sizes (a ~4.5 KB file)
    Case("gguf llama.block_count=1e9", lambda t: llama_gguf(t / "m.gguf", **{"llama.block_count": 10**9}),
         CheckpointError, "n_layer = 1000000000 exceeds the limit 4,096"),
    Case("gguf llama.context_length=2^32-1", lambda t: llama_gguf(t / "m.gguf", **{
         "llama.context_length": 2**32 - 1}), CheckpointError, "n_ctx = 4294967295 exceeds the limit 1,048,576"),
    Case("gguf llama.embedding_length=2^31", lambda t: llama_gguf(t / "m.gguf", **{
         "llama.embedding_length": 2**31}), CheckpointError, "exceeds the limit"),
    Case("gguf llama.feed_forward_length=2^31", lambda t: llama_gguf(t / "m.gguf", **{
         "llama.feed_forward_length": 2**31}), CheckpointError, "ffn_hidden = 2147483648 exceeds the limit"),
    Case("gguf rms epsilon=-1", lambda t: llama_gguf(t / "m.gguf", **{
         "llama.attention.layer_norm_rms_epsilon": -1.0}), CheckpointError, "norm_eps = -1.0 is outside"),
    Case("gguf rms epsilon=NaN", lambda t: llama_gguf(t / "m.gguf", **{
         "llama.attention.layer_norm_rms_epsilon": float("nan")}), CheckpointError, "norm_eps must be a finite number"),
    Case("gguf rope freq_base=0", lambda t: llama_gguf(t / "m.gguf", **{"llama.rope.freq_base": 0.0}),
         CheckpointError, "rope_theta = 0.0 is outside"),
    Case("gguf rope freq_base=Inf", lambda t: llama_gguf(t / "m.gguf", **{"llama.rope.freq_base": float("inf")}),
         CheckpointError, "rope_theta must be a finite number"),
    # tokenizer.json, through the reader every tokenizer.json goes through
    Case("tokenizer.json nested 1M deep", lambda t: write(t / "tokenizer.json", deep(10**6)),
         JSONFileError, "more than 64 deep", read=lambda p: _read_tokenizer_json(p)),
    Case("tokenizer.json of 1 TB (sparse)", lambda t: _sparse(t / "tokenizer.json", 1 << 40),
         JSONFileError, "1,099,511,627,776 bytes, which exceeds the limit 67,108,864",
         read=lambda p: _read_tokenizer_json(p)),
    Case("tokenizer.json nested 100,000 deep, through tinyinfer.load", lambda t: _with_tokenizer(t, deep(100_000)),
         JSONFileError, "more than 64 deep"),
    Case("tokenizer.json of 1 TB (sparse), through tinyinfer.load", lambda t: _sparse(
         _with_tokenizer(t, b"{}") / "tokenizer.json", 1 << 40).parent, JSONFileError, "exceeds the limit 67,108,864"),
    Case("tokenizer.json a list, through tinyinfer.load", lambda t: _with_tokenizer(t, b"[]"),
         JSONFileError, "got JSON array"),
    Case("tokenizer.json with 5M values", lambda t: write(t / "tokenizer.json", b'{"model": {"merges": ['
                                                                + b",".join([b"[]"] * 5_000_000) + b"]}}"),
         JSONFileError, "JSON values, which exceeds the limit", read=lambda p: _read_tokenizer_json(p)),
]


def _longest_array(folder: Path) -> Path:
    """A GGUF file within every limit that still costs the most parsing: the longest array of strings."""
    return write(folder / "m.gguf", gguf_bytes(n_kv=1, body=gguf_string(b"k") + struct.pack(
        "<IIQ", ValueType.ARRAY, ValueType.STRING, GGUF_MAX_ARRAY_LENGTH) + bytes(8 * GGUF_MAX_ARRAY_LENGTH)))


# Within the limits, so parsed in full: under tracemalloc (which hooks every allocation) its 524,288
# strings take ~20 s, so the test below checks it without, and the table at the end measures it.
LONGEST_ARRAY = Case(f"gguf array of {GGUF_MAX_ARRAY_LENGTH:,} empty strings (at the limit)", _longest_array,
                     CheckpointError, "general.architecture is None")


def _sparse(path: Path, size: int) -> Path:
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)
    return path


def _length_field(folder: Path, header_length: int) -> Path:
    """Overwrite the first 8 bytes of the folder's model.safetensors (the header length)."""
    path = folder / "model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[:8] = struct.pack("<Q", header_length)
    path.write_bytes(bytes(blob))
    return folder


def _terabyte_tensor(path: Path) -> Path:
    """An honest header for one 1 TB float32 tensor, in a sparse file that really is 1 TB long."""
    header = json.dumps({"a": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}).encode()
    header += b" " * (-len(header) % 8)
    return safetensors_file(path, header, size=8 + len(header) + 2**40)


def _index(folder: Path, raw: bytes) -> Path:
    hf_folder(folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_bytes(raw)
    return folder


def _truncated(path: Path) -> Path:
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    return path


def _with_tokenizer(folder: Path, raw: bytes) -> Path:
    hf_folder(folder)
    (folder / "tokenizer.json").write_bytes(raw)
    return folder


def _read_tokenizer_json(path: Path):
    """What a tokenizer.json reader must do first (the limits a tokenizer file is held to)."""
    return load_json(path, what=str(path), max_bytes=TOKENIZER_JSON_BYTES, max_values=4_000_000)


# ----------------------------------------------------------------------------------------------
# measuring


def refuse(read, target) -> tuple[BaseException | None, float, int]:
    """(the exception read(target) raised or None, seconds, peak bytes allocated meanwhile)."""
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        read(target)
        error = None
    except Exception as e:  # noqa: BLE001 - the test inspects whatever came
        error = e
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, seconds, peak


@pytest.fixture(scope="module", autouse=True)
def warm_imports(tmp_path_factory):
    """Load one valid folder and one valid GGUF first, so lazy imports do not count as allocation."""
    folder = tmp_path_factory.mktemp("warm")
    tinyinfer.load(hf_folder(folder / "hf"))
    tinyinfer.load(llama_gguf(folder / "m.gguf"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file_is_refused_with_a_named_error_and_little_memory(tmp_path, case):
    target = case.build(tmp_path)
    error, _seconds, peak = refuse(case.read, target)
    assert error is not None, f"{case.name}: loaded without an error"
    assert isinstance(error, case.error), f"{case.name}: {type(error).__name__}: {error}"
    assert case.words in str(error), str(error)
    assert peak < PEAK_LIMIT, f"{case.name}: allocated {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("build", [lambda t: hf_folder(t, LLAMA), lambda t: hf_folder(t, GPT2),
                                   lambda t: llama_gguf(t / "m.gguf")], ids=["llama", "gpt2", "gguf"])
def test_the_unspoiled_files_load(tmp_path, build):
    """The cases above spoil these files one field at a time: unspoiled, they load."""
    model = tinyinfer.load(build(tmp_path))
    assert model.config.n_layer == 1
    assert np.isfinite(model.logits(np.array([[1, 2, 3]]))).all()


def test_the_longest_array_a_gguf_may_hold_is_parsed_then_refused_by_the_model_loader(tmp_path):
    path = LONGEST_ARRAY.build(tmp_path)
    assert read_gguf(path).metadata["k"] == [""] * GGUF_MAX_ARRAY_LENGTH
    with pytest.raises(LONGEST_ARRAY.error, match=LONGEST_ARRAY.words):
        tinyinfer.load(path)


def test_read_gguf_keeps_no_descriptor_after_an_error_or_after_its_arrays_are_gone(tmp_path):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counting open descriptors needs /proc")
    good, bad = llama_gguf(tmp_path / "m.gguf"), _truncated(llama_gguf(tmp_path / "t.gguf"))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(GGUFError):
            read_gguf(bad)
    assert len(os.listdir("/proc/self/fd")) == before
    f = read_gguf(good)
    weights = f.tensor_array("blk.0.attn_q.weight")
    del f
    gc.collect()
    assert weights.shape == (H * D, C) and not weights.flags.writeable  # a read-only view of the mapping
    assert np.isfinite(weights).all()  # still mapped: the view keeps the mapping alive
    assert len(os.listdir("/proc/self/fd")) == before + 1
    del weights
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_model_bytes_and_check_memory():
    config = config_from_hf(LLAMA)
    assert model_bytes(config) == config.num_params() * 4
    assert model_bytes(config, "float64") == config.num_params() * 8
    # Q8_0: 34 bytes per 32 weights for the matrices (rows of 16 round up to one block), float32 vectors.
    vectors = 3 * C
    assert model_bytes(config, matrix_format="q8_0") == vectors * 4 + (V + 16 + 8 + 8 + 16 + 24 + 24 + 16) * 34
    check_memory(10, "ten bytes", available=10)
    with pytest.raises(NotEnoughMemoryError, match=r"the 70B needs 280.00 GB \(280,000,000,000 bytes\) of memory, "
                                                   r"but this machine has 16.00 GB \(16,000,000,000 bytes\) available"):
        check_memory(280 * 10**9, "the 70B", available=16 * 10**9)
    with pytest.raises(ValueError, match="matrix_format must be a ggml block format"):
        model_bytes(config, matrix_format="q3_x")


def test_config_limits_are_checked_for_every_way_a_config_is_made():
    from tinyinfer.config import ModelConfig

    with pytest.raises(LimitError, match="config.n_layer = 1000000000 exceeds the limit 4,096"):
        ModelConfig(n_layer=10**9)
    with pytest.raises(ValueError, match="config.n_kv_head must be a positive int, got True"):
        ModelConfig(n_kv_head=True)
    with pytest.raises(ValueError, match="config.norm_eps must be a finite number, got nan"):
        ModelConfig(norm_eps=float("nan"))
    assert ModelConfig(norm_eps=np.float32(1e-5), rope_theta=500000).rope_theta == 500000


if __name__ == "__main__":  # a table of every case: seconds (without tracemalloc) and peak MB (with it)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tinyinfer.load(hf_folder(root / "warm"))
        tinyinfer.load(llama_gguf(root / "warm.gguf"))
        print(f"{'case':55} {'error':21} {'seconds':>8} {'peak MB':>8}")
        for i, case in enumerate(CASES + [LONGEST_ARRAY]):
            (root / str(i)).mkdir()
            target = case.build(root / str(i))
            gc.collect()
            start = time.perf_counter()
            try:
                case.read(target)
            except Exception:  # noqa: BLE001 - timed only; refuse() below reports what came
                pass
            seconds = time.perf_counter() - start
            error, _, peak = refuse(case.read, target)
            print(f"{case.name[:55]:55} {type(error).__name__:21} {seconds:8.3f} {peak / 1e6:8.1f}")
        sys.exit(0)
