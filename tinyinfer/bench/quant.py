"""Quantized matmul benchmark on the roofline: every format's kernels against NumPy float32, from memory.

    python -m tinyinfer.bench.quant [--n 4096 --k 4096] [--batch 32] [--rounds 5] [--formats q8_0,q4_1]
                                    [--quick] [--json out.json]

First the machine's ceilings (tinyinfer/bench/roofline.py: read GB/s with one and all threads,
float32 sgemm and int8 dot rates). Then, per format and kernel (simd: the explicit-vector kernels;
loops: the plain loops), decode (B = 1) and a batch (B = 32):

    time per call; achieved GB/s = the weight bytes the call must read / its time, and that as a
    percent of the all-threads read bandwidth (the roofline: the best of 5 passes at the start);
    and the same percent against the bandwidth read alongside (RoofReader: each kernel call follows a
    read of as many bytes, so both see the same milliseconds; median over rounds of per-round
    percents); ratio = NumPy float32 time / ours.

Fair by construction:
- both sides read from memory: each side cycles through enough matrices (a different one each
  call) that its working set is 3x the last-level cache;
- NumPy float32 runs at its best BLAS thread count (1 or 2, chosen at start), the kernels under
  tinyinfer's thread policy (tinyinfer/threads.py);
- the two sides alternate in blocks (all the matrices once per block), with the other side's
  threads quiet: after a NumPy block BLAS is set back to one thread and given time for its
  workers to stop spinning before the kernels run, and after a kernel block the kernels' OpenMP
  workers are given the same time before NumPy runs (quiet_kernels);
- the ratio reported is the median over rounds of the per-round ratios (spread: min..max).
The kernels' time includes rounding x to Q8_0/Q8_1 blocks and every Python-side step of
QTensor.matmul. Weights are random blocks (speed does not depend on their values).

Last, the per-call time of QTensor.matmul on SmolLM2-135M's shapes (576 x 576, 192 x 576,
1536 x 576, 576 x 1536 in Q4_1; the 49152 x 576 Q8_0 head), warm in cache: what a decode step
pays ~120 times a token besides streaming the weights.
Lesson: lessons/04-quantization.py
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np

from .. import threads
from . import machine, save_results
from .roofline import format_roofline, roofline

SMOLLM2_SHAPES = [("q4_1", 576, 576), ("q4_1", 192, 576), ("q4_1", 1536, 576), ("q4_1", 576, 1536),
                  ("q8_0", 49152, 576)]


def last_level_cache_bytes() -> int:
    """The largest CPU cache (Linux sysfs), or 32 MB when it cannot be read."""
    sizes = []
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            break
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=32 * 2**20)


def random_qtensor(fmt, n, k, rng):
    """A (n, k) QTensor of random blocks (finite scales): made from bytes, instant for every format."""
    from ..quant.blocks import BLOCK_DTYPES
    from ..quant.formats import QTensor

    dtype = BLOCK_DTYPES[fmt]
    raw = rng.integers(0, 256, n * (k // 32) * dtype.itemsize, dtype=np.uint8)
    structs = raw.view(dtype)
    structs["d"] = rng.uniform(1e-3, 2e-3, structs.shape).astype(np.float16)
    if "m" in dtype.names:
        structs["m"] = rng.uniform(-0.02, 0, structs.shape).astype(np.float16)
    return QTensor.from_bytes(raw, fmt, (n, k))


def copies_past_cache(one_bytes, llc):
    """How many matrices to cycle so that the working set is 3x the last-level cache (at least 2)."""
    return max(2, math.ceil(3 * llc / one_bytes))


def _block_time(fn, items):
    """Seconds per call of fn(item) over one pass through items."""
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items)


def quiet_blas():
    """BLAS back to the policy's thread count, and time for any spinning workers to go to sleep."""
    threads.set_blas_threads(threads.policy_blas_threads())
    # OpenBLAS workers spin for up to ~2^28 cycles after a call. Measured on the 2-core EPYC VM
    # (4096 x 4096 Q8_0 / Q4_0 decode from memory, right after a block of 2-thread float32 products):
    # after 0.1 s the kernel still ran 1.4-1.6x slower than with no BLAS call before it; after 0.5 s
    # it ran as fast. So the kernel's block starts 0.5 s after the baseline's.
    time.sleep(0.5)


def quiet_kernels():
    """Time for the kernels' OpenMP workers to stop spinning before the NumPy baseline runs: the
    same courtesy quiet_blas gives the kernels. An OpenMP runtime keeps its workers spinning for a
    while after a parallel region, and they take the cores from BLAS's threads. Measured on a
    2-core Zen 5 EPYC (4096 x 4096 float32 GEMV from memory, 2 BLAS threads): without this wait,
    right after a block of kernel calls, NumPy's GEMV read 12-13 GB/s; with it 31-37 GB/s, as fast
    as in a process that runs no kernel (32 GB/s). The ratios measured without it were 2.3-2.5x
    too flattering at B = 1 (Q8_0 9.97x, Q4_1 12.6x, against 4.09x and 5.44x with it)."""
    time.sleep(0.5)


