"""An extreme low-bit experiment: ternary weights {-1, 0, +1} x a per-block scale (BitNet b1.58 style).

Lesson: lessons/04-quantization.py (the 8- and 4-bit formats this goes below)

BitNet b1.58 (Ma et al. 2024) trains models whose weights are ternary: w ~ gamma * t, t in
{-1, 0, +1}, with gamma = mean(|w|) (the "absmean" scale) and t = clip(round(w / gamma), -1, 1).
log2(3) = 1.58 bits a weight. The paper's point is that this works when the model is *trained*
that way; here we apply it after training, with no retraining, to show how much a trained float
model relies on its fine weight values. We use one scale per block of 32 weights along K (as ggml's
formats do) rather than BitNet's one scale per tensor, which is kinder to a post-hoc conversion.

This is a simulation: the weights stay float32 arrays that take at most 3 values per block, so
the ordinary forward runs them. A real format would pack 5 trits into a byte (ggml's TQ1_0) or
2 bits a weight (TQ2_0) plus the float16 scale: about 1.7-2.5 bits a weight.

Shapes: N output features, K input features, NB = K // 32 blocks a row.
"""
from __future__ import annotations

import numpy as np

from ..model import Model, linear_weight
from .formats import BLOCK, _check_weights
from .gptq import _stored_float
from .model import linear_weight_names


def ternarize(w, block=BLOCK):
    """w: float (N, K) -> (trits int8 (N, NB, block) in {-1, 0, 1}, scales float32 (N, NB)).

    absmean scale per block; round half away from zero, as BitNet's RoundClip does in PyTorch
    (torch.round goes to even, but exact halves are measure-zero for trained weights).
    """
    w = _check_weights(w)  # float32 (N, K), K a multiple of 32
    N, K = w.shape
    blocks = w.reshape(N, K // block, block)  # (N, NB, block)
    gamma = np.abs(blocks).mean(axis=-1)  # (N, NB)
    safe = np.where(gamma > 0, gamma, 1.0)  # an all-zero block stays zero
    trits = np.clip(np.round(blocks / safe[..., None]), -1, 1).astype(np.int8)  # (N, NB, block)
    return trits, gamma.astype(np.float32)


def ternary_dequantize(trits, scales):
    """(N, NB, block) trits and (N, NB) scales -> float32 (N, K) = t * gamma."""
    out = trits.astype(np.float32) * scales[..., None]  # (N, NB, block)
    return out.reshape(out.shape[0], -1)


def ternary_model(model: Model) -> Model:
    """A new float Model whose linear weights take only the values {-g, 0, +g} in each block of 32.

    Embedding, norms and a tied head stay float (as quantize_model keeps them).
    """
    config = model.config
    params = dict(model.params)
    for name in linear_weight_names(config):
        w_nk = linear_weight(params, config, name[: -len(".weight")])
        if not isinstance(w_nk, np.ndarray):
            raise ValueError(f"{name} is already quantized; ternarize the float model instead")
        trits, scales = ternarize(w_nk)
        params[name] = _stored_float(ternary_dequantize(trits, scales), config).astype(np.float32)
    return Model(config, params, model.tokenizer)
