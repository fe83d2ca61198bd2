"""Quantized weights in ggml's block formats (Q8_0, Q4_0) and the kernels that multiply by them.

Lesson: lessons/04-quantization.py

    from tinyinfer.quant import quantize, QTensor
    qt = quantize(w, "q4_0")          # w: float32 (N, K), K a multiple of 32
    y = qt.matmul(x)                  # x: (K,) or (..., K) -> (N,) or (..., N)
    b = qt.to_bytes()                 # ggml's blocks, as a GGUF file stores them
    QTensor.from_bytes(b, "q4_0", (N, K))

formats.py holds the rules in NumPy (the reference); kernels.py the Numba fast paths.
TINYINFER_REFERENCE=1 in the environment makes QTensor.matmul use the NumPy reference.
"""
from .formats import FORMATS, QTensor, quantize

__all__ = ["FORMATS", "QTensor", "quantize"]
