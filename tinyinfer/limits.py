"""What a model file may declare, in one place, and whether a model fits in this machine's memory.

Lesson: lessons/10-formats.py

A model file is a promise about sizes: config.json says 30 layers of width 576, a safetensors
header says where 272 tensors are, a GGUF header says how many keys, tensors and tokens follow.
A loader that believes the promise allocates what it is told. A file that lies (by accident or on
purpose) then makes it allocate gigabytes or loop for hours: `num_hidden_layers: 1000000000` in a
2 KB config is enough.

So every size a file declares is compared with a limit *before* anything is allocated for it.
The limits are far above any model tinyinfer could run on a laptop (the reasons say which real
model sets the scale) and far below what would hang the loader. Nothing here is a property of
the formats; they are this library's choices, all in this file so you can see them together.

Past the limits, one question remains for a file within them: does the model fit? model_bytes
computes what its weights take in memory (parameters x bytes per parameter, or ggml block bytes
for quantized matrices), and check_memory compares that with what the machine has free, before
the weights are read.
"""
from __future__ import annotations

import math
import os

__all__ = ["MODEL_LIMITS", "MAX_TENSORS", "MAX_JSON_DEPTH", "CONFIG_JSON_BYTES", "CONFIG_JSON_VALUES",
           "INDEX_JSON_BYTES", "INDEX_JSON_VALUES",
           "TOKENIZER_JSON_BYTES", "SAFETENSORS_HEADER_BYTES", "SAFETENSORS_HEADER_VALUES", "SAFETENSORS_MAX_RANK",
           "GGUF_MAX_KEYS", "GGUF_MAX_STRING_BYTES", "GGUF_MAX_ARRAY_LENGTH", "NORM_EPS_RANGE", "ROPE_THETA_RANGE",
           "LimitError", "NotEnoughMemoryError", "check_limit", "model_bytes", "available_memory_bytes",
           "check_memory"]

# ---------------------------------------------------------------------------------------------------
# model shapes (ModelConfig field -> (largest accepted, the real model that sets the scale))
#
# The largest open dense models (Llama-3.1-405B) have 126 layers, width 16,384, 128 heads and an FFN
# of 53,248; a 70B has 80 layers and width 8,192. Vocabularies reach 262,144 (Gemma 3); contexts
# 131,072 (Llama 3.1), a few 1M. Each limit leaves several times that room. Whether such a model
# fits in memory is a separate question (check_memory) -- these only stop absurd declarations.

MODEL_LIMITS = {
    "n_layer": (4096, "Llama-3.1-405B has 126 layers"),
    "n_embd": (65_536, "Llama-3.1-405B is 16,384 wide"),
    "n_head": (4096, "Llama-3.1-405B has 128 heads"),
    "n_kv_head": (4096, "Llama-3.1-405B has 8 KV heads"),
    "head_dim": (4096, "heads are 64-256 wide in real models"),
    "ffn_hidden": (1_048_576, "Llama-3.1-405B's FFN is 53,248 wide"),
    "vocab_size": (4_194_304, "Gemma 3 has 262,144 tokens"),
    "n_ctx": (1_048_576, "Llama 3.1 reads 131,072 positions, a few models 1M"),
}

# Scalars that would make NaN logits. RMSNorm / LayerNorm divide by sqrt(mean(x^2) + eps): eps <= 0
# divides an all-zero row by 0 (NaN), and in float32 an eps below ~1e-38 rounds to 0 and does the
# same. An eps near 1 would drown the signal; real models use 1e-12 to 1e-5.
NORM_EPS_RANGE = (1e-30, 1.0)
# RoPE turns position p by p * theta^(-2i/D). Below 1 the frequencies grow with i instead of falling
# (no real model does that) and a tiny theta overflows the angles to Inf, whose cosine is NaN.
# Real bases run from 10,000 to ~10^7; float32 (GGUF's storage) ends at 3.4e38.
ROPE_THETA_RANGE = (1.0, 1e30)

# ---------------------------------------------------------------------------------------------------
# files

# Tensors in one checkpoint: a 70B dense model has 723, a quantized or CSR-sparse tinyinfer file a
# few times its matrix count. Every tensor costs a few hundred bytes of Python objects when parsed.
MAX_TENSORS = 16_384

# JSON (tinyinfer/jsonfile.py). No model file nests deeper than ~6 levels; Python's parser recurses
# per level and raises RecursionError near 1,000.
MAX_JSON_DEPTH = 64
CONFIG_JSON_BYTES = 1 << 20           # real configs are 1-5 KB; 1 MB leaves room for label maps
CONFIG_JSON_VALUES = 1 << 16          # ~50 fields in a real config
INDEX_JSON_BYTES = 16 << 20           # "weight_map": ~100 bytes per tensor name
INDEX_JSON_VALUES = 4 * MAX_TENSORS   # two per weight_map entry (name, shard), and a little metadata
TOKENIZER_JSON_BYTES = 64 << 20       # Gemma 3's tokenizer.json is 33 MB, GPT-2's 1.4 MB

