"""Activations rounded twice: a quantized product that keeps ~16 bits of x, reading the weights once.

Lesson: lessons/04-quantization.py

QTensor.matmul rounds x to 8-bit blocks before its integer dot products (formats.py). Every
product's rounding tips near-tied logits now and then; the head's most directly, since its 49,152
outputs are the logits: on SmolLM2-135M, rounding the head's x twice instead of once moved the Q4_1
model's top-1 agreement with its float32 expansion from 96.6% to 97.5% of 4,096 held-out positions
(lesson 11 measures it, and in its exercise 6 every kind of product). Keeping x in float32 there
would need another kernel; rounding it twice reuses the one we have:

    x1 = Q8(x)            the 8-bit blocks the kernel makes anyway (d1 = amax / 127)
    x2 = Q8(x - x1)       the rounding error, rounded again (its amax <= d1 / 2)
    W x  ~=  W x1 + W x2  one product of the stacked rows [x; x - x1], the two halves added

(x - x1 is scaled by 256 before its rounding and the product scaled back, both exact: the blocks'
float16 scales lose precision below ~6e-5, which a residual of x ~ 1 would otherwise reach.)

x - x1 is what the first rounding lost, so the second pass keeps it to 1/254 of d1: x is carried to
about 1/(127 * 254) of each block's largest value, ~16 bits, while the weights are read once for
both rows. It costs twice the multiply-adds: measured on SmolLM2's 49,152 x 576 Q8_0 head (2-core
Zen 5), one sequence's head 0.44 -> 0.68 ms (its product mostly waits on memory), 32 sequences'
3.1 -> 6.1 ms (arithmetic bounds it); a whole decode step 1.05x at one sequence, 1.10-1.12x at 8-32.
Each row's result depends only on that row, so batching stays bit-for-bit invariant. (For q4_1 and
q5_1 the float16 block sums s keep their rounding in both passes: the gain there is ~10x, not ~250x.)

    y = two_pass_matmul(qt, x)       # qt: a QTensor; x: (K,) or (..., K) -> (N,) or (..., N)

tinyinfer/model.py's head_product runs every quantized head this way (model.forward, the
InferenceModel, the engine), so a quantized model's logits are those of ~16-bit activations.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_matmul_input
from .blocks import quantize_activations
from .formats import X_LIMIT, QTensor

RESIDUAL_SCALE = np.float32(256)  # a power of two: scaling by it and back is exact


def two_pass_matmul(qt: QTensor, x):
    """x: (K,) or (..., K) -> float32 (N,) or (..., N), approximately x @ qt.dequantize().T with x
    carried to ~16 bits: one QTensor.matmul of the rows [x; x - Q8(x)], the two halves added."""
    if not isinstance(qt, QTensor):
        raise TypeError(f"qt must be a QTensor, got {type(qt).__name__}")
    N, K = qt.shape
    x2, lead = check_matmul_input(x, K, "they cannot be quantized to Q8_0 blocks")  # (B, K) float32
    B = x2.shape[0]
    if B and not (np.isfinite(x2).all() and np.abs(x2).max() <= X_LIMIT):
        return qt.matmul(x)  # QTensor.matmul says what is wrong with x
    xq, xd, _ = quantize_activations(x2)  # the kernel's own first rounding, bit for bit
    first = (xq.astype(np.float32) * xd[..., None]).reshape(B, K)  # exact: 8-bit q times a float16 d
    # what the 8-bit blocks missed, scaled up by 2^8 (exactly) so that its own block scales stay
    # as far from float16's smallest numbers as x's: |x - first| <= d / 2 = amax / 254
    missed = (x2 - first) * RESIDUAL_SCALE
    out = qt.matmul(np.concatenate([x2, missed]))  # (2B, N)
    return (out[:B] + out[B:] * np.float32(1 / RESIDUAL_SCALE)).reshape(*lead, N)


__all__ = ["two_pass_matmul"]
