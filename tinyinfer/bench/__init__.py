"""Benchmarks: every speed claim is a ratio measured in one process, interleaved, with the machine.

Lesson: each technique's lesson runs its own benchmark on small settings.

Timings on a shared 2-core machine drift by tens of percent from minute to minute, so a benchmark
never compares two numbers taken at different times: it alternates the fast path and its baseline
round after round and reports the median of the per-round ratios, next to the machine it ran on.
"""
from __future__ import annotations

import os
import platform
import statistics
import time


def machine() -> dict:
    """CPU, cores, Python, NumPy and its BLAS, Numba and the thread policy in force, the load average."""
    import numpy as np

    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy has no dict mode; the BLAS name is optional
        info["blas"] = "unknown"
    try:
        import numba

        from .. import threads  # the thread policy (it selects Numba's workqueue layer on import)

        info["numba"] = numba.__version__
        info.update(threads.describe())
    except ImportError:
        pass
    info["load_average"] = round(os.getloadavg()[0], 2)  # a busy machine's timings are not a quiet one's
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "TINYINFER_BLAS_THREADS",
                "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    return info


def save_results(results: dict, json_path=None):
    """Print the machine the results were measured on (one JSON line) and, given a path, write
    every result there as JSON: the end of every `tinyinfer bench` suite."""
    import json

    print(json.dumps(results["machine"]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)


def interleaved(fast, baseline, rounds=7, warmup=1):
    """Time fast() and baseline() alternately; return per-call seconds and the median ratio.

    ratio > 1 means fast is faster: ratio = baseline time / fast time, taken per round.
    """
    for _ in range(warmup):
        fast()
        baseline()
    fast_times, base_times, ratios = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fast()
        t1 = time.perf_counter()
        baseline()
        t2 = time.perf_counter()
        fast_times.append(t1 - t0)
        base_times.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return {"fast_s": statistics.median(fast_times), "baseline_s": statistics.median(base_times),
            "ratio": statistics.median(ratios), "rounds": rounds}


def time_it(fn, rounds=5, warmup=1) -> float:
    """Median seconds of fn() (for figures that have no baseline of their own)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
