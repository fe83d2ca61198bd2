"""llama.cpp beside tinyinfer: the same GGUF file run by the engine people deploy, for reference.

llama.cpp is an optional outside reference, reached through its Python bindings
(`pip install llama-cpp-python`, which compiles llama.cpp on install; tests/export_README.md).
Nothing in the library needs it. The benchmarks and the parity fixtures use these few calls:

    llm = open_llama(path, threads=2, n_ctx=1024)
    logits = llama_logits(llm, ids)            # (T, V) float32, every position
    tokens = llama_greedy(llm, ids, 64)        # argmax of llama.cpp's own logits, 64 steps
    seconds = llama_decode_seconds(llm, ids, 64)

Settings, and why: the KV cache in float32 (llama.cpp's default is float16, which would add its
own rounding to every comparison of the file's arithmetic); no flash attention; the logits of
every position kept (logits_all) where a comparison needs them. Greedy tokens are the argmax of
llama.cpp's logits taken here, not its sampler chain, so "greedy" means exactly the same rule on
both sides.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["available", "version", "open_llama", "llama_logits", "llama_logits_one_at_a_time", "llama_greedy",
           "llama_decode_seconds", "llama_prefill_seconds"]


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.__version__


def open_llama(path, threads: int = 2, n_ctx: int = 1024, logits_all: bool = True, n_batch: int | None = None):
    """A llama_cpp.Llama on `path` with `threads` threads for decode and for batches."""
    import llama_cpp

    f32 = 0  # GGML_TYPE_F32
    n_batch = n_ctx if n_batch is None else n_batch
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                           n_threads_batch=threads, logits_all=logits_all, verbose=False, seed=0,
                           type_k=f32, type_v=f32, flash_attn=False)


def llama_logits(llm, ids) -> np.ndarray:
    """(T, V) float32: llama.cpp's logits at every position of ids, from an empty cache."""
    llm.reset()
    llm.eval([int(i) for i in ids])
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def llama_logits_one_at_a_time(llm, ids) -> np.ndarray:
    """(T, V): the same logits as llama_logits, with ids fed one token per call (decode steps)."""
    llm.reset()
    rows = []
    for token in ids:
        llm.eval([int(token)])
        rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
    return np.stack(rows)


def llama_greedy(llm, ids, n: int, margins: bool = False, one_at_a_time: bool = False):
    """n tokens, each the argmax of llama.cpp's logits, fed back one at a time (its KV cache).
    margins: also return each step's top-1 minus top-2 logit. one_at_a_time: prefill ids one token
    per call instead of as one batch."""
    llm.reset()
    if one_at_a_time:
        for token in ids:
            llm.eval([int(token)])
    else:
        llm.eval([int(i) for i in ids])
    out, gaps = [], []
    for _ in range(n):
        row = np.asarray(llm.scores[llm.n_tokens - 1])
        token = int(np.argmax(row))
        two = np.partition(row, -2)[-2:]
        out.append(token)
        gaps.append(round(float(two[1] - two[0]), 5))
        llm.eval([token])
    return (out, gaps) if margins else out


def llama_prefill_seconds(llm, ids) -> float:
    """Wall time of one prefill of ids from an empty cache."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval([int(i) for i in ids])
    return time.perf_counter() - t0


def llama_decode_seconds(llm, ids, n: int) -> float:
    """Wall time of n single-token decode steps after a prefill of ids (the prefill not counted)."""
    llm.reset()
    llm.eval([int(i) for i in ids])
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(n):
        llm.eval([token])
    return time.perf_counter() - t0
