"""The paged KV cache and attention over it, for one *packed* step of many sequences.

Lesson: lessons/07-kv-cache.py

Memory: per layer, one key array and one value array of shape (N, G, P, D): N blocks of P
positions (block_size), G key/value heads, D head dim. Which block belongs to which sequence is
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

Real engines (vLLM's PagedAttention, FlashAttention's varlen kernels) do step 2 inside one GPU
kernel that reads blocks in place; the gather copy here is the readable NumPy twin of that.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    """cache (N, G, P, D), block_table (nb,) -> (1, G, length, D): one sequence's past, contiguous."""
    N, G, P, D = cache.shape
    blocks = cache[block_table]  # (nb, G, P, D): a copy, in the sequence's own order
    return blocks.transpose(1, 0, 2, 3).reshape(1, G, len(block_table) * P, D)[:, :, :length]


class PagedKVCache:
    def __init__(self, config, num_blocks: int, block_size: int, dtype=np.float32):
        shape = (num_blocks, config.n_kv_head, block_size, config.head_dim)  # (N, G, P, D)
        self.key_cache = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.value_cache = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.block_size = block_size
        self.step: PackedStep | None = None

    def set_step(self, step: PackedStep):
        """Describe the next forward pass (call before tinyinfer.model.forward)."""
        self.step = step

    def write(self, layer, k, v):
        """Scatter this step's k, v: (1, G, T, D) into their slots."""
        blocks, offsets = np.divmod(self.step.slot_mapping, self.block_size)  # (T,), (T,)
        # Advanced indices on axes 0 and 2 around a slice put the indexed axis first: (T, G, D).
        self.key_cache[layer][blocks, :, offsets] = k[0].transpose(1, 0, 2)
        self.value_cache[layer][blocks, :, offsets] = v[0].transpose(1, 0, 2)

    def attend(self, layer, q, k, v):
        """q: (1, H, T, D), k, v: (1, G, T, D) for the packed new tokens -> (1, H, T, D)."""
        step = self.step
        if q.shape[0] != 1 or q.shape[2] != len(step.slot_mapping):
            raise ValueError(f"a packed step feeds one row of {len(step.slot_mapping)} tokens; "
                             f"attend got q of shape {q.shape}")
        self.write(layer, k, v)  # first, so a sequence's new queries also see its new keys
        y = np.empty_like(q)  # (1, H, T, D)
        for s, block_table in enumerate(step.block_tables):
            a, b = step.query_start[s], step.query_start[s + 1]  # this sequence's columns
            L = int(step.context_lens[s])
            keys = gather_blocks(self.key_cache[layer], block_table, L)  # (1, G, L, D)
            values = gather_blocks(self.value_cache[layer], block_table, L)  # (1, G, L, D)
            y[:, :, a:b] = attention_forward(q[:, :, a:b], keys, values)[0]  # (1, H, n, D)
        return y
