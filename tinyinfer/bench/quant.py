"""Quantized matmul benchmark: Q8_0 and Q4_0 kernels against NumPy float32 on one random matrix.

    python -m tinyinfer.bench.quant [--n 4096 --k 4096] [--batch 32] [--batches 2,5,64] [--rounds 7] [--variants] [--json out.json]

Decode (B = 1) is timed against `W @ x`, a batch (B = 32) against `x @ W.T`, both float32 NumPy
(BLAS) on the same W, interleaved round by round (tinyinfer.bench.interleaved). A ratio > 1 means
the quantized kernel is faster. The kernels' time includes quantizing x to Q8_0 blocks.
--variants also times the serial and parallel kernels separately, and --batches B1,B2,... adds
more batch sizes (each a separate x @ W.T case).
Lesson: lessons/04-quantization.py
"""
from __future__ import annotations

import argparse

import numpy as np

from . import interleaved, machine, save_results


def run(n=4096, k=4096, batch=32, rounds=7, variants=False, seed=0, batches=()):
    from ..quant import kernels, quantize

    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)  # (N, K)
    x1 = rng.standard_normal(k).astype(np.float32)  # (K,)
    xb = rng.standard_normal((batch, k)).astype(np.float32)  # (B, K)
    extra = {b: rng.standard_normal((b, k)).astype(np.float32) for b in batches if b != batch}  # (B, K)
    results = {"machine": machine(), "n": n, "k": k, "batch": batch, "rounds": rounds, "cases": {}}
    for fmt in ("q8_0", "q4_0"):
        qt = quantize(W, fmt)
        qt.matmul(x1), qt.matmul(xb)  # compile (or load from the cache) before timing
        cases = {
            f"{fmt} matvec B=1 vs W @ x": (lambda: qt.matmul(x1), lambda: W @ x1),
            f"{fmt} matmul B={batch} vs x @ W.T": (lambda: qt.matmul(xb), lambda: xb @ W.T),
        }
        for b, x in extra.items():
            qt.matmul(x)  # compile this tile shape
            cases[f"{fmt} matmul B={b} vs x @ W.T"] = (lambda x=x: qt.matmul(x), lambda x=x: x @ W.T)
        if variants:
            x1b = x1[None]
            for par in (False, True):
                tag = "parallel" if par else "serial"
                cases[f"{fmt} matvec B=1 {tag}"] = (
                    lambda par=par: kernels.quantized_matmul(fmt, qt._scales_f32, qt.quants, x1b, par), lambda: W @ x1)
                cases[f"{fmt} matmul B={batch} {tag}"] = (
                    lambda par=par: kernels.quantized_matmul(fmt, qt._scales_f32, qt.quants, xb, par), lambda: xb @ W.T)
        for label, (fast, base) in cases.items():
            r = interleaved(fast, base, rounds=rounds)
            results["cases"][label] = r
            print(f"{label:42s} ratio {r['ratio']:5.2f}x   quantized {r['fast_s'] * 1e3:8.3f} ms   "
                  f"numpy float32 {r['baseline_s'] * 1e3:8.3f} ms")
    results["machine"] = machine()  # again, now that the kernels ran: the threading layer actually loaded
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="output features N (rows of W)")
    p.add_argument("--k", type=int, default=4096, help="input features K (a multiple of 32)")
    p.add_argument("--batch", type=int, default=32, help="B for the matmul case")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--variants", action="store_true", help="also the serial and parallel kernels separately")
    p.add_argument("--batches", default="", help="more batch sizes, comma-separated (e.g. 2,5,64)")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(",") if b)
    results = run(args.n, args.k, args.batch, args.rounds, args.variants, batches=batches)
    save_results(results, args.json)


if __name__ == "__main__":
    main()
