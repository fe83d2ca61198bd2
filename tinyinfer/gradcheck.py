"""Finite-difference gradient checks: the independent answer every backward pass is tested against.

Lesson: lessons/03-training.py

dL/dx ~ (L(x + h) - L(x - h)) / 2h, the central difference, accurate to order h^2. Run it in
float64: with float32's epsilon of 1e-7 there is no h for which both the truncation error (~h^2)
and the rounding error (~eps/h) are small.
"""
from __future__ import annotations

import numpy as np


def numerical_grad(f, array, h=1e-6):
    """Central differences of the scalar f() with respect to every entry of array.

    f reads array, which is changed in place one entry at a time and restored.
    """
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + h
        up = f()
        array[index] = original - h
        down = f()
        array[index] = original
        grad[index] = (up - down) / (2 * h)
    return grad
