"""QTensor: a weight matrix held in one of ggml's block formats, and the NumPy reference of its product.

Lesson: lessons/04-quantization.py

The block rules themselves (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL: how a block of 32 weights
becomes a float16 scale and 32 small integers, and the bytes ggml stores) are in blocks.py, one
section per format. This module holds what the model uses:

    qt = quantize(w, "q4_1")          # w: float32 (N, K), K a multiple of 32
    y = qt.matmul(x)                  # x: (K,) or (..., K) -> (N,) or (..., N)
    e = qt.take_rows(ids)             # float32 (len(ids), K): an embedding lookup
    b = qt.to_bytes()                 # ggml's blocks, as a GGUF file stores them
    QTensor.from_bytes(b, "q4_1", (N, K))

Multiplying: like llama.cpp's CPU backend, `QTensor.matmul(x)` first rounds the activations x to
Q8_0 blocks (Q8_1 for q4_1 / q5_1: the same plus s = d * sum q), then each block's dot product is
a sum of small-integer products (exact, in int32) times the two scales:

    q8_0, q4_0, q5_0, iq4_nl:  out[b, n] = sum_k  d_w[n,k] d_x[b,k] sum_j q_w[n,k,j] q_x[b,k,j]
    q4_1, q5_1:                out[b, n] = sum_k  d_w d_x sum_j q_w q_x  +  sum_k m_w[n,k] s_x[b,k]

(the second because w = q_w d_w + m_w and sum_j q_x[j] d_x = s_x). The activation scales d_x and
s_x are rounded to float16 as ggml's block_q8_0 / block_q8_1 store them: the same arithmetic as
llama.cpp, so a model loaded from a GGUF file computes what llama.cpp computes (but for the
output head, whose x tinyinfer rounds twice: quant/residual.py). On an AVX2 machine
the Numba decode kernels even add in ggml's order: a row of q8_0, q4_0, q4_1, q5_0 or q5_1 equals
ggml's vec_dot bit for bit (iq4_nl within float32 rounding); tests/test_quant_llamacpp.py checks
it, and the bytes and the activation blocks, against llama.cpp's C code. `quantized_matmul_reference` below is that computation in NumPy, the twin of
the Numba kernels in tinyinfer/quant/kernels.py. Because x is rounded too, the result differs
slightly from `x @ W.dequantize().T`; tests/test_quant_kernels.py bounds the difference.

Set the environment variable TINYINFER_REFERENCE=1 and `QTensor.matmul` runs this NumPy twin
instead of the kernels (read at every call, so a notebook can flip it).

Shapes: N output features, K input features, B rows of activations, NB = K // 32 blocks a row.
"""
from __future__ import annotations

import os

import numpy as np

from ..checks import check_matmul_input, check_weight_matrix
from . import blocks
from .blocks import (BLOCK, BLOCK_DTYPES, FORMATS, FP16_MAX, SCALE_DIVISOR, WITH_HIGH_BITS, WITH_MIN,
                     integer_values, pack_q4_0, quantize_activations, roundf)

BLOCK_Q8_0, BLOCK_Q4_0 = BLOCK_DTYPES["q8_0"], BLOCK_DTYPES["q4_0"]
_inverse_scale, _to_float16 = blocks.inverse_scale, blocks.to_float16  # the names gptq.py grew up with

# the largest |x| whose Q8_0 block scale amax / 127 still fits a float16
X_LIMIT = float(np.nextafter(np.float32(65520 * 127), np.float32(0)))


def use_reference() -> bool:
    """True when TINYINFER_REFERENCE is set to 1 (or true/yes): matmul then runs the NumPy twin."""
    value = os.environ.get("TINYINFER_REFERENCE")
    return bool(value) and value.strip().lower() in ("1", "true", "yes")


def unpack_q4_0(packed):
    """packed: uint8 (..., 16) -> the signed values q - 8, int8 (..., 32) in -8..7."""
    return integer_values("q4_0", packed)


def dequantize_blocks(fmt, scales, quants, mins=None, high_bits=None):
    """scales float16 (N, NB), quants as stored -> float32 (N, K) (ggml's dequantize_row_*)."""
    return blocks.dequantize(fmt, scales, quants, m=mins, qh=high_bits)


