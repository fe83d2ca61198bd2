"""Numba kernels for x @ W.T with W in CSR form: the fast twins of csr.csr_matmul_reference.

Lesson: lessons/05-pruning.py

    out[b, n] = sum over j in indptr[n] .. indptr[n+1]-1 of  data[j] * x[b, indices[j]]

Two shapes of work, two kernels each:

* decode, x: (K,) -> `spmv_rows` (sparse matrix x vector), a plain loop that reads like the
  formula: one row at a time, a float32 sum over its nonzeros, each x[indices[j]] a gather (a load
  from wherever the column points).
* prefill/batch, x: (B, K) -> x is transposed to xT (K, B) first, so a stored weight w = data[j]
  meets the contiguous row xT[indices[j], :]: one gather per weight instead of one per weight per
  row of x. `spmm_rows` is the plain loop (`acc[b] += w * xT[col, b]`); `spmm_rows_vector` is the
  measured step beyond it: the same product with its accumulators in explicit 8-lane vectors.

Why each kernel is written the way it is, in ns per nonzero of compute alone: `python -m
tinyinfer.bench.sparse --variants` times each way of writing it on a 1024 x 1024 matrix at 10%
density (~100 nonzeros a row) that stays in the caches, by the thread's CPU time (the time other
jobs held the core is not counted), best of 200 calls. Four runs on a 2-core AMD EPYC (Zen 3,
AVX2, 2.45 GHz; numba 0.68, LLVM 20) while other jobs kept the load average at 6-9, so the ranges
are wide; uint16 and int32 columns run the same instructions and are pooled here:

    SpMV, written as                                      ns per nonzero
    spmv_rows (below)                                     0.36-0.51
    the formula as written (signed offsets)               1.5-2.4
    no reassociation (one chain of adds)                  0.71-0.95
    four scalar accumulators (the previous kernel)        0.47-0.62
    fastmath=True (every flag)                            0.37-0.54
    explicit 8-lane llvm.masked.gather                    0.50-0.64
    explicit 8-lane AVX2 vgatherdps                       0.55-0.77
    limit: the gathers alone (sum of x[column])           0.36-0.43
    limit: the values alone (sum of data, in order)       0.11

So spmv_rows costs what its gathers cost: loading each column and then x at that column is the
work, the multiply-adds ride along. Its hot loop (`spmv_rows.inspect_asm()`, compiled with cache
off), per 8 nonzeros: 8 column loads (movzwl for uint16), 8 loads of x into vector lanes (vmovss/vinsertps),
one vinsertf128 and one vfmadd231ps with the 8 values read straight from memory; four such
accumulators in flight.

* fastmath={"reassoc", "contract"}: the row's sum may be reordered, so LLVM vectorizes it (8
  lanes, four vectors in flight, each x[indices[j]] loaded by a scalar load into its lane) and
  fuses the multiply-add. No NaN/Inf assumption is made (CSRMatrix.matmul refuses them anyway);
  the other fastmath flags add nothing measurable.
* Unsigned offsets, `np.uintp(...)` around the row bounds and the column: Numba otherwise tests
  every signed index for "negative, so count from the end" (a shift, an and, a select a load),
  which also stops the vectorizer.
* Explicit vector gathers are measured and not used: this CPU's vgatherdps is no faster than
  scalar loads, and LLVM turns its generic llvm.masked.gather back into scalar loads here. Two
  loads a nonzero (the column, then x) at this core's three loads a cycle would allow ~0.3 ns a
  nonzero at 2.45 GHz (an estimate from the instruction count; the gathers alone measure 0.36+).

16-bit columns (csr.py: uint16 when K <= 65,536) cost nothing in instructions (a zero-extending
16-bit load instead of a 32-bit one) and save a quarter of the bytes: that pays when the product
waits on memory, as a product from RAM on both cores does. The kernels take uint16, int32 and
int64 columns; Numba compiles one version per dtype.

The batch kernels. In `spmm_rows`, acc is an array, so every multiply-add loads and stores acc[b]
through memory (a dependency from one nonzero to the next) and LLVM checks at run time that acc
and xT do not overlap. `spmm_rows_vector` pads B to a multiple of 8 and, for each row and each 8
columns of the batch, keeps four `Float32x8` accumulators (LLVM vectors: registers) that take every
fourth nonzero: per nonzero one broadcast of w, one 8-float load of xT, one fused multiply-add,
four chains in flight. Same runs as the table, ns per nonzero:

    B = 3  (padded to 8)     spmm_rows 4.3-5.0     spmm_rows_vector 0.78-1.0
    B = 16 (two vectors)     spmm_rows 5.1-7.7     spmm_rows_vector 1.9-2.8 (8 columns a pass)

For B >= 16 the kernel now takes 16 columns a pass (eight accumulators): each nonzero's value and
column are loaded once for both vectors and its row of xT (16 floats, one cache line) is used whole.
4096 x 4096 from memory, B = 16, 2 threads, the two ways and scipy.sparse alternated in one
process (one run, shared VM): 2.3x faster than 8 columns a pass at 50% density, 3.6x at 90%, 2.2x at 95%
(at 70% the run was too noisy to tell: 1.2x).

Its intrinsics are a few lines of generic LLVM vector IR (load, shufflevector, fmul/fadd with
"contract"), not x86 instructions, so it runs on any CPU Numba does. Summation orders differ
(lanes, four accumulators, fused multiply-adds) between the kernels and the twin: the tests bound
the difference by float32 rounding of the sum of |terms|.

Threads: rows are split into chunks of about equal *work* (nonzeros + one per row, read off indptr:
`balanced_row_chunks`), not equal row counts, because a pruned matrix's rows can differ a lot in
nonzeros (Wanda keeps the same count per row; global magnitude pruning does not). No false
sharing: a parallel product's output starts on a 64-byte boundary and chunk boundaries fall on
multiples of 16 rows, so two threads never write the same 64-byte cache line of out (decode) or
outT (the vector batch kernel; the plain one's (B, N) out shares a line at a boundary when N is
not a multiple of 16). The thread policy (BLAS held to one thread while these kernels own the cores, the threading
layer) is tinyinfer/threads.py's; `csr_matmul` applies it before its first parallel product.

A product runs in parallel from PARALLEL_MIN_WORK = 2^18 multiply-adds (B * nnz) on, decode
included: starting the threads costs ~45 us on a quiet machine (tinyinfer/threads.py), the time
of ~100,000 nonzeros at ~0.45 ns, and halving the work pays for that from about twice as many.
`python -m tinyinfer.bench.sparse --variants` prints serial against parallel wall times by size:
with the load average at 9 (two threads waiting for cores other jobs held) starting them cost
~200 us and the parallel SpMV was 0.84x the serial one at 4096 x 4096, 10% density; re-measure
on a quiet machine. `parallel=True/False` forces either; `tinyinfer.threads.set_kernel_threads(1)`
makes every kernel serial.

Kernels are compiled on first use and cached on disk (cache=True).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .. import threads

PARALLEL_MIN_WORK = 1 << 18  # multiply-adds (B * nnz) from which a product is split among threads
ALIGN_ROWS = 16  # chunk boundaries on multiples of 16 rows: 16 float32 outputs = one 64-byte line
FASTMATH = {"reassoc", "contract"}  # reorder the row's sum (vectorize it), fuse multiply-adds
LANES = 8  # float32 lanes of one Float32x8: one AVX2 ymm register (two NEON registers)

# --------------------------------------------------------------------------------------------
# plain loops: rows r0..r1 of the product, one thread


@njit(cache=True, fastmath=FASTMATH)
def spmv_rows(indptr, indices, data, x, out, r0, r1):
    """x float32 (K,) -> fills out[r0:r1] (float32 (N,)). Unsigned offsets: see the module docstring."""
    for n in range(r0, r1):
        acc = np.float32(0.0)
        for j in range(np.uintp(indptr[n]), np.uintp(indptr[n + 1])):
            acc += data[j] * x[np.uintp(indices[j])]
        out[n] = acc


@njit(cache=True, fastmath=FASTMATH)
def spmm_rows(indptr, indices, data, xT, out, r0, r1):
    """xT float32 (K, B), batch innermost -> fills out[:, r0:r1] (float32 (B, N))."""
    B = xT.shape[1]
    acc = np.empty(B, np.float32)
    for n in range(r0, r1):
        acc[:] = 0
        for j in range(np.uintp(indptr[n]), np.uintp(indptr[n + 1])):
            w = data[j]
            col = np.uintp(indices[j])
            for b in range(B):  # contiguous in xT: a vector multiply-add, no reduction
                acc[b] += w * xT[col, b]
        for b in range(B):
            out[b, n] = acc[b]


# --------------------------------------------------------------------------------------------
# the step beyond for batches: accumulators as explicit 8-lane vectors
#
# Float32x8 is a Numba type whose value is an LLVM <8 x float>: a local variable of this type lives
# in a register. The intrinsics are its whole vocabulary: zeros, w * 8 consecutive floats added in,
# a sum of two, a store of 8 floats.

_F32x8 = ir.VectorType(ir.FloatType(), LANES)


class Float32x8(types.Type):
    """Numba type of eight float32 lanes held as one LLVM vector value."""

    def __init__(self):
        super().__init__(name="float32x8")


float32x8 = Float32x8()


@register_model(Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F32x8)


def _address(context, builder, aryty, ary, inds):
    """The address of ary[inds] as a pointer to <8 x float> (no bounds check, no negative indices)."""
    array = context.make_array(aryty)(context, builder, value=ary)
    ptr = cgutils.get_item_pointer(context, builder, aryty, array, inds, wraparound=False)
    return builder.bitcast(ptr, _F32x8.as_pointer())


def _intp(context, builder, value, ty):
    return context.cast(builder, value, ty, types.intp)


@intrinsic
def zeros8(typingctx):
    """Eight float32 zeros."""
    return float32x8(), lambda context, builder, sig, args: ir.Constant(_F32x8, [0.0] * LANES)


@intrinsic
def add8(typingctx, a, b):
    """Lane-wise a + b."""
    return float32x8(a, b), lambda context, builder, sig, args: builder.fadd(args[0], args[1])


@intrinsic
def fma_row8(typingctx, acc, w, xT, col, b0):
    """acc + w * xT[col, b0 : b0+8] (w broadcast to the 8 lanes; one fused multiply-add)."""
    def codegen(context, builder, sig, args):
        acc, w, xT, col, b0 = args
        inds = [_intp(context, builder, col, sig.args[3]), _intp(context, builder, b0, sig.args[4])]
        row = builder.load(_address(context, builder, sig.args[2], xT, inds), align=4)
        w = context.cast(builder, w, sig.args[1], types.float32)
        lanes = builder.insert_element(ir.Constant(_F32x8, None), w, ir.Constant(ir.IntType(32), 0))
        lanes = builder.shuffle_vector(lanes, lanes, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
        return builder.fadd(acc, builder.fmul(lanes, row, flags=("contract",)), flags=("contract",))
    return float32x8(acc, w, xT, col, b0), codegen


@intrinsic
def store8(typingctx, acc, out, n, b0):
    """out[n, b0 : b0+8] = acc's lanes."""
    def codegen(context, builder, sig, args):
        acc, out, n, b0 = args
        inds = [_intp(context, builder, n, sig.args[2]), _intp(context, builder, b0, sig.args[3])]
        builder.store(acc, _address(context, builder, sig.args[1], out, inds), align=4)
        return context.get_dummy_value()
    return types.none(acc, out, n, b0), codegen


