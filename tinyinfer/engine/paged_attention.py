"""The paged KV cache and attention over it, for one *packed* step of many sequences.

Lesson: lessons/07-kv-cache.py (and lessons/08-serving.py, section 8, for batch invariance)

Memory: per layer, one key array and one value array of shape (N, G, P, D): N blocks of P
positions (block_size), G key/value heads, D head dim. One block holds all heads of its P
positions, as one row of the contiguous cache's (B, G, S, D) holds all heads of its S positions:
the same attention kernel reads both (a contiguous row is a block of S positions). Which block
belongs to which sequence is tinyinfer/engine/block_manager.py's business; this module only
reads and writes slots.

A packed step: the engine concatenates the new tokens of all scheduled sequences into one row,
ids (1, T) with T = total new tokens, and calls the model with positions (T,), one per token, so
RoPE (or GPT-2's position table) sees each token's true position in its own sequence. Everything
token-wise in the model (embeddings, norms, linear layers, MLP) does not care which sequence a
column belongs to. Attention does, and that is the one place the model asks the cache:

    kv_cache.attend(layer, q, k, v)   q: (1, H, T, D), k, v: (1, G, T, D), already rotated

1. write: token t's key/value go to its slot, slot_mapping[t] = block * P + offset. One NumPy
   scatter for the whole step, no per-token Python.
2. read, in one of two ways (attention=...):

   "rows" (the default): tinyinfer/invariant_attention.py's kernel. Every packed column is one
   query row that reads its own sequence's keys 0..its position *through the block table, in
   place* (no gather copy), one row at a time in a fixed order. A row's result is then the same
   bits whatever else is in the step, however its prompt was chunked, and whether its sequence
   was preempted and recomputed: the engine's greedy tokens equal Model.generate's exactly, for
   a quantized model too (lessons/08-serving.py shows why that needs saying).

   "numpy": the readable NumPy version with ordinary BLAS products. For sequence s, gather its
   blocks through its block table into one contiguous (1, G, L, D) past (gather_blocks) and run
   causal attention (ops.attention_forward) for its new queries: query i sits at position
   L - n + i and sees keys 0 .. L - n + i, exactly the causal mask attention_forward builds for
   T=n, S=L. Decode steps (one new token per sequence) are batched instead: one gather of every
   such sequence's blocks through a padded (S, nb) table, one batched product, positions past
   each sequence's length masked out (attend_decodes; a per-sequence loop of NumPy calls took
   longer than the model's products at batch 32). The results equal the kernel's up to float
   rounding, but BLAS picks its summation order from the shapes, so they are not batch-invariant.

Sequences never see each other's keys either way: each one reads only its own block table.
tests/test_engine.py checks both ways against a full recompute. Real engines (vLLM's
PagedAttention, FlashAttention's varlen kernels) do step 2 in one GPU kernel that reads blocks in
place, as "rows" does on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..invariant_attention import attention_rows, supports
from ..ops import attention_forward
from ..kv_cache import cache_zeros

ATTENTION_KINDS = ("rows", "numpy")


@dataclass
class PackedStep:
    """What attend() needs to know about the current packed step (nano-vllm calls this the Context)."""
    slot_mapping: np.ndarray        # (T,) int: cache slot of each new token, block_id * P + offset
    query_start: np.ndarray         # (S+1,) int: sequence s owns packed columns query_start[s]:query_start[s+1]
    context_lens: np.ndarray        # (S,) int: positions sequence s attends over (its past + its new tokens)
    block_tables: list              # S int arrays: sequence s's block ids, in position order
    positions: np.ndarray | None = None  # (T,) int: each packed column's position in its own sequence


def padded_tables(tables: list) -> np.ndarray:
    """S block tables of different lengths -> one (S, nb) int64 array; padding (block 0) is never read."""
    nb = max(len(t) for t in tables)
    padded = np.zeros((len(tables), nb), dtype=np.int64)
    for row, table in enumerate(tables):
        padded[row, :len(table)] = table
    return padded


def gather_blocks(cache, block_table, length):
    """cache (N, G, P, D), block_table (nb,) -> (1, G, length, D): one sequence's past, contiguous."""
    N, G, P, D = cache.shape
    blocks = np.take(cache, block_table, axis=0)  # (nb, G, P, D): a copy, in position order
    return blocks.transpose(1, 0, 2, 3).reshape(1, G, len(block_table) * P, D)[:, :, :length]


