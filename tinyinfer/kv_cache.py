"""A contiguous KV cache: the simplest way to stop recomputing the past at every decode step.

Lesson: lessons/01-transformer.py (the engine's lesson builds the paged version of this idea).

Without a cache, generating token t runs the whole prefix 0..t through the model again. Keys and
values of past positions never change (causal attention: a position only looks back), so we keep
them, one preallocated (B, G, n_ctx, D) array per layer, and each step only computes the new ones.
"""
from __future__ import annotations

import numpy as np

from .ops import attention_forward


class ContiguousKVCache:
    def __init__(self, config, batch_size, dtype=np.float32, max_len=None):
        self.max_len = max_len or config.n_ctx
        shape = (batch_size, config.n_kv_head, self.max_len, config.head_dim)  # (B, G, S, D)
        self.keys = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.values = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions stored so far (the same for every layer once a step ends)
        self._n_layer = config.n_layer

    def attend(self, layer, q, k, v):
        """Store this step's k, v: (B, G, T, D); attend q: (B, H, T, D) over all S positions so far."""
        T = k.shape[2]
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this step needs {end}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        if layer == self._n_layer - 1:  # the last layer closes the step
            self.length = end
        return attention_forward(q, self.keys[layer][:, :, :end], self.values[layer][:, :, :end])[0]
