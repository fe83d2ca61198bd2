"""Who owns the cores: one thread policy for NumPy's BLAS and tinyinfer's Numba kernels.

Lesson: lessons/04-quantization.py (section 4, the kernels on both cores)

Two thread pools live in a tinyinfer process: NumPy's BLAS (OpenBLAS; its workers serve `@` on
float32 arrays) and Numba's (the quantized and sparse kernels, `parallel=True`). A decode step
alternates between them dozens of times (norms and attention in NumPy, every linear layer in a
Numba kernel). OpenBLAS's workers do not sleep when a call returns: they spin for a while waiting
for the next one, and a spinning worker holds a core that a Numba thread needs. Measured on a
2-core AMD EPYC (numba 0.68, NumPy 2.4 with OpenBLAS 0.3.31 pthreads), eight 2048 x 4096 matrices
cycled so every call reads from memory, GB/s (reproduce: python -m tinyinfer.bench.roofline --contention):

    what                                                quiet     shared, load 8.6    load 2.4
                                                                  median (best)       median (best)
    NumPy fp32 GEMV, 1 / 2 BLAS threads                 37 / 57   13.8 (15.4) / 2.3   15.7 (18.3) / 3.1
    naive Numba int8 row-dot loop, serial / parallel    35 / 66   7.1 (7.8) / 1.5     9.0 (11.0) / 8.5
    the parallel loop right after a 2-thread BLAS call  16        5.4 (7.1)           7.9 (8.7)
    ... right after a 1-thread BLAS call                66        0.8 (8.2)           1.6 (8.0)

The quiet column was measured earlier on a quiet 2-core EPYC of the same kind (load average
< 1; rerun the command on a quiet machine to check it). The other two were measured while other
jobs shared the two cores: there every figure is a fraction of its quiet value (even the
machine's streaming read, 14-23 GB/s), the medians of the two-thread cases are noise around a
collapse, and two BLAS threads are 5x *slower* than one, because a parallel region waits for its
slowest thread and that thread waits for a core. On a quiet machine two threads win; on an
oversubscribed one, one thread does (`set_kernel_threads(1)`, or NUMBA_NUM_THREADS=1 and
TINYINFER_BLAS_THREADS=1). On the quiet machine both cores *do* add bandwidth, and the fight
between the pools is what took it away.

The policy:

1. **Numba's kernels own the cores.** From the first call of a tinyinfer Numba kernel on (or
   `apply()`), NumPy's BLAS is held to TINYINFER_BLAS_THREADS threads, 1 by default, for the rest
   of the process: the NumPy work of a decode step (small products, norms) gains nothing from a
   second BLAS thread, and one BLAS thread has no workers to spin. A dense float32 model never
   calls a Numba kernel, so its BLAS keeps every core, which is its best setting (37 -> 57 GB/s).
2. **Numba's OpenMP threading layer** where it is available, else workqueue (NUMBA_THREADING_LAYER
   overrides). What starting one parallel region costs, measured on the quiet 2-core EPYC
   (`python -m tinyinfer.threads [--layer workqueue]`: a 2-iteration prange after a small
   float32 product, several passes; the spread is between passes):

       layer       BLAS held to 1 thread    right after a 2-thread BLAS call
       omp         0-3 us                   ~8,200-8,400 us
       workqueue   ~25-220 us               ~100-230 us

   OpenMP's workers spin briefly after a region, so the next one starts at once; but when
   OpenBLAS's workers spin too, the two pools fight over the two cores and a region waits
   milliseconds. Rule 1 removes the other pool, and then OpenMP is the cheap layer: a decode
   step of SmolLM2 starts ~120 parallel products, which workqueue's start-up cost made not worth
   splitting (tinyinfer/quant/kernels.py: DECODE_PARALLEL_MIN depends on the layer). OpenMP is
   also safe to call from several Python threads (workqueue is not); it is not safe across
   fork() without exec (tinyinfer never forks).

   The spinning has a price when *another process* runs parallel kernels on the same cores (two
   notebooks, a test run beside a server): each process's workers spin on the cores the other
   needs, and a region waits for a worker that is not running. Measured on the 2-core EPYC,
   SmolLM2-135M Q4_1 batch-1 decode in tokens/s (6 rounds of 32 tokens; three alternating runs
   alone, one with two processes at once):

       OpenMP waiting         alone                 two processes at once, each
       spinning (default)     79-98                 9-25
       OMP_WAIT_POLICY=PASSIVE 63-82                41-59

   So the default keeps the ~15% a lone process gains from spinning, and a machine whose cores
   are shared with other busy processes should set OMP_WAIT_POLICY=PASSIVE (before Python
   starts: libgomp reads it once), or give each process one thread (`set_kernel_threads(1)`).
3. **Threads for a kernel**: numba.get_num_threads() (all cores by default; NUMBA_NUM_THREADS or
   `set_kernel_threads(n)` changes it). Each kernel decides whether a product is big enough to
   split (tinyinfer/quant/kernels.py).

Overrides: TINYINFER_BLAS_THREADS=n (environment) or `set_blas_threads(n)`; `with
blas_threads(n): ...` for one region (a benchmark's float32 baseline at its best thread count).

How: threadpoolctl (the library scikit-learn uses) finds the BLAS library NumPy loaded, once;
after that a change is one ctypes call into OpenBLAS (~1 us), cheap enough for every region.
"""
from __future__ import annotations

