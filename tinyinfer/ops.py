"""The transformer's ops as pure forward/backward pairs, NumPy only (llm.c style).

Lessons: lessons/01-transformer.py (forward) and lessons/03-training.py (backward).

Every op is `<op>_forward(inputs, params, sizes) -> (out, cache)` and
`<op>_backward(dout, cache) -> gradients`, with no hidden state. The cache holds exactly what the
backward pass needs, so a reader can check each derivative on paper. tests/test_ops.py checks every
backward against finite differences in float64.

Shapes use the legend of tinyinfer/config.py (B, T, C, H, G, D, V, K, N). Ops work on any leading
dimensions ("..."), so the same code serves a batch (B, T, C) and a single sequence (T, C).
"""
from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------------------------
# embedding


def embedding_forward(ids, wte):
    """ids: int (...,) -> wte[ids]: (..., C)."""
    return wte[ids], (ids, wte.shape)


def embedding_backward(dout, cache):
    ids, wte_shape = cache
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    # Several positions can hold the same token: their gradients must add up, which plain
    # fancy-index assignment would not do. np.add.at accumulates repeated indices.
    np.add.at(dwte, ids.reshape(-1), dout.reshape(-1, wte_shape[1]))
    return dwte


# --------------------------------------------------------------------------------------------
# linear: y = x @ w.T + b, with w stored (N, K) like torch.nn.Linear and ggml


def linear_forward(x, w, b=None):
    """x: (..., K), w: (N, K), b: (N,) or None -> (..., N)."""
    out = x @ w.T
    if b is not None:
        out += b
    return out, (x, w, b is not None)


def linear_backward(dout, cache):
    """-> (dx (..., K), dw (N, K), db (N,) or None)."""
    x, w, has_bias = cache
    dx = dout @ w
    dout2 = dout.reshape(-1, dout.shape[-1])  # (M, N), M = all leading dims together
    dw = dout2.T @ x.reshape(-1, x.shape[-1])  # (N, K)
    db = dout2.sum(axis=0) if has_bias else None
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# normalisation


def layernorm_forward(x, w, b, eps):
    """GPT-2's LayerNorm over the last axis. x: (..., C) -> (..., C)."""
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dout, cache):
    xhat, rstd, w = cache
    lead = tuple(range(dout.ndim - 1))
    dw = (dout * xhat).sum(axis=lead)
    db = dout.sum(axis=lead)
    dxhat = dout * w
    # d/dx of (x - mean) * rstd, written with the two means that appear in it.
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


def rmsnorm_forward(x, w, eps):
    """LLaMA's RMSNorm: no mean subtraction, no bias. x: (..., C) -> (..., C)."""
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * rstd
    return xhat * w, (xhat, rstd, w)


def rmsnorm_backward(dout, cache):
    xhat, rstd, w = cache
    dw = (dout * xhat).sum(axis=tuple(range(dout.ndim - 1)))
    dxhat = dout * w
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dw


# --------------------------------------------------------------------------------------------
# activations

_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """GPT-2's GELU, the tanh approximation ("gelu_new" in Hugging Face)."""
    t = np.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dout, cache):
    x, t = cache
    dt = _GELU_C * (1.0 + 3 * 0.044715 * x * x) * (1.0 - t * t)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * dt)


def swiglu_forward(gate, up):
    """LLaMA's MLP gate: silu(gate) * up. gate, up: (..., F) -> (..., F)."""
    sig = 1.0 / (1.0 + np.exp(-gate))
    silu = gate * sig
    return silu * up, (gate, up, sig, silu)


def swiglu_backward(dout, cache):
    gate, up, sig, silu = cache
    dsilu = sig * (1.0 + gate * (1.0 - sig))  # derivative of x * sigmoid(x)
    return dout * up * dsilu, dout * silu  # (dgate, dup)


# --------------------------------------------------------------------------------------------
# rotary position embedding (RoPE), in Hugging Face's "rotate half" layout


