"""Tuning a quantized model's block scales end to end: the codes stay, the float16 scales move.

Lesson: lessons/04-quantization.py (section 6: what is left after GPTQ)

GPTQ (gptq.py) minimises each layer's own output error, one layer at a time. What we finally care
about is the model's next-token distribution. With the integer codes fixed, every block's scale d
(and minimum m) is a continuous parameter the logits depend on smoothly, so a few steps of
gradient descent on

    KL(float model || quantized model)   on calibration windows (training text)

can make the layers' remaining errors cancel where the logits need it, a layer's error partly
undone by the next layers. Only the scales move (one float per 32 weights), so the result is the
same format, byte for byte the same size: a block's value is still level(code) * d (+ m). This is
the idea behind learned-rounding and learned-scale methods (AdaRound, OmniQuant's learnable
clipping), in its simplest form: codes frozen, one multiplicative factor per block.

    tuned = tune_block_scales(qmodel, float_model, calib_ids, steps=200)

Each step: the quantized weights as dense arrays W = L * d (+ m), a training-mode forward on a
batch of windows, dloss/dlogits = (softmax(student) - softmax(teacher)) / positions, the usual
backward (tinyinfer/model.py), and the chain rule to the scales: dL/dd_b = sum over the block's 32
weights of dL/dW * L (dL/dm_b = sum of dL/dW). The scales are updated through s = log(d / d0) with
Adam, so a step changes every scale by a similar fraction; minima through m = m0 + d0 * t.

Shapes: N output features, K input features, NB = K // 32 blocks a row, B windows, T tokens.
"""
from __future__ import annotations

import numpy as np

from ..model import Model, backward, forward
from ..ops import log_softmax
from . import blocks
from .blocks import BLOCK
from .formats import QTensor, _check_scales
from .gptq import _stored_float
from .model import linear_weight_names


class _Layer:
    """One quantized linear layer opened up for tuning: levels (N, K), scales, minima."""

    def __init__(self, qt: QTensor):
        self.fmt, self.shape = qt.fmt, qt.shape
        N, K = qt.shape
        self.levels = blocks.integer_values(qt.fmt, qt.quants, qt.high_bits).astype(np.float32).reshape(N, K)
        self.d0 = qt.scales.astype(np.float32)  # (N, NB)
        self.m0 = None if qt.mins is None else qt.mins.astype(np.float32)
        self.s = np.zeros_like(self.d0)  # log(d / d0)
        self.t = None if self.m0 is None else np.zeros_like(self.m0)  # (m - m0) / |d0|
        self.qt = qt

    def dense(self):
        """float32 (N, K): level * d (+ m) with the current scales."""
        N, K = self.shape
        d = self.d0 * np.exp(self.s)  # (N, NB)
        w = self.levels.reshape(N, -1, BLOCK) * d[..., None]
        if self.m0 is not None:
            w = w + (self.m0 + np.abs(self.d0) * self.t)[..., None]
        return w.reshape(N, K)

    def grads(self, dW):
        """dL/dW (N, K) -> (dL/ds, dL/dt or None), each (N, NB)."""
        N = self.shape[0]
        dW3 = dW.reshape(N, -1, BLOCK)  # (N, NB, 32)
        dd = (dW3 * self.levels.reshape(N, -1, BLOCK)).sum(axis=-1)  # (N, NB)
        ds = dd * self.d0 * np.exp(self.s)  # d = d0 exp(s)
        dt = None if self.m0 is None else dW3.sum(axis=-1) * np.abs(self.d0)
        return ds, dt

    def qtensor(self):
        """The tuned layer as a QTensor: the same codes, the new float16 scales (and minima)."""
        d16 = blocks.to_float16(self.d0 * np.exp(self.s))
        _check_scales(d16, self.fmt, "tuned scales")
        m16 = None
        if self.m0 is not None:
            m16 = blocks.to_float16(self.m0 + np.abs(self.d0) * self.t)
            _check_scales(m16, self.fmt, "tuned minima", what="minimum")
        q = self.qt
        return QTensor(q.fmt, q.shape, d16, q.quants, m16, q.high_bits)


class _Adam:
    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.state, self.t = {}, 0

    def step(self, params: dict, grads: dict):
        self.t += 1
        for key, g in grads.items():
            m, v = self.state.get(key, (np.zeros_like(g), np.zeros_like(g)))
            m = self.beta1 * m + (1 - self.beta1) * g
            v = self.beta2 * v + (1 - self.beta2) * g * g
            self.state[key] = (m, v)
            m_hat, v_hat = m / (1 - self.beta1 ** self.t), v / (1 - self.beta2 ** self.t)
            params[key] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def kl_and_dlogits(student_logits, teacher_logp):
    """Mean KL(teacher || student) per position and its gradient wrt the student's logits."""
    logp = log_softmax(student_logits.astype(np.float64))
    n = logp.shape[0] * logp.shape[1]
    p_t = np.exp(teacher_logp)
    kl = float((p_t * (teacher_logp - logp)).sum() / n)
    return kl, ((np.exp(logp) - p_t) / n).astype(np.float32)


def tune_block_scales(qmodel: Model, reference: Model, calib_ids, steps: int = 200, lr: float = 2e-3,
                      batch: int = 8, seed: int = 0, progress: bool = True, history: list | None = None) -> Model:
    """A copy of qmodel whose linear layers' block scales (and minima) minimise KL(reference || model)
    on calib_ids (W, T) training windows; codes, format and size unchanged.

    reference: the float model qmodel was made from. history, when given, receives each step's KL.
    """
    config = qmodel.config
    ids, _ = qmodel.check_ids(calib_ids, "calib_ids")  # (W, T)
    names = linear_weight_names(config)
    for name in names:
        if not isinstance(qmodel.params[name], QTensor):
            raise TypeError(f"{name} is not quantized; tune_block_scales tunes a quantized model's block scales")
    from tqdm import tqdm

    layers = {name: _Layer(qmodel.params[name]) for name in names}
    params = {k: np.asarray(v, dtype=np.float32) for k, v in reference.params.items() if k not in names}
    tunable = {}
    for name, layer in layers.items():
        tunable[name + ":s"] = layer.s
        if layer.t is not None:
            tunable[name + ":t"] = layer.t
    adam = _Adam(lr)
    rng = np.random.default_rng(seed)
    for _ in tqdm(range(steps), desc="tuning scales", unit="step", disable=not progress):
        rows = ids[rng.choice(len(ids), size=min(batch, len(ids)), replace=False)]  # (B, T)
        teacher_logp = log_softmax(reference.logits(rows).astype(np.float64))  # (B, T, V)
        for name, layer in layers.items():
            params[name] = _stored_float(layer.dense(), config)
        caches = {}
        logits = forward(params, config, rows, caches=caches)
        kl, dlogits = kl_and_dlogits(logits, teacher_logp)
        if history is not None:
            history.append(kl)
        g = backward(dlogits, params, config, caches)
        grads = {}
        for name, layer in layers.items():
            dW = g[name]
            dW = dW.T if config.family == "gpt2" else dW  # GPT-2's Conv1D weights are stored (K, N)
            ds, dt = layer.grads(dW)
            grads[name + ":s"] = ds
            if dt is not None:
                grads[name + ":t"] = dt
        adam.step(tunable, grads)
    out = dict(qmodel.params)
    for name, layer in layers.items():
        out[name] = layer.qtensor()
    return Model(config, out, qmodel.tokenizer)
