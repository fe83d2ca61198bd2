# Lesson 10: formats and interop, or how a model leaves tinyinfer.
# Source of notebooks/10-formats.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/10-formats.py` from the repository root.

# %% [markdown]
# # Lesson 10 — Formats and interop: a model that outgrows tinyinfer
#
# Everything so far ran inside tinyinfer. A model worth keeping will be served by something
# else: **llama.cpp** (and the many apps built on it) on a laptop, **transformers** for
# research. Neither knows tinyinfer; each has a file format. This lesson takes our teacher out
# through both doors, opens the files byte by byte, and brings the model back in.
#
# | exit | what the engine reads | tinyinfer function |
# |---|---|---|
# | llama.cpp | one `.gguf` file: header, key/value metadata, tensor table, aligned data | `tinyinfer/gguf_model.py: export_gguf` |
# | transformers | a folder: `config.json`, `model.safetensors`, `tokenizer.json` | `tinyinfer/export.py: export_hf` |
# | back in | either of the above | `tinyinfer.load(path)` (`.gguf` goes to `tinyinfer/gguf_model.py: load_gguf`) |
#
# The container (GGUF's bytes) is `tinyinfer/gguf.py: write_gguf, read_gguf`; the model mapping
# (names, RoPE row order, tokenizer keys) is `tinyinfer/gguf_model.py`. The first cell prints how
# long each is: a file format you can read in one sitting. `tests/test_llamacpp_parity.py` runs
# the files in llama.cpp itself (tests/export_README.md).
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) only shortens the last comparison.

# %%
# %matplotlib inline
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: one BLAS thread is fastest

import struct
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinyinfer
from tinyinfer.export import dense_model, export_hf
from tinyinfer.gguf import TENSOR_BLOCKS, read_gguf
from tinyinfer.gguf_model import export_gguf, gguf_tensor_names, rope_permute
from tinyinfer.quant.formats import BLOCK_Q8_0
from tinyinfer.quant.model import quantize_model

from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
MODEL_DIR = ROOT / "models" / "teacher"
model = tinyinfer.load(MODEL_DIR)
config = model.config
OUT = Path(tempfile.mkdtemp(prefix="tinyinfer-lesson10-"))
print(f"model: {MODEL_DIR.relative_to(ROOT)}, {model.num_params():,} parameters; files go to {OUT}")
for module in ("gguf.py", "gguf_model.py", "export.py"):
    lines = (ROOT / "tinyinfer" / module).read_text(encoding="utf-8").splitlines()
    code = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    print(f"tinyinfer/{module}: {len(lines)} lines ({len(code)} that are neither blank nor comments)")

# %% [markdown]
# ## 1. Write one
#
# `export_gguf(model, path, quant)` writes the model as llama.cpp's `llama` architecture. We make
# four files: float32, float16, and the two ggml block formats of lesson 04.

# %%
paths = {quant: export_gguf(model, OUT / f"teacher-{quant}.gguf", quant=quant)
         for quant in ("f32", "f16", "q8_0", "q4_0")}
for quant, path in paths.items():
    print(f"{path.name:>22}: {path.stat().st_size / 1e6:6.2f} MB")

# %% [markdown]
# ## 2. The header: 24 bytes
#
# A GGUF file starts with the four letters `GGUF`, then three little-endian integers: the format
# version (3), how many tensors, how many key/value pairs. Nothing else is fixed-size after it:
# every string carries its own length, so a reader walks the file front to back.

# %%
raw = paths["q8_0"].read_bytes()
print(" ".join(f"{b:02x}" for b in raw[:24]))
magic, (version, n_tensors, n_kv) = raw[:4], struct.unpack("<IQQ", raw[4:24])
print(f"magic {magic!r}, version {version}, {n_tensors} tensors, {n_kv} key/value pairs")

# %% [markdown]
# ## 3. Key/value metadata: the model card llama.cpp reads
#
# Each pair is a key (length + UTF-8), a type tag (`tinyinfer/gguf.py: ValueType`: UINT32,
# FLOAT32, STRING, ARRAY, ...) and the value. llama.cpp checks the **types** too: a
# `llama.block_count` written as a 64-bit int is refused, so the exporter writes sizes as UINT32
# and floats as FLOAT32, as llama.cpp's own converter does. `tokenizer.ggml.*` holds the whole
# byte-level BPE of lesson 02: the token strings, their types (normal / control), the merges in
# rank order, and `tokenizer.ggml.pre = "gpt-2"`, which selects GPT-2's pre-tokenizer regex in
# llama.cpp, the one `tinyinfer/tokenizer/pretokenizers.py: gpt2_split` uses (lesson 02); the
# metadata is written and read by `tinyinfer/tokenizer/gguf_vocab.py`.

