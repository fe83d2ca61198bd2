"""A contiguous KV cache: the simplest way to stop recomputing the past at every decode step.

Lesson: lessons/01-transformer.py (the engine's lesson builds the paged version of this idea).

Without a cache, generating token t runs the whole prefix 0..t through the model again. Keys and
values of past positions never change (causal attention: a position only looks back), so we keep
them, one preallocated (B, G, n_ctx, D) array per layer, and each step only computes the new ones.

Attention over the cache runs tinyinfer/invariant_attention.py's kernel: each query row alone, in
a fixed order, so a position's result does not depend on whether it came in a prefill of 300
tokens or one token at a time, nor on the other rows of the batch. That is what makes
Model.generate, speculative decoding and the serving engine (whose paged cache calls the same
kernel: a (B, G, S, D) array is B blocks of S positions) give the same greedy tokens bit for bit,
which matters for quantized models (lessons/08-serving.py, section 8). attention="numpy" runs
the textbook version instead, ops.attention_forward on the whole batch (a few BLAS calls); so
does a cache whose dtype differs from the model's (a float16 cache), which the kernel does not take.
"""
from __future__ import annotations

import mmap

import numpy as np

from .ops import attention_forward

ATTENTION_KINDS = ("rows", "numpy")
HUGE_PAGE_BYTES = 2 << 20  # x86-64's large page
HUGE_PAGE_MIN_BYTES = HUGE_PAGE_BYTES  # smaller caches: np.zeros


def cache_zeros(shape, dtype) -> np.ndarray:
    """np.zeros(shape, dtype) for a KV cache, asking the system for 2 MB pages where it lends them.

    A cache is allocated whole but touched a block at a time as sequences grow, and the first
    write to each 4 KB page is a page fault (the kernel finds and zeroes a page). A batch of 32
    sequences enters a new block every 16 tokens each, and on a 2-core Zen 5 VM those faults were
    ~3-4 ms of a 27 ms SmolLM2 decode step (the cache writes: 3.7 ms faulting, 0.65 ms with the
    pages touched beforehand, 0.67 ms on 2 MB pages). So caches of 2 MB or more are private
    anonymous memory maps with madvise(MADV_HUGEPAGE) (Linux's transparent huge pages in "madvise"
    or "always" mode; elsewhere the advice is ignored and the pages stay 4 KB, or, without the
    advice at all, np.zeros is used). The memory is zero, as np.zeros's is, and still committed
    only as it is touched, 2 MB at a time."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    nbytes = count * dtype.itemsize
    if nbytes < HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE") or not hasattr(mmap, "MAP_PRIVATE"):
        return np.zeros(shape, dtype)
    # private anonymous memory (mmap's default for -1 is shared memory, which gets no huge pages);
    # one page more than needed, so the array can start on a 2 MB boundary
    buf = mmap.mmap(-1, (-(-nbytes // HUGE_PAGE_BYTES) + 1) * HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # the kernel refuses the advice: ordinary pages
        pass
    start = -np.frombuffer(buf, np.uint8, count=1).ctypes.data % HUGE_PAGE_BYTES  # first 2 MB boundary
    return np.frombuffer(buf, dtype, count=count, offset=start).reshape(shape)


class ContiguousKVCache:
    def __init__(self, config, batch_size, dtype=np.float32, max_len=None, attention: str = "rows"):
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.max_len = max_len or config.n_ctx
        shape = (batch_size, config.n_kv_head, self.max_len, config.head_dim)  # (B, G, S, D)
        self.keys = [cache_zeros(shape, dtype) for _ in range(config.n_layer)]
        self.values = [cache_zeros(shape, dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions stored so far (the same for every layer once a step ends)
        self.attention = attention
        self._n_layer = config.n_layer
        self._rows = None  # (step length, tables, query_seq, query_pos) of the current step, for the kernel

    def attend(self, layer, q, k, v):
        """Store this step's k, v: (B, G, T, D); attend q: (B, H, T, D) over all S positions so far."""
        T = k.shape[2]
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this step needs {end}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        if layer == self._n_layer - 1:  # the last layer closes the step
            self.length, start = end, self.length
        else:
            start = self.length
        from .invariant_attention import supports

        if self.attention == "numpy" or not supports(q.dtype, self.keys[layer].dtype):
            return attention_forward(q, self.keys[layer][:, :, :end], self.values[layer][:, :, :end])[0]
        return self._attend_rows(layer, q, start)

    def _attend_rows(self, layer, q, start):
        """The batch-invariant kernel: row b of the batch is block b of S positions."""
        from .invariant_attention import attention_rows

        B, H, T, D = q.shape
        if self._rows is None or self._rows[0] != (start, T, B):
            tables = np.arange(B, dtype=np.int64)[:, None]  # (B, 1): one block each
            query_seq = np.repeat(np.arange(B, dtype=np.int64), T)  # (B*T,)
            query_pos = np.tile(np.arange(start, start + T, dtype=np.int64), B)  # (B*T,)
            self._rows = ((start, T, B), tables, query_seq, query_pos)
        _, tables, query_seq, query_pos = self._rows
        rows = q.transpose(0, 2, 1, 3).reshape(B * T, H, D)  # (B*T, H, D); free for the model's layout
        out = attention_rows(rows, self.keys[layer], self.values[layer], tables, query_seq, query_pos, check=False)
        return out.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
