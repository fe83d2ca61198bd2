"""The paged KV cache and attention over it, for one *packed* step of many sequences.

Lesson: lessons/07-kv-cache.py

Memory: per layer, one key array and one value array of shape (G, N, P, D): N blocks of P
positions (block_size), G key/value heads, D head dim. Heads first, so that gathering a
sequence's blocks, cache[:, block_table] -> (G, nb, P, D), is already its contiguous past once
reshaped to (G, nb*P, D), with no transpose copy. Which block belongs to which sequence is
tinyinfer/engine/block_manager.py's business; this module only reads and writes slots.

A packed step: the engine concatenates the new tokens of all scheduled sequences into one row,
ids (1, T) with T = total new tokens, and calls the model with positions (T,), one per token, so
RoPE (or GPT-2's position table) sees each token's true position in its own sequence. Everything
token-wise in the model (embeddings, norms, linear layers, MLP) does not care which sequence a
column belongs to. Attention does, and that is the one place the model asks the cache:

    kv_cache.attend(layer, q, k, v)   q: (1, H, T, D), k, v: (1, G, T, D), already rotated

1. write: token t's key/value go to its slot, slot_mapping[t] = block * P + offset. One NumPy
   scatter for the whole step, no per-token Python.
2. read: for sequence s, gather its blocks through its block table into one contiguous
   (1, G, L, D) past (L = positions it has after this step), and run ordinary causal attention
   (ops.attention_forward) for its new queries: query i sits at position L - n + i and sees keys
   0 .. L - n + i, which is exactly the causal mask attention_forward builds for T=n, S=L.
   Sequences never see each other's keys: each one reads only its own block table.

   Decode steps (one new token per sequence, the common case in a running batch) are batched
   instead: one gather of every such sequence's blocks through a padded (S, nb) table, one batched
   product, and positions past each sequence's length masked out. The per-sequence loop costs a
   few Python-level NumPy calls per sequence per layer, which at batch 32 took longer than the
   model's matrix products; the batched path costs the same handful of calls whatever the batch.
   tests/test_engine.py checks both paths against a full recompute.

Real engines (vLLM's PagedAttention, FlashAttention's varlen kernels) do step 2 inside one GPU
kernel that reads blocks in place; the gather copy here is the readable NumPy twin of that.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np

from ..ops import attention_forward


@dataclass
class PackedStep:
    """What attend() needs to know about the current packed step (nano-vllm calls this the Context)."""
    slot_mapping: np.ndarray        # (T,) int: cache slot of each new token, block_id * P + offset
    query_start: np.ndarray         # (S+1,) int: sequence s owns packed columns query_start[s]:query_start[s+1]
    context_lens: np.ndarray        # (S,) int: positions sequence s attends over (its past + its new tokens)
    block_tables: list              # S int arrays: sequence s's block ids, in position order


def gather_blocks(cache, block_table, length):
    """cache (G, N, P, D), block_table (nb,) -> (1, G, length, D): one sequence's past, contiguous."""
    G, N, P, D = cache.shape
    blocks = np.take(cache, block_table, axis=1)  # (G, nb, P, D): a contiguous copy, in order
    return blocks.reshape(1, G, len(block_table) * P, D)[:, :, :length]


class PagedKVCache:
    def __init__(self, config, num_blocks: int, block_size: int, dtype=np.float32):
        shape = (config.n_kv_head, num_blocks, block_size, config.head_dim)  # (G, N, P, D)
        self.key_cache = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.value_cache = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.block_size = block_size
        self.step: PackedStep | None = None
        self.decode_seqs = np.zeros(0, dtype=np.int64)  # set per step by set_step

    def set_step(self, step: PackedStep):
        """Describe the next forward pass (call before tinyinfer.model.forward)."""
        self.step = step
        # The sequences fed exactly one token, attended together (see the module docstring).
        # The same for every layer, so worked out once per step here.
        n_new = np.diff(step.query_start)  # (S,)
        decode = np.flatnonzero(n_new == 1)  # (Sd,)
        self.decode_seqs = decode if len(decode) > 1 else decode[:0]
        if len(self.decode_seqs):
            tables = [step.block_tables[s] for s in self.decode_seqs]
            nb = max(len(t) for t in tables)
            padded = np.zeros((len(tables), nb), dtype=np.int64)  # (Sd, nb); padding reads block 0, masked
            for row, t in enumerate(tables):
                padded[row, :len(t)] = t
            self.decode_tables = padded
            lens = step.context_lens[self.decode_seqs]  # (Sd,)
            L = nb * self.block_size
            self.decode_mask = np.where(np.arange(L)[None, :] < lens[:, None], 0.0, -np.inf)  # (Sd, L)
            self.decode_cols = step.query_start[self.decode_seqs]  # (Sd,) packed column of each

    def write(self, layer, k, v):
        """Scatter this step's k, v: (1, G, T, D) into their slots."""
        blocks, offsets = np.divmod(self.step.slot_mapping, self.block_size)  # (T,), (T,)
        # Adjacent advanced indices (axes 1, 2) select (G, T, D): the shape of k[0] as it is.
        self.key_cache[layer][:, blocks, offsets] = k[0]
        self.value_cache[layer][:, blocks, offsets] = v[0]

    def attend(self, layer, q, k, v):
        """q: (1, H, T, D), k, v: (1, G, T, D) for the packed new tokens -> (1, H, T, D)."""
        step = self.step
        if q.shape[0] != 1 or q.shape[2] != len(step.slot_mapping):
            raise ValueError(f"a packed step feeds one row of {len(step.slot_mapping)} tokens; "
                             f"attend got q of shape {q.shape}")
        self.write(layer, k, v)  # first, so a sequence's new queries also see its new keys
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
        G = self.key_cache[layer].shape[0]
        R = H // G

        def padded_past(cache):  # (G, N, P, D) -> (G, Sd, nb*P, D), row s is sequence s's past
            # np.take, not cache[:, tables]: NumPy lays fancy-indexed results out index-dims
            # first, so the reshape would copy everything a second time (measured 2.5x slower).
            return np.take(cache, self.decode_tables, axis=1).reshape(G, Sd, -1, D)  # (G, Sd, nb, P, D)

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
