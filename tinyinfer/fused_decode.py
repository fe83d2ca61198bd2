"""One compiled call per layer: InferenceModel's blocks without Python between the ops.

Lesson: lessons/11-real-model.py (where the time of one token goes)

A LLaMA block is eight small steps: RMSNorm, the fused q/k/v product, RoPE, attention over the
cache, the output product and the residual, RMSNorm, the fused gate/up product and SwiGLU, the down
product and the residual. InferenceModel's general path runs each as its own call from Python,
and when a step feeds few tokens (decoding, or a server's batch of decoding sequences) the calls
between the steps cost more than their arithmetic: each product quantizes x, checks its arguments
and allocates its output, attention goes through the cache's Python protocol, every reshape is a
NumPy call. Measured on a 2-core EPYC with SmolLM2-135M's Q4_1 file (30 blocks, C = 576): step by
step, the 121 products of a token took ~13 ms and the whole token ~18 ms; with one call per block
the whole token took ~11-12 ms, about 1.5x the tokens per second (`tinyinfer bench smollm2`
measures it beside llama.cpp).

`layer_step` is the block as one Numba function over R packed token rows: the same compiled
pieces in the same order (row_ops' RMSNorm, RoPE and SwiGLU loops, quant/kernels.py's activation
rounding, quant/simd.py's decode rows or register tiles split over the threads,
invariant_attention.py's attention rows), so the logits are the same bits as the step-by-step
path (tests/test_fused_decode.py checks that). Python calls it once per layer.

It applies when the model is float32 with every product of every block a QTensor in a format the
vector kernels take (quant/simd.py: SIMD_FORMATS), and the tokens go into either a one-sequence
ContiguousKVCache (Model.generate, chat, speculative decoding) or the serving engine's
PagedKVCache (a packed step of several sequences), attending with the row kernel. Otherwise
InferenceModel takes its general path.

    plan = DecodePlan.build(fast)                   # None when the model does not qualify
    if plan.applies(ids, positions, kv_cache):
        x = plan.hidden(x, positions, kv_cache)     # x (T, C): token embeddings -> the last block's output

InferenceModel.forward does this by itself for every step it applies to.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.extending import overload

from . import row_ops, threads
from .invariant_attention import PARALLEL_MIN_WORK as ATTENTION_PARALLEL_MIN
from .invariant_attention import attention_parallel, attention_serial, head_tile
from .quant import interleaved, kernels, simd
from .quant.blocks import BLOCK

__all__ = ["DecodePlan", "compile_for", "layer_step"]

# From this many token rows on, a step rounds its activations and applies SwiGLU with the rows split
# over the threads (every row alone, so the same bits). A parallel region costs a few microseconds
# to start; rounding one 576-wide row costs ~1 us and one row's SwiGLU (1536 gates) ~7 us on a
# 2-core EPYC, so below ~8 rows the split would cost more than it saves.
QUANTIZE_PARALLEL_MIN_ROWS = 8
SWIGLU_PARALLEL_MIN_ROWS = 2


@njit(cache=True)
def _copy_rows(src, dst):
    """dst[...] = src for two C arrays of one shape, as a plain loop. A slice assignment would do the
    same, but Numba compiles its shape-mismatch error message with it (string formatting and joins:
    ~4 s of compilation per array rank from a fresh clone, for an error that cannot happen here)."""
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    for i in range(flat_src.size):
        flat_dst[i] = flat_src[i]


@njit(cache=True)
def _tiles_over_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, tile, parts, rows_per_task):
    """out = x W^T for the rows of x in xd/xs/xq, in register tiles of `tile`'s shape (its columns
    divide the rows), split over `parts` threads in slabs of rows_per_task rows of W."""
    if parts > 1:
        simd.simd_parallel(tag, wd, wm, wq, wh, xd, xs, xq, out, tile, rows_per_task)
    else:
        # np.int64(0), not 0: a literal 0 would make Numba compile simd_rows again for Literal[int](0)
        # (~3 s a tile shape and format), beside the int64 one the parallel split and Python calls use
        simd.simd_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, np.int64(0), wq.shape[0], tile)


def _product(w, x, parts, zero, full_tile, one_tile, out):
    """out (R, N) = x W^T for x float32 (R, K), by the kernels of w's layout: _interleaved_product
    for records (quant/interleaved.py), _simd_product for QTensor's arrays. Numba picks one when it
    compiles layer_step (the overload below), so the other is not compiled with it."""
    raise TypeError("_product is only called from compiled code")


@overload(_product)
def _product_for(w, x, parts, zero, full_tile, one_tile, out):
    if w.types[0].layout == "interleaved":
        return lambda w, x, parts, zero, full_tile, one_tile, out: _interleaved_product(w, x, parts, out)
    return lambda w, x, parts, zero, full_tile, one_tile, out: _simd_product(w, x, parts, zero, full_tile,
                                                                              one_tile, out)


@njit(cache=True)
def _quantized_x(x, parts):
    """x float32 (R, K) rounded to Q8_0/Q8_1 blocks: (xq, xd, xs, bad blocks, bad sums)."""
    R, K = x.shape
    NB = K // BLOCK
    xq = np.empty((R, NB, BLOCK), np.int8)
    xd = np.empty((R, NB), np.float32)
    xs = np.empty((R, NB), np.float32)
    if R >= QUANTIZE_PARALLEL_MIN_ROWS and parts > 1:
        bad, bad_sums = kernels.quantize_activations_parallel(x, xq, xd, xs)
    else:
        bad, bad_sums = kernels.quantize_activations(x, xq, xd, xs)
    return xq, xd, xs, bad, bad_sums


@njit(cache=True)
def _interleaved_product(w, x, parts, out):
    """_simd_product for weights as records (quant/interleaved.py: w = (tag, wd, wm, records, wh),
    wd only giving the shape): one kernel for every number of rows."""
    tag, wd, wm, rec, wh = w
    xq, xd, xs, bad, bad_sums = _quantized_x(x, parts)
    if bad == 0:
        interleaved.product(tag, rec, xq, xd, xs, out, parts)
    if simd.has_min(tag):  # the same Format type, either layout
        return bad, bad_sums
    return bad, 0


@njit(cache=True)
def _simd_product(w, x, parts, zero, full_tile, one_tile, out):
    """out (R, N) = x W^T for x float32 (R, K): x rounded to Q8_0/Q8_1 blocks, then quant/simd.py's
    kernels as quant/kernels.py's matmul_parts calls them: the decode rows for one row, register
    tiles for more (full tiles of TILE_X rows of x, then the R % TILE_X rows left: one row in a
    one-row tile, two or three padded with zero rows to a full tile: one more pass over W where a
    pass a row cost up to three; the same sums either way, every output is its own accumulator,
    blocks in order; a tile of exactly 2 or 3 rows would be a new tile shape for Numba to compile,
    ~15 s each from a fresh clone). parts: the threads (1: serial). w = (tag, wd, wm, wq, wh) as
    quant/kernels.py's _parts gives. Returns the activation rounding's flags (bad blocks, bad sums)
    for the caller to raise on."""
    tag, wd, wm, wq, wh = w
    R, K = x.shape
    N = wq.shape[0]
    NB = K // BLOCK
    xq, xd, xs, bad, bad_sums = _quantized_x(x, parts)
    if bad == 0:
        if R == 1:
            if parts > 1:
                simd.decode_parallel(tag, wd, wm, wq, wh, xd, xs, xq, out, zero, parts)
            else:
                simd.decode_rows(tag, wd, wm, wq, wh, xd, xs, xq, out, np.int64(0), N, zero)  # int64: see above
        else:
            rows_per_task = kernels.slab_rows(N, parts)  # one slab of rows per thread
            full = R - R % simd.TILE_X
            if full > 0:
                _tiles_over_rows(tag, wd, wm, wq, wh, xd[:full], xs[:full], xq[:full], out[:full], full_tile, parts,
                                 rows_per_task)
            rest = R - full  # 0 .. TILE_X - 1
            if rest == 1:
                _tiles_over_rows(tag, wd, wm, wq, wh, xd[full:], xs[full:], xq[full:], out[full:], one_tile, parts,
                                 rows_per_task)
            elif rest > 1:  # padded with zero rows to one full tile, whose extra outputs are dropped
                pad_q = np.zeros((simd.TILE_X, NB, BLOCK), np.int8)
                pad_d = np.zeros((simd.TILE_X, NB), np.float32)
                pad_s = np.zeros((simd.TILE_X, NB), np.float32)
                for r in range(rest):  # loops, not slice assignments: see _copy_rows
                    _copy_rows(xq[full + r], pad_q[r])
                    _copy_rows(xd[full + r], pad_d[r])
                    _copy_rows(xs[full + r], pad_s[r])
                pad_out = np.empty((simd.TILE_X, N), np.float32)
                _tiles_over_rows(tag, wd, wm, wq, wh, pad_d, pad_s, pad_q, pad_out, full_tile, parts, rows_per_task)
                for r in range(rest):
                    _copy_rows(pad_out[r], out[full + r])
    if simd.has_min(tag):
        return bad, bad_sums
    return bad, 0


@njit(cache=True)
def layer_step(x, norm1, norm2, eps, qkv, o, gate_up, down, parts, tiles,
               key_cache, value_cache, tables, query_seq, query_pos, slot_block, slot_offset,
               cos, sin, n_head, n_kv_head, head_dim, attn_parallel):
    """One LLaMA block for R packed token rows, in place on x (R, C) float32.

    norm1, norm2 (C,); qkv, o, gate_up, down: (tag, wd, wm, wq, wh) tuples of the fused weights;
    parts (4,): threads for each product; tiles: (DECODE_TILE, ZERO_TILES[TILE_X], ZERO_TILES[1],
    invariant_attention.head_tile(...) for attention);
    key_cache, value_cache (blocks, G, P, D): this layer's cache, as invariant_attention.py takes it
    (a contiguous one-sequence cache is one block of all its positions); row r's keys/values go to
    block slot_block[r], position slot_offset[r]; tables, query_seq, query_pos: which sequence row r
    belongs to and its position (invariant_attention.py); cos, sin (R, D) for each row's position.
    Returns the number of activation blocks that could not be rounded (NaN/Inf or too large)."""
    H, G, D = n_head, n_kv_head, head_dim
    R, C = x.shape
    zero, full_tile, one_tile, attention_tile = tiles
    rstd = np.empty(R, np.float32)
    h = np.empty_like(x)
    row_ops._rmsnorm(x, norm1, eps, rstd, h)
    qkv_out = np.empty((R, qkv[1].shape[0]), np.float32)  # wd (N, NB): N in either layout
    bad = 0
    b, s = _product(qkv, h, parts[0], zero, full_tile, one_tile, qkv_out)
    bad += b + s
    row_ops._rope(qkv_out, cos, sin, R, H + G, D)  # row r at cos[r]: T = R
    for r in range(R):  # this step's keys and values into the cache, before anyone attends
        for g in range(G):
            for d in range(D):
                key_cache[slot_block[r], g, slot_offset[r], d] = qkv_out[r, (H + g) * D + d]
                value_cache[slot_block[r], g, slot_offset[r], d] = qkv_out[r, (H + G + g) * D + d]
    q = np.empty((R, H, D), np.float32)
    for r in range(R):  # head by head, not q[r, i // D, i % D]: a division an element cost ~1 ms a step at R = 32
        for hh in range(H):
            for d in range(D):
                q[r, hh, d] = qkv_out[r, hh * D + d]
    att = np.empty((R, H, D), np.float32)
    scale = np.float32(1.0 / math.sqrt(D))
    if attn_parallel:
        attention_parallel(q, key_cache, value_cache, tables, query_seq, query_pos, scale, att, attention_tile)
    else:
        attention_serial(q, key_cache, value_cache, tables, query_seq, query_pos, scale, att, attention_tile)
    o_out = np.empty((R, C), np.float32)
    b, s = _product(o, att.reshape(R, H * D), parts[1], zero, full_tile, one_tile, o_out)
    bad += b + s
    for r in range(R):
        for c in range(C):
            x[r, c] = x[r, c] + o_out[r, c]
    row_ops._rmsnorm(x, norm2, eps, rstd, h)
    gu = np.empty((R, gate_up[1].shape[0]), np.float32)
    b, s = _product(gate_up, h, parts[2], zero, full_tile, one_tile, gu)
    bad += b + s
    act = np.empty((R, gu.shape[1] // 2), np.float32)
    if R >= SWIGLU_PARALLEL_MIN_ROWS and parts[2] > 1:
        row_ops._swiglu_parallel(gu, act)
    else:
        row_ops._swiglu(gu, act)
    down_out = np.empty((R, C), np.float32)
    b, s = _product(down, act, parts[3], zero, full_tile, one_tile, down_out)
    bad += b + s
    for r in range(R):
        for c in range(C):
            x[r, c] = x[r, c] + down_out[r, c]
    return bad


def _weight_tuple(qt):
    """layer_step's weight arguments: (tag, wd, wm, wq, wh) as quant/kernels.py's _parts gives them, or
    for the formats in interleaved.USED_FORMATS (tag, wd, wd, records, NO_HIGH_BITS): wd gives the
    shape (N, NB) in both."""
    if qt.fmt in interleaved.USED_FORMATS:
        return (interleaved.TAGS[qt.fmt], qt._d_bits, qt._d_bits, qt.records, simd.NO_HIGH_BITS)
    return (simd.TAGS[qt.fmt],) + tuple(kernels._parts(qt))


class DecodePlan:
    """InferenceModel's layers as layer_step's arguments, prepared once (see the module docstring)."""

    def __init__(self, fast, layers):
        self.fast = fast
        self.config = fast.config
        self.layers = layers  # per layer: (norm1, norm2, qkv, o, gate_up, down)
        # every product's rows N and weights N * K, (layers, 4), for the thread split of each step
        self._rows = np.array([[w[1].shape[0] for w in layer[2:]] for layer in layers], np.int64)
        self._weights = np.array([[w[1].shape[0] * w[1].shape[1] * BLOCK for w in layer[2:]] for layer in layers],
                                 np.int64)  # wd: (N, K / 32) scales
        cfg = self.config
        self._tiles = (simd.DECODE_TILE, simd.ZERO_TILES[simd.TILE_X], simd.ZERO_TILES[1],
                       head_tile(cfg.n_head, cfg.n_kv_head, cfg.head_dim))
        self._entry = None

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
                           *(_weight_tuple(w) for w in weights)))
        return cls(fast, layers)

    def split(self, R: int, nthreads: int) -> np.ndarray:
        """Threads for every product of a step of R rows, (layers, 4), as quant/kernels.py decides:
        one row splits from DECODE_PARALLEL_MIN weights on, more rows from PARALLEL_MIN_WORK
        multiply-adds on."""
        if nthreads <= 1:
            return np.ones_like(self._rows)
        if R == 1:
            return np.where(self._weights >= kernels.DECODE_PARALLEL_MIN, np.minimum(self._rows, nthreads), 1)
        return np.where(R * self._weights >= kernels.PARALLEL_MIN_WORK, nthreads, 1)

    @staticmethod
    def applies(ids, positions, kv_cache) -> bool:
        """Whether a forward of ids (B, T) at positions (T,) into kv_cache is a step this plan runs:
        one row of tokens (B = 1) into a float32 cache that attends with the row kernel, either a
        one-sequence ContiguousKVCache continuing at its length, with room for them, or the
        engine's PagedKVCache with its step set for these tokens."""
        from .engine.paged_attention import PagedKVCache
        from .kv_cache import ContiguousKVCache

        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0 or len(positions) != ids.shape[1]:
            return False
        T = ids.shape[1]
        if isinstance(kv_cache, ContiguousKVCache):
            return (kv_cache.attention == "rows" and kv_cache.keys[0].dtype == np.float32
                    and kv_cache.keys[0].shape[0] == 1 and kv_cache.length + T <= kv_cache.max_len
                    and np.array_equal(positions, np.arange(kv_cache.length, kv_cache.length + T)))
        if isinstance(kv_cache, PagedKVCache):
            return (kv_cache.attention == "rows" and kv_cache.key_cache[0].dtype == np.float32
                    and kv_cache.step is not None and len(kv_cache.step.slot_mapping) == T
                    and np.array_equal(positions, kv_cache.query_pos))
        return False

    def _call(self, *args):
        if self._entry is None:  # first call: compile (or load from the disk cache), keep the entry point
            result = layer_step(*args)
            signature = tuple(layer_step.typeof_pyval(a) for a in args)
            self._entry = layer_step.overloads[signature].entry_point
            return result
        return self._entry(*args)

    def hidden(self, x, positions, kv_cache):
        """The blocks on x (T, C), token rows at positions (T,), storing their keys/values in
        kv_cache (applies() must hold); x is updated in place and returned."""
        from .kv_cache import ContiguousKVCache

        config = self.config
        T = x.shape[0]
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        if isinstance(kv_cache, ContiguousKVCache):  # one sequence: one block of all its positions
            keys, values = kv_cache.keys, kv_cache.values
            tables = np.zeros((1, 1), np.int64)
            query_seq = slot_block = np.zeros(T, np.int64)
            query_pos = slot_offset = positions
        else:  # the engine's paged cache, its step described by set_step
            keys, values = kv_cache.key_cache, kv_cache.value_cache
            tables, query_seq, query_pos = kv_cache.tables, kv_cache.query_seq, kv_cache.query_pos
            slot_block, slot_offset = np.divmod(kv_cache.step.slot_mapping.astype(np.int64), kv_cache.block_size)
        threads.apply()
        nthreads = threads.numba_threads()
        parts = self.split(T, nthreads)
        cos, sin = (np.ascontiguousarray(a, np.float32) for a in self.fast.rope(positions))
        H, G, D = config.n_head, config.n_kv_head, config.head_dim
        attn_parallel = int(query_pos.sum() + T) * H * D >= ATTENTION_PARALLEL_MIN and nthreads > 1
        eps = float(config.norm_eps)
        for i, (norm1, norm2, qkv, o, gate_up, down) in enumerate(self.layers):
            bad = self._call(x, norm1, norm2, eps, qkv, o, gate_up, down, parts[i], self._tiles,
                             keys[i], values[i], tables, query_seq, query_pos, slot_block, slot_offset,
                             cos, sin, H, G, D, attn_parallel)
            if bad:
                raise kernels.ActivationError(f"layer {i}: activations hold NaN/Inf or values too large for "
                                              f"the float16 scales of Q8_0/Q8_1 blocks")
        if isinstance(kv_cache, ContiguousKVCache):
            kv_cache.length += T
        return x