import contextlib
import os

import numba

BLAS_ENV = "TINYINFER_BLAS_THREADS"



def _choose_layer() -> str:
    """omp if Numba's OpenMP pool loads here (it needs the system's libgomp), else workqueue."""
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        return "workqueue"
    return "omp"


if "NUMBA_THREADING_LAYER" in os.environ:
    LAYER = os.environ["NUMBA_THREADING_LAYER"]
else:
    LAYER = _choose_layer()
    numba.config.THREADING_LAYER = LAYER  # read at the first parallel launch, not before

_blas = None  # threadpoolctl's controllers for the BLAS libraries NumPy loaded (found once)
_applied = False


def _blas_libraries():
    global _blas
    if _blas is None:
        try:
            import numpy  # noqa: F401  (BLAS is loaded with NumPy)
            from threadpoolctl import ThreadpoolController
        except ImportError:  # without threadpoolctl the policy cannot be applied: leave BLAS alone
            _blas = []
        else:
            _blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    return _blas


def get_blas_threads() -> int:
    """BLAS's thread count now (the first BLAS library's; 0 if none was found)."""
    libs = _blas_libraries()
    return libs[0].get_num_threads() if libs else 0


def set_blas_threads(n: int):
    """Set NumPy's BLAS thread count for the process (one call into each BLAS library)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"BLAS threads must be >= 1, got {n}")
    for lib in _blas_libraries():
        lib.set_num_threads(n)


@contextlib.contextmanager
def blas_threads(n: int):
    """Run a region with n BLAS threads, then restore the previous count."""
    before = get_blas_threads()
    set_blas_threads(n)
    try:
        yield
    finally:
        if before:
            set_blas_threads(before)


def policy_blas_threads() -> int:
    """The BLAS thread count the policy holds while kernels own the cores: $TINYINFER_BLAS_THREADS or 1."""
    value = os.environ.get(BLAS_ENV, "").strip()
    if not value:
        return 1
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{BLAS_ENV} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{BLAS_ENV} must be a positive integer, got {value!r}")
    return n


def apply():
    """Hand the cores to the Numba kernels: BLAS to policy_blas_threads() threads. Idempotent and
    cheap after the first call; tinyinfer's kernels call it before their first parallel product."""
    global _applied
    if not _applied:
        set_blas_threads(policy_blas_threads())
        _applied = True


def numba_threads() -> int:
    """The threads a Numba kernel may use (numba.get_num_threads())."""
    return numba.get_num_threads()


def set_kernel_threads(n: int):
    """Threads for Numba kernels from now on (at most NUMBA_NUM_THREADS, the cores by default)."""
    numba.set_num_threads(int(n))


def describe() -> dict:
    """The policy in force, for a benchmark's machine line."""
    try:
        layer = numba.threading_layer()  # the layer actually loaded, once a parallel kernel ran
    except ValueError:
        layer = f"{numba.config.THREADING_LAYER} (configured)"
    return {"numba_threading_layer": layer, "numba_threads": numba_threads(), "blas_threads": get_blas_threads(),
            "kernels_own_cores": _applied}


def launch_cost(blas: int = 1, calls: int = 2000) -> float:
    """Microseconds that starting one parallel region adds after a small float32 product run with
    `blas` BLAS threads (the pattern of a decode step): the median of 5 passes of `calls` each."""
    import statistics
    import time

    import numpy as np
    from numba import njit, prange

    @njit(parallel=True)
    def region(out):
        for p in prange(out.shape[0]):
            out[p] += 1.0

    out = np.zeros(max(2, numba_threads()))
    a = np.ones((64, 576), np.float32)
    w = np.ones((576, 576), np.float32)
    region(out)  # compile
    passes = []
    with blas_threads(blas):
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                a @ w
            alone = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(calls):
                a @ w
                region(out)
            passes.append((time.perf_counter() - t0 - alone) / calls * 1e6)
    return statistics.median(passes)


if __name__ == "__main__":  # python -m tinyinfer.threads [--layer omp|workqueue]: the table above
    import argparse

    p = argparse.ArgumentParser(description="what one Numba parallel region costs to start, by BLAS threads")
    p.add_argument("--layer", choices=["omp", "workqueue", "tbb"], help="threading layer (default: the policy's)")
    args = p.parse_args()
    if args.layer:
        numba.config.THREADING_LAYER = args.layer
    for blas in (1, 2):
        us = launch_cost(blas, calls=2000 if blas == 1 else 200)
        print(f"{numba.threading_layer():>9}: {us:8.1f} us a region after a {blas}-thread BLAS product")
