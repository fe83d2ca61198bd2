"""Numba kernels for x @ W.T with W in CSR form: the fast twins of csr.csr_matmul_reference.

Lesson: lessons/05-pruning.py

    out[b, n] = sum over j in indptr[n] .. indptr[n+1]-1 of  data[j] * x[b, indices[j]]

Two shapes of work, two loop orders:

* decode, x: (K,) -> `spmv_rows` (sparse matrix x vector). One row at a time, a float32 sum over
  its nonzeros; each x[indices[j]] is a gather, a load from wherever the column points.
* prefill/batch, x: (B, K) -> `spmm_rows` (sparse x dense). x is transposed to (K, B) first, so a
  stored weight w = data[j] meets the contiguous row xT[indices[j], :] and `acc[b] += w * xT[col, b]`
  over b is a plain vector multiply-add: one gather per weight instead of one per weight per row of x.

fastmath: off. FACTS.md reports a CSR gather loop 2.3x *slower* with fastmath on this kind of
machine (LLVM vectorizes the sum with gather instructions, which are slow on AMD EPYC; here
vgatherqps, 8 lanes with 64-bit indices, seen in the assembly). Measured
again by `python -m tinyinfer.bench.sparse` (serial kernels, 4096 x 4096, busy 2-core EPYC, numba
0.68, three runs): the SpMV with fastmath took 1.5-2.2x as long as without at densities 0.5 down to
0.05 (e.g. 2.0 vs 4.0 ms at 10%); the SpMM (B = 16) took 1.03-1.09x as long with it. (Those were the
one-accumulator kernel.) The SpMM inner loop vectorizes over b without fastmath because it is not
a reduction.

Why the SpMV was slow, and the fix: one float32 accumulator per row is one chain of dependent adds,
~4 cycles each, so the old kernel ran at ~1 nonzero per 4 cycles whatever the memory could do
(1.5-1.6 ms at 4096 x 4096, 10% density, ~1.7M nonzeros). `spmv_rows` now keeps four accumulators
(nonzero j goes to j mod 4) and uses unsigned offsets for data, indices and x: Numba then skips its
negative-index wraparound test on every load (signed offsets cost a shift, an and and a cmov per
load, seen in the assembly). Measured interleaved in one process (busy 2-core EPYC, load average ~5,
minimum of 15 rounds): 10% density 0.79-0.87 ms (old 1.55 ms; scipy.sparse 1.42-1.48 ms, so
~1.7x SciPy), 5% density 0.47 ms (old 0.97; SciPy 0.82). Eight accumulators were no faster; four
accumulators with fastmath (FMA, or gathers) were within noise of these. Versus dense NumPy the
ratio could not be measured fairly: the busy machine slowed the dense `W @ x` (64 MB, memory-bound)
to 3-15 ms from its quiet 1.85 ms, so 0.8 ms is ~2.2x the quiet dense time, short of 3x.
The sums are in a different order from the NumPy twin's reduceat: the tests bound the difference.

Threads: rows are split into chunks of roughly equal *work* (nonzeros + one per row, read off
indptr: `balanced_row_chunks`), not equal row counts, because a pruned matrix's rows can differ
a lot in nonzeros (Wanda keeps the same count per row; global magnitude pruning does not).
prange runs over the chunks, a few per thread so a slow thread (the other core is busy) does not
hold the rest back. The threading layer is the one tinyinfer/quant/kernels.py chooses (workqueue,
~44 us a parallel region instead of OpenMP's ~8 ms here); importing that module makes the choice,
so both kinds of kernel agree.

When to use threads (`parallel=None`): decode (B = 1) always runs serial, as in tinyinfer/quant:
on this 2-core machine with one core busy, the parallel SpMV measured 0.4-0.98x of the serial one
(4096 x 4096, densities 0.5-0.05). Batches run parallel from PARALLEL_MIN_WORK multiply-adds
(B * nnz) on: there the busy-machine measurement was mostly 0.94-1.0x (once 0.56x at 5% density;
the second core was taken). That it pays on an idle machine is expected, not yet measured. Re-measure with
`python -m tinyinfer.bench.sparse` on an idle machine. `parallel=True/False` forces either.

Kernels are compiled on first use and cached on disk (cache=True).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..quant import kernels as _quant_kernels  # noqa: F401  (sets numba's threading layer: one choice for tinyinfer)

PARALLEL_MIN_WORK = 1 << 24  # multiply-adds (B * nnz) from which a batch is split among threads
CHUNKS_PER_THREAD = 4  # more chunks than threads: a slow thread takes fewer of them
FASTMATH = False  # measured: fastmath=True made the one-accumulator SpMV 1.5-2.2x slower (module docstring)

# --------------------------------------------------------------------------------------------
# rows r0..r1 of the product, one thread


@njit(cache=True, fastmath=FASTMATH)
def spmv_rows(indptr, indices, data, x, out, r0, r1):
    """x float32 (K,) -> fills out[r0:r1] (float32 (N,)).

    Four accumulators take every fourth nonzero: four independent chains of float adds instead
    of one (each add waits ~4 cycles for the previous one). Offsets are unsigned (no
    negative-index test on any load). Summed as (a0 + a1) + (a2 + a3) at the end of the row.
    """
    one, four = np.uintp(1), np.uintp(4)
    for n in range(r0, r1):
        j, end = np.uintp(indptr[n]), np.uintp(indptr[n + 1])
        a0 = a1 = a2 = a3 = np.float32(0.0)
        while j + four <= end:
            a0 += data[j] * x[np.uintp(indices[j])]
            a1 += data[j + one] * x[np.uintp(indices[j + one])]
            a2 += data[j + np.uintp(2)] * x[np.uintp(indices[j + np.uintp(2)])]
            a3 += data[j + np.uintp(3)] * x[np.uintp(indices[j + np.uintp(3)])]
            j += four
        while j < end:  # the row's last 0..3 nonzeros
            a0 += data[j] * x[np.uintp(indices[j])]
            j += one
        out[n] = (a0 + a1) + (a2 + a3)


@njit(cache=True, fastmath=FASTMATH)
def spmm_rows(indptr, indices, data, xT, out, r0, r1):
    """xT float32 (K, B), batch innermost -> fills out[:, r0:r1] (float32 (B, N))."""
    B = xT.shape[1]
    acc = np.empty(B, np.float32)
    for n in range(r0, r1):
        acc[:] = 0
        for j in range(np.uintp(indptr[n]), np.uintp(indptr[n + 1])):  # unsigned: no wraparound tests
            w = data[j]
            col = np.uintp(indices[j])
            for b in range(B):  # contiguous in xT: a vector multiply-add, no reduction
                acc[b] += w * xT[col, b]
        for b in range(B):
            out[b, n] = acc[b]


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


def balanced_row_chunks(indptr, n_chunks):
    """int64 (n_chunks'+1,): row boundaries so each chunk holds about the same work.

    A row's work is its nonzeros plus 1 (the row's own overhead, so empty rows are not free).
    The running work at row n is indptr[n] + n; chunk boundaries are where it crosses equal
    fractions of the total. A single very long row cannot be split, so chunks may be uneven
    and fewer than asked (duplicate boundaries are dropped).
    """
    N = indptr.size - 1
    work = indptr.astype(np.int64) + np.arange(N + 1)  # (N+1,) running work, non-decreasing
    targets = np.linspace(0, work[-1], n_chunks + 1)  # (n_chunks+1,)
    starts = np.searchsorted(work, targets, side="left")
    starts[0], starts[-1] = 0, N
    return np.unique(starts)


def csr_matmul(indptr, indices, data, N, x, parallel=None):
    """x: float32 (B, K) contiguous -> float32 (B, N); same meaning as csr.csr_matmul_reference.

    parallel: None chooses by size (PARALLEL_MIN_WORK); True/False forces it.
    """
    B, K = x.shape
    out = np.empty((B, N), dtype=np.float32)
    if B == 0 or N == 0:
        return out
    threads = numba.get_num_threads()
    if parallel is None:  # see the module docstring for the measurements behind this rule
        parallel = B > 1 and threads > 1 and B * data.size >= PARALLEL_MIN_WORK
    if parallel:
        chunk_starts = balanced_row_chunks(indptr, CHUNKS_PER_THREAD * threads)
    if B == 1:
        if parallel:
            spmv_parallel(indptr, indices, data, x[0], out[0], chunk_starts)
        else:
            spmv_rows(indptr, indices, data, x[0], out[0], 0, N)
        return out
    xT = np.ascontiguousarray(x.T)  # (K, B)
    if parallel:
        spmm_parallel(indptr, indices, data, xT, out, chunk_starts)
    else:
        spmm_rows(indptr, indices, data, xT, out, 0, N)
    return out
