"""One decoded token, one compiled call per layer: InferenceModel's decode step without Python between ops.

Lesson: lessons/11-real-model.py (where the time of one token goes)

When a model decodes one token at a time, a LLaMA block is eight small steps: RMSNorm, the fused
q/k/v product, RoPE, attention over the cache, the output product and the residual, RMSNorm, the
fused gate/up product and SwiGLU, the down product and the residual. InferenceModel runs each as
its own call from Python, and the calls between the steps cost more than their arithmetic (each
product quantizes x, checks its arguments and allocates its output; attention goes through the
cache's Python protocol; every reshape is a NumPy call). Measured on a 2-core EPYC with
SmolLM2-135M's Q4_1 file (30 blocks, C = 576): step by step, the 121 products of a token took
~13 ms and the whole token ~18 ms; with one call per block the whole token took ~11-12 ms, about
1.5x the tokens per second (`tinyinfer bench smollm2` measures it beside llama.cpp).

`layer_step` is the block as one Numba function: the same compiled pieces in the same order
(row_ops' RMSNorm, RoPE and SwiGLU loops, quant/kernels.py's activation rounding, quant/simd.py's
decode rows split over the threads, invariant_attention.py's attention row), so the logits are the
same bits as InferenceModel's step by step path (tests/test_fused_decode.py checks that). Python
calls it once per layer; between the calls nothing is allocated but the block's small buffers.

It applies when one token is decoded (B = T = 1) into a ContiguousKVCache whose attention is the
row kernel, the model is float32, and every product of every block is a QTensor in a format the
vector kernels take (quant/simd.py: SIMD_FORMATS). Otherwise InferenceModel takes its general path.

    plan = DecodePlan.build(fast)                 # None when the model does not qualify
    x = plan.hidden(x, position, kv_cache)        # x (1, C): one token's embedding -> the last block's output

InferenceModel.forward does this by itself for every step it applies to.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import row_ops, threads
from .invariant_attention import PARALLEL_MIN_WORK as ATTENTION_PARALLEL_MIN
from .invariant_attention import attention_parallel, attention_serial
from .quant import kernels, simd
from .quant.blocks import BLOCK

__all__ = ["DecodePlan", "layer_step"]


@njit(cache=True)
def _product(w, x, parts, zero, out):
    """out (1, N) = W x for x float32 (1, K): x rounded to Q8_0/Q8_1 blocks, then the decode kernel,
    on `parts` threads (1: serial). w = (tag, wd, wm, wq, wh) as quant/kernels.py's _parts gives.
    Returns the activation-rounding flags (bad blocks, bad sums) for the caller to raise on."""
    tag, wd, wm, wq, wh = w
    K = x.shape[1]
    NB = K // BLOCK
    xq = np.empty((1, NB, BLOCK), np.int8)
    xd = np.empty((1, NB), np.float32)
    xs = np.empty((1, NB), np.float32)
    bad, bad_sums = kernels.quantize_activations(x, xq, xd, xs)
    if bad == 0:
        if parts > 1:
            simd.decode_parallel(tag, wd, wm, wq, wh, xd, xs, xq, out, zero, parts)
        else:
            simd.decode_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, 0, wq.shape[0], zero)
    if simd.has_min(tag):
        return bad, bad_sums
    return bad, 0


@njit(cache=True)
def layer_step(x, norm1, norm2, eps, qkv, o, gate_up, down, parts, zero,
               key_cache, value_cache, pos, cos, sin, n_head, n_kv_head, head_dim, attn_parallel):
    """One LLaMA block for one token, in place on x (1, C) float32.

    norm1, norm2 (C,); qkv, o, gate_up, down: (tag, wd, wm, wq, wh) tuples of the fused weights;
    parts (4,): threads for each product; key_cache, value_cache (1, G, S, D): this layer's cache,
    position `pos` is written; cos, sin (1, D) for `pos`. Returns the number of activation blocks
    that could not be rounded (NaN/Inf or too large), 0 when all is well."""
    H, G, D = n_head, n_kv_head, head_dim
    C = x.shape[1]
    rstd = np.empty(1, np.float32)
    h = np.empty_like(x)
    row_ops._rmsnorm(x, norm1, eps, rstd, h)
    qkv_out = np.empty((1, qkv[3].shape[0]), np.float32)
    bad = 0
    b, s = _product(qkv, h, parts[0], zero, qkv_out)
    bad += b + s
    row_ops._rope(qkv_out, cos, sin, 1, H + G, D)
    for g in range(G):  # this position's k and v into the cache
        for d in range(D):
            key_cache[0, g, pos, d] = qkv_out[0, (H + g) * D + d]
            value_cache[0, g, pos, d] = qkv_out[0, (H + G + g) * D + d]
    q = np.empty((1, H, D), np.float32)
    for i in range(H * D):
        q[0, i // D, i % D] = qkv_out[0, i]
    att = np.empty((1, H, D), np.float32)
    tables = np.zeros((1, 1), np.int64)
    query_seq = np.zeros(1, np.int64)
    query_pos = np.full(1, pos, np.int64)
    scale = np.float32(1.0 / math.sqrt(D))
    if attn_parallel:
        attention_parallel(q, key_cache, value_cache, tables, query_seq, query_pos, scale, att)
    else:
        attention_serial(q, key_cache, value_cache, tables, query_seq, query_pos, scale, att)
    o_out = np.empty((1, C), np.float32)
    b, s = _product(o, att.reshape(1, H * D), parts[1], zero, o_out)
    bad += b + s
    for c in range(C):
        x[0, c] = x[0, c] + o_out[0, c]
    row_ops._rmsnorm(x, norm2, eps, rstd, h)
    gu = np.empty((1, gate_up[3].shape[0]), np.float32)
    b, s = _product(gate_up, h, parts[2], zero, gu)
    bad += b + s
    act = np.empty((1, gu.shape[1] // 2), np.float32)
    row_ops._swiglu(gu, act)
    down_out = np.empty((1, C), np.float32)
    b, s = _product(down, act, parts[3], zero, down_out)
    bad += b + s
    for c in range(C):
        x[0, c] = x[0, c] + down_out[0, c]
    return bad


def _weight_tuple(qt):
    return (simd.TAGS[qt.fmt],) + tuple(kernels._parts(qt))


class DecodePlan:
    """InferenceModel's layers as layer_step's arguments, prepared once (see the module docstring)."""

    def __init__(self, fast, layers):
        self.fast = fast
        self.config = fast.config
        self.layers = layers  # per layer: (norm1, norm2, qkv, o, gate_up, down, parts)
        self._entry = None
        self._nthreads = 0  # the thread count `parts` was computed for

    @classmethod
    def build(cls, fast):
        """A plan for InferenceModel `fast`, or None when its layers do not qualify."""
        from .quant.formats import QTensor

        config = fast.config
        if config.family != "llama" or fast.model.dtype != np.float32 or not fast.layers:
            return None
        layers = []
        for layer in fast.layers:
            weights = (layer.qkv, layer.o, layer.gate_up, layer.down)
            if not all(isinstance(w, QTensor) and w.fmt in simd.SIMD_FORMATS for w in weights):
                return None
            layers.append((layer.norm1.astype(np.float32, copy=False), layer.norm2.astype(np.float32, copy=False),
                           *(_weight_tuple(w) for w in weights), np.ones(4, np.int64)))
        return cls(fast, layers)

    def _split(self, nthreads: int):
        """Threads per product, as quant/kernels.py decides for a matvec (a product under
        DECODE_PARALLEL_MIN weights runs on one thread)."""
        if nthreads == self._nthreads:
            return
        for norm1, norm2, *weights, parts in self.layers:
            for j, w in enumerate(weights[:4]):
                N, K = w[1].shape[0], w[1].shape[1] * BLOCK  # wd: (N, K / 32) scales
                parts[j] = min(N, nthreads) if N * K >= kernels.DECODE_PARALLEL_MIN else 1
        self._nthreads = nthreads

    @staticmethod
    def applies(ids, positions, kv_cache) -> bool:
        """Whether a forward of ids (B, T) at positions (T,) into kv_cache is a step this plan runs:
        one token, at the position the cache is at, into a one-sequence float32 ContiguousKVCache
        with the row kernel for attention, with room for it."""
        from .kv_cache import ContiguousKVCache

        return (ids.shape == (1, 1) and isinstance(kv_cache, ContiguousKVCache) and kv_cache.attention == "rows"
                and kv_cache.keys[0].dtype == np.float32 and kv_cache.keys[0].shape[0] == 1
                and len(positions) == 1 and positions[0] == kv_cache.length and kv_cache.length < kv_cache.max_len)

    def _call(self, *args):
        if self._entry is None:  # first call: compile (or load from the disk cache), keep the entry point
            result = layer_step(*args)
            signature = tuple(layer_step.typeof_pyval(a) for a in args)
            self._entry = layer_step.overloads[signature].entry_point
            return result
        return self._entry(*args)

    def hidden(self, x, position: int, kv_cache):
        """The blocks on x (1, C) for one token at `position`, storing its keys/values; x updated in place."""
        config = self.config
        end = kv_cache.length + 1
        if end > kv_cache.max_len:
            raise ValueError(f"KV cache holds {kv_cache.max_len} positions; this step needs {end}")
        if position != kv_cache.length:
            raise ValueError(f"position must be the cache's length {kv_cache.length} for a decode step, got {position}")
        threads.apply()
        nthreads = threads.numba_threads()
        self._split(nthreads)
        cos, sin = self.fast.rope(np.array([position]))
        H, G, D = config.n_head, config.n_kv_head, config.head_dim
        attn_parallel = (position + 1) * H * D >= ATTENTION_PARALLEL_MIN and nthreads > 1
        eps = float(config.norm_eps)
        for i, (norm1, norm2, qkv, o, gate_up, down, parts) in enumerate(self.layers):
            bad = self._call(x, norm1, norm2, eps, qkv, o, gate_up, down, parts, simd.DECODE_TILE,
                             kv_cache.keys[i], kv_cache.values[i], position, cos, sin, H, G, D, attn_parallel)
            if bad:
                raise kernels.ActivationError(f"layer {i}: activations hold NaN/Inf or values too large for "
                                              f"the float16 scales of Q8_0/Q8_1 blocks")
        kv_cache.length = end
        return x
