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
machine (LLVM vectorizes the sum with gather instructions, which are slow on AMD EPYC). Measured
again by `python -m tinyinfer.bench.sparse` (serial kernels, 4096 x 4096, busy 2-core EPYC, numba
0.68, three runs): the SpMV with fastmath took 1.5-2.2x as long as without at densities 0.5 down to
0.05 (e.g. 2.0 vs 4.0 ms at 10%); the SpMM (B = 16) took 1.03-1.09x as long with it. Without
fastmath the SpMV sum is sequential, in the same order as the NumPy twin's reduceat; the SpMM inner
loop vectorizes over b without fastmath because it is not a reduction.

Column indices are cast to an unsigned type before indexing x: Numba then skips its
negative-index wraparound test (a compare and select per gathered load); this made the serial SpMV
~25% faster here (2.8 -> 2.1 ms at 4096 x 4096, 10% density; SciPy's C++ loop: 1.8 ms).

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
FASTMATH = False  # measured: fastmath=True made the serial SpMV 1.5-2.2x slower (module docstring)

# --------------------------------------------------------------------------------------------
# rows r0..r1 of the product, one thread


@njit(cache=True, fastmath=FASTMATH)
def spmv_rows(indptr, indices, data, x, out, r0, r1):
    """x float32 (K,) -> fills out[r0:r1] (float32 (N,))."""
    for n in range(r0, r1):
        acc = np.float32(0.0)
        for j in range(indptr[n], indptr[n + 1]):
            acc += data[j] * x[np.uintp(indices[j])]  # unsigned: no negative-index wraparound test
        out[n] = acc


@njit(cache=True, fastmath=FASTMATH)
def spmm_rows(indptr, indices, data, xT, out, r0, r1):
    """xT float32 (K, B), batch innermost -> fills out[:, r0:r1] (float32 (B, N))."""
    B = xT.shape[1]
    acc = np.empty(B, np.float32)
    for n in range(r0, r1):
        acc[:] = 0
        for j in range(indptr[n], indptr[n + 1]):
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
