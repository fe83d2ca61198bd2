"""CSR sparse matmul benchmark: the Numba kernels against NumPy float32 dense, across densities.

    python -m tinyinfer.bench.sparse [--n 4096 --k 4096] [--densities 0.5 0.3 0.1 0.05]
                                     [--batch 16] [--rounds 7] [--json out.json]

For each density a random (N, K) matrix keeps that fraction of its weights (uniformly at random,
as unstructured pruning leaves them). Decode (x: (K,)) and a batch (x: (B, K)) are timed against
NumPy float32 `x @ W.T` on the dense matrix with the zeros in it, interleaved round by round
(tinyinfer.bench.interleaved); ratio > 1 means CSR is faster. Also, on the same matrix:
scipy.sparse's CSR product (if SciPy is installed), the serial SpMV kernel compiled with and
without fastmath, and the serial vs parallel kernels. The crossover is the highest density at which
the default CSR path beat dense. On a busy machine set OPENBLAS_NUM_THREADS=1: otherwise BLAS's
second thread waits for the busy core and the dense baseline looks 2-4x slower than it is.
Lesson: lessons/05-pruning.py
"""
from __future__ import annotations

import argparse

import numpy as np

from . import interleaved, machine, save_results


def random_sparse(n, k, density, rng):
    """float32 (N, K) with round(density * N * K) nonzeros at uniformly random places."""
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    keep = rng.random((n, k)) < density
    return w * keep


def crossover(densities, ratios):
    """The highest density at which CSR was faster (ratio > 1), or None."""
    faster = [d for d, r in zip(densities, ratios) if r > 1.0]
    return max(faster) if faster else None


def run(n=4096, k=4096, densities=(0.5, 0.3, 0.1, 0.05), batch=16, rounds=7, seed=0):
    from numba import njit

    from ..sparse import CSRMatrix, kernels

    try:
        import scipy.sparse as scipy_sparse
    except ImportError:
        scipy_sparse = None
    other_fastmath = not kernels.FASTMATH
    spmv_other = njit(fastmath=other_fastmath)(kernels.spmv_rows.py_func)  # compiled on the spot, not cached
    spmm_other = njit(fastmath=other_fastmath)(kernels.spmm_rows.py_func)
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal(k).astype(np.float32)  # (K,)
    xb = rng.standard_normal((batch, k)).astype(np.float32)  # (B, K)
    results = {"machine": machine(), "n": n, "k": k, "batch": batch, "rounds": rounds,
               "kernels_fastmath": kernels.FASTMATH, "cases": {}}
    for density in densities:
        W = random_sparse(n, k, density, rng)  # (N, K)
        m = CSRMatrix.from_dense(W)
        args = (m.indptr, m.indices, m.data, n)
        x1b = x1[None]
        xbT = np.ascontiguousarray(xb.T)  # (K, B), as csr_matmul passes it
        out = np.empty(n, np.float32)
        outb = np.empty((batch, n), np.float32)
        m.matmul(x1), m.matmul(xb), spmv_other(m.indptr, m.indices, m.data, x1, out, 0, n)  # compile first
        spmm_other(m.indptr, m.indices, m.data, xbT, outb, 0, n)
        kernels.csr_matmul(*args, x1b, parallel=True), kernels.csr_matmul(*args, xb, parallel=True)
        cases = {
            "spmv B=1 vs x @ W.T": (lambda: m.matmul(x1), lambda: x1 @ W.T),
            f"spmm B={batch} vs x @ W.T": (lambda: m.matmul(xb), lambda: xb @ W.T),
            "spmv parallel vs serial": (lambda: kernels.csr_matmul(*args, x1b, parallel=True),
                                        lambda: kernels.csr_matmul(*args, x1b, parallel=False)),
            f"spmm B={batch} parallel vs serial": (lambda: kernels.csr_matmul(*args, xb, parallel=True),
                                                   lambda: kernels.csr_matmul(*args, xb, parallel=False)),
            f"spmv serial fastmath={kernels.FASTMATH} vs fastmath={other_fastmath}": (
                lambda: kernels.spmv_rows(m.indptr, m.indices, m.data, x1, out, 0, n),
                lambda: spmv_other(m.indptr, m.indices, m.data, x1, out, 0, n)),
            f"spmm B={batch} serial fastmath={kernels.FASTMATH} vs {other_fastmath}": (
                lambda: kernels.spmm_rows(m.indptr, m.indices, m.data, xbT, outb, 0, n),
                lambda: spmm_other(m.indptr, m.indices, m.data, xbT, outb, 0, n)),
        }
        if scipy_sparse is not None:
            S = scipy_sparse.csr_matrix(W)
            cases["spmv B=1 vs scipy.sparse"] = (lambda: m.matmul(x1), lambda: S @ x1)
            cases["scipy.sparse spmv vs x @ W.T"] = (lambda: S @ x1, lambda: x1 @ W.T)
        for label, (fast, base) in cases.items():
            r = interleaved(fast, base, rounds=rounds)
            results["cases"][f"density {density}: {label}"] = r
            print(f"density {density:<5} {label:44s} ratio {r['ratio']:6.2f}x   "
                  f"fast {r['fast_s'] * 1e3:8.3f} ms   baseline {r['baseline_s'] * 1e3:8.3f} ms", flush=True)
    for label in ("spmv B=1 vs x @ W.T", f"spmm B={batch} vs x @ W.T"):
        ratios = [results["cases"][f"density {d}: {label}"]["ratio"] for d in densities]
        results[f"crossover {label}"] = crossover(densities, ratios)
        print(f"crossover ({label}): CSR faster than dense at density <= {crossover(densities, ratios)} "
              f"(of {list(densities)})")
    results["machine"] = machine()  # again, now that the kernels ran: the threading layer actually loaded
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="output features N (rows of W)")
    p.add_argument("--k", type=int, default=4096, help="input features K")
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.3, 0.1, 0.05])
    p.add_argument("--batch", type=int, default=16, help="B for the SpMM case")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    results = run(args.n, args.k, tuple(args.densities), args.batch, args.rounds)
    save_results(results, args.json)


if __name__ == "__main__":
    main()