def best_blas_threads(W, x, rounds=3):
    """1 or all cores for NumPy float32 W @ x (x: (K,) or (B, K).T layout as the caller passes)."""
    times = {}
    for t in sorted({1, os.cpu_count() or 1}):
        with threads.blas_threads(t):
            times[t] = min(_block_time(lambda w: w @ x, W) for _ in range(rounds))
    quiet_blas()
    return min(times, key=times.get), times


def compare(kernel_fn, qts, numpy_fn, Ws, blas_n, rounds, roof=None):
    """Interleaved blocks: NumPy float32 (blas_n threads) then the kernel (policy threads).
    -> per-call seconds (medians) and the median / min / max of per-round ratios. With roof (a
    RoofReader), each kernel call is preceded by a read of as many bytes from the roof's buffer,
    timed apart: the read ceiling of the same milliseconds, one figure per round."""
    fast, base, ratios, roofs = [], [], [], []
    for _ in range(rounds):
        with threads.blas_threads(blas_n):
            b = _block_time(numpy_fn, Ws)
        quiet_blas()
        if roof is None:
            f = _block_time(kernel_fn, qts)
        else:
            f, read_s, read_bytes = 0.0, 0.0, 0
            for qt in qts:
                seconds, nbytes = roof.read(qt.nbytes)
                read_s, read_bytes = read_s + seconds, read_bytes + nbytes
                t0 = time.perf_counter()
                kernel_fn(qt)
                f += time.perf_counter() - t0
            f /= len(qts)
            roofs.append(read_bytes / read_s / 1e9)
        quiet_kernels()
        fast.append(f)
        base.append(b)
        ratios.append(b / f)
    return {"kernel_s": statistics.median(fast), "numpy_s": statistics.median(base),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "round_kernel_s": fast, "round_roof_gbs": roofs}


