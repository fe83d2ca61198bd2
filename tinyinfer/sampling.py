"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus).

Lesson: lessons/01-transformer.py

Each sampler takes one row of logits (V,) and a numpy Generator, so a request that owns its own
seeded generator gets the same tokens whatever else runs beside it.
"""
from __future__ import annotations

import numpy as np


def check_sampling_args(temperature, top_k, top_p):
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution (V,) float64 that sample_token draws from with these settings.

    temperature 0 gives the one-hot of argmax (ties to the lowest id). Speculative decoding
    (tinyinfer/speculative.py) needs these probabilities themselves, not only a draw from them.
    """
    logits = np.asarray(logits)
    if temperature == 0.0:
        onehot = np.zeros(logits.shape[-1])
        onehot[int(np.argmax(logits))] = 1.0
        return onehot
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)  # keep the k largest (ties at the boundary kept too)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]
        mask = np.zeros_like(probs, dtype=bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample_token(logits, rng, temperature=0.0, top_k=None, top_p=None) -> int:
    """One token id from logits (V,). temperature 0 means greedy (argmax, ties to the lowest id)."""
    if temperature == 0.0:
        return int(np.argmax(logits))  # no draw: the generator is not advanced
    probs = token_probs(logits, temperature, top_k, top_p)
    return int(rng.choice(probs.size, p=probs))