# --------------------------------------------------------------------------------------------
# the multiply, as the kernels do it: activations to Q8_0 / Q8_1 on the fly, integer dot per block


def quantized_matmul_reference(fmt, w_scales, w_quants, x, w_mins=None, w_high_bits=None):
    """The NumPy twin of the Numba kernels. x: float32 (B, K) -> float32 (B, N).

    out[b, n] = sum over blocks k of float(sum_j xq[b,k,j] * wq[n,k,j]) * (wd[n,k] * xd[b,k]),
    the blocks added one after another in float32, as the kernels add them; for q4_1 / q5_1 the
    minimum's terms wm[n,k] * xs[b,k] are added up separately and joined at the end, as ggml does.
    w_scales, w_mins: float16 or float32 (N, NB); w_quants, w_high_bits: as QTensor stores them.
    """
    xq, xd, xs = quantize_activations(x)  # (B, NB, 32), (B, NB), (B, NB)
    wq = integer_values(fmt, w_quants, w_high_bits)  # int8 (N, NB, 32)
    wd = np.asarray(w_scales, np.float32)
    B, NB = xd.shape
    out = np.zeros((B, wd.shape[0]), dtype=np.float32)  # (B, N)
    for k in range(NB):
        # int32 products: |sum| <= 32 * 127 * 127, far inside int32, so this is exact.
        sumi = xq[:, k].astype(np.int32) @ wq[:, k].astype(np.int32).T  # (B, N)
        out += sumi.astype(np.float32) * (wd[None, :, k] * xd[:, k, None])
    if fmt in WITH_MIN:
        wm = np.asarray(w_mins, np.float32)
        mins = np.zeros_like(out)
        for k in range(NB):
            mins += wm[None, :, k] * xs[:, k, None]
        out += mins
    return out


# --------------------------------------------------------------------------------------------
# checks that turn bad input into an error that says what came


def _check_fmt(fmt):
    if fmt not in BLOCK_DTYPES:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def _check_shape(shape, name="shape"):
    try:
        N, K = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two ints (N, K), got {shape!r}") from None
    if N < 1 or K < 1:
        raise ValueError(f"{name} must be positive (N, K), got {(N, K)}")
    if K % BLOCK:
        raise ValueError(f"{name}: K = {K} is not a multiple of {BLOCK}; ggml's blocks cover "
                         f"{BLOCK} weights of a row, so K must be a multiple of {BLOCK}")
    return N, K


def _check_weights(w):
    w = check_weight_matrix(w, "they cannot be quantized")
    _check_shape(w.shape, "w.shape")
    return w


def _check_scales(scales, fmt, where, what="scale"):
    bad = ~np.isfinite(scales)
    if bad.any():
        row, block = np.argwhere(bad)[0]
        limit = FP16_MAX * (SCALE_DIVISOR[fmt] if what == "scale" else 1)
        raise ValueError(f"{where}: the float16 {what} of block {block} of row {row} is {scales[row, block]}; "
                         f"{fmt} can only hold weights with |w| below about {limit:.4g}")