# %%
f = read_gguf(paths["q8_0"])
for key, value in f.metadata.items():
    vtype = f.value_types[key]
    kind = f"ARRAY[{vtype[1].name}]" if isinstance(vtype, tuple) else vtype.name
    if isinstance(value, (list, np.ndarray)):
        shown = f"{len(value)} items: {list(value[:4]) if isinstance(value, list) else value[:4].tolist()} ..."
    else:
        shown = repr(value)
    print(f"{key:<40} {kind:<14} {shown}")

# %% [markdown]
# ## 4. The tensor table, and alignment
#
# Then one entry per tensor: name, number of dimensions, the dimensions, the ggml type and an
# offset into the data section. Two details:
#
# * **ne is reversed.** ggml lists the innermost (contiguous) dimension first, so our
#   `(N, K) = (out, in)` weight is `ne = [K, N]`. No data is transposed; only the list is.
# * **alignment.** The data section starts at a multiple of 32 bytes and every offset is a
#   multiple of 32 (`general.alignment`), so the loader can `mmap` the file and hand each tensor
#   to SIMD code without copying. Zeros pad the gaps.
#
# The names are ggml's (`tinyinfer/gguf_model.py: gguf_tensor_names`); a tied head has no
# `output.weight`, and llama.cpp then multiplies by `token_embd` itself.

# %%
hf_of = {g: h for h, g in gguf_tensor_names(config).items()}
print(f"data starts at byte {f.data_start} (header + metadata + table = {f.data_start} after padding)")
print(f"{'GGUF name':<26} {'HF name':<48} {'type':<5} {'ne (file)':<12} {'offset':>9} {'bytes':>8}")
for i, info in enumerate(f.tensors.values()):
    if i < 12 or i == len(f.tensors) - 1:
        ne = list(reversed(info.shape))
        print(f"{info.name:<26} {hf_of[info.name]:<48} {info.type.name:<5} {str(ne):<12} "
              f"{info.offset - f.data_start:>9} {info.nbytes:>8}")
    elif i == 12:
        print("   ...")
assert all((t.offset - f.data_start) % f.alignment == 0 for t in f.tensors.values())

# %% [markdown]
# A map of the whole file: how many of its bytes are bookkeeping, and where the weights sit.

# %%
regions = [("header", 24), ("key/values + tensor table", f.data_start - 24)]
regions += [(name, info.nbytes) for name, info in f.tensors.items()]
colors = {"F32": "C0", "F16": "C1", "Q8_0": "C2", "Q4_0": "C3"}
fig, ax = plt.subplots(figsize=(11, 2.0))
start = 0
for name, size in regions[:2]:
    ax.barh(0, size, left=start, color="0.3" if name == "header" else "0.6")
    start += size
for name, info in f.tensors.items():
    ax.barh(0, info.nbytes, left=info.offset, color=colors[info.type.name], edgecolor="white", lw=0.3)
