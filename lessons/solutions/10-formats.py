"""Worked solutions to the exercises of lesson 10 (formats and interop: GGUF and safetensors).

Run from the repository root: `python lessons/solutions/10-formats.py` (all exercises) or
`python lessons/solutions/10-formats.py 2` (some). TINYINFER_LESSON_SMALL=1 shortens the
evaluation of exercise 4. Files are written to a temporary folder and removed at the end.
"""
import functools
import json
import os
import struct
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
from tinyinfer.corpus import token_stream
from tinyinfer.evaluate import evaluate
from tinyinfer.export import export_hf
from tinyinfer.gguf import GGUFError, GGUFTensor, TensorType, ValueType, read_gguf, write_gguf
from tinyinfer.gguf_model import export_gguf, load_gguf, rope_permute, rope_unpermute
from tinyinfer.lesson_tools import compare, run_exercises
from tinyinfer.lessons import repo_root
from tinyinfer.quant import quantize
from tinyinfer.safetensors import read_safetensors_header

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
OUT = Path(tempfile.mkdtemp(prefix="tinyinfer-solutions10-"))


@functools.lru_cache(maxsize=None)
def teacher():
    return tinyinfer.load(repo_root() / "models" / "teacher")


def typed_metadata(f):
    """A read file's metadata with its exact GGUF types, ready for write_gguf."""
    return {key: (ValueType.ARRAY, (vtype[1], f.metadata[key])) if isinstance(vtype, tuple) else (vtype, f.metadata[key])
            for key, vtype in f.value_types.items()}


def copy_tensors(f, replace=None):
    """Every tensor of a read file as a GGUFTensor; replace: {name: GGUFTensor} swaps some."""
    replace = replace or {}
    return [replace.get(t.name) or GGUFTensor(t.name, t.type, t.shape, f.tensor_bytes(t.name).copy())
            for t in f.tensors.values()]


# ---- exercise 1 -----------------------------------------------------------------------------------


