"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus).

Lesson: lessons/01-transformer.py

Each sampler takes one row of logits (V,) and a numpy Generator, so a request that owns its own
seeded generator gets the same tokens whatever else runs beside it.

The argument checks live here too, shared by Model.generate, SamplingParams and speculative
decoding, so every entry point refuses the same things with the same words: a wrong type is a
TypeError naming the argument, a value out of range a ValueError saying the range.
"""
from __future__ import annotations

import reprlib

import numpy as np

# Below this a positive temperature is refused, as vLLM clamps it: logits / temperature grows as
# 1 / temperature, and at a temperature like 1e-320 (a subnormal float) it overflows to inf and
# the softmax turns into NaN. Use temperature 0 for greedy.
MIN_TEMPERATURE = 1e-2
MAX_SEED = 2**64  # seeds are what numpy's default_rng takes and OpenAI's API sends: 0 .. 2**64 - 1


# ---- argument checks -------------------------------------------------------------------------


def is_int(value) -> bool:
    """An int or numpy integer, and not a bool (True is an int to Python, never a count to us)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 60, 60, 6, 4


def describe(value) -> str:
    """A short repr of value with its type: errors quote what came, not a megabyte of it, and
    never recurse into a deeply nested list (reprlib stops at two levels)."""
    return f"{_SHORT.repr(value)} ({type(value).__name__})"


def check_int(name: str, value, low: int | None = None, high: int | None = None, none_ok: bool = False):
    """value as an int in [low, high), or TypeError / ValueError naming name."""
    if value is None and none_ok:
        return None
    if not is_int(value):
        raise TypeError(f"{name} must be an int{' or None' if none_ok else ''}, got {describe(value)}")
    if (low is not None and value < low) or (high is not None and value >= high):
        span = f">= {low}" if high is None else f"in [{low}, {high - 1}]"
        raise ValueError(f"{name} must be an int {span}, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def check_sampling_args(temperature, top_k, top_p, seed=None):
    """Refuse what cannot be sampled: wrong types (bools and strings included) and values whose
    arithmetic would fail later (NaN, inf, a temperature so small that logits / temperature
    overflows)."""
    if not is_number(temperature):
        raise TypeError(f"temperature must be a number (0 for greedy), got {describe(temperature)}")
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < np.inf):
        raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got "
                         f"{temperature!r}: a smaller one overflows logits / temperature")
    check_int("top_k", top_k, low=1, none_ok=True)
    if top_p is not None:
        if not is_number(top_p):
            raise TypeError(f"top_p must be a number in (0, 1] or None, got {describe(top_p)}")
        if not 0.0 < top_p <= 1.0:  # NaN fails this too
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    check_int("seed", seed, low=0, high=MAX_SEED, none_ok=True)


# ---- sampling --------------------------------------------------------------------------------


def token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution (V,) float64 that sample_token draws from with these settings.

    temperature 0 gives the one-hot of argmax (ties to the lowest id). Speculative decoding
    (tinyinfer/speculative.py) needs these probabilities themselves, not only a draw from them.
    Logits with NaN or +inf (a broken model or weights) raise a ValueError instead of turning
    into a distribution that numpy's choice() refuses deep inside.
    """
    logits = np.asarray(logits)
    if temperature == 0.0:
        onehot = np.zeros(logits.shape[-1])
        onehot[greedy_token(logits)] = 1.0
        return onehot
    z = logits.astype(np.float64) / temperature
    check_finite_max(z, f"logits / temperature ({temperature!r})")
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)  # keep the k largest (ties at the boundary kept too)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]
        mask = np.zeros_like(probs, dtype=bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def check_finite_max(z, what: str):
    """The largest entry must be a finite number; -inf entries (masked tokens) are fine. One
    max() over the row: NaN propagates through it, so no second pass is needed."""
    top = z.max()
    if not np.isfinite(top):
        raise ValueError(f"{what} has {'NaN' if np.isnan(top) else top} as its largest entry; cannot sample")


def greedy_token(logits) -> int:
    """argmax, ties to the lowest id; NaN or +inf as the winner is an error, not a token."""
    i = int(np.argmax(logits))  # argmax returns the first NaN if there is one
    if not np.isfinite(logits[i]):
        value = "NaN" if np.isnan(logits[i]) else logits[i]
        raise ValueError(f"logits has {value} at token {i}; cannot pick a greedy token")
    return i


def sample_token(logits, rng, temperature=0.0, top_k=None, top_p=None) -> int:
    """One token id from logits (V,). temperature 0 means greedy (argmax, ties to the lowest id)."""
    if temperature == 0.0:
        return greedy_token(logits)  # no draw: the generator is not advanced
    probs = token_probs(logits, temperature, top_k, top_p)
    return int(rng.choice(probs.size, p=probs))