ax.set_yticks([])
ax.set_xlabel("byte offset in teacher-q8_0.gguf")
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("0.6", *colors.values())]
ax.legend(handles, ["metadata + table", *colors], fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
ax.set_title(f"the metadata (mostly the tokenizer) is {(f.data_start) / len(raw):.1%} of the file")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The data: one Q8_0 block by hand
#
# A Q8_0 tensor's bytes are ggml's blocks, row after row: a float16 scale `d`, then 32 int8
# `q`, 34 bytes, value `q * d` (lesson 04). tinyinfer's `QTensor` already holds exactly these
# bytes, so the exporter copies them: `QTensor.to_bytes()` *is* the GGUF payload. Let us decode
# the first block of `blk.0.ffn_up.weight` straight from the file and compare.

# %%
info = f.tensors["blk.0.ffn_up.weight"]
first = raw[info.offset: info.offset + 34]
d = np.frombuffer(first[:2], dtype="<f2")[0]
q = np.frombuffer(first[2:], dtype=np.int8)
print(f"d = {float(d):.6g}, q[:8] = {q[:8]}")
qmodel = quantize_model(model, "q8_0")
qt = qmodel.params["model.layers.0.mlp.up_proj.weight"]
print("matches QTensor row 0, block 0:", np.array_equal(q * np.float32(d), qt.dequantize()[0, :32]))
print("whole tensor byte-identical:", f.tensor_bytes(info.name).tobytes() == qt.to_bytes().tobytes())
assert BLOCK_Q8_0.itemsize == TENSOR_BLOCKS[info.type][1] == 34

# %% [markdown]
# ## 6. The one real translation: RoPE's pairs
#
# Only two tensors per layer are not copied as they are: `attn_q` and `attn_k`. RoPE (lesson 01)
# rotates dimensions in pairs. tinyinfer, like transformers, pairs dimension i with i + D/2
# ("rotate half", `tinyinfer/ops.py: rope_forward`); ggml's default RoPE pairs neighbours
# (2i, 2i + 1), the layout of Meta's original LLaMA code. Same rotation, different storage order.
# So the exporter reorders the *rows* of q_proj and k_proj within each head
# (`tinyinfer/gguf_model.py: rope_permute`, the same reshape as llama.cpp's `convert_hf_to_gguf.py`),
# and `load_gguf` undoes it. Since q and k are reordered alike, every attention score q . k is
# unchanged. We check that on one head: rotate-half RoPE on HF rows vs interleaved RoPE on
# permuted rows.

# %%
D = config.head_dim
rng = np.random.default_rng(0)
x = rng.standard_normal(config.n_embd).astype(np.float32)  # one token's normalized input (C,)
wq = model.params["model.layers.0.self_attn.q_proj.weight"][:D]  # head 0's rows (D, C)
wk = model.params["model.layers.0.self_attn.k_proj.weight"][:D]


def rope_rotate_half(v, pos):  # tinyinfer / HF: pairs (i, i + D/2)
    angle = pos * 10000.0 ** (-np.arange(0, D, 2) / D)
    a, b = v[: D // 2], v[D // 2:]
    return np.concatenate([a * np.cos(angle) - b * np.sin(angle), a * np.sin(angle) + b * np.cos(angle)])


def rope_interleaved(v, pos):  # ggml: pairs (2i, 2i + 1)
    angle = pos * 10000.0 ** (-np.arange(0, D, 2) / D)
    out = np.empty_like(v)
    out[0::2] = v[0::2] * np.cos(angle) - v[1::2] * np.sin(angle)
    out[1::2] = v[0::2] * np.sin(angle) + v[1::2] * np.cos(angle)
    return out


for pos_q, pos_k in ((5, 3), (40, 0)):
    hf = rope_rotate_half(wq @ x, pos_q) @ rope_rotate_half(wk @ x, pos_k)
    ggml = rope_interleaved(rope_permute(wq, 1, D) @ x, pos_q) @ rope_interleaved(rope_permute(wk, 1, D) @ x, pos_k)
    wrong = rope_interleaved(wq @ x, pos_q) @ rope_interleaved(wk @ x, pos_k)  # forgot to permute
    print(f"q at {pos_q}, k at {pos_k}: score HF {hf:+.5f}  ggml (permuted) {ggml:+.5f}  "
          f"ggml without the permutation {wrong:+.5f}")

# %% [markdown]
# ## 7. Bytes per tensor, by type
#
# What each file spends its bytes on. Norm gains stay float32 in every file (llama.cpp wants
# them so, and they are tiny); the embedding stays float in the Q8_0 / Q4_0 files, because
# `quantize_model` keeps the lookup table (and so the tied head) in float32.

# %%
groups = {"embedding": ("token_embd",), "attention": ("attn_q", "attn_k", "attn_v", "attn_output"),
          "MLP": ("ffn_gate", "ffn_up", "ffn_down"), "norms": ("norm",), "output": ("output.",)}


def group_of(name):
    return next(g for g, keys in groups.items() if any(k in name for k in keys))


fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
ax = axes[0]
bottom = np.zeros(len(paths))
for g in groups:
    sizes = np.array([sum(t.nbytes for t in read_gguf(p).tensors.values() if group_of(t.name) == g)
                      for p in paths.values()]) / 1e6
    if sizes.any():
        ax.bar(list(paths), sizes, bottom=bottom, label=g)
        bottom += sizes
ax.set_xlabel("file (weight format)")
ax.set_ylabel("MB of tensor data")
ax.set_title("where the bytes go")
ax.legend(fontsize=8, loc="best")
ax = axes[1]
for quant, p in paths.items():
    infos = [t for t in read_gguf(p).tensors.values() if t.name.startswith("blk.0.")]
    ax.scatter([t.name.split(".")[2] for t in infos], [8 * t.nbytes / int(np.prod(t.shape)) for t in infos],
               label=quant, s=30)
ax.set_xlabel("tensor of block 0 (GGUF name)")
ax.set_ylabel("bits per weight")
ax.set_title("layer 0, per tensor")
ax.tick_params(axis="x", rotation=45)
ax.legend(fontsize=8, loc="best")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 8. And back: the same model, bit for bit
#
# `tinyinfer.load("x.gguf")` reads the file with `tinyinfer/gguf.py: read_gguf` (which checks
# every count against the file's length before it allocates anything, and refuses unknown types,
# overlapping or misaligned tensors), undoes the RoPE permutation, and turns Q8_0 / Q4_0 tensors
# back into QTensor layers with `QTensor.from_bytes`. The logits are not close: they are equal.
# The Hugging Face export expands quantized weights to float32, because transformers has no Q8_0;
# it computes the dequantized function (lesson 04's "fake quantization").

# %%
ids = np.array(model.tokenizer.encode("def fibonacci(n):\n    if n < 2:\n        return n\n"))
for quant in ("f32", "q8_0", "q4_0"):
    back = tinyinfer.load(paths[quant])
    ref = quantize_model(model, quant) if quant != "f32" else model
    print(f"{quant}: logits identical after the round trip: {np.array_equal(back.logits(ids), ref.logits(ids))}; "
          f"same tokenizer: {back.tokenizer.encode('hello') == model.tokenizer.encode('hello')}")
hf_dir = export_hf(qmodel, OUT / "teacher-q8_0-hf")
print(sorted(p.name for p in hf_dir.iterdir()))
print("HF folder = dequantized Q8_0 model:",
      np.allclose(tinyinfer.load(hf_dir).logits(ids), dense_model(qmodel).logits(ids), atol=1e-6))

# %% [markdown]
# ## 9. The real test: llama.cpp runs it
#
# A file that our own reader accepts proves little. `tests/test_llamacpp_parity.py` loads the
# four files in llama.cpp (through llama-cpp-python) and compares on held-out text: logits at
# every position, top-1 agreement, and 64 greedy tokens. tests/export_README.md has the figures.
# If llama-cpp-python is installed in this kernel, here is the comparison on one window.

# %%
try:
    import llama_cpp
except ImportError:
    llama_cpp = None
    print("llama-cpp-python is not installed here; see tests/export_README.md to run this section")
if llama_cpp is not None:
    from tinyinfer.corpus import token_stream

    window = token_stream(model.tokenizer, "val", progress=False)[: 64 if SMALL else 256].astype(np.int64)
    for quant in ("f32", "q8_0", "q4_0"):
        llm = llama_cpp.Llama(model_path=str(paths[quant]), n_ctx=config.n_ctx, n_batch=config.n_ctx,
                              n_threads=1, logits_all=True, verbose=False)
        llm.eval([int(t) for t in window])
        theirs = np.array(llm.scores[: len(window)])
        ours = (quantize_model(model, quant) if quant != "f32" else model).logits(window)
        print(f"{quant}: max |logit diff| {np.abs(theirs - ours).max():.2e}, "
              f"top-1 agreement {(theirs.argmax(-1) == ours.argmax(-1)).mean():.2%}")
        llm.close()

# %% [markdown]
# ## Exercises
#
# Worked solutions for every exercise are in `lessons/solutions/10-formats.py` (run it from the
# repository root: `python lessons/solutions/10-formats.py`, or `... 2` for exercise 2 alone).
#
# 1. **A GGUF by hand.** Without `write_gguf`, write a file with `struct.pack` that holds one key
#    (`general.architecture = "demo"`) and one 3x32 float32 tensor. Read it with
#    `tinyinfer.gguf.read_gguf` and with the `gguf` package's `GGUFReader`. What happens if you
#    forget the padding before the data section?
# 2. **Break it.** Take `teacher-q4_0.gguf`, change one byte of the tensor count, of a string
#    length, of a tensor type; what does `read_gguf` say each time? Find a single-byte change that
#    still parses but gives a different model. What could a reader check to catch it?
# 3. **The other permutation.** Export with the RoPE permutation switched off (the test
#    `tests/test_export.py: reference_logits_unpermuted` shows how) and compare the logits of
#    `load_gguf` with and without undoing it. Which positions are still right, and why is
#    position 0 always right?
# 4. **Q8_0 embedding.** llama.cpp's converter quantizes `token_embd` too. Write such a file (the
#    gguf package's `GGUFWriter` is enough; see `tests/test_export.py:
#    test_load_gguf_written_by_gguf_py_with_a_quantized_embedding`) and measure what it costs in
#    held-out perplexity and file size with `tinyinfer.evaluate.evaluate`.
# 5. **safetensors vs GGUF.** Open `model.safetensors` of the HF export with
#    `tinyinfer/safetensors.py` and compare the two containers: where does each keep names,
#    shapes and types, how is alignment handled, and what would it take to store Q4_0 blocks in
#    safetensors so that transformers could still read the file?