def gguf_by_hand(path, pad=True):
    """One key and one 3x32 float32 tensor, written with struct alone."""
    def string(s):
        raw = s.encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw

    tensor = np.arange(96, dtype=np.float32).reshape(3, 32) / 10
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)  # version 3, one tensor, one key/value pair
    kv = string("general.architecture") + struct.pack("<I", 8) + string("demo")  # 8 = STRING
    # the tensor table: name, n_dims, ne (innermost first: [32, 3]), type (0 = F32), offset in the data
    table = string("demo.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 32, 3) + struct.pack("<I", 0) \
        + struct.pack("<Q", 0)
    before_data = header + kv + table
    padding = b"\0" * ((-len(before_data)) % 32) if pad else b""  # the data starts at a multiple of 32
    path.write_bytes(before_data + padding + tensor.tobytes())
    return tensor


def exercise_1():
    """A GGUF by hand, read by tinyinfer and by the gguf package; and without the padding."""
    path = OUT / "by-hand.gguf"
    expected = gguf_by_hand(path)
    f = read_gguf(path)
    print(f"read_gguf: metadata {f.metadata}, tensor {list(f.tensors)} equal: "
          f"{np.array_equal(f.tensor_array('demo.weight'), expected)}")
    try:
        import gguf

        reader = gguf.GGUFReader(path)
        theirs = reader.tensors[0]
        print(f"gguf.GGUFReader: tensor {theirs.name!r} shape {[int(n) for n in theirs.shape]} (ne order), equal: "
              f"{np.array_equal(np.asarray(theirs.data).reshape(3, 32), expected)}")
    except ImportError:
        print("the gguf package is not installed (pip install gguf) to read it a second way")
    gguf_by_hand(path, pad=False)
    try:
        read_gguf(path)
        print("without padding: read_gguf accepted it (unexpected)")
    except GGUFError as error:
        print(f"without padding, read_gguf refuses: {error}")


# ---- exercise 2 -----------------------------------------------------------------------------------


def exercise_2():
    """Break it: one byte changed at a time, and what read_gguf says."""
    path = export_gguf(teacher(), OUT / "teacher-q4_0.gguf", quant="q4_0")
    good = path.read_bytes()
    f = read_gguf(path)
    first_key = len(good[:24])  # after the 24-byte header comes the first key's 8-byte length
    first_tensor = next(iter(f.tensors.values()))
    table_start = good.index(first_tensor.name.encode()) - 8  # the first tensor name's length field
    type_field = table_start + 8 + len(first_tensor.name) + 4 + 8 * len(first_tensor.shape)
    edits = {"the tensor count (byte 8)": 8, "the first key's string length (its 3rd byte)": first_key + 2,
             f"the type of {first_tensor.name}": type_field}
    for what, offset in edits.items():
        broken = bytearray(good)
        broken[offset] ^= 0x55
        (OUT / "broken.gguf").write_bytes(broken)
        try:
            read_gguf(OUT / "broken.gguf")
            print(f"{what}: still parses")
        except (GGUFError, ValueError) as error:
            print(f"{what}: {type(error).__name__}: {str(error)[:150]}")
    # a byte inside a tensor's data: every layout check passes, the model is different
    info = f.tensors["blk.0.ffn_up.weight"]
    broken = bytearray(good)
    broken[info.offset + 1] ^= 0x40  # the high byte of the first block's float16 scale
    (OUT / "broken.gguf").write_bytes(broken)
    changed = load_gguf(OUT / "broken.gguf")
    ids = np.array(teacher().tokenizer.encode("def add(a, b):\n    return a + b\n"))
    original = load_gguf(path)
    print(f"a flipped bit in blk.0.ffn_up.weight's first scale parses fine; the logits move by up to "
          f"{np.abs(changed.logits(ids) - original.logits(ids)).max():.2f}")
    print("GGUF has no checksum, so a reader cannot tell. It could check that every scale is finite and "
          "of a plausible size, or the file could carry a hash of its data (the publisher's SHA-256 next "
          "to the download does this job in practice).")


# ---- exercise 3 -----------------------------------------------------------------------------------


def exercise_3():
    """The other permutation: a file written without it, loaded by load_gguf."""
    model = teacher()
    config = model.config
    path = export_gguf(model, OUT / "teacher-f32.gguf")
    f = read_gguf(path)
    replace = {}
    for name, info in f.tensors.items():
        heads = config.n_head if name.endswith("attn_q.weight") else config.n_kv_head if name.endswith("attn_k.weight") else None
        if heads:  # undo the exporter's permutation: the file then holds Hugging Face's row order
            w = f.tensor_array(name)
            replace[name] = GGUFTensor.from_array(name, rope_unpermute(np.array(w), heads, config.head_dim))
    write_gguf(OUT / "unpermuted.gguf", typed_metadata(f), copy_tensors(f, replace))
    wrong = load_gguf(OUT / "unpermuted.gguf")  # load_gguf undoes a permutation that was never made
    ids = np.array(model.tokenizer.encode("def fibonacci(n):\n    if n < 2:\n        return n\n"))
    diff = np.abs(wrong.logits(ids) - model.logits(ids)).max(axis=-1)  # (T,) per position
    print(f"largest logit difference per position: {np.round(diff[:8].astype(float), 4).tolist()} ...")
    print(f"right (< 1e-4) at positions {np.flatnonzero(diff < 1e-4).tolist()}")
    # put the rows back as load_gguf should have found them: permute what it unpermuted
    fixed_params = dict(wrong.params)
    for name, w in wrong.params.items():
        heads = config.n_head if name.endswith("q_proj.weight") else config.n_kv_head if name.endswith("k_proj.weight") else None
        if heads:
            fixed_params[name] = rope_permute(w, heads, config.head_dim)
    fixed = tinyinfer.Model(config, fixed_params, model.tokenizer)
    print(f"undoing load_gguf's unpermutation: largest difference {np.abs(fixed.logits(ids) - model.logits(ids)).max():.1e}")
    print("Position 0 is always right: it attends only to itself, and a score q . k of two vectors whose "
          "rows were shuffled alike and rotated by the same angle is unchanged. Every later position mixes "
          "in scores between different positions, where the pairs RoPE rotates are the wrong ones.")


# ---- exercise 4 -----------------------------------------------------------------------------------


def exercise_4():
    """A Q8_0 embedding, as llama.cpp's converter writes it: size and held-out perplexity."""
    model = teacher()
    path = export_gguf(model, OUT / "teacher-q8_0.gguf", quant="q8_0")
    f = read_gguf(path)
    embedding = np.array(f.tensor_array("token_embd.weight"))  # (V, C) float32 in our export
    blocks = quantize(embedding, "q8_0").to_bytes()
    replace = {"token_embd.weight": GGUFTensor("token_embd.weight", TensorType.Q8_0, embedding.shape, blocks)}
    write_gguf(OUT / "teacher-q8_0-embd.gguf", typed_metadata(f), copy_tensors(f, replace))
    val = token_stream(model.tokenizer, "val", progress=False)
    windows = 8 if SMALL else 64
    results = {}
    for label, p in (("Q8_0 blocks, float32 embedding", path), ("Q8_0 blocks, Q8_0 embedding", OUT / "teacher-q8_0-embd.gguf")):
        results[label] = evaluate(tinyinfer.load(p), val, 256, windows, reference=model)
        print(f"{label}: {p.stat().st_size / 1e6:.2f} MB, held-out perplexity {results[label]['perplexity']:.3f}, "
              f"KL from the float model {results[label]['kl_divergence']:.5f} ({windows} windows of 256)")
    a, b = results.values()
    print(compare(b["perplexity"], a["perplexity"], what="Quantizing the embedding too", verb="gives",
                  of="the perplexity", more="higher", less="lower", band=0.001))


# ---- exercise 5 -----------------------------------------------------------------------------------


def exercise_5():
    """safetensors against GGUF: names, shapes, types, alignment, and quantized blocks."""
    folder = export_hf(teacher(), OUT / "teacher-hf")
    st = folder / "model.safetensors"
    raw = st.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_len])
    infos, meta = read_safetensors_header(st)
    name = "model.layers.0.mlp.up_proj.weight"
    print(f"safetensors: 8 bytes of header length ({header_len}), then JSON: {json.dumps({name: header[name]})}")
    print(f"   data starts at byte {8 + header_len} ({(8 + header_len) % 8 == 0 and 'a multiple of 8' or 'unaligned'}); "
          f"metadata {meta}; {len(infos)} tensors")
    print("GGUF: a binary table (name, dims innermost first, ggml type, offset) after typed key/values; "
          "32-byte alignment so each tensor can be used in place from a memory map. safetensors: one JSON "
          "header with dtype, shape (outermost first) and [start, end) byte offsets; the JSON is padded "
          "with spaces so the data starts at a multiple of 8.")
    print("Q4_0 in safetensors: store each tensor's blocks as a uint8 array of shape (N, K / 32 * 18) and "
          "record the format in __metadata__ (e.g. {'quant': 'q4_0'}). transformers would read it only "
          "with a quantizer that knows that layout (its GGUF and bitsandbytes loaders are such hooks); "
          "a plain loader would see uint8 weights of the wrong shape.")


if __name__ == "__main__":
    try:
        run_exercises(globals())
    finally:
        import shutil

        shutil.rmtree(OUT, ignore_errors=True)
