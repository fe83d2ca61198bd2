"""Reading JSON that came from somewhere else: bounded in size, value count and nesting depth.

Lesson: lessons/10-formats.py

Model folders are full of JSON: config.json, the safetensors header, the sharded index
(model.safetensors.index.json), tokenizer.json. Python's json module trusts its input in three
ways that a downloaded file can abuse:

  * size:   it parses whatever it is given, so a 2 GB "config" is read and parsed in full;
  * depth:  it recurses once per nesting level, so 100,000 '[' raise RecursionError (a crash
            deep in the parser, not an error about the file) instead of a clear message;
  * count:  every JSON value becomes a Python object of ~30-100 bytes, so a 60 MB header of
            tiny entries becomes more than a gigabyte of dicts and lists.

load_json bounds all three, without ever letting the parser build more than its limits allow:

    1. the file size, from the file system before reading, against max_bytes;
    2. an upper bound on the number of values, counted in C before parsing: every value after
       the first follows a '[', '{', ',' or ':', so 1 + the count of those four bytes is at least
       the number of values json.loads would build (those inside strings only raise the bound);
    3. json.loads itself, which refuses NaN / Infinity here (not JSON, though Python accepts them)
       and numbers that overflow to infinity, and whose RecursionError on very deep input we turn
       into a named error;
    4. the nesting depth of what was built, level by level without recursion, against max_depth.

Every problem raises JSONFileError (a ValueError) naming the file (`what`), the limit and the
value found. Callers that speak a format of their own (safetensors, checkpoints) re-raise it as
their error type.
"""
from __future__ import annotations

import json
import math
import os
from itertools import chain

__all__ = ["JSONFileError", "load_json", "value_bound", "nesting_depth"]


class JSONFileError(ValueError):
    """A JSON file or header that is malformed or larger / deeper than its limit."""


def value_bound(raw: bytes) -> int:
    """At least as many as the JSON values (object keys included) in raw, counted without parsing it."""
    return 1 + raw.count(b"[") + raw.count(b"{") + raw.count(b",") + raw.count(b":")


def nesting_depth(data, stop_after: int | None = None) -> int:
    """How deeply arrays / objects nest in parsed JSON: 0 for a scalar, 1 for {"a": 1}, 2 for [[1]].

    One level at a time (no recursion: the data may be as deep as the parser allowed), gathering
    each level's children with itertools.chain, which runs in C: a per-container Python loop took
    ~1 us a container, 1.4 s for the 1.4M arrays a hostile 4 MB file can hold. Stops counting
    past `stop_after`.
    """
    depth, level = 0, [data]
    while stop_after is None or depth <= stop_after:
        lists = [value for value in level if isinstance(value, list)]
        dicts = [value for value in level if isinstance(value, dict)]
        if not lists and not dicts:
            break
        depth += 1
        level = list(chain(chain.from_iterable(lists), chain.from_iterable(d.values() for d in dicts)))
    return depth


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
        # read(n) allocates n bytes up front: ask for the size the file has, not for the limit. One more
        # byte tells us if the file grew since fstat (then it may be past the limit: refuse it).
        raw = f.read(size + 1)
    if len(raw) > size:
        raise JSONFileError(f"{what} grew while it was being read; expected {size:,} bytes")
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
    """Parse JSON from a path or bytes, refusing anything over its limits.

    source:        a path (str / os.PathLike) or the JSON bytes themselves (e.g. a header)
    what:          how errors name the input, e.g. "models/x/config.json"
    max_bytes:     the largest input accepted, checked before the file is read
    max_depth:     the deepest nesting of arrays / objects accepted (1 for {"a": 1})
    max_values:    the most JSON values accepted (value_bound, checked before parsing), or None for
                   no limit beyond max_bytes
    expect_object: the top level must be a JSON object (returned as a dict)
    unique_keys:   refuse an object that repeats a key (json keeps the last one silently)
    """
    raw = _read_bounded(source, what, max_bytes)
    if max_values is not None and (values := value_bound(raw)) > max_values:
        raise JSONFileError(f"{what} holds up to {values:,} JSON values, which exceeds the limit {max_values:,}")
    try:
        text = raw.decode("utf-8")
        del raw  # the bytes are no longer needed; do not hold two copies while parsing
        data = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys if unique_keys else None)
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{what} is not valid UTF-8 ({e})") from None
    except RecursionError:  # the parser recurses per level; Python stops it near 1,000
        raise JSONFileError(f"{what} nests arrays/objects more than {max_depth} deep (the limit), so deep "
                            f"that Python's parser gave up") from None
    except JSONFileError as e:
        raise JSONFileError(f"{what}: {e}") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a number of more than 4300 digits
        raise JSONFileError(f"{what} is not valid JSON ({e})") from None
    if nesting_depth(data, stop_after=max_depth) > max_depth:
        raise JSONFileError(f"{what} nests arrays/objects more than {max_depth} deep (the limit)")
    if expect_object and not isinstance(data, dict):
        raise JSONFileError(f"{what} must be a JSON object at the top level, got JSON {_json_kind(data)}")
    return data


def _json_kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