def rope_tables(head_dim, positions, theta, dtype=np.float32):
    """cos, sin: (T, D) for integer positions (T,). Frequencies pair dimension i with i + D/2."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))  # (D/2,)
    freqs = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)  # (T, D/2)
    emb = np.concatenate([freqs, freqs], axis=-1)  # (T, D)
    return np.cos(emb).astype(dtype), np.sin(emb).astype(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_forward(x, cos, sin):
    """x: (B, heads, T, D); cos, sin: (T, D). Rotates each (i, i + D/2) pair by its angle."""
    return x * cos + _rotate_half(x) * sin, (cos, sin)


def rope_backward(dout, cache):
    # A rotation's transpose is the rotation by the opposite angle: same op with -sin.
    cos, sin = cache
    return dout * cos + _rotate_half(dout * -sin)


# --------------------------------------------------------------------------------------------
# causal self-attention with grouped-query heads


def attention_forward(q, k, v):
    """Causal softmax attention.

    q: (B, H, T, D) queries for the last T positions; k, v: (B, G, S, D) keys and values for all
    S >= T positions so far (S > T when a KV cache holds the past). H must be a multiple of G:
    each group of R = H/G query heads shares one key/value head (grouped-query attention).
    Returns (B, H, T, D).
    """
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    R = H // G
    # The R query heads of a group share k and v, so stack their queries into one matrix:
    # one (R*T, D) @ (D, S) product per group instead of R small ones, and no copies of k, v.
    qg = q.reshape(B, G, R * T, D)
    scores = (qg @ k.swapaxes(-1, -2)).reshape(B, G, R, T, S)
    scores *= 1.0 / math.sqrt(D)
    if T > 1:  # one query (a decode step) sees every key: nothing to mask
        scores += causal_mask(T, S, scores.dtype)  # query t sits at position S-T+t, sees keys <= it
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores, out=scores)
    p /= p.sum(axis=-1, keepdims=True)  # (B, G, R, T, S)
    out = p.reshape(B, G, R * T, S) @ v  # (B, G, R*T, D)
    return out.reshape(B, H, T, D), (qg, k, v, p)


def causal_mask(T, S, dtype):
    """(T, S) additive mask: 0 where query t (at position S-T+t) may look, -inf in its future."""
    return np.triu(np.full((T, S), -np.inf, dtype=dtype), k=S - T + 1)


def attention_backward(dout, cache):
    """-> (dq (B, H, T, D), dk (B, G, S, D), dv (B, G, S, D))."""
    qg, k, v, p = cache
    B, G, R, T, S = p.shape
    D = qg.shape[-1]
    pg = p.reshape(B, G, R * T, S)
    doutg = dout.reshape(B, G, R * T, D)
    dv = pg.swapaxes(-1, -2) @ doutg  # (B, G, S, D); the product sums over the R sharing heads
    dp = (doutg @ v.swapaxes(-1, -2)).reshape(B, G, R, T, S)
    # softmax backward: ds = p * (dp - sum(dp * p)); masked entries have p = 0 and drop out
    ds = dp
    ds -= (dp * p).sum(axis=-1, keepdims=True)
    ds *= p
    ds *= 1.0 / math.sqrt(D)
    dsg = ds.reshape(B, G, R * T, S)
    dq = (dsg @ k).reshape(B, G * R, T, D)
    dk = dsg.swapaxes(-1, -2) @ qg  # (B, G, S, D)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# loss


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy_forward(logits, targets):
    """Mean negative log-likelihood of targets. logits: (..., V), targets: int (...) -> scalar."""
    logp = log_softmax(logits)
    flat = logp.reshape(-1, logp.shape[-1])
    t = targets.reshape(-1)
    loss = -flat[np.arange(t.size), t].mean()
    return loss, (logp, targets)


def cross_entropy_backward(dloss, cache):
    logp, targets = cache
    dlogits = np.exp(logp)  # softmax
    flat = dlogits.reshape(-1, dlogits.shape[-1])
    t = targets.reshape(-1)
    flat[np.arange(t.size), t] -= 1.0
    dlogits *= dloss / t.size
    return dlogits