# safetensors: the header is ~150 bytes per tensor (16,384 tensors: ~2.5 MB). The reference
# implementation allows 100 MB, but a 60 MB header of tiny entries parses into >1 GB of dicts.
SAFETENSORS_HEADER_BYTES = 16 << 20
SAFETENSORS_HEADER_VALUES = 32 * MAX_TENSORS  # ~12 per tensor entry, ~5 more if metadata describes it
SAFETENSORS_MAX_RANK = 16             # no model tensor has more than 5 dims; NumPy stops at 64

# GGUF: a real file has ~30-50 keys, strings up to a chat template (KB) or an embedded
# tokenizer.json (tens of MB), and arrays one entry per token (tokens, scores, types, merges).
# Strings are parsed one by one (~0.5 us each on a quiet laptop core, 2-3x that on a busy one),
# so the array limit also bounds the parse time: 524,288 is twice the largest real token list
# (Gemma 3: 262,144) and merge list (Llama 3: 280,147), and parses in a quarter of a second.
# (A GGUF model's vocabulary is therefore held to this too, below the vocab_size limit above.)
GGUF_MAX_KEYS = 65_536
GGUF_MAX_STRING_BYTES = 64 << 20
GGUF_MAX_ARRAY_LENGTH = 1 << 19


class LimitError(ValueError):
    """A size or scalar read from a file is outside what tinyinfer accepts."""


class NotEnoughMemoryError(MemoryError):
    """A model's weights would not fit in the memory this machine has available."""


def check_limit(name: str, value, limit: int, why: str = "", error=LimitError) -> None:
    """Raise `error` if value > limit: "config.json num_hidden_layers = 1000000000 exceeds the limit 4096"."""
    if value > limit:
        reason = f" ({why})" if why else ""
        raise error(f"{name} = {value} exceeds the limit {limit:,}{reason}")


# ---------------------------------------------------------------------------------------------------
# memory


def model_bytes(config, dtype="float32", matrix_format: str | None = None) -> int:
    """Bytes the weights of a model with `config` take in memory.

    dtype:         the float dtype dense parameters are held in ("float32", "float64", "float16")
    matrix_format: None, or the ggml block format ("q8_0", "q4_0", "q4_1", "q4_k", ...) in which
                   the 2-D matrices (linear weights, embedding, head) are kept as blocks; vectors
                   (norm gains, biases) stay in `dtype`.

    A tied head is counted once. The sum runs over the model's parameter list, so it is exact
    for the layouts tinyinfer builds.
    """
    import numpy as np

    from .model import param_shapes  # here, not at import: model.py imports config.py, which imports this module

    itemsize = np.dtype(dtype).itemsize
    per_block, block_bytes = 1, itemsize
    if matrix_format is not None:
        from .gguf import TENSOR_BLOCKS, TensorType

        try:
            per_block, block_bytes = TENSOR_BLOCKS[TensorType[matrix_format.upper()]]
        except KeyError:
            raise ValueError(f"matrix_format must be a ggml block format (one of "
                             f"{', '.join(t.name.lower() for t in TENSOR_BLOCKS)}), got {matrix_format!r}") from None
    total = 0
    for shape in param_shapes(config).values():
        if len(shape) == 2 and matrix_format is not None:
            rows, row = shape
            total += rows * math.ceil(row / per_block) * block_bytes
        else:
            total += math.prod(shape) * itemsize
    return total


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text)
    except (OSError, ValueError):  # missing, unreadable, or "max" (no cgroup limit)
        return None


def available_memory_bytes() -> int | None:
    """Memory this process could still allocate without swapping, or None if the OS does not say.

    Linux: MemAvailable from /proc/meminfo (free memory plus caches the kernel can drop), and, in a
    container, the cgroup's limit minus its usage if that is smaller. Elsewhere: the free physical
    pages (os.sysconf), which leaves out caches and so errs on the safe side.
    """
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)  # the file says kB and means KiB
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",                # cgroup v1
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 says "no limit" with ~2^63
            found.append(max(0, limit - usage))
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):  # Windows, macOS: no such sysconf name
            pass
    return min(found) if found else None


def check_memory(needed_bytes: int, what: str, available: int | None = None) -> None:
    """Raise NotEnoughMemoryError if `needed_bytes` exceeds the available memory (measured if None).

    When the OS does not report available memory, nothing is checked.
    """
    if available is None:
        available = available_memory_bytes()
    if available is not None and needed_bytes > available:
        raise NotEnoughMemoryError(
            f"{what} needs {needed_bytes / 1e9:,.2f} GB ({needed_bytes:,} bytes) of memory, but this machine "
            f"has {available / 1e9:,.2f} GB ({available:,} bytes) available")
