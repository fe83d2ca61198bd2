"""Small helpers the lessons call, so that what a lesson says follows what it just measured.

Lessons: every one of lessons/NN-topic.py (lesson 01 introduces them).

A lesson that states "Q8_0 is faster" in its prose and then prints 0.60x misleads its reader. So a
sentence about a measured direction or size is rendered from the measured values:

    compare(0.60, what="Q8_0", of="the speed of NumPy float32")
    -> "Q8_0 runs at 0.60x the speed of NumPy float32 (slower)"

Timings get a median *and* a spread, because one number from a shared machine is an anecdote:

    spread([0.011, 0.012, 0.019, 0.011, 0.012])   # seconds
    -> Spread(median=0.012, q1=0.011, q3=0.012, n=5); str(...) "12.0 ms (IQR 11.0-12.0 ms, 5 rounds)"

A measurement that beats a theoretical bound is not a discovery but a sign that the model behind the
bound does not describe this run (a cache, timing noise): bound_check says so out loud.

An exercise with a number for an answer gets a check cell:

    check(my_answer, expected, tol=0.02, name="my_answer")   # prints "right: ..." or "not yet: ..."

and solution(lesson) imports lessons/solutions/<lesson>.py, the worked solutions, by path.
"""
from __future__ import annotations

import importlib.util
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

# Above this, the middle half of the rounds spreads over more than a quarter of the median: the
# machine was busy or the work is too short to time, and the lesson says so next to the number.
WIDE_SPREAD = 0.25


# ---- timing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """The median of some measurements and their interquartile range (IQR: q1 to q3)."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def relative_iqr(self) -> float:
        """IQR / median: 0.1 means the middle half of the rounds lies within 10% of the median."""
        return self.iqr / abs(self.median) if self.median else math.inf

    @property
    def is_wide(self) -> bool:
        return self.relative_iqr > WIDE_SPREAD

    def format(self, unit: str = "ms", scale: float = 1e3, digits: int = 2) -> str:
        """"1.23 ms (IQR 1.20-1.31 ms, 7 rounds)": a median in seconds shown in ms by default."""
        m, a, b = (f"{v * scale:.{digits}f}" for v in (self.median, self.q1, self.q3))
        return f"{m} {unit} (IQR {a}-{b} {unit}, {self.n} rounds)".replace("  ", " ")

    def __str__(self) -> str:
        return self.format()


def spread(samples) -> Spread:
    """Median and quartiles of a list of numbers (seconds, ratios, ...), at least one."""
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("spread() needs at least one measurement, got none")
    if len(values) == 1:
        return Spread(values[0], values[0], values[0], 1)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, len(values))