class RoofReader:
    """The all-threads read of the roofline, in pieces: read(nbytes) reads the next ~nbytes of a
    `mb` MB buffer (well past the last-level cache; wrapping around) with all of Numba's threads and
    returns (seconds, bytes read). Alternated call by call with a kernel, it measures the bandwidth
    the machine had in the same milliseconds: on a shared VM the ceiling drifts (13-21 GB/s between
    minutes, measured), so a ceiling measured once at the start can belong to a moment the kernel
    never saw."""

    def __init__(self, mb=256):
        from .roofline import _buffer, read_parallel

        self._read = read_parallel
        self.buf = _buffer(mb)
        self.parts = threads.numba_threads() * 4
        self.row = 0
        self._read(self.buf, self.parts)  # compile, touch the pages

    def read(self, nbytes):
        rows = max(1, min(self.buf.shape[0], nbytes // (self.buf.shape[1] * self.buf.itemsize)))
        if self.row + rows > self.buf.shape[0]:
            self.row = 0
        piece = self.buf[self.row:self.row + rows]
        self.row += rows
        with threads.blas_threads(1):
            t0 = time.perf_counter()
            self._read(piece, self.parts)
            return time.perf_counter() - t0, piece.nbytes


def kernel_cases(fmts, n, k, batch, rounds, roof_gbs, llc, kernels=("simd", "loops"), seed=0):
    """Rows of results: every format x kernel, at B = 1 and B = batch."""
    from ..quant import kernels as qk

    rng = np.random.default_rng(seed)
    n_fp32 = copies_past_cache(4 * n * k, llc)
    Ws = [rng.standard_normal((n, k), dtype=np.float32) for _ in range(n_fp32)]  # (N, K) float32, cycled
    x1 = rng.standard_normal(k, dtype=np.float32)  # (K,)
    xb = rng.standard_normal((batch, k), dtype=np.float32)  # (B, K)
    blas1, blas1_times = best_blas_threads(Ws, x1)
    blasb, blasb_times = best_blas_threads(Ws, xb.T)
    roof_reader = RoofReader()
    rows = []
    for fmt in fmts:
        one = random_qtensor(fmt, n, k, rng)
        qts = [one] + [random_qtensor(fmt, n, k, rng) for _ in range(copies_past_cache(one.nbytes, llc) - 1)]
        for kernel in kernels:
            for B, x, blas_n, numpy_fn in ((1, x1[None], blas1, lambda w: w @ x1),
                                           (batch, xb, blasb, lambda w: xb @ w.T)):
                call = lambda qt, x=x, kernel=kernel: qk.qtensor_matmul(qt, x, kernel=kernel)  # noqa: E731
                call(qts[0])  # compile, or load from the disk cache
                r = compare(call, qts, numpy_fn, Ws, blas_n, rounds, roof_reader)
                gbs = one.nbytes / r["kernel_s"] / 1e9
                same_round = statistics.median(100 * one.nbytes / f / 1e9 / g
                                               for f, g in zip(r["round_kernel_s"], r["round_roof_gbs"]))
                rows.append({"fmt": fmt, "kernel": kernel, "B": B, "bytes": one.nbytes, **r, "gbs": gbs,
                             "roof_pct": 100 * gbs / roof_gbs, "roof_pct_same_round": same_round,
                             "numpy_blas_threads": blas_n,
                             "numpy_gbs": 4 * n * k / r["numpy_s"] / 1e9, "load_average": os.getloadavg()[0]})
                print(f"{fmt:6s} {kernel:5s} B={B:<3d} {r['kernel_s'] * 1e3:8.3f} ms {gbs:6.1f} GB/s "
                      f"{rows[-1]['roof_pct']:4.0f}% of roof ({same_round:3.0f}% of the roof read alongside) | NumPy fp32 ({blas_n} BLAS thr) "
                      f"{r['numpy_s'] * 1e3:7.3f} ms {rows[-1]['numpy_gbs']:5.1f} GB/s | ratio {r['ratio']:5.2f}x "
                      f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) load {rows[-1]['load_average']:.1f}", flush=True)
    return rows, {"decode": blas1_times, "batch": blasb_times}, {"fp32_matrices": n_fp32}


def per_call_times(shapes=SMOLLM2_SHAPES, calls=300, seed=1):
    """Microseconds per QTensor.matmul(x) on small shapes, warm (weights in cache): median and best of
    5 blocks, with the policy's choice of threads and with one thread forced."""
    from ..quant import kernels as qk

    rng = np.random.default_rng(seed)
    out = []
    for fmt, n, k in shapes:
        qt = random_qtensor(fmt, n, k, rng)
        x = rng.standard_normal(k, dtype=np.float32)
        x2 = x[None]
        row = {"fmt": fmt, "shape": [n, k], "bytes": qt.nbytes}
        for name, fn in (("matmul", lambda: qt.matmul(x)),
                         ("serial", lambda: qk.qtensor_matmul(qt, x2, parallel=False)),
                         ("parallel", lambda: qk.qtensor_matmul(qt, x2, parallel=True))):
            fn()
            reps = max(5, calls * 576 * 576 // (n * k))
            blocks = [_block_time(lambda _: fn(), range(reps)) for _ in range(5)]
            row[name + "_us"], row[name + "_best_us"] = statistics.median(blocks) * 1e6, min(blocks) * 1e6
        row["load_average"] = os.getloadavg()[0]
        out.append(row)
        print(f"{fmt} {n:>5d} x {k:<4d} QTensor.matmul {row['matmul_us']:7.1f} us (best {row['matmul_best_us']:.1f}); "
              f"kernel serial {row['serial_us']:7.1f} / parallel {row['parallel_us']:7.1f} us; "
              f"load {row['load_average']:.1f}", flush=True)
    return out


def run(n=4096, k=4096, batch=32, rounds=5, fmts=("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"),
        kernels=("simd", "loops"), quick=False):
    llc = last_level_cache_bytes()
    roof = roofline(quick=quick)
    print(format_roofline(roof), flush=True)
    rows, numpy_threads, extra = kernel_cases(fmts, n, k, batch, rounds, roof["read_gbs_all_threads"], llc, kernels)
    small = per_call_times()
    roof_end = roofline(quick=quick)  # again: on a shared machine the ceiling drifts while we measure
    print("at the end, " + format_roofline(roof_end), flush=True)
    return {"machine": machine(), "roofline": roof, "roofline_end": roof_end, "llc_bytes": llc, "n": n, "k": k, "batch": batch,
            "rounds": rounds, "numpy_blas_thread_times": numpy_threads, **extra, "cases": rows, "per_call": small}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="output features N (rows of W)")
    p.add_argument("--k", type=int, default=4096, help="input features K (a multiple of 32)")
    p.add_argument("--batch", type=int, default=32, help="B for the batch case")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--formats", default="q8_0,q4_0,q4_1,q5_0,q5_1,iq4_nl", help="comma-separated")
    p.add_argument("--kernels", default="simd,loops", help="simd (explicit vectors), loops (plain loops)")
    p.add_argument("--quick", action="store_true", help="a smaller roofline buffer")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    results = run(args.n, args.k, args.batch, args.rounds, tuple(args.formats.split(",")),
                  tuple(args.kernels.split(",")), args.quick)
    results["machine"] = machine()  # again, now that the kernels ran: the threading layer actually loaded
    save_results(results, args.json)


if __name__ == "__main__":
    main()