class PagedKVCache:
    def __init__(self, config, num_blocks: int, block_size: int, dtype=np.float32, attention: str = "rows"):
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        shape = (num_blocks, config.n_kv_head, block_size, config.head_dim)  # (N, G, P, D)
        self.key_cache = [cache_zeros(shape, dtype) for _ in range(config.n_layer)]  # 2 MB pages where lent
        self.value_cache = [cache_zeros(shape, dtype) for _ in range(config.n_layer)]
        self.block_size = block_size
        self.attention = attention
        self.step: PackedStep | None = None
        self.decode_seqs = np.zeros(0, dtype=np.int64)  # set per step by set_step ("numpy" only)

    def set_step(self, step: PackedStep):
        """Describe the next forward pass (call before the model's forward)."""
        self.step = step
        n_new = np.diff(step.query_start)  # (S,)
        # What the kernel needs, the same for every layer, so worked out once per step here.
        self.tables = padded_tables(step.block_tables)  # (S, nb)
        self.query_seq = np.repeat(np.arange(len(n_new), dtype=np.int64), n_new)  # (T,)
        if step.positions is not None:
            self.query_pos = np.asarray(step.positions, dtype=np.int64)
        else:  # a sequence's new tokens are the last n of its context
            self.query_pos = (np.repeat(step.context_lens - n_new, n_new)
                              + np.arange(len(self.query_seq)) - np.repeat(step.query_start[:-1], n_new))
        # The "numpy" way: the sequences fed exactly one token are attended together
        decode = np.flatnonzero(n_new == 1)  # (Sd,)
        self.decode_seqs = decode if len(decode) > 1 and self.attention == "numpy" else decode[:0]
        if len(self.decode_seqs):
            self.decode_tables = padded_tables([step.block_tables[s] for s in self.decode_seqs])  # (Sd, nb)
            lens = step.context_lens[self.decode_seqs]  # (Sd,)
            L = self.decode_tables.shape[1] * self.block_size
            self.decode_mask = np.where(np.arange(L)[None, :] < lens[:, None], 0.0, -np.inf)  # (Sd, L)
            self.decode_cols = step.query_start[self.decode_seqs]  # (Sd,) packed column of each

    def write(self, layer, k, v):
        """Scatter this step's k, v: (1, G, T, D) into their slots."""
        blocks, offsets = np.divmod(self.step.slot_mapping, self.block_size)  # (T,), (T,)
        # The advanced indices (axes 0 and 2) are apart, so NumPy puts their dimension first and
        # the selection is (T, G, D): k[0] with its token axis first.
        self.key_cache[layer][blocks, :, offsets] = k[0].transpose(1, 0, 2)
        self.value_cache[layer][blocks, :, offsets] = v[0].transpose(1, 0, 2)

    def attend(self, layer, q, k, v):
        """q: (1, H, T, D), k, v: (1, G, T, D) for the packed new tokens -> (1, H, T, D)."""
        step = self.step
        if q.shape[0] != 1 or q.shape[2] != len(step.slot_mapping):
            raise ValueError(f"a packed step feeds one row of {len(step.slot_mapping)} tokens; "
                             f"attend got q of shape {q.shape}")
        self.write(layer, k, v)  # first, so a sequence's new queries also see its new keys
        if self.attention == "rows" and supports(q.dtype, self.key_cache[layer].dtype):
            rows = q[0].transpose(1, 0, 2)  # (T, H, D): one row per packed column
            out = attention_rows(rows, self.key_cache[layer], self.value_cache[layer], self.tables, self.query_seq,
                                 self.query_pos, check=False)
            return out.transpose(1, 0, 2)[None]  # (1, H, T, D)
        return self.attend_numpy(layer, q)

    def attend_numpy(self, layer, q):
        """The "numpy" way (module docstring): gathers and BLAS products -> (1, H, T, D)."""
        step = self.step
        y = np.empty_like(q)  # (1, H, T, D)
        batched = set(self.decode_seqs.tolist())
        if batched:
            y[0][:, self.decode_cols] = self.attend_decodes(layer, q[0][:, self.decode_cols])
        for s, block_table in enumerate(step.block_tables):
            if s in batched:
                continue
            a, b = step.query_start[s], step.query_start[s + 1]  # this sequence's columns
            L = int(step.context_lens[s])
            keys = gather_blocks(self.key_cache[layer], block_table, L)  # (1, G, L, D)
            values = gather_blocks(self.value_cache[layer], block_table, L)  # (1, G, L, D)
            y[:, :, a:b] = attention_forward(q[:, :, a:b], keys, values)[0]  # (1, H, n, D)
        return y

    def attend_decodes(self, layer, q):
        """q: (H, Sd, D), one query per decoding sequence -> (H, Sd, D), all sequences at once."""
        H, Sd, D = q.shape
        G = self.key_cache[layer].shape[1]
        R = H // G

        def padded_past(cache):  # (N, G, P, D) -> (G, Sd, nb*P, D), row s is sequence s's past
            blocks = np.take(cache, self.decode_tables, axis=0)  # (Sd, nb, G, P, D)
            return blocks.transpose(2, 0, 1, 3, 4).reshape(G, Sd, -1, D)

        keys, values = padded_past(self.key_cache[layer]), padded_past(self.value_cache[layer])
        qg = q.reshape(G, R, Sd, D).transpose(0, 2, 1, 3)  # (G, Sd, R, D): heads of a group together
        scores = qg @ keys.swapaxes(-1, -2)  # (G, Sd, R, L)
        scores *= 1.0 / math.sqrt(D)
        scores += self.decode_mask[:, None, :].astype(scores.dtype)  # (Sd, 1, L): past each length -inf
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores, out=scores)
        p /= p.sum(axis=-1, keepdims=True)
        out = p @ values  # (G, Sd, R, D)
        return out.transpose(0, 2, 1, 3).reshape(H, Sd, D)  # head h = g * R + r, as q was