def _check_parts(fmt, N, K, scales, quants, mins, high_bits):
    """The arrays a QTensor is made of must have the shapes and dtypes the kernels read."""
    NB = K // BLOCK
    expected = {"scales": (scales, np.float16, (N, NB)),
                "quants": (quants, np.int8 if fmt == "q8_0" else np.uint8, (N, NB, BLOCK if fmt == "q8_0" else BLOCK // 2))}
    if fmt in WITH_MIN:
        expected["mins"] = (mins, np.float16, (N, NB))
    elif mins is not None:
        raise ValueError(f"mins: {fmt} blocks have no minimum, got an array")
    if fmt in WITH_HIGH_BITS:
        expected["high_bits"] = (high_bits, np.uint8, (N, NB, 4))
    elif high_bits is not None:
        raise ValueError(f"high_bits: {fmt} blocks have no 5th bits, got an array")
    for name, (a, dtype, shape) in expected.items():
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{name} of a {fmt} QTensor of shape {(N, K)} must be {np.dtype(dtype)} {shape}, "
                             f"got {got}")


# --------------------------------------------------------------------------------------------
# QTensor: what the model holds in place of a dense weight


def float16_bits(a) -> np.ndarray:
    """A float16 array's bit patterns as uint16, C-contiguous (a view when it already is): the form
    in which the kernels read scales (tinyinfer/quant/half.py widens them)."""
    return np.ascontiguousarray(a, dtype=np.float16).view(np.uint16)


class QTensor:
    """A (N, K) weight matrix in one of ggml's block formats (see blocks.py for the rules).

    Stored as separate arrays rather than interleaved blocks, so the kernels read each directly:
        scales     float16 (N, NB)       d of every block
        mins       float16 (N, NB)       m (q4_1, q5_1; else None)
        high_bits  uint8 (N, NB, 4)      the 5th bits (q5_0, q5_1; else None)
        quants     int8 (N, NB, 32)      q8_0's q
                   uint8 (N, NB, 16)     the nibble bytes (q4_*, q5_*, iq4_nl), as ggml packs them
    `to_bytes()` interleaves them into ggml's blocks, `from_bytes` takes them apart.

    d and m are kept as their float16 bit patterns (uint16), which the kernels widen where they use
    them (tinyinfer/quant/half.py): no float32 copy, so a model takes its blocks' bytes in memory.
    The minima are kept transposed, (NB, N), the layout in which the kernels add their terms.
    """

    def __init__(self, fmt, shape, scales, quants, mins=None, high_bits=None):
        _check_fmt(fmt)
        self.fmt = fmt
        self.shape = _check_shape(shape)
        _check_parts(fmt, *self.shape, scales, quants, mins, high_bits)
        # C order, always: the kernels read each block as one contiguous vector (no copy if already so)
        contiguous = lambda a: None if a is None else np.ascontiguousarray(a)  # noqa: E731
        self.quants, self.high_bits = contiguous(quants), contiguous(high_bits)
        self._d_bits = float16_bits(scales)  # uint16 (N, NB): d's float16 bit patterns, as the kernels read them
        self._m_bits_t = None if mins is None else float16_bits(mins.T)  # uint16 (NB, N), the minima transposed

    @property
    def scales(self):
        """d of every block, float16 (N, NB), as the file stores it."""
        return self._d_bits.view(np.float16)

    @property
    def mins(self):
        """m of every block, float16 (N, NB) (q4_1, q5_1), or None."""
        return None if self._m_bits_t is None else self._m_bits_t.T.view(np.float16)

    @property
    def records(self):
        """The blocks of 16 rows side by side (quant/interleaved.py's layout), uint8 (ceil(N / 16), NB,
        bytes a record), made on first use and kept: a second copy of the weights, which the kernels
        of the formats in interleaved.USED_FORMATS (AVX-512 VNNI hosts) read instead of the arrays above.
        A QTensor's arrays are not changed after it is made (every method returns a new one)."""
        if getattr(self, "_records", None) is None:
            from . import interleaved

            self._records = interleaved.repack(self.fmt, self.quants, self.scales, self.mins)
        return self._records

    @property
    def _scales_f32(self):
        """d as float32 (N, NB), made on demand (the NumPy reference and tests use it; exact)."""
        return self.scales.astype(np.float32)

    @property
    def _mins_f32(self):
        """The minima as float32 (N, NB), made on demand (exact)."""
        return None if self._m_bits_t is None else self.mins.astype(np.float32)

    # --- sizes ---

    @property
    def bits_per_weight(self) -> float:
        """8.5 q8_0, 4.5 q4_0 / iq4_nl, 5.0 q4_1, 5.5 q5_0, 6.0 q5_1: bytes a block x 8 / 32."""
        return BLOCK_DTYPES[self.fmt].itemsize * 8 / BLOCK

    @property
    def nbytes(self) -> int:
        """Bytes of the ggml blocks (what a GGUF file stores for this tensor)."""
        N, K = self.shape
        return N * (K // BLOCK) * BLOCK_DTYPES[self.fmt].itemsize

    def __repr__(self):
        return f"QTensor({self.fmt}, shape={self.shape}, {self.nbytes} bytes)"

    def _fields(self):
        """ggml's struct field names -> our arrays: d, m, qh, qs (those the format has)."""
        fields = {"d": self.scales, "m": self.mins, "qh": self.high_bits, "qs": self.quants}
        return {name: a for name, a in fields.items() if a is not None}

    # --- bytes in, bytes out ---

    def to_bytes(self):
        """uint8 (nbytes,): ggml's blocks, row after row, exactly as a GGUF file stores them."""
        out = np.empty(self.scales.shape, dtype=BLOCK_DTYPES[self.fmt])  # (N, NB) structs
        for name, a in self._fields().items():
            out[name] = a
        return out.reshape(-1).view(np.uint8)

    @classmethod
    def from_bytes(cls, b, fmt, shape):
        """The inverse of to_bytes: b (bytes or uint8 array) holding ggml blocks of a (N, K) matrix."""
        _check_fmt(fmt)
        N, K = _check_shape(shape)
        raw = np.frombuffer(b, dtype=np.uint8) if not isinstance(b, np.ndarray) else b.reshape(-1)
        if raw.dtype != np.uint8:
            raise TypeError(f"b must be bytes or a uint8 array, got dtype {raw.dtype}")
        block = BLOCK_DTYPES[fmt]
        expected = N * (K // BLOCK) * block.itemsize
        if raw.size != expected:
            raise ValueError(f"b has {raw.size} bytes but a {fmt} matrix of shape {(N, K)} takes {expected} "
                             f"({N} rows x {K // BLOCK} blocks x {block.itemsize} bytes)")
        structs = np.ascontiguousarray(raw).view(block).reshape(N, K // BLOCK)  # (N, NB) structs
        parts = {name: np.ascontiguousarray(structs[name]) for name in block.names}  # copies out of the structs
        _check_scales(parts["d"], fmt, "b")
        if "m" in parts:
            _check_scales(parts["m"], fmt, "b", what="minimum")
        return cls(fmt, (N, K), parts["d"], parts["qs"], parts.get("m"), parts.get("qh"))

    # --- rows ---

    def _row_ids(self, ids, name="ids"):
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} must be integer row indices, got dtype {ids.dtype}")
        N = self.shape[0]
        bad = (ids < 0) | (ids >= N)
        if bad.any():
            raise IndexError(f"{name} must be in 0..{N - 1} (the rows of this {self.fmt} QTensor), "
                             f"got {ids[bad].reshape(-1)[0]}")
        return ids

    def select_rows(self, ids) -> "QTensor":
        """The QTensor of rows ids (1-D, in that order): whole rows move, so blocks stay intact."""
        ids = self._row_ids(ids).reshape(-1)
        pick = lambda a: None if a is None else a[ids]  # noqa: E731
        return QTensor(self.fmt, (ids.size, self.shape[1]), pick(self.scales), pick(self.quants),
                       pick(self.mins), pick(self.high_bits))

    def take_rows(self, ids):
        """float32 (*ids.shape, K): the dequantized rows ids, e.g. an embedding lookup of token ids.

        Only those rows are dequantized (a decode step's lookup touches one row of the table)."""
        ids = self._row_ids(ids)
        flat = ids.reshape(-1)
        rows = blocks.dequantize(self.fmt, self.scales[flat], self.quants[flat],  # only these rows
                                 m=None if self._m_bits_t is None else self.mins[flat],
                                 qh=None if self.high_bits is None else self.high_bits[flat])
        return rows.reshape(*ids.shape, self.shape[1])

    @classmethod
    def concat_rows(cls, tensors) -> "QTensor":
        """One QTensor whose rows are the given QTensors' rows, one after another (same fmt and K):
        e.g. q, k and v projections fused into one matmul. Bytes per row are unchanged."""
        tensors = list(tensors)
        if not tensors or not all(isinstance(t, QTensor) for t in tensors):
            raise TypeError("concat_rows takes a non-empty list of QTensors")
        fmt, K = tensors[0].fmt, tensors[0].shape[1]
        for t in tensors[1:]:
            if t.fmt != fmt or t.shape[1] != K:
                raise ValueError(f"concat_rows needs one format and one K; got {fmt} (.., {K}) and "
                                 f"{t.fmt} {t.shape}")
        join = lambda name: None if getattr(tensors[0], name) is None else np.concatenate(  # noqa: E731
            [getattr(t, name) for t in tensors])
        N = sum(t.shape[0] for t in tensors)
        return cls(fmt, (N, K), join("scales"), join("quants"), join("mins"), join("high_bits"))

    # --- arithmetic ---

    def dequantize(self):
        """float32 (N, K): every weight as q * d (+ m), the values the blocks stand for."""
        return blocks.dequantize(self.fmt, self.scales, self.quants, m=self.mins, qh=self.high_bits)

    def matmul(self, x):
        """x: (K,) or (..., K) -> float32 (N,) or (..., N), approximately x @ dequantize().T.

        x is rounded to Q8_0 / Q8_1 blocks first (see the module docstring). float16/float64 x is
        converted to float32; the result is always float32.
        """
        N, K = self.shape
        if use_reference():
            x2, lead = self._checked_x(x)
            out = quantized_matmul_reference(self.fmt, self._scales_f32, self.quants, x2, self._mins_f32,
                                             self.high_bits)
            return out.reshape(*lead, N)
        kernels = _kernels()
        if (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim in (1, 2) and x.shape[-1] == K
                and x.flags.c_contiguous):  # a decode step's x: skip the general checks (~10 us) ...
            x2, lead = x.reshape(-1, K), x.shape[:-1]
        else:
            x2, lead = check_matmul_input(x, K, "they cannot be quantized to Q8_0 blocks")  # (B, K) float32
        try:
            out = kernels.qtensor_matmul(self, x2)
        except kernels.ActivationError:  # ... the quantizer flags NaN/Inf or overflow: say which
            self._checked_x(x)
            raise  # the block sums' overflow (q4_1 / q5_1): the quantizer's own message
        return out.reshape(*lead, N)

    def _checked_x(self, x):
        """x -> (float32 (B, K), lead shape), or the error that says what is wrong with x."""
        x2, lead = check_matmul_input(x, self.shape[1], "they cannot be quantized to Q8_0 blocks")
        if x2.size and np.abs(x2).max() > X_LIMIT:
            raise ValueError(f"x has values with |x| > {X_LIMIT:.4g}; ggml's Q8_0 activation blocks keep a "
                             f"float16 scale |x| / 127, which cannot hold them")
        return x2, lead


_KERNELS = []


def _kernels():
    """tinyinfer.quant.kernels, imported (with Numba) only when a fast path is first needed."""
    if not _KERNELS:
        from . import kernels

        _KERNELS.append(kernels)
    return _KERNELS[0]


def check_importance(importance, shape, name="importance"):
    """importance: one weight per input column, (K,) or (N, K), finite and >= 0 -> float32 array."""
    N, K = shape
    try:
        a = np.asarray(importance, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of numbers, got {type(importance).__name__}") from None
    if a.shape not in ((K,), (N, K)):
        raise ValueError(f"{name} must have shape (K,) = ({K},) or (N, K) = {(N, K)} for weights of shape "
                         f"{(N, K)}, got {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 (mean squared activations), got "
                         f"{'NaN/Inf' if not np.isfinite(a).all() else 'a negative value'}")
    return a


def quantize(w, fmt="q8_0", importance=None):
    """w: float (N, K), K a multiple of 32 -> QTensor in ggml's `fmt` (one of FORMATS).

    "iq4_nl" runs ggml's weighted scale search (quantize_iq4_nl, as llama-quantize does): ~1 s per
    million weights here, the other formats ~100x faster.

    importance: (K,) (or (N, K)) weights of each input column's rounding errors, e.g. a layer's
    imatrix (tinyinfer/quant/imatrix.py): q4_0, q4_1, q5_0, q5_1 and iq4_nl then search their
    scales as llama-quantize does when given an imatrix (see blocks.py); q8_0 ignores it, as ggml does.
    """
    _check_fmt(fmt)
    w = _check_weights(w)
    if importance is not None:
        importance = check_importance(importance, w.shape)
    parts = blocks.QUANTIZERS[fmt](w, importance=importance)
    _check_scales(parts["d"], fmt, "w")
    if "m" in parts:
        _check_scales(parts["m"], fmt, "w", what="minimum")
    return QTensor(fmt, w.shape, parts["d"], parts["qs"], parts.get("m"), parts.get("qh"))


__all__ = ["BLOCK", "FORMATS", "QTensor", "quantize", "quantize_activations", "quantized_matmul_reference",
           "dequantize_blocks", "roundf", "pack_q4_0", "unpack_q4_0", "use_reference"]
