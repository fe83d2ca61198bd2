"""float16 scales read straight from their bits inside Numba kernels.

Lesson: lessons/04-quantization.py (the block formats)

ggml stores every block's scale d (and minimum m) as a float16. Numba has no float16 type on the
CPU, so a kernel would need them widened to float32 first: a second copy of every scale, 4 more
bytes a block (+20% memory for a Q4_1 model). Instead the kernels take the scales' 16-bit
patterns (a uint16 view of the float16 array, no copy: formats.py: float16_bits) and widen each one where it is used,
with `half_to_float`: the LLVM instructions `bitcast i16 -> half` and `fpext half -> float`. On
x86 with F16C (every x86-64 CPU since ~2013) that is one vcvtph2ps, 8 scales at a time in a
vectorized loop; LLVM emits an equivalent sequence elsewhere. float16 -> float32 is exact, so
the kernels compute with the very numbers they did with float32 copies.

ggml itself does the same (GGML_FP16_TO_FP32: F16C on x86, a 65,536-entry table elsewhere).

The other way, `round_to_half` rounds a float32 to the nearest float16 (half to even, inf past
65504) and widens it back: `fptrunc float -> half`, `fpext half -> float` (vcvtps2ph, vcvtph2ps),
what the activation quantizer needs for its float16 block scales. `float_from_bits` reads a uint32
bit pattern as the float32 it encodes, `bits_of_float` the reverse (the quantizer finds a block's
largest |x| on the bits).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def half_to_float(typingctx, bits):
    """The float16 whose bit pattern is `bits` (uint16), as a float32 (exactly)."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        value = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def round_to_half(typingctx, v):
    """float32 v -> the nearest float16 (half to even; +-inf past 65504; NaN stays NaN), as a float32."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(v), codegen


@intrinsic
def float_from_bits(typingctx, bits):
    """The float32 whose bit pattern is `bits` (a 32-bit integer)."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def bits_of_float(typingctx, v):
    """The bit pattern of float32 v, as a uint32."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(v), codegen