@njit(cache=True)
def spmm_rows_vector(indptr, indices, data, xT, outT, r0, r1):
    """xT float32 (K, Bp), Bp a multiple of 8 -> fills outT[r0:r1, :] (float32 (N, Bp)).

    For each row and each 16 columns of the batch: eight accumulators, four chains of
    multiply-adds (every fourth nonzero) for each 8 columns, so each nonzero's value and column
    are read once for 16 columns and its row of xT is used whole (16 floats = one 64-byte line);
    then 8 columns at a time for the Bp % 16 left over. The row's nonzeros are read from memory for
    the first 16 columns and from the L1 cache for the rest.
    """
    one, four = np.uintp(1), np.uintp(4)
    Bp = xT.shape[1]
    wide = Bp - Bp % (2 * LANES)
    for n in range(r0, r1):
        start, end = np.uintp(indptr[n]), np.uintp(indptr[n + 1])
        for b0 in range(0, wide, 2 * LANES):
            b1 = b0 + LANES
            a0, a1, a2, a3 = zeros8(), zeros8(), zeros8(), zeros8()  # columns b0 .. b0+7
            c0, c1, c2, c3 = zeros8(), zeros8(), zeros8(), zeros8()  # columns b1 .. b1+7
            j = start
            while j + four <= end:
                w, col = data[j], indices[j]
                a0, c0 = fma_row8(a0, w, xT, col, b0), fma_row8(c0, w, xT, col, b1)
                w, col = data[j + one], indices[j + one]
                a1, c1 = fma_row8(a1, w, xT, col, b0), fma_row8(c1, w, xT, col, b1)
                w, col = data[j + np.uintp(2)], indices[j + np.uintp(2)]
                a2, c2 = fma_row8(a2, w, xT, col, b0), fma_row8(c2, w, xT, col, b1)
                w, col = data[j + np.uintp(3)], indices[j + np.uintp(3)]
                a3, c3 = fma_row8(a3, w, xT, col, b0), fma_row8(c3, w, xT, col, b1)
                j += four
            while j < end:  # the row's last 0..3 nonzeros
                w, col = data[j], indices[j]
                a0, c0 = fma_row8(a0, w, xT, col, b0), fma_row8(c0, w, xT, col, b1)
                j += one
            store8(add8(add8(a0, a1), add8(a2, a3)), outT, n, b0)
            store8(add8(add8(c0, c1), add8(c2, c3)), outT, n, b1)
        for b0 in range(wide, Bp, LANES):  # at most one group of 8 left
            a0, a1, a2, a3 = zeros8(), zeros8(), zeros8(), zeros8()
            j = start
            while j + four <= end:
                a0 = fma_row8(a0, data[j], xT, indices[j], b0)
                a1 = fma_row8(a1, data[j + one], xT, indices[j + one], b0)
                a2 = fma_row8(a2, data[j + np.uintp(2)], xT, indices[j + np.uintp(2)], b0)
                a3 = fma_row8(a3, data[j + np.uintp(3)], xT, indices[j + np.uintp(3)], b0)
                j += four
            while j < end:  # the row's last 0..3 nonzeros
                a0 = fma_row8(a0, data[j], xT, indices[j], b0)
                j += one
            store8(add8(add8(a0, a1), add8(a2, a3)), outT, n, b0)