def compile_for(fmt: str, n_head: int = 4, n_kv_head: int = 2, head_dim: int = 16) -> None:
    """Compile layer_step for models whose products are in `fmt` (or load it from Numba's disk cache):
    one prefill and one decode step of a tiny random LLaMA block. Numba compiles one machine-code
    version per argument *types*, not sizes, so this is the version a real model in `fmt` runs,
    provided its heads give the same attention tile (invariant_attention.head_tile: pass the model's
    n_head, n_kv_head and head_dim); the tour calls it in a second process, compiling on the other
    core while the first works."""
    from .config import ModelConfig
    from .inference import InferenceModel
    from .kv_cache import ContiguousKVCache
    from .model import Model, init_params
    from .quant.model import quantize_model

    config = ModelConfig(family="llama", vocab_size=37, n_layer=1, n_embd=n_head * head_dim, n_head=n_head,
                         n_kv_head=n_kv_head, n_ctx=16, ffn_hidden=64, tie_word_embeddings=False)
    fast = InferenceModel(quantize_model(Model(config, init_params(config, 0, np.float32)), fmt))
    if DecodePlan.build(fast) is None:
        raise ValueError(f"fmt must be one of the formats layer_step takes {simd.SIMD_FORMATS}, got {fmt!r}")
    cache = ContiguousKVCache(config, 1, np.float32, max_len=8)
    fast.forward(np.array([[1, 2, 3, 4, 5]]), np.arange(5), cache)
    fast.forward(np.array([[6]]), np.array([5]), cache)

