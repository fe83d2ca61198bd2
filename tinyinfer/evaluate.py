"""Held-out evaluation: loss, perplexity, top-1 next-token accuracy (and agreement with a reference).

Lesson: lessons/03-training.py

The held-out stream is cut into consecutive, non-overlapping windows of seq_len + 1 tokens; each
window predicts its last seq_len tokens from the ones before. The windows are the same on every
run, so two models evaluated with the same arguments saw exactly the same positions.
"""
from __future__ import annotations

import math

import numpy as np

from .ops import log_softmax


def eval_windows(stream, seq_len, max_windows=None):
    """(W, seq_len + 1) int64 windows from the start of a token stream."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"the stream has {len(stream)} tokens, too few for one window of {seq_len + 1}")
    if max_windows is not None:
        n = min(n, max_windows)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return np.asarray(stream, dtype=np.int64)[idx]


def evaluate(model, stream, seq_len=128, max_windows=None, batch_size=8, reference=None):
    """Mean loss, perplexity and top-1 accuracy of model on a token stream.

    With `reference` (another model), also the fraction of positions whose top-1 tokens agree
    and the mean KL divergence KL(reference || model), as llama.cpp's perplexity tool reports.
    """
    windows = eval_windows(stream, seq_len, max_windows)
    total_nll, correct, agree, kl, count = 0.0, 0, 0, 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logp = log_softmax(model.logits(inputs).astype(np.float64))  # (B, T, V)
        total_nll -= np.take_along_axis(logp, targets[..., None], axis=-1).sum()
        top1 = logp.argmax(axis=-1)
        correct += int((top1 == targets).sum())
        count += targets.size
        if reference is not None:
            ref_logp = log_softmax(reference.logits(inputs).astype(np.float64))
            agree += int((ref_logp.argmax(axis=-1) == top1).sum())
            kl += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
    loss = total_nll / count
    out = {"loss": float(loss), "perplexity": float(math.exp(loss)), "top1": correct / count, "tokens": count}
    if reference is not None:
        out["top1_agreement"] = agree / count
        out["kl_divergence"] = kl / count
    return out