# --------------------------------------------------------------------------------------------
# the same over all rows, the chunks split among threads


@njit(cache=True, parallel=True)
def spmv_parallel(indptr, indices, data, x, out, chunk_starts):
    for t in prange(chunk_starts.size - 1):
        spmv_rows(indptr, indices, data, x, out, chunk_starts[t], chunk_starts[t + 1])


@njit(cache=True, parallel=True)
def spmm_parallel(indptr, indices, data, xT, out, chunk_starts):
    for t in prange(chunk_starts.size - 1):
        spmm_rows(indptr, indices, data, xT, out, chunk_starts[t], chunk_starts[t + 1])


@njit(cache=True, parallel=True)
def spmm_vector_parallel(indptr, indices, data, xT, outT, chunk_starts):
    for t in prange(chunk_starts.size - 1):
        spmm_rows_vector(indptr, indices, data, xT, outT, chunk_starts[t], chunk_starts[t + 1])


@njit(cache=True)
def balanced_row_chunks(indptr, n_chunks, align=ALIGN_ROWS):
    """int64 (chunks+1,): row boundaries so each chunk holds about the same work.

    A row's work is its nonzeros plus 1 (the row's own overhead, so empty rows are not free).
    The running work before row n is indptr[n] + n; boundary c is the first row where it reaches
    c / n_chunks of the total (a binary search), rounded to the nearest multiple of `align` rows
    (16: a thread's float32 outputs then start on a 64-byte line of their own). A single very long
    row cannot be split, and rounding can merge chunks, so chunks may be uneven and fewer than
    asked. Compiled, because it runs at every parallel product: 2.2 us for 4096 rows, where the same
    steps in NumPy (astype, linspace, searchsorted, unique) took 96 us (best of 10,000; busy machine).
    """
    N = indptr.size - 1
    total = indptr[N] + N  # all the work
    starts = np.empty(n_chunks + 1, np.int64)
    starts[0] = 0
    count = 1
    for c in range(1, n_chunks):
        target = total * c / n_chunks
        lo, hi = 0, N  # the first row n with indptr[n] + n >= target
        while lo < hi:
            mid = (lo + hi) // 2
            if indptr[mid] + mid < target:
                lo = mid + 1
            else:
                hi = mid
        start = min(N, (lo + align // 2) // align * align)  # the nearest multiple of align
        if starts[count - 1] < start < N:
            starts[count] = start
            count += 1
    starts[count] = N
    return starts[: count + 1]


# --------------------------------------------------------------------------------------------
# the entry point CSRMatrix.matmul calls

KERNELS = ("vector", "plain")  # for batches; decode always runs spmv_rows


def aligned_empty(shape):
    """An uninitialized float32 array whose first element starts a 64-byte cache line."""
    count = math.prod(shape)
    buf = np.empty(count + ALIGN_ROWS, np.float32)
    skip = (-buf.ctypes.data % 64) // 4  # float32s to the next line boundary (NumPy aligns to 16 bytes)
    return buf[skip: skip + count].reshape(shape)


def _empty(shape):
    return np.empty(shape, np.float32)


def csr_matmul(indptr, indices, data, N, x, parallel=None, kernel="vector"):
    """x: float32 (B, K) contiguous -> float32 (B, N); same meaning as csr.csr_matmul_reference.

    The arrays must be a valid CSR matrix (CSRMatrix checks them): the kernels do not check bounds.
    parallel: None splits among threads from PARALLEL_MIN_WORK multiply-adds on; True/False forces.
    kernel: for B > 1, "vector" (spmm_rows_vector) or "plain" (spmm_rows).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    B, K = x.shape
    if parallel is None:  # small products first: asking Numba for its thread count costs ~1 us
        parallel = B * data.size >= PARALLEL_MIN_WORK and threads.numba_threads() > 1
    empty = aligned_empty if parallel else _empty  # threads write whole cache lines of their own
    out = empty((B, N))
    if B == 0 or N == 0:
        return out
    if parallel:
        threads.apply()  # BLAS quiet while Numba's threads run (tinyinfer/threads.py)
        chunk_starts = balanced_row_chunks(indptr, threads.numba_threads())
    if B == 1:
        if parallel:
            spmv_parallel(indptr, indices, data, x[0], out[0], chunk_starts)
        else:
            spmv_rows(indptr, indices, data, x[0], out[0], 0, N)
        return out
    if kernel == "plain":
        xT = np.ascontiguousarray(x.T)  # (K, B)
        if parallel:
            spmm_parallel(indptr, indices, data, xT, out, chunk_starts)
        else:
            spmm_rows(indptr, indices, data, xT, out, 0, N)
        return out
    Bp = -(-B // LANES) * LANES  # B rounded up to whole vectors; the padding rows of x are zeros
    xT = np.zeros((K, Bp), np.float32)
    xT[:, :B] = x.T
    outT = empty((N, Bp))
    if parallel:
        spmm_vector_parallel(indptr, indices, data, xT, outT, chunk_starts)
    else:
        spmm_rows_vector(indptr, indices, data, xT, outT, 0, N)
    out[:] = outT[:, :B].T
    return out
