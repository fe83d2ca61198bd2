"""Timing helpers the engine benchmarks share: contenders alternated round after round, ratios per round.

Lesson: lessons/08-serving.py

On a shared machine the speed changes from minute to minute, so two contenders are never timed at
different times: each round runs every contender once, in an order that rotates from round to
round, and a comparison is the median over rounds of the per-round ratio, reported with its
interquartile range (the middle half of the rounds).
"""
from __future__ import annotations

import statistics

import numpy as np

__all__ = ["alternate", "median_ratio", "ratio_iqr", "pct", "rounds_progress"]


def rounds_progress(rounds: int, desc: str, progress: bool):
    """range(rounds), with a tqdm bar when progress is on."""
    if not progress:
        return range(rounds)
    from tqdm.auto import tqdm

    return tqdm(range(rounds), desc=desc, unit="round", leave=False)


def alternate(fns: dict, rounds: int, warmup: int = 0, progress: bool = False, desc: str = "rounds") -> dict:
    """Run self-timing callables (each returns its own seconds, so set-up can stay untimed) in a
    rotating order, round after round -> {name: [seconds per round]}."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in rounds_progress(rounds, desc, progress):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(fns[name]())
    return times


def median_ratio(slow: list, fast: list) -> float:
    """Median over rounds of slow time / fast time (> 1: fast is faster)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def ratio_iqr(slow: list, fast: list) -> list:
    """[q1, q3] of the per-round ratios slow / fast."""
    ratios = [s / f for s, f in zip(slow, fast)]
    return [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]


def pct(values, q) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else None
