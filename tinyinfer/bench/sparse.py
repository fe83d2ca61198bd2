"""CSR sparse matmul benchmark: the Numba kernels against NumPy float32 dense and scipy.sparse, from
memory, beside the machine's read bandwidth.

    python -m tinyinfer.bench.sparse [--n 4096 --k 4096] [--densities 0.5 0.3 0.1 0.05] [--batch 16]
                                     [--rounds 7] [--working-set-mb 128] [--json out.json]
    tinyinfer bench sparse [--rounds 7] [--json out.json]
    python -m tinyinfer.bench.sparse --variants     (the kernels written other ways, compute alone;
                                                    serial vs parallel wall time by size)

For each density, random (N, K) matrices keep that fraction of their weights (uniformly at random,
as unstructured pruning leaves them), stored as CSRMatrix (uint16 columns) and, for the other
sides, as the same matrix with int32 columns, as scipy.sparse's csr_matrix and as dense float32
with its zeros. What makes the comparison fair:

* **From memory.** Every side cycles through enough different matrices that its working set is
  --working-set-mb (default 128 MB, 4x this machine's 32 MB last-level cache): each call reads its
  matrix from RAM, as a model's layers are read during decode, not from a cache that a single
  benchmark matrix would sit in.
* **Dense at its best.** NumPy float32 `x @ W.T` runs with 1 BLAS thread and with all cores
  (tinyinfer.threads.blas_threads), timed interleaved first; the faster count is the baseline.
* **Blocks, other threads quiet.** Sides run in blocks (one pass over their matrices each),
  interleaved round by round in rotating order. A Numba side runs with BLAS held to 1 thread, and
  after a multi-threaded BLAS block the next block waits QUIET_GAP_S: OpenBLAS's workers keep
  spinning ~0.1 s after a call (measured here: ~10 ms of CPU per 10 ms for 100 ms after a
  2-thread GEMV), which would take a core from the next side.
* **Ratios per round.** Each round gives baseline time / CSR time; the figure is the median over
  rounds, with the lowest and highest beside it.

Beside every kernel: achieved GB/s = bytes it must read (indptr + indices + data + x, plus out
written; dense: N*K*4 + x + out) / its time, and that as % of the all-threads read bandwidth that
tinyinfer.bench.roofline measures at the start. The load average is printed with each density:
on a shared machine every absolute number is low and noisy; ratios are what this measures.
Lesson: lessons/05-pruning.py (its roofline plot runs `run` with small settings).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from . import machine, save_results

QUIET_GAP_S = 0.15  # after a multi-threaded BLAS block: its workers spin ~0.1 s (module docstring)


def random_csr(n, k, density, rng):
    """A CSRMatrix (uint16 columns when k <= 65,536) with each weight kept with probability
    `density`, values N(0, 0.02^2), built without an (n, k) float array."""
    from ..sparse import CSRMatrix
    from ..sparse.csr import column_dtype, index_dtype

    keep = rng.random((n, k), dtype=np.float32) < density  # (N, K) bool
    rows, cols = np.nonzero(keep)
    del keep
    indptr = np.zeros(n + 1, index_dtype(n, k, rows.size))
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    data = (rng.standard_normal(rows.size, dtype=np.float32) * 0.02).astype(np.float32)
    return CSRMatrix(indptr, cols.astype(column_dtype(n, k, rows.size)), data, (n, k))


def crossover(densities, ratios):
    """The highest density at which CSR was faster (ratio > 1), or None."""
    faster = [d for d, r in zip(densities, ratios) if r > 1.0]
    return max(faster) if faster else None


def matrices_for(bytes_each, working_set_mb, at_least=2, at_most=64):
    """How many matrices of bytes_each to cycle so that together they fill the working set."""
    return int(min(at_most, max(at_least, -(-working_set_mb * 2**20 // max(bytes_each, 1)))))


def timed_blocks(sides, rounds, progress=None):
    """sides: name -> (call(i), calls per block, BLAS threads). Returns name -> per-round seconds a call.

    Each round runs every side's block once, in an order rotated by one each round; a block runs
    call(0) .. call(calls - 1) (each on a different matrix) with BLAS at its thread count, after a
    quiet gap if the block before used more than one BLAS thread.
    """
    from .. import threads

    names = list(sides)
    times = {name: [] for name in names}
    previous_blas = 1
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            call, calls, blas = sides[name]
            with threads.blas_threads(blas):
                if previous_blas > 1:
                    time.sleep(QUIET_GAP_S)
                t0 = time.perf_counter()
                for i in range(calls):
                    call(i)
                times[name].append((time.perf_counter() - t0) / calls)
            previous_blas = blas
        if progress is not None:
            progress.update(1)
    return times


def summarize(times, bytes_moved, roof):
    """Per side: median seconds, GB/s, and % of the all-threads and of the one-thread read bandwidth."""
    out = {}
    for name, ts in times.items():
        s = statistics.median(ts)
        gbs = bytes_moved[name] / s / 1e9
        out[name] = {"s": s, "gbs": gbs, "roofline_pct": 100 * gbs / roof["read_gbs_all_threads"],
                     "roofline_1_thread_pct": 100 * gbs / roof["read_gbs_1_thread"]}
    return out


def ratio(times, base, fast):
    """Median over rounds of times[base] / times[fast] (> 1: fast is faster), with its range and the
    per-round ratios themselves (for a spread: lesson_tools.spread)."""
    rs = [b / f for b, f in zip(times[base], times[fast])]
    return {"median": statistics.median(rs), "low": min(rs), "high": max(rs), "rounds": rs}


def best_blas_threads(W_list, x, rounds):
    """1 or all cores, whichever ran x @ W.T faster (median of interleaved rounds)."""
    cores = os.cpu_count() or 1
    if cores == 1:
        return 1, {}
    sides = {t: (lambda i, t=t: x @ W_list[i % len(W_list)].T, len(W_list), t) for t in (1, cores)}
    times = timed_blocks(sides, rounds)
    medians = {t: statistics.median(ts) for t, ts in times.items()}
    return min(medians, key=medians.get), {str(t): m for t, m in medians.items()}


def run(n=4096, k=4096, densities=(0.5, 0.3, 0.1, 0.05), batch=16, rounds=7, working_set_mb=128, seed=0,
        roof=None, scipy_side=True, log=print, progress=True, roof_mb=256):
    """Measure every density; returns a dict (also printed line by line through `log`).

    roof: a tinyinfer.bench.roofline.roofline() dict to reuse; None measures it here, over a buffer
    of roof_mb MB (256 by default: 8x the last-level cache).
    """
    from .. import threads
    from ..sparse import kernels
    from . import roofline

    try:
        import scipy.sparse as scipy_sparse
    except ImportError:
        scipy_sparse = None
    scipy_sparse = scipy_sparse if scipy_side else None
    rng = np.random.default_rng(seed)
    if roof is None:
        roof = roofline.roofline(mb=roof_mb)
    log(roofline.format_roofline(roof))
    x1 = rng.standard_normal(k, dtype=np.float32)  # (K,) decode
    xb = rng.standard_normal((batch, k), dtype=np.float32)  # (B, K)
    results = {"machine": machine(), "n": n, "k": k, "batch": batch, "rounds": rounds,
               "working_set_mb": working_set_mb, "roofline": roof, "densities": {}}

    dense_count = matrices_for(n * k * 4, working_set_mb)  # (N, K) float32 matrices filling the working set
    dense_bytes1 = n * k * 4 + k * 4 + n * 4
    dense_bytesb = n * k * 4 + batch * (k + n) * 4
    best1 = bestb = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(densities) * rounds * 2, desc="sparse bench (rounds)", leave=False)
    for density in densities:
        one = random_csr(n, k, density, rng)
        count = max(dense_count, matrices_for(one.nbytes, working_set_mb))
        mats = [one] + [random_csr(n, k, density, rng) for _ in range(count - 1)]
        wide = [m.with_index_dtype(np.int32) for m in mats]  # SciPy's columns, same values
        dense = [m.to_dense() for m in mats[:dense_count]]  # the same matrices with their zeros
        nnz = mats[0].nnz
        if best1 is None:  # zeros cost BLAS nothing extra: one choice serves every density
            best1, best1_t = best_blas_threads(dense, x1, max(3, rounds // 2))
            bestb, bestb_t = best_blas_threads(dense, xb, max(3, rounds // 2))
            results["dense_blas_threads"] = {"B=1": best1, f"B={batch}": bestb, "B=1 seconds": best1_t,
                                             f"B={batch} seconds": bestb_t}
            log(f"dense float32 baseline: {dense_count} matrices of {n}x{k} "
                f"({dense_count * n * k * 4 / 2**20:.0f} MB) cycled; best BLAS threads: {best1} for B=1, "
                f"{bestb} for B={batch}")
        threads.apply()  # the policy the model runs under: BLAS at 1 thread outside the dense blocks
        for m in (mats[0], wide[0]):  # compile (or load from the cache) and check before timing
            for x in (x1, xb):
                want = x @ dense[0].T
                for got in (m.matmul(x), kernels.csr_matmul(*_arrays(m), n, x.reshape(-1, k), parallel=False),
                            kernels.csr_matmul(*_arrays(m), n, x.reshape(-1, k), kernel="plain")):
                    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-3, atol=1e-4)
        S = [scipy_sparse.csr_matrix((w.data, w.indices, w.indptr), shape=(n, k)) for w in wide] if scipy_sparse else []

        def pick(lst, i):
            return lst[i % len(lst)]

        csr_bytes1 = mats[0].nbytes + (k + n) * 4
        wide_bytes1 = wide[0].nbytes + (k + n) * 4
        csr_bytesb = mats[0].nbytes + batch * (k + n) * 4
        decode = {
            "csr": (lambda i: pick(mats, i).matmul(x1), count, 1),
            "csr serial": (lambda i: kernels.csr_matmul(*_arrays(pick(mats, i)), n, x1[None], parallel=False),
                           count, 1),
            "csr int32 columns": (lambda i: pick(wide, i).matmul(x1), count, 1),
            "dense": (lambda i: pick(dense, i) @ x1, dense_count, best1),
        }
        batched = {
            "csr": (lambda i: pick(mats, i).matmul(xb), count, 1),
            "csr plain loop": (lambda i: kernels.csr_matmul(*_arrays(pick(mats, i)), n, xb, kernel="plain"),
                               count, 1),
            "dense": (lambda i: xb @ pick(dense, i).T, dense_count, bestb),
        }
        bytes1 = {"csr": csr_bytes1, "csr serial": csr_bytes1, "csr int32 columns": wide_bytes1,
                  "dense": dense_bytes1}
        bytesb = {"csr": csr_bytesb, "csr plain loop": csr_bytesb, "dense": dense_bytesb}
        if S:
            decode["scipy"] = (lambda i: pick(S, i) @ x1, count, 1)
            batched["scipy"] = (lambda i: (pick(S, i) @ xb.T).T, count, 1)
            bytes1["scipy"], bytesb["scipy"] = wide_bytes1, wide[0].nbytes + batch * (k + n) * 4
        load = os.getloadavg()[0]
        t1 = timed_blocks(decode, rounds, bar)
        tb = timed_blocks(batched, rounds, bar)
        entry = {"nnz": nnz, "matrices": count, "csr_mb": mats[0].nbytes / 2**20,
                 "working_set_mb": {"csr": count * mats[0].nbytes / 2**20, "dense": dense_count * n * k * 4 / 2**20},
                 "bytes_per_nonzero": {
                     "uint16 columns": mats[0].bytes_per_nonzero, "int32 columns": wide[0].bytes_per_nonzero},
                 "load_average": [load, os.getloadavg()[0]],
                 "decode": summarize(t1, bytes1, roof), f"batch B={batch}": summarize(tb, bytesb, roof),
                 "ratios": {"decode csr vs dense": ratio(t1, "dense", "csr"),
                            "decode csr vs csr serial": ratio(t1, "csr serial", "csr"),
                            "decode csr vs int32 columns": ratio(t1, "csr int32 columns", "csr"),
                            f"B={batch} csr vs dense": ratio(tb, "dense", "csr"),
                            f"B={batch} csr vs plain loop": ratio(tb, "csr plain loop", "csr")}}
        if S:
            entry["ratios"]["decode csr vs scipy"] = ratio(t1, "scipy", "csr")
            entry["ratios"][f"B={batch} csr vs scipy"] = ratio(tb, "scipy", "csr")
        results["densities"][str(density)] = entry
        _print_density(log, density, entry, batch)
    if bar is not None:
        bar.close()
    for label in ("decode csr vs dense", f"B={batch} csr vs dense"):
        rs = [results["densities"][str(d)]["ratios"][label]["median"] for d in densities]
        results[f"crossover {label}"] = crossover(densities, rs)
        log(f"crossover ({label}): CSR faster than dense at density <= {crossover(densities, rs)} "
            f"(of {list(densities)})")
    results["machine"] = machine()  # again, now that the kernels ran: the threading layer actually loaded
    results["machine"]["threads"] = threads.describe()
    return results


def _arrays(m):
    return m.indptr, m.indices, m.data


def _print_density(log, density, entry, batch):
    loads = entry["load_average"]
    log(f"\ndensity {density} (sparsity {1 - density:.0%}): {entry['nnz']:,} nonzeros, {entry['csr_mb']:.1f} MB "
        f"as CSR with uint16 columns, {entry['matrices']} matrices cycled; "
        f"load average {loads[0]:.1f} -> {loads[1]:.1f}")
    for case in ("decode", f"batch B={batch}"):
        for name, s in entry[case].items():
            log(f"  {case:10s} {name:18s} {s['s'] * 1e3:8.3f} ms  {s['gbs']:6.1f} GB/s  "
                f"{s['roofline_pct']:5.1f}% of the all-threads read bandwidth "
                f"({s['roofline_1_thread_pct']:.0f}% of one thread's)")
    for name, r in entry["ratios"].items():
        log(f"  {name:32s} {r['median']:6.2f}x  (rounds {r['low']:.2f} .. {r['high']:.2f})")


# --------------------------------------------------------------------------------------------
# --variants: the kernels written other ways, compute alone
#
# Each variant runs on one small matrix that stays in the caches, timed by the thread's CPU time
# (time.thread_time: the time another process held the core is not counted), minimum of many
# calls: ns per nonzero of the instructions alone, the figures tinyinfer/sparse/kernels.py quotes.


def _variant_kernels():
    """name -> serial SpMV (indptr, indices, data, x, out, r0, r1), compiled here (not cached)."""
    from numba import njit

    from ..sparse import kernels

    @njit(fastmath=kernels.FASTMATH)
    def formula_as_written(indptr, indices, data, x, out, r0, r1):
        for n in range(r0, r1):  # signed offsets: Numba tests each for "negative: count from the end"
            acc = np.float32(0.0)
            for j in range(indptr[n], indptr[n + 1]):
                acc += data[j] * x[indices[j]]
            out[n] = acc

    @njit
    def in_order(indptr, indices, data, x, out, r0, r1):
        for n in range(r0, r1):  # no reassoc: one chain of dependent adds, not vectorized
            acc = np.float32(0.0)
            for j in range(np.uintp(indptr[n]), np.uintp(indptr[n + 1])):
                acc += data[j] * x[np.uintp(indices[j])]
            out[n] = acc

    @njit
    def four_scalar_accumulators(indptr, indices, data, x, out, r0, r1):
        one, four = np.uintp(1), np.uintp(4)
        for n in range(r0, r1):  # nonzero j into accumulator j mod 4: four chains, no vectors
            j, end = np.uintp(indptr[n]), np.uintp(indptr[n + 1])
            a0 = a1 = a2 = a3 = np.float32(0.0)
            while j + four <= end:
                a0 += data[j] * x[np.uintp(indices[j])]
                a1 += data[j + one] * x[np.uintp(indices[j + one])]
                a2 += data[j + np.uintp(2)] * x[np.uintp(indices[j + np.uintp(2)])]
                a3 += data[j + np.uintp(3)] * x[np.uintp(indices[j + np.uintp(3)])]
                j += four
            while j < end:
                a0 += data[j] * x[np.uintp(indices[j])]
                j += one
            out[n] = (a0 + a1) + (a2 + a3)

    @njit(fastmath=True)
    def full_fastmath(indptr, indices, data, x, out, r0, r1):
        for n in range(r0, r1):
            acc = np.float32(0.0)
            for j in range(np.uintp(indptr[n]), np.uintp(indptr[n + 1])):
                acc += data[j] * x[np.uintp(indices[j])]
            out[n] = acc

    @njit(fastmath=kernels.FASTMATH)
    def minimal_gather(indptr, indices, data, x, out, r0, r1):
        for n in range(r0, r1):  # a limit: the column loads and the gathers alone, no values
            acc = np.float32(0.0)
            for j in range(np.uintp(indptr[n]), np.uintp(indptr[n + 1])):
                acc += x[np.uintp(indices[j])]
            out[n] = acc

    @njit(fastmath=kernels.FASTMATH)
    def minimal_stream(indptr, indices, data, x, out, r0, r1):
        for n in range(r0, r1):  # a limit: the values alone, read in order (no columns, no gathers)
            acc = np.float32(0.0)
            for j in range(np.uintp(indptr[n]), np.uintp(indptr[n + 1])):
                acc += data[j]
            out[n] = acc

    return {"spmv_rows (the kernel)": kernels.spmv_rows, "the formula as written (signed offsets)": formula_as_written,
            "no reassoc (in order)": in_order, "four scalar accumulators": four_scalar_accumulators,
            "fastmath=True (all flags)": full_fastmath, **_gather_kernels(),
            "limit: gathers alone (sum of x[column])": minimal_gather,
            "limit: values alone (sum of data)": minimal_stream}


def _gather_kernels():
    """SpMV with explicit 8-lane gathers: LLVM's generic llvm.masked.gather and, on x86 with AVX2,
    the vgatherdps instruction itself. Measurement only: neither beat spmv_rows here."""
    import platform

    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from ..sparse.kernels import LANES, _F32x8, add8, float32x8, zeros8

    def gather_fma(hardware):
        @intrinsic
        def step(typingctx, acc, data, indices, x, j):
            """acc + data[j:j+8] * x[indices[j:j+8]]"""
            def codegen(context, builder, sig, args):
                acc, data, indices, x, j = args
                j = context.cast(builder, j, sig.args[4], types.intp)

                def ptr(aryty, ary):
                    array = context.make_array(aryty)(context, builder, value=ary)
                    return cgutils.get_item_pointer(context, builder, aryty, array, [j], wraparound=False)
                d = builder.load(builder.bitcast(ptr(sig.args[1], data), _F32x8.as_pointer()), align=4)
                ity = context.get_value_type(sig.args[2].dtype)
                cols = builder.load(builder.bitcast(ptr(sig.args[2], indices), ir.VectorType(ity, LANES).as_pointer()),
                                    align=ity.width // 8)
                base = context.make_array(sig.args[3])(context, builder, value=x).data
                i32x8, i64x8 = ir.VectorType(ir.IntType(32), LANES), ir.VectorType(ir.IntType(64), LANES)
                if hardware:  # vgatherdps: 32-bit columns, base + 4 * column
                    cols = builder.zext(cols, i32x8) if ity.width < 32 else cols
                    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                        _F32x8, [_F32x8, ir.IntType(8).as_pointer(), i32x8, _F32x8, ir.IntType(8)]),
                        "llvm.x86.avx2.gather.d.ps.256")
                    mask = builder.bitcast(ir.Constant(i32x8, [-1] * LANES), _F32x8)
                    xs = builder.call(fn, [ir.Constant(_F32x8, [0.0] * LANES),
                                           builder.bitcast(base, ir.IntType(8).as_pointer()), cols, mask,
                                           ir.Constant(ir.IntType(8), 4)])
                else:  # a vector of 8 addresses, then llvm.masked.gather with every lane on
                    cols = (builder.sext if sig.args[2].dtype.signed else builder.zext)(cols, i64x8)
                    addresses = ir.instructions.GEPInstr(builder.block, base, [cols], True, "",
                                                         source_etype=ir.FloatType())
                    addresses.type = ir.VectorType(base.type, LANES)  # llvmlite types a scalar GEP only
                    builder._insert(addresses)
                    on = ir.VectorType(ir.IntType(1), LANES)
                    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                        _F32x8, [addresses.type, ir.IntType(32), on, _F32x8]), "llvm.masked.gather.v8f32.v8p0f32")
                    xs = builder.call(fn, [addresses, ir.Constant(ir.IntType(32), 4), ir.Constant(on, [1] * LANES),
                                           ir.Constant(_F32x8, None)])
                return builder.fadd(acc, builder.fmul(d, xs, flags=("contract",)), flags=("contract",))
            return float32x8(acc, data, indices, x, j), codegen
        return step

    @intrinsic
    def lanes_sum(typingctx, acc):
        def codegen(context, builder, sig, args):
            v = args[0]
            return builder.fadd(builder.fadd(builder.fadd(builder.extract_element(v, ir.Constant(ir.IntType(32), 0)),
                                                          builder.extract_element(v, ir.Constant(ir.IntType(32), 1))),
                                             builder.fadd(builder.extract_element(v, ir.Constant(ir.IntType(32), 2)),
                                                          builder.extract_element(v, ir.Constant(ir.IntType(32), 3)))),
                                builder.fadd(builder.fadd(builder.extract_element(v, ir.Constant(ir.IntType(32), 4)),
                                                          builder.extract_element(v, ir.Constant(ir.IntType(32), 5))),
                                             builder.fadd(builder.extract_element(v, ir.Constant(ir.IntType(32), 6)),
                                                          builder.extract_element(v, ir.Constant(ir.IntType(32), 7)))))
        return types.float32(acc), codegen

    def spmv_with(step):
        @njit
        def spmv(indptr, indices, data, x, out, r0, r1):
            eight, sixteen = np.uintp(8), np.uintp(16)
            for n in range(r0, r1):  # two vector accumulators, then single nonzeros
                j, end = np.uintp(indptr[n]), np.uintp(indptr[n + 1])
                a0, a1 = zeros8(), zeros8()
                while j + sixteen <= end:
                    a0 = step(a0, data, indices, x, j)
                    a1 = step(a1, data, indices, x, j + eight)
                    j += sixteen
                s = lanes_sum(add8(a0, a1))
                while j < end:
                    s += data[j] * x[np.uintp(indices[j])]
                    j += np.uintp(1)
                out[n] = s
        return spmv

    found = {"explicit llvm.masked.gather (8 lanes)": spmv_with(gather_fma(False))}
    try:
        with open("/proc/cpuinfo") as f:
            avx2 = "avx2" in f.read()
    except OSError:
        avx2 = False
    if platform.machine() in ("x86_64", "AMD64") and avx2:
        found["explicit AVX2 vgatherdps (8 lanes)"] = spmv_with(gather_fma(True))
    return found


def _cpu_seconds(fn, calls):
    """Minimum thread CPU seconds of one fn() over `calls` calls."""
    best = float("inf")
    for _ in range(calls):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def variants(n=1024, k=1024, densities=(0.1, 0.05), batches=(3, 16), calls=200, seed=0, log=print):
    """ns per nonzero of each SpMV variant and of the two SpMM kernels, compute alone."""
    from ..sparse import kernels

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(k, dtype=np.float32)
    out = {}
    spmv = _variant_kernels()
    for density in densities:
        m = random_csr(n, k, density, rng)
        y = np.empty(n, np.float32)
        want = m.to_dense() @ x
        log(f"\nvariants, {n}x{k} at density {density} ({m.nnz:,} nonzeros, {m.nnz / n:.0f} a row; "
            f"{m.nbytes / 2**20:.2f} MB, in cache): ns per nonzero, compute alone (thread CPU time, best of {calls})")
        for dtype in (np.uint16, np.int32):
            a = m.with_index_dtype(dtype)
            for name, f in spmv.items():
                f(a.indptr, a.indices, a.data, x, y, 0, n)  # compile
                if not name.startswith("limit"):
                    np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-4)
                ns = _cpu_seconds(lambda: f(a.indptr, a.indices, a.data, x, y, 0, n), calls) / m.nnz * 1e9
                out[f"density {density} {np.dtype(dtype).name} SpMV {name}"] = ns
                log(f"  SpMV {np.dtype(dtype).name:6s} columns  {name:42s} {ns:6.3f} ns")
        for B in batches:
            xb = rng.standard_normal((B, k), dtype=np.float32)
            for kernel in kernels.KERNELS:
                def run(kernel=kernel):
                    return kernels.csr_matmul(m.indptr, m.indices, m.data, n, xb, parallel=False, kernel=kernel)
                np.testing.assert_allclose(run(), xb @ m.to_dense().T, rtol=1e-3, atol=1e-4)
                ns = _cpu_seconds(run, max(20, calls // B)) / m.nnz * 1e9
                out[f"density {density} SpMM B={B} {kernel}"] = ns
                log(f"  SpMM B={B:<3d} {kernel:6s} kernel (csr_matmul, serial, x transposed in)   "
                    f"{ns:6.3f} ns a nonzero ({ns / B:.3f} per nonzero per row of x)")
    return out


def parallel_threshold(sizes=(256, 512, 1024, 2048, 4096), density=0.1, rounds=50, seed=0, log=print):
    """Wall time of the serial and the parallel SpMV on square matrices of growing size (in cache
    after the first call), interleaved call by call, the best of `rounds` each: where splitting the
    rows among threads starts to pay for starting them (kernels.PARALLEL_MIN_WORK)."""
    from .. import threads
    from ..sparse import kernels

    rng = np.random.default_rng(seed)
    threads.apply()
    out = {}
    log(f"\nserial vs parallel SpMV, density {density}, {threads.numba_threads()} threads "
        f"(wall time, best of {rounds}; load average {os.getloadavg()[0]:.1f})")
    for size in sizes:
        m = random_csr(size, size, density, rng)
        x = rng.standard_normal((1, size), dtype=np.float32)
        calls = {par: (lambda par=par: kernels.csr_matmul(m.indptr, m.indices, m.data, size, x, parallel=par))
                 for par in (False, True)}
        best = {False: float("inf"), True: float("inf")}
        for _ in range(rounds):
            for par, call in calls.items():
                t0 = time.perf_counter()
                call()
                best[par] = min(best[par], time.perf_counter() - t0)
        out[m.nnz] = {"serial_s": best[False], "parallel_s": best[True]}
        log(f"  {size:5d}x{size:<5d} {m.nnz:>9,} nonzeros: serial {best[False] * 1e6:8.1f} us, parallel "
            f"{best[True] * 1e6:8.1f} us ({best[False] / best[True]:.2f}x)")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="output features N (rows of W)")
    p.add_argument("--k", type=int, default=4096, help="input features K")
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.3, 0.1, 0.05])
    p.add_argument("--batch", type=int, default=16, help="B for the SpMM case")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--working-set-mb", type=int, default=128,
                   help="each side cycles through matrices totalling this much (default 4x a 32 MB cache)")
    p.add_argument("--variants", action="store_true",
                   help="instead: ns per nonzero of the kernels written other ways (compute alone, in cache)")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.variants:
        results = {"machine": machine(), "variants ns per nonzero": variants(),
                   "serial vs parallel": {str(k): v for k, v in parallel_threshold().items()}}
    else:
        results = run(args.n, args.k, tuple(args.densities), args.batch, args.rounds, args.working_set_mb)
    save_results(results, args.json)


if __name__ == "__main__":
    main()
