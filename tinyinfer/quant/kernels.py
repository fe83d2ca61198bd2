"""The fast path of QTensor.matmul: activations to Q8_0 / Q8_1 blocks, then a Numba kernel.

Lesson: lessons/04-quantization.py (section 4)

    qtensor_matmul(qt, x)    x float32 (B, K) -> float32 (B, N), what QTensor.matmul calls

Two steps, as in llama.cpp's CPU backend:

1. `quantize_activations` rounds x to Q8_0 blocks (and Q8_1's block sums for q4_1 / q5_1),
   bit-identical to blocks.quantize_activations (float16 rounding of d and s spelled out, since
   Numba has no float16 on the CPU). The quants are int8, as the kernels multiply them.
2. A kernel multiplies (its NumPy twin: formats.quantized_matmul_reference):
   - simd.py, the explicit-vector kernels (default): `decode_rows` for B = 1, register tiles for
     batches; every format (iq4_nl on x86);
   - interleaved.py, for q4_0 / q4_1 / q8_0 on AVX-512 VNNI hosts (interleaved.USED_FORMATS): the
     same products on the QTensor's records, 16 rows of W side by side, one output a vector lane
     (qtensor_matmul goes there; matmul_parts, which takes the arrays, keeps simd.py);
   - loops.py, the plain-loop kernels (kernel="loops"): one short loop nest per format that reads
     like the formula, the baseline the lesson measures the vectors against.

Threads (the policy is tinyinfer/threads.py: Numba's threads own the cores, BLAS held to one
thread from the first kernel call on): a product is split over threads when it is large enough
to pay for starting a parallel region (tens of microseconds here): decode when N * K >=
DECODE_PARALLEL_MIN weights, batches when B * N * K >= PARALLEL_MIN_WORK. `parallel=True/False`
forces either; `threads.set_kernel_threads(1)` makes every product serial.

Kernels are compiled on first use (one per format, tile shape and serial/parallel) and cached on
disk (cache=True): a first call in a fresh process takes ~0.3-1 s, later ones microseconds.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import threads  # the thread policy: workqueue layer; BLAS held to one thread once kernels run
from . import interleaved, loops, simd
from .blocks import BLOCK, WITH_HIGH_BITS, WITH_MIN
from .half import bits_of_float, float_from_bits, round_to_half

# Weights (N * K) below which a matvec runs on one thread. Splitting pays when the serial matvec
# takes about twice what starting a parallel region costs (tinyinfer/threads.py measures both
# layers). OpenMP: ~3 us, so from ~64K weights on (every linear layer of SmolLM2-135M, 576 x 576
# and up, is split). Workqueue: ~25-55 us, so only from ~4M weights (~2-4 MB of blocks at
# ~25 GB/s a core): of SmolLM2 only its 49152 x 576 head. Re-measure with
# `python -m tinyinfer.bench.quant` (serial vs parallel us per call).
DECODE_PARALLEL_MIN = 1 << 22 if threads.LAYER == "workqueue" else 1 << 16
# Multiply-adds (B * N * K) below which a batch runs on one thread. OpenMP starts a region in a few
# microseconds, so from ~64K on (the engine's decode batches of SmolLM2-135M, B = 2 x 576 x 576 and
# up: measured 1.35x the serial kernel's tokens/s at B = 2, 1.1x at 4, 1.05x at 8); workqueue's
# tens of microseconds only pay from ~4M.
PARALLEL_MIN_WORK = 1 << 22 if threads.LAYER == "workqueue" else 1 << 16


@njit(cache=True)
def slab_rows(N, parts):
    """Rows of W each task takes in a batch split over `parts` threads: one slab a thread, in whole
    tiles of TILE_W rows. Every task pays a fixed cost besides its tiles (x padded for the VNNI
    pair steps, the minima's terms, its buffers: a few microseconds at B = 32), so few large tasks
    beat many small ones. Measured on a 2-core Zen 5 EPYC, B = 32 and 256, against tasks of 64 rows:
    SmolLM2's 49152 x 576 Q8_0 head 1.43x, its Q4_1 layers (3072 x 576, 576 x 1536, 960 x 576)
    1.34-1.41x; two tasks a thread measured within a few percent of one, eight 0.96-1.44x."""
    slab = -(-N // parts)
    return -(-slab // simd.TILE_W) * simd.TILE_W

# --------------------------------------------------------------------------------------------
# activations to Q8_0 / Q8_1 blocks (bit-identical to blocks.quantize_activations; no fastmath, so
# the float32 products and roundings are exactly the C ones)


@njit(cache=True)
def float16_round(v):
    """float32 v -> the nearest float16 value (half to even; inf past 65504), as a float32.

    Numba has no float16 type on the CPU; quant/half.py's round_to_half is LLVM's own conversion
    to half and back (vcvtps2ph / vcvtph2ps with F16C). Its twin is NumPy's float16 cast
    (tests/test_quant_kernels.py compares them on random bit patterns and the edges). An earlier
    version spelled the rounding out with frexp/ldexp, two libm calls a scale: with it the
    quantizer below took twice as long."""
    return round_to_half(v)


@njit(cache=True)
def quantize_row(x, b, xq, xd, xs):
    """Row b of x float32 (B, K) -> xq[b] int8 (NB, 32), xd[b], xs[b] float32 (NB,), as
    blocks.quantize_activations. Returns (blocks that cannot be quantized: a NaN/Inf, or |x| so
    large that the float16 scale d overflows; blocks whose float16 sum s overflows, which matters
    only to q4_1 / q5_1): the caller turns those into an error.

    d = amax / 127 and s = d * sum q, both rounded to float16; q = rint(x * (127 / amax)).
    No fastmath, so every float32 product and rounding is the C one. The largest |x| of a block is
    found on the bits: for floats of one sign the order of their bit patterns is their order, and
    NaN's patterns lie above inf's, so one integer max (which vectorizes; a float max that must
    propagate NaN does not) gives amax and tells whether the block is finite. With it and the
    vector float16 rounding the quantizer is ~2x faster (32 x 576 on a 2-core Zen 5: 21 vs 46 us
    on one thread), same bits."""
    NB = x.shape[1] // BLOCK
    bad = 0
    bad_sums = 0
    for k in range(NB):
        top = np.uint32(0)
        for j in range(BLOCK):
            top = max(top, bits_of_float(x[b, k * BLOCK + j]) & np.uint32(0x7FFFFFFF))  # |x|'s bits
        finite = top < np.uint32(0x7F800000)  # below inf's pattern: no NaN, no inf
        if finite:
            amax = float_from_bits(np.uint32(top))
        else:  # a bad block: the caller raises; amax as a float max gives it (NaN skipped)
            amax = np.float32(0.0)
            for j in range(BLOCK):
                amax = max(amax, abs(x[b, k * BLOCK + j]))
        d = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
        if not np.isfinite(inv):  # amax so small that 127/amax overflows: an all-zero block
            inv = np.float32(0.0)
        total = 0
        if finite:
            for j in range(BLOCK):
                q = np.int32(np.rint(x[b, k * BLOCK + j] * inv))  # half to even, as _mm256_round_ps does
                xq[b, k, j] = q
                total += q
        else:
            for j in range(BLOCK):
                xq[b, k, j] = 0
        xd[b, k] = float16_round(d)
        xs[b, k] = float16_round(d * np.float32(total))
        if not finite or not np.isfinite(xd[b, k]):
            bad += 1
        elif not np.isfinite(xs[b, k]):
            bad_sums += 1
    return bad, bad_sums


@njit(cache=True)
def quantize_activations(x, xq, xd, xs):
    """x: float32 (B, K) -> fills xq int8 (B, NB, 32), xd and xs float32 (B, NB), row by row
    (quantize_row). Returns (bad blocks, bad sums), summed over the rows."""
    bad = 0
    bad_sums = 0
    for b in range(x.shape[0]):
        r_bad, r_sums = quantize_row(x, b, xq, xd, xs)
        bad += r_bad
        bad_sums += r_sums
    return bad, bad_sums


@njit(cache=True, parallel=True)
def quantize_activations_parallel(x, xq, xd, xs):
    """quantize_activations with the rows split over the threads: every row is rounded alone, so
    the bits are the same. For batches: SmolLM2's 32-row decode step spent ~5 ms of ~70 rounding
    its activations on one thread (2-core EPYC) while the other core waited."""
    bad = 0
    bad_sums = 0
    for b in prange(x.shape[0]):
        r_bad, r_sums = quantize_row(x, b, xq, xd, xs)
        bad += r_bad
        bad_sums += r_sums
    return bad, bad_sums


# --------------------------------------------------------------------------------------------
# the entry points


def _parts(qt):
    """The QTensor's arrays as the kernels take them (stand-ins where a format has none)."""
    wm = qt._m_bits_t if qt.fmt in WITH_MIN else qt._d_bits  # (NB, N) for the kernels; else not read
    wh = qt.high_bits if qt.fmt in WITH_HIGH_BITS else simd.NO_HIGH_BITS
    return qt._d_bits, wm, qt.quants, wh  # d and m as float16 bit patterns (uint16): quant/half.py


class ActivationError(ValueError):
    """x holds NaN/Inf or values too large for a Q8_0 block's float16 scale (QTensor.matmul explains)."""


def quantize_x(x, with_sums=True):
    """x float32 (B, K) -> (xq int8 (B, NB, 32), xd, xs float32 (B, NB)) with the Numba quantizer.
    with_sums: the product needs s (q4_1, q5_1), so its float16 overflow is an error too."""
    B, K = x.shape
    NB = K // BLOCK
    xq = np.empty((B, NB, BLOCK), np.int8)
    xd = np.empty((B, NB), np.float32)
    xs = np.empty((B, NB), np.float32)
    bad, bad_sums = _call(quantize_activations, ("quantize", x.dtype.char, x.flags.c_contiguous), x, xq, xd, xs)
    if bad:
        raise ActivationError("x has NaN/Inf values or |x| too large for a float16 block scale")
    if bad_sums and with_sums:
        raise ActivationError(f"x has {bad_sums} blocks of 32 whose sum is too large for the float16 s of "
                              f"ggml's Q8_1 blocks (|d * sum q| > 65504), which q4_1 / q5_1 products need")
    return xq, xd, xs


# Numba's dispatcher types every argument in Python before it calls a compiled kernel; for the
# Format and ZeroTile arguments that costs ~5-25 us a call, more than a small matvec. So after a
# kernel's first call for a (kernel, format, tile) the compiled entry point is kept and called
# directly (~0.5 us). Safe because everything else about the arguments' types is fixed: QTensor
# keeps C-contiguous arrays of fixed dtypes, and the activation arrays are made here.
_ENTRY_POINTS = {}


def _call(kernel, key, *args):
    entry = _ENTRY_POINTS.get(key)
    if entry is not None:
        return entry(*args)
    result = kernel(*args)  # compiles, or loads from the disk cache
    signature = tuple(kernel.typeof_pyval(a) for a in args)
    _ENTRY_POINTS[key] = kernel.overloads[signature].entry_point
    return result


def _worth_splitting(B, N, K) -> bool:
    """Whether a product of x (B, K) and W (N, K) is large enough to split over the threads (the
    thresholds above): decode by its weights, batches by their multiply-adds."""
    return N * K >= DECODE_PARALLEL_MIN if B == 1 else B * N * K >= PARALLEL_MIN_WORK


def matmul_parts(fmt, wd, wm, wq, wh, x, parallel=None, kernel="simd"):
    """x float32 (B, K) -> float32 (B, N) for W given as its arrays (see _parts: wm is the minima
    transposed, (NB, N)); kernel "simd" or "loops". All arrays C-contiguous."""
    threads.apply()  # from the first kernel call on, Numba's threads own the cores (tinyinfer/threads.py)
    B = x.shape[0]
    N = wq.shape[0]
    out = np.empty((B, N), np.float32)
    if B == 0:
        return out
    xq, xd, xs = quantize_x(x, fmt in WITH_MIN)
    if kernel == "loops" or fmt not in simd.SIMD_FORMATS:
        if kernel not in ("simd", "loops"):
            raise ValueError(f"kernel must be 'simd' or 'loops', got {kernel!r}")
        return loops.loop_matmul(fmt, wd, wm, wh, wq, xq, xd, xs, out)
    if kernel != "simd":
        raise ValueError(f"kernel must be 'simd' or 'loops', got {kernel!r}")
    tag = simd.TAGS[fmt]
    K = x.shape[1]
    if B == 1:
        # (the size test first: numba.get_num_threads() costs ~2.5 us, a small matvec ~10)
        nthreads = threads.numba_threads() if parallel or (parallel is None and _worth_splitting(1, N, K)) else 1
        if parallel is None:
            parallel = nthreads > 1
        if parallel:
            _call(simd.decode_parallel, ("decode_parallel", fmt), tag, wd, wm, wq, wh, xd, xs, xq, out,
                  simd.DECODE_TILE, min(N, nthreads))
        else:
            _call(simd.decode_rows, ("decode_rows", fmt), tag, wd, wm, wq, wh, xd, xs, xq, out, 0, N,
                  simd.DECODE_TILE)
        return out
    if parallel is None:
        parallel = _worth_splitting(B, N, K) and threads.numba_threads() > 1
    # x rows in tiles of TILE_X; of the B % TILE_X rows left, one goes through a one-row tile and two or
    # three are padded with zero rows to a full tile (their extra outputs dropped), as fused_decode does:
    # the same sums, and no tile shape of 2 or 3 rows for Numba to compile (~5 s each from a fresh clone)
    full = B - B % simd.TILE_X
    rest = B - full
    parts = [(xd[:full], xs[:full], xq[:full], out[:full], simd.TILE_X)] if full else []
    if rest == 1:
        parts.append((xd[full:], xs[full:], xq[full:], out[full:], 1))
    elif rest > 1:
        pad = [np.zeros((simd.TILE_X,) + a.shape[1:], a.dtype) for a in (xd, xs, xq)]
        for padded, a in zip(pad, (xd, xs, xq)):
            padded[:rest] = a[full:]
        parts.append((*pad, np.empty((simd.TILE_X, N), np.float32), simd.TILE_X))
    for pd, ps, pq, po, cols in parts:
        args = (tag, wd, wm, wq, wh, pd, ps, pq, po)
        if parallel:
            _call(simd.simd_parallel, ("simd_parallel", fmt, cols), *args, simd.ZERO_TILES[cols],
                  slab_rows(N, threads.numba_threads()))
        else:
            _call(simd.simd_rows, ("simd_rows", fmt, cols), *args, 0, N, simd.ZERO_TILES[cols])
    if rest > 1:
        out[full:] = parts[-1][3][:rest]
    return out


def qtensor_matmul(qt, x, parallel=None, kernel="simd"):
    """QTensor.matmul's fast path: x float32 (B, K) C-contiguous -> float32 (B, N). The formats in
    interleaved.USED_FORMATS (with AVX-512 VNNI) go to quant/interleaved.py's kernels, on the
    QTensor's records; the others, and kernel="loops", to matmul_parts."""
    if kernel == "simd" and qt.fmt in interleaved.USED_FORMATS:
        return interleaved_matmul(qt, x, parallel)
    return matmul_parts(qt.fmt, *_parts(qt), x, parallel, kernel)


def interleaved_matmul(qt, x, parallel=None):
    """x float32 (B, K) -> float32 (B, N) with quant/interleaved.py's kernels (any host: without
    VNNI they run generic vector IR, correct but slow; tests use that), split over the threads
    as matmul_parts splits: decode from DECODE_PARALLEL_MIN weights on, batches from
    PARALLEL_MIN_WORK multiply-adds on."""
    threads.apply()
    B, K = x.shape
    N = qt.shape[0]
    out = np.empty((B, N), np.float32)
    if B == 0:
        return out
    xq, xd, xs = quantize_x(x, qt.fmt in WITH_MIN)
    parts = threads.numba_threads() if (_worth_splitting(B, N, K) if parallel is None else parallel) else 1
    _call(interleaved.product, ("interleaved", qt.fmt), interleaved.TAGS[qt.fmt], qt.records, xq, xd, xs, out, parts)
    return out


def quantized_matmul(fmt, w_scales, w_quants, x, parallel=None, w_mins=None, w_high_bits=None, kernel="simd"):
    """The same from separate arrays: w_scales (and w_mins) (N, NB) holding float16 values (any float
    dtype), w_quants / w_high_bits as QTensor stores them; x float32 (B, K)."""
    expected = np.int8 if fmt == "q8_0" else np.uint8
    if w_quants.dtype != expected:
        raise TypeError(f"w_quants must be {np.dtype(expected)} for {fmt}, got {w_quants.dtype}")
    from .formats import float16_bits

    wd = float16_bits(w_scales)
    wm = wd if w_mins is None else float16_bits(np.asarray(w_mins).T)  # (NB, N)
    wh = simd.NO_HIGH_BITS if w_high_bits is None else np.ascontiguousarray(w_high_bits)
    return matmul_parts(fmt, wd, wm, np.ascontiguousarray(w_quants), wh, np.ascontiguousarray(x, np.float32),
                        parallel, kernel)
