"""The machine's roofline: how fast it can read memory and how fast it can multiply-add.

Lesson: lessons/04-quantization.py (the roofline plot); lessons/05-pruning.py uses it for CSR.

A matrix-vector product reads every weight once and does one multiply-add with it, so at batch 1
its speed is set by memory, not arithmetic: time >= bytes of the weights / read bandwidth. This
module measures the two ceilings a kernel is judged against:

    read_bandwidth(threads)   GB/s of a Numba loop that only reads (sums) a buffer far larger
                              than the last-level cache; one thread and all threads
    sgemm_rate()              GFLOP/s of NumPy's float32 matrix product at a large size (BLAS)
    int8_dot_rate()           multiply-adds/s of a Numba int8 dot product on data in L1
    tile_rate()               multiply-adds/s of the batch kernels' own register tile (quant/simd.py's
                              block step: the instructions that keep ggml's sums) on data in L1:
                              the ceiling of a batched product, whatever the memory does

Each is the fastest of a few passes (a ceiling is the best the machine showed).
and `roofline()` returns all of them with the machine. A kernel's "% of roofline" is its
achieved GB/s (bytes it must read / its time) over the all-threads read bandwidth.

    python -m tinyinfer.bench.roofline [--mb 512] [--contention]

--contention reproduces the thread-contention table in tinyinfer/threads.py (NumPy GEMV with 1
and 2 BLAS threads; a naive Numba int8 row-dot loop serial, parallel, parallel right after a
2-thread BLAS call, and with BLAS held to one thread).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from numba import njit, prange

from .. import threads
from ..quant.simd import pair_block_step, pairs, spread_pair_scales, tile_sums, unpacked_block_step

LINE = 64  # bytes in a cache line


# --------------------------------------------------------------------------------------------
# streaming reads


@njit(cache=True, fastmath=True)
def _sum_rows(buf, r0, r1):
    """Sum of buf[r0:r1, :] as int64 lanes (buf uint64 (R, W)): every byte read once, almost no
    arithmetic per byte, vectorized (fastmath lets LLVM reorder the integer adds freely anyway)."""
    acc = np.uint64(0)
    for r in range(r0, r1):
        for j in range(buf.shape[1]):
            acc += buf[r, j]
    return acc


@njit(cache=True)
def read_serial(buf):
    """One thread reads all of buf (uint64 (R, W))."""
    return _sum_rows(buf, 0, buf.shape[0])


@njit(cache=True, parallel=True)
def read_parallel(buf, parts):
    """All of Numba's threads read buf, each a contiguous slab of rows (`parts` slabs)."""
    R = buf.shape[0]
    sums = np.zeros(parts * 8, np.uint64)  # one cache line (8 x 8 bytes) a slab: no false sharing
    for p in prange(parts):
        sums[p * 8] = _sum_rows(buf, p * R // parts, (p + 1) * R // parts)
    return sums.sum()


def _buffer(mb):
    """uint64 (R, 4096) of about `mb` MB, touched (pages really allocated)."""
    rows = max(1, int(mb * 2**20) // (4096 * 8))
    buf = np.ones((rows, 4096), np.uint64)
    return buf


def read_bandwidth(mb=512, all_threads=True, repeats=5, buf=None):
    """GB/s of reading an `mb` MB buffer (well past a 32 MB last-level cache by default), from the
    fastest of `repeats` passes: a ceiling is the best the machine showed, not its typical pass
    (on a shared machine the typical pass mostly measures the neighbours)."""
    buf = _buffer(mb) if buf is None else buf
    with threads.blas_threads(1):  # BLAS workers quiet while Numba's threads read
        fn = (lambda: read_parallel(buf, threads.numba_threads() * 4)) if all_threads else (lambda: read_serial(buf))
        fn()  # compile / warm the pages
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return buf.nbytes / min(times) / 1e9


# --------------------------------------------------------------------------------------------
# multiply-add rates


def sgemm_rate(n=1536, repeats=5, blas_threads=None):
    """GFLOP/s (2 flops per multiply-add) of NumPy float32 (n, n) @ (n, n); BLAS at `blas_threads`
    (None: as many as the machine has cores)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    with threads.blas_threads(blas_threads or os.cpu_count()):
        a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


@njit(cache=True)
def _int8_dots(a, b, reps):
    """reps dot products of int8 a, b (length K, in L1), summed in int32: the inner loop of a
    quantized kernel with nothing to wait for."""
    total = 0
    for _ in range(reps):
        acc = np.int32(0)
        for j in range(a.size):
            acc += np.int32(a[j]) * np.int32(b[j])
        total += acc
    return total


@njit(cache=True, parallel=True)
def _int8_dots_parallel(a, b, reps, parts):
    sums = np.zeros(parts * 16, np.int64)
    for p in prange(parts):
        sums[p * 16] = _int8_dots(a, b, reps // parts)
    return sums.sum()


def _best_seconds(fn, passes=5):
    """The fastest of `passes` timed calls of fn, after one untimed call (compiles, warms caches),
    with BLAS held to one thread so its workers cannot spin on the cores being measured."""
    with threads.blas_threads(1):
        fn()
        times = []
        for _ in range(passes):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


def int8_dot_rate(k=4096, reps=20000, all_threads=True):
    """Giga multiply-adds/s of int8 x int8 -> int32 dot products from L1 (Numba, LLVM's vectorizer)."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(-127, 128, k).astype(np.int8), rng.integers(-127, 128, k).astype(np.int8)
    parts = threads.numba_threads() if all_threads else 1
    fn = (lambda: _int8_dots_parallel(a, b, reps, parts)) if all_threads else (lambda: _int8_dots(a, b, reps))
    return k * (reps // parts) * parts / _best_seconds(fn) / 1e9


@njit(cache=True, fastmath=True)
def _tile_loop(tag, buf, xq, scales, zero, reps):
    """reps passes of one register tile over buf's blocks: TILE_W weight rows x TILE_X rows of x."""
    sums = np.empty((buf.shape[0], xq.shape[0]), np.float32)
    osum = np.zeros((xq.shape[0], buf.shape[1], 8), np.int32)  # read by q4_0 / q5_0 only
    total = 0.0
    for _ in range(reps):
        acc = zero
        for k in range(buf.shape[1]):
            acc = unpacked_block_step(tag, acc, buf, k, xq, 0, scales, osum)
        tile_sums(acc, sums)
        total += sums[0, 0]
    return total


@njit(cache=True)
def _pair_tile_loop(tag, buf, xq, scales, zero, reps):
    """_tile_loop with the VNNI pair step (PAIR_FORMATS): two blocks a step; scales spread per lane."""
    sums = np.empty((buf.shape[0], xq.shape[0]), np.float32)
    NP = buf.shape[1] // 2
    osum = np.zeros((xq.shape[0], buf.shape[1], 8), np.int32)
    w16 = np.empty((buf.shape[0], NP, 16), np.float32)
    x16 = np.empty((xq.shape[0], NP, 16), np.float32)
    for i in range(buf.shape[0]):
        for p in range(NP):
            spread_pair_scales(scales[:, 0], i, p, w16)
    for j in range(xq.shape[0]):
        for p in range(NP):
            spread_pair_scales(scales[0], j, p, x16)
    total = 0.0
    for _ in range(reps):
        acc = zero
        for p in range(NP):
            acc = pair_block_step(tag, acc, buf, p, xq, 0, w16, x16, osum)
        tile_sums(acc, sums)
        total += sums[0, 0]
    return total


@njit(cache=True)
def _either_loop(tag, buf, xq, scales, zero, reps):
    if pairs(tag):
        return _pair_tile_loop(tag, buf, xq, scales, zero, reps)
    return _tile_loop(tag, buf, xq, scales, zero, reps)


@njit(cache=True, parallel=True)
def _tile_loop_parallel(tag, buf, xq, scales, zero, reps, parts):
    totals = np.zeros(parts * 16)
    for p in prange(parts):
        totals[p * 16] = _either_loop(tag, buf, xq, scales, zero, reps // parts)
    return totals.sum()


def tile_rate(fmt="q4_1", nb=64, reps=40000, all_threads=True):
    """Giga multiply-adds/s of quant/simd.py's batch register tile (unpacked_block_step, or
    pair_block_step for PAIR_FORMATS on AVX-512 VNNI; fmt's instructions) over nb blocks of 32 (nb
    even) that stay in L1: what the batched products could reach if nothing else cost anything (no
    unpacking, scales, sums or memory traffic)."""
    from ..quant import simd

    if fmt not in simd.UNPACKED_FORMATS:
        raise ValueError(f"fmt must be one of {simd.UNPACKED_FORMATS}, got {fmt!r}")
    rng = np.random.default_rng(0)
    zero = simd.ZERO_TILES[simd.TILE_X]
    buf = rng.integers(0, 16, (simd.TILE_W, nb, 32)).astype(np.int8)
    xq = rng.integers(-127, 128, (simd.TILE_X, nb, 32)).astype(np.int8)
    scales = rng.random((simd.TILE_W, simd.TILE_X, nb)).astype(np.float32)
    tag = simd.TAGS[fmt]
    parts = threads.numba_threads() if all_threads else 1
    fn = ((lambda: _tile_loop_parallel(tag, buf, xq, scales, zero, reps, parts)) if all_threads
          else (lambda: _either_loop(tag, buf, xq, scales, zero, reps)))
    return simd.TILE_W * simd.TILE_X * nb * 32 * (reps // parts) * parts / _best_seconds(fn) / 1e9


def roofline(mb=512, quick=False) -> dict:
    """The machine's ceilings: read GB/s (1 thread, all threads), float32 GFLOP/s, int8 Gmac/s."""
    buf = _buffer(64 if quick else mb)
    out = {"buffer_mb": buf.nbytes / 2**20, "load_average": os.getloadavg()[0],
           "read_gbs_1_thread": read_bandwidth(buf=buf, all_threads=False),
           "read_gbs_all_threads": read_bandwidth(buf=buf, all_threads=True),
           "threads": threads.numba_threads()}
    del buf
    out["sgemm_gflops"] = sgemm_rate(512 if quick else 1536)
    out["int8_gmacs"] = int8_dot_rate(reps=2000 if quick else 20000)
    return out


def format_roofline(r: dict) -> str:
    return (f"roofline: read {r['read_gbs_1_thread']:.1f} GB/s (1 thread), {r['read_gbs_all_threads']:.1f} GB/s "
            f"({r['threads']} threads) over {r['buffer_mb']:.0f} MB; float32 sgemm {r['sgemm_gflops']:.0f} GFLOP/s; "
            f"int8 dot {r['int8_gmacs']:.0f} G multiply-adds/s; load average {r['load_average']:.1f}")


# --------------------------------------------------------------------------------------------
# the thread-contention table (tinyinfer/threads.py's docstring)


@njit(cache=True)
def _rowdot(w, x, out, n0, n1):
    for n in range(n0, n1):
        acc = np.int32(0)
        for k in range(w.shape[1]):
            acc += np.int32(w[n, k]) * np.int32(x[k])
        out[n] = acc


@njit(cache=True)
def rowdot_serial(w, x, out):
    """The naive int8 matvec: one row after another, one thread."""
    _rowdot(w, x, out, 0, w.shape[0])


@njit(cache=True, parallel=True)
def rowdot_parallel(w, x, out):
    """The same loop with its rows split over Numba's threads in 64-row tasks."""
    N = w.shape[0]
    for t in prange((N + 63) // 64):
        _rowdot(w, x, out, t * 64, min(N, t * 64 + 64))


def contention_table(n=2048, k=4096, mats=8, rounds=9):
    """GB/s of each case, interleaved round by round, cycling `mats` matrices so every call reads
    from memory (mats * n * k * 4 bytes of float32: 256 MB at the defaults)."""
    rng = np.random.default_rng(0)
    W32 = [rng.standard_normal((n, k), dtype=np.float32) for _ in range(mats)]
    W8 = [rng.integers(-127, 128, (n, k)).astype(np.int8) for _ in range(mats)]
    x32, x8, out = rng.standard_normal(k, dtype=np.float32), rng.integers(-127, 128, k).astype(np.int8), np.empty(n, np.int32)
    rowdot_serial(W8[0], x8, out), rowdot_parallel(W8[0], x8, out)

    def gemv(t):
        def run(i):
            with threads.blas_threads(t):
                W32[i] @ x32
        return run

    def after_blas2(i):  # a 2-thread BLAS call on another matrix, then the parallel loop (timed)
        with threads.blas_threads(2):
            W32[(i + 3) % mats] @ x32
        t0 = time.perf_counter()
        rowdot_parallel(W8[i], x8, out)
        return time.perf_counter() - t0

    def after_blas1(i):
        with threads.blas_threads(1):
            W32[(i + 3) % mats] @ x32
        t0 = time.perf_counter()
        rowdot_parallel(W8[i], x8, out)
        return time.perf_counter() - t0

    cases = {
        "numpy fp32 gemv, 1 BLAS thread": (gemv(1), 4 * n * k),
        "numpy fp32 gemv, 2 BLAS threads": (gemv(2), 4 * n * k),
        "numba int8 row-dot, serial": (lambda i: rowdot_serial(W8[i], x8, out), n * k),
        "numba int8 row-dot, parallel": (lambda i: rowdot_parallel(W8[i], x8, out), n * k),
        "parallel right after a 2-thread BLAS call": (after_blas2, n * k),
        "parallel right after a 1-thread BLAS call": (after_blas1, n * k),
    }
    times = {name: [] for name in cases}
    for r in range(rounds):
        for name, (fn, _) in cases.items():
            with threads.blas_threads(1):
                time.sleep(0.02)  # let any spinning BLAS workers from the previous case go idle
            t0 = time.perf_counter()
            got = fn(r % mats)
            times[name].append(got if got is not None else time.perf_counter() - t0)
    load = os.getloadavg()[0]
    return {name: {"gbs": nbytes / statistics.median(times[name]) / 1e9,
                   "gbs_best": nbytes / min(times[name]) / 1e9, "load_average": load}
            for name, (_, nbytes) in cases.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=512, help="buffer size for the read bandwidth (MB)")
    p.add_argument("--contention", action="store_true", help="the thread-contention table too")
    args = p.parse_args(argv)
    print(format_roofline(roofline(args.mb)))
    print(f"batch register tile (quant/simd.py, q4_1, in L1): {tile_rate(all_threads=False):.1f} G multiply-adds/s "
          f"(1 thread), {tile_rate():.1f} ({threads.numba_threads()} threads)")
    if args.contention:
        for name, r in contention_table().items():
            print(f"{name:45s} {r['gbs']:6.1f} GB/s (best {r['gbs_best']:.1f}; load average {r['load_average']:.1f})")


if __name__ == "__main__":
    main()
