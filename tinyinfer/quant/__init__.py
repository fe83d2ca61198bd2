"""Quantized weights in ggml's block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) and the kernels
that multiply by them.

Lesson: lessons/04-quantization.py

    from tinyinfer.quant import quantize, QTensor
    qt = quantize(w, "q4_1")          # w: float32 (N, K), K a multiple of 32
    y = qt.matmul(x)                  # x: (K,) or (..., K) -> (N,) or (..., N)
    rows = qt.take_rows(ids)          # float32 (len(ids), K): an embedding lookup
    b = qt.to_bytes()                 # ggml's blocks, as a GGUF file stores them
    QTensor.from_bytes(b, "q4_1", (N, K))

blocks.py holds ggml's rules per format (the specification), formats.py the QTensor and the NumPy
reference product, kernels.py the Numba fast paths.
TINYINFER_REFERENCE=1 in the environment makes QTensor.matmul use the NumPy reference.
"""
from .formats import FORMATS, QTensor, quantize

__all__ = ["FORMATS", "QTensor", "quantize"]