def time_calls(fn, rounds: int = 7, warmup: int = 1) -> Spread:
    """Seconds per call of fn(), over `rounds` calls after `warmup` untimed ones."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return spread(times)


def ratio_spread(slow_times, fast_times) -> Spread:
    """The per-round ratios slow / fast of two interleaved timings (> 1: fast is faster)."""
    if len(slow_times) != len(fast_times):
        raise ValueError(f"ratio_spread needs one fast time per slow time, got {len(slow_times)} "
                         f"and {len(fast_times)}")
    return spread(s / f for s, f in zip(slow_times, fast_times))


def spread_note(measured: Spread, what: str) -> str:
    """A warning to print when the rounds disagree a lot, or "" when they do not."""
    if not measured.is_wide:
        return ""
    return (f"note: the rounds of {what} spread widely (IQR {measured.relative_iqr:.0%} of the median, "
            f"{measured.n} rounds): the machine was busy or the work is too short to time; read this "
            f"figure as rough, or rerun it on a quiet machine with more rounds")


def workload(title: str, **fields) -> str:
    """"workload of the table below: B=2, T=64, rounds=4": print it next to every timed table."""
    return f"workload of {title}: " + ", ".join(f"{k}={v}" for k, v in fields.items())


# ---- sentences from measurements -------------------------------------------------------------


def direction(ratio: float, more: str = "faster", less: str = "slower", same: str = "about the same",
              band: float = 0.05, measured: Spread | None = None) -> str:
    """The word for a ratio: `more` above 1 + band, `less` below 1 - band, else `same`.

    With the rounds' spread of the ratio, a difference whose IQR contains 1 is called what it is:
    not a difference this measurement can see.
    """
    if measured is not None and measured.n > 1 and measured.q1 <= 1.0 <= measured.q3:
        return f"no clear difference: the rounds' IQR, {measured.q1:.2f}-{measured.q3:.2f}x, contains 1x"
    if ratio > 1 + band:
        return more
    if ratio < 1 - band:
        return less
    return same


def compare(value: float, reference: float = 1.0, what: str = "it", of: str = "the baseline",
            verb: str = "runs at", more: str = "faster", less: str = "slower", same: str = "about the same",
            band: float = 0.05, measured: Spread | None = None) -> str:
    """A sentence comparing two measured values, with the direction read off the numbers:

    compare(0.60, what="Q8_0", of="the speed of NumPy float32")
      -> "Q8_0 runs at 0.60x the speed of NumPy float32 (slower)"
    compare(t_old, t_new, ...) works as well: the ratio is value / reference.
    """
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        raise ValueError(f"compare needs finite values and a nonzero reference, got {value} and {reference}")
    ratio = value / reference
    words = " ".join(part for part in (what, verb, f"{ratio:.2f}x", of) if part)
    return f"{words} ({direction(ratio, more, less, same, band, measured)})"


def bound_check(value: float, bound: float, what: str, bound_name: str, upper: bool = True,
                reasons: str = "the assumptions behind the bound do not hold for this run (data that "
                               "fits in a cache, a baseline slowed by another job) or timing noise") -> bool:
    """Print a warning when a measured value beats a bound it cannot beat in theory. -> within the bound?

    upper=True: value should be at most bound; upper=False: at least bound.
    """
    within = value <= bound if upper else value >= bound
    if not within:
        side = "above" if upper else "below"
        print(f"warning: {what} = {value:.3g} is {side} {bound_name} ({bound:.3g}), which it cannot "
              f"{'exceed' if upper else 'fall under'} in theory. Likely reason: {reasons}.")
    return within


# ---- exercises -------------------------------------------------------------------------------


def check(answer, expected, tol: float = 0.01, name: str = "answer") -> bool:
    """Say whether an exercise's answer is right. -> True when it is.

    Numbers are right within a relative tolerance tol; sets, lists and strings must be equal (a
    set compares as a set, so order does not matter). None means "no answer yet".
    """
    if answer is None:
        print(f"not yet: set {name} to your answer and run this cell again")
        return False
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            value = float(answer)
        except (TypeError, ValueError):
            print(f"not yet: {name} should be a number, got {answer!r}")
            return False
        error = abs(value - expected) / max(abs(expected), 1e-300)
        if error <= tol:
            within = f"{tol:.0%}" if tol >= 0.01 else f"{tol:.0e} (relative)"
            print(f"right: {name} = {value:.6g} (within {within} of the expected value)")
            return True
        print(f"not yet: {name} = {value:.6g} is too {'high' if value > expected else 'low'}")
        return False
    if isinstance(expected, (set, frozenset)):
        answer_set = set(answer) if not isinstance(answer, str) else {answer}
        if answer_set == set(expected):
            print(f"right: {name} = {sorted(answer_set, key=str)}")
            return True
        missing, extra = set(expected) - answer_set, answer_set - set(expected)
        print(f"not yet: {name} misses {len(missing)} and has {len(extra)} too many")
        return False
    same = list(answer) == list(expected) if isinstance(expected, (list, tuple)) else answer == expected
    if same:
        print(f"right: {name} = {answer!r}")
        return True
    print(f"not yet: {name} = {answer!r} is not it")
    return False


def solution(lesson: str, root=None):
    """The worked solutions of a lesson, lessons/solutions/<lesson>.py, imported by path.

    lesson: "01-transformer" (the lesson file's stem). The file's top level only defines things,
    so importing it runs no exercise.
    """
    from .lessons import repo_root

    path = Path(root or repo_root()) / "lessons" / "solutions" / f"{lesson}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no worked solutions for lesson {lesson!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"solutions_{lesson.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_exercises(namespace: dict, only=None) -> None:
    """Run a solutions file's exercise_1, exercise_2, ... in order, each under a heading with its time.

    A solutions file ends with `if __name__ == "__main__": run_exercises(globals())`; give numbers
    on the command line to run only those (`python lessons/solutions/01-transformer.py 5 6`).
    """
    import sys

    wanted = only if only is not None else [int(a) for a in sys.argv[1:] if a.isdigit()]
    exercises = sorted((int(name.split("_")[1]), fn) for name, fn in namespace.items()
                       if name.startswith("exercise_") and name.split("_")[1].isdigit() and callable(fn))
    for number, fn in exercises:
        if wanted and number not in wanted:
            continue
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"\n=== exercise {number}: {doc[0] if doc else ''}", flush=True)
        start = time.perf_counter()
        fn()
        print(f"--- exercise {number} done in {time.perf_counter() - start:.1f} s", flush=True)
