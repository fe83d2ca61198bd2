"""Reading JSON that came from somewhere else: bounded in size, depth and count before it is parsed.

Lesson: lessons/10-formats.py

Model folders are full of JSON: config.json, the safetensors header, the sharded index
(model.safetensors.index.json), tokenizer.json. Python's json module trusts its input in three
ways that a downloaded file can abuse:

  * size:   it parses whatever it is given, so a 2 GB "config" is read and parsed in full;
  * depth:  it recurses once per nesting level, so 100,000 '[' raise RecursionError (a crash
            deep in the parser, not an error about the file) instead of a clear message;
  * count:  every JSON value becomes a Python object of ~30-100 bytes, so a 60 MB header of
            tiny entries becomes more than a gigabyte of dicts and lists.

load_json checks all three *before* json.loads builds anything, with one cheap pass over the
bytes (regular expression + NumPy, no Python loop per character):

    1. the file size (from the file system, before reading) against max_bytes;
    2. strings are cut out (brackets inside strings are text, not structure), then
       deepest nesting  = the highest running count of '[' '{' minus ']' '}'   <= max_depth
       values (upper bound) = containers + ':' + ',' + 1                       <= max_values
    3. only then json.loads, which also refuses NaN / Infinity (not JSON, but Python accepts
       them) and numbers that overflow to infinity.

Every problem raises JSONFileError (a ValueError) naming the file (`what`), the limit and the
value found. Callers that speak a format of their own (safetensors, checkpoints) re-raise it as
their error type.
"""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np

__all__ = ["JSONFileError", "load_json", "json_structure"]


class JSONFileError(ValueError):
    """A JSON file or header that is malformed or larger / deeper than its limit."""


# A JSON string: a quote, then runs of ordinary characters or backslash escapes, then a quote.
# Written "unrolled" ([^"\\]* runs, then escape + run) so the regex engine eats long strings in
# one tight loop instead of one alternation per character.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Each byte's step in nesting depth: +1 for '[' '{', -1 for ']' '}', 0 for everything else.
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
# NumPy works through the text this many bytes at a time, so its temporaries stay small (~6 MB).
_CHUNK = 1 << 20


def json_structure(raw: bytes) -> tuple[int, int]:
    """(deepest nesting, an upper bound on the number of values) of JSON text, without parsing it.

    For invalid JSON the numbers are still bounds on what json.loads would build before failing.
    """
    bare = _STRING.sub(b'""', raw)  # (bytes): no string content left, only structure and scalars
    values = 1 + bare.count(b":") + bare.count(b",") + bare.count(b"[") + bare.count(b"{")
    return _deepest(bare), values


def _deepest(text: bytes) -> int:
    """The highest running count of openers minus closers (the nesting depth for balanced text)."""
    depth = deepest = 0
    for start in range(0, len(text), _CHUNK):
        chunk = np.frombuffer(text, np.uint8, count=min(_CHUNK, len(text) - start), offset=start)
        levels = depth + np.cumsum(_STEP[chunk], dtype=np.int32)  # (n,) the depth after each byte
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


def _read_bounded(source, what: str, max_bytes: int) -> bytes:
    """The bytes of a path (size checked before reading) or of bytes given directly."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        if len(raw) > max_bytes:
            raise JSONFileError(f"{what} is {len(raw):,} bytes, which exceeds the limit {max_bytes:,}")
        return raw
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_json reads a path or bytes, got {type(source).__name__}")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{what}: file not found: {os.fspath(source)}")
    with open(source, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise JSONFileError(f"{what} is {size:,} bytes, which exceeds the limit {max_bytes:,}")
        raw = f.read(max_bytes + 1)  # +1: a file that grew since fstat still cannot slip past the limit
    if len(raw) > max_bytes:
        raise JSONFileError(f"{what} is over {max_bytes:,} bytes, which exceeds the limit {max_bytes:,}")
    return raw


def _no_constants(name: str):
    raise JSONFileError(f"{name} is not JSON (Python's json accepts it; we do not: it would become a NaN / Inf)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONFileError(f"number {text[:40]} overflows to infinity")
    return value


def _unique_keys(pairs: list) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise JSONFileError(f"key {key!r} appears twice in one object, expected unique keys")
        result[key] = value
    return result


def load_json(source, *, what: str, max_bytes: int, max_depth: int = 64, max_values: int | None = None,
              expect_object: bool = True, unique_keys: bool = False):
    """Parse JSON from a path or bytes, refusing anything over its limits before parsing it.

    source:        a path (str / os.PathLike) or the JSON bytes themselves (e.g. a header)
    what:          how errors name the input, e.g. "models/x/config.json"
    max_bytes:     the largest input accepted, checked before the file is read
    max_depth:     the deepest nesting of arrays / objects accepted (1 for {"a": 1})
    max_values:    the most JSON values (keys included) accepted, or None for no limit beyond max_bytes
    expect_object: the top level must be a JSON object (returned as a dict)
    unique_keys:   refuse an object that repeats a key (json keeps the last one silently)
    """
    raw = _read_bounded(source, what, max_bytes)
    depth, values = json_structure(raw)
    if depth > max_depth:
        raise JSONFileError(f"{what} nests arrays/objects {depth:,} deep, which exceeds the limit {max_depth}")
    if max_values is not None and values > max_values:
        raise JSONFileError(f"{what} holds up to {values:,} JSON values, which exceeds the limit {max_values:,}")
    try:
        text = raw.decode("utf-8")
        del raw  # the bytes are no longer needed; do not hold two copies while parsing
        data = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys if unique_keys else None)
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{what} is not valid UTF-8 ({e})") from None
    except JSONFileError as e:
        raise JSONFileError(f"{what}: {e}") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a number of more than 4300 digits
        raise JSONFileError(f"{what} is not valid JSON ({e})") from None
    if expect_object and not isinstance(data, dict):
        raise JSONFileError(f"{what} must be a JSON object at the top level, got JSON {_json_kind(data)}")
    return data


def _json_kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
