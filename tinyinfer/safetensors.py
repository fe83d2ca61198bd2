"""Read and write the safetensors file format by hand, without unpickling anything.

Lesson: lessons/01-transformer.py

A checkpoint is just named arrays of numbers. The older PyTorch format stores them with
Python's pickle, and loading a pickle can run arbitrary code. safetensors was designed so
that a loader only ever parses a small JSON header and then copies raw bytes. The whole
format fits on an index card:

    bytes 0..8         N, the header length, as a little-endian unsigned 64-bit integer
    bytes 8..8+N       the header: UTF-8 JSON, padded with spaces
                         {"__metadata__": {"format": "pt"},                  (optional, str -> str)
                          "wte.weight": {"dtype": "F32",
                                         "shape": [50257, 768],
                                         "data_offsets": [begin, end]}, ...}
    bytes 8+N..        the data buffer; tensor bytes live at [begin, end) within it,
                         C-contiguous (row-major) and little-endian

Because the file comes from somewhere else (often the internet), the reader checks every
number in the header before trusting it: a header that lies about sizes or offsets must
produce a clear SafetensorsError, never a crash, a hang or a huge allocation. The header is
read with tinyinfer/jsonfile.py (bounded size, nesting and value count before parsing), and the
limits it is held to (header bytes, tensor count, rank) live in tinyinfer/limits.py. Before any
tensor is read, the bytes they will take are compared with the memory the machine has free.

We match the reference implementation (the `safetensors` package by Hugging Face):
  * the data buffer must be covered exactly: tensors sorted by offset start at 0, each one
    begins where the previous ended (no holes, no overlaps), and the last ends at the end
    of the file;
  * the writer orders tensors by dtype (widest first, which keeps every tensor aligned to
    its item size) and then by name, writes compact JSON, and pads the header with spaces
    to a multiple of 8 bytes. For the same tensors (and at most one metadata entry, since
    the reference stores metadata in a hash map of unspecified order) our files are
    byte-for-byte identical to the reference's.

We are stricter than the reference in a few places: a header that repeats a tensor name is
rejected (JSON would silently keep the last one); BOOL bytes other than 0 and 1 are rejected
(NumPy would otherwise build booleans that are neither True nor False inside); and headers
over 16 MB (the reference allows 100 MB), with more than 16,384 tensors, or tensors of more
than 16 dimensions are refused, because parsing them costs far more memory than any model needs.

BF16 (bfloat16) has no NumPy dtype. It is the top 16 bits of a float32, so we read it by
shifting the 16 bits into the high half of a uint32 and viewing that as float32: exact, just
twice the memory. Writing is limited to dtypes NumPy has, so BF16 is read-only here.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from .jsonfile import JSONFileError, load_json
from .limits import (MAX_JSON_DEPTH, MAX_TENSORS, SAFETENSORS_HEADER_BYTES, SAFETENSORS_HEADER_VALUES,
                     SAFETENSORS_MAX_RANK, check_memory)

__all__ = ["SafetensorsError", "read_safetensors", "read_safetensors_header", "write_safetensors",
           "MAX_HEADER_BYTES"]

# A real header is kilobytes; a corrupt length field must not make us read (and parse) a huge
# one before we find out it lies. (The reference allows 100 MB; see tinyinfer/limits.py.)
MAX_HEADER_BYTES = SAFETENSORS_HEADER_BYTES

# safetensors dtype name -> NumPy dtype of one stored element, always little-endian ("<").
# BF16 is stored as raw uint16 bit patterns and widened after reading (see _bf16_to_float32).
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# The reverse map for the writer, keyed by NumPy's kind+size code ("f4", "i8", "b1", ...)
# so that byte order does not matter: we always write little-endian.
_NUMPY_TO_NAME: dict[str, str] = {
    "f8": "F64", "f4": "F32", "f2": "F16",
    "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8",
    "u8": "U64", "u4": "U32", "u2": "U16", "u1": "U8",
    "b1": "BOOL",
}

# The reference writer sorts tensors by its dtype enum, last variant first, then by name.
# Wider types come first, so with a header padded to 8 bytes every tensor starts at a
# multiple of its item size. We copy the order (not just "by size") so files match exactly.
_WRITE_ORDER = ["U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "I8", "U8", "BOOL"]
_WRITE_RANK = {name: rank for rank, name in enumerate(_WRITE_ORDER)}

_METADATA_KEY = "__metadata__"


class SafetensorsError(ValueError):
    """A safetensors file (or the tensors given to the writer) is malformed."""


# ----------------------------------------------------------------------------- reading


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a .safetensors file into ({name: array}, metadata).

    Every returned array is an independent, writable, native-byte-order copy, so the file
    can be deleted or overwritten afterwards. BF16 tensors come back as float32.
    """
    path = Path(path)
    with open(path, "rb") as f:
        infos, metadata, data_start = _read_header(f, path)
        check_memory(loaded_nbytes(infos), f"{path}: its tensors")
        tensors = {name: _read_tensor(f, data_start, name, info, path) for name, info in infos.items()}
    return tensors, metadata


def read_safetensors_header(path) -> tuple[dict[str, dict], dict[str, str]]:
    """Only the checked header: ({name: {"dtype", "shape", "begin", "end"}}, metadata). No tensor is read."""
    path = Path(path)
    with open(path, "rb") as f:
        infos, metadata, _data_start = _read_header(f, path)
    return infos, metadata


def loaded_nbytes(infos: dict[str, dict]) -> int:
    """Bytes read_safetensors allocates for these tensors (BF16 comes back as 4-byte float32)."""
    return sum(math.prod(info["shape"]) * (4 if info["dtype"] == "BF16" else _DTYPES[info["dtype"]].itemsize)
               for info in infos.values())


def _read_header(f, path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensor infos, metadata, where the data starts): everything checked, nothing allocated for data."""
    file_size = os.fstat(f.fileno()).st_size
    header_len = _read_header_length(f, file_size, path)
    header = _parse_header(f.read(header_len), path)
    data_start = 8 + header_len
    metadata = _check_metadata(header.pop(_METADATA_KEY, None), path)
    if len(header) > MAX_TENSORS:
        raise SafetensorsError(f"{path}: header lists {len(header):,} tensors, which exceeds the limit "
                               f"{MAX_TENSORS:,} (see tinyinfer/limits.py)")
    infos = {name: _check_tensor_info(name, info, path) for name, info in header.items()}
    _check_coverage(infos, file_size - data_start, path)
    return infos, metadata, data_start


def _read_header_length(f, file_size: int, path: Path) -> int:
    """The first 8 bytes: how long the JSON header is. Checked against the real file size."""
    if file_size < 8:
        raise SafetensorsError(
            f"{path}: file is {file_size} bytes, expected at least 8 (the header length field)")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{path}: header length {header_len:,} bytes exceeds the limit "
                               f"{MAX_HEADER_BYTES:,} (see tinyinfer/limits.py)")
    if 8 + header_len > file_size:
        raise SafetensorsError(
            f"{path}: header length {header_len} runs past the end of the file "
            f"(expected at most {file_size - 8} for a {file_size}-byte file)")
    return header_len


def _parse_header(raw: bytes, path: Path) -> dict:
    """The JSON header, bounded in depth and value count, with unique names (a repeat would shadow)."""
    try:
        return load_json(raw, what=f"{path}: header", max_bytes=SAFETENSORS_HEADER_BYTES,
                         max_depth=MAX_JSON_DEPTH, max_values=SAFETENSORS_HEADER_VALUES, unique_keys=True)
    except JSONFileError as e:
        raise SafetensorsError(str(e)) from None


def _check_metadata(metadata, path: Path) -> dict[str, str]:
    """__metadata__ is an optional flat map of strings (null is accepted, like the reference)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(
            f"{path}: __metadata__ must be an object of strings, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise SafetensorsError(
                f"{path}: __metadata__[{key!r}] must be a string, got {type(value).__name__} {value!r}")
    return metadata


def _is_count(x) -> bool:
    """A non-negative JSON integer (JSON true/false parse as Python bools, which are ints)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_tensor_info(name: str, info, path: Path) -> dict:
    """Validate one header entry and return {"dtype", "shape", "begin", "end"}."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise SafetensorsError(f"{where}: entry must be an object, got {type(info).__name__}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise SafetensorsError(f"{where}: entry is missing {key!r}, found keys {sorted(info)}")

    dtype = info["dtype"]
    if dtype not in _DTYPES:
        raise SafetensorsError(f"{where}: unsupported dtype {dtype!r}, expected one of {sorted(_DTYPES)}")

    shape = info["shape"]
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise SafetensorsError(f"{where}: shape must be a list of non-negative ints, got {shape!r:.200}")
    if len(shape) > SAFETENSORS_MAX_RANK:
        raise SafetensorsError(f"{where}: shape has {len(shape)} dimensions, which exceeds the limit "
                               f"{SAFETENSORS_MAX_RANK}")

    offsets = info["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise SafetensorsError(
            f"{where}: data_offsets must be [begin, end] with non-negative ints, got {offsets!r}")
    begin, end = offsets
    if begin > end:
        raise SafetensorsError(f"{where}: data_offsets [begin, end] need begin <= end, got {offsets!r}")

    # Python ints never overflow, so an absurd shape gives an absurd (and mismatching) size
    # here instead of wrapping around to a small, plausible one.
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if end - begin != expected:
        raise SafetensorsError(
            f"{where}: {dtype} shape {shape} needs {expected} bytes, "
            f"but data_offsets {offsets} span {end - begin}")
    return {"dtype": dtype, "shape": tuple(shape), "begin": begin, "end": end}


def _check_coverage(infos: dict[str, dict], buffer_size: int, path: Path) -> None:
    """Tensors must tile the data buffer exactly: no holes, no overlaps, nothing left over.

    Sorting by (begin, end) and walking forward is enough: each tensor must start exactly
    where the previous one ended. Zero-size tensors (begin == end) fit anywhere.
    """
    position = 0
    for name, info in sorted(infos.items(), key=lambda item: (item[1]["begin"], item[1]["end"])):
        if info["begin"] != position:
            problem = "overlaps the previous tensor" if info["begin"] < position else "leaves a hole"
            raise SafetensorsError(
                f"{path}: tensor {name!r} {problem}: it starts at data offset {info['begin']}, "
                f"expected {position}")
        position = info["end"]
    if position != buffer_size:
        raise SafetensorsError(
            f"{path}: tensors cover {position} bytes of data, but the file holds {buffer_size} "
            f"bytes after the header (expected them to match exactly)")


def _read_tensor(f, data_start: int, name: str, info: dict, path: Path) -> np.ndarray:
    stored = _DTYPES[info["dtype"]]
    count = math.prod(info["shape"])
    # np.empty + readinto copies the bytes once, straight into a fresh writable array.
    flat = np.empty(count, dtype=stored)
    f.seek(data_start + info["begin"])
    got = f.readinto(memoryview(flat).cast("B"))
    if got != flat.nbytes:  # the file shrank while we were reading it
        raise SafetensorsError(f"{path}: tensor {name!r} expected {flat.nbytes} bytes, read {got}")

    if info["dtype"] == "BF16":
        flat = _bf16_to_float32(flat)
    elif info["dtype"] == "BOOL":
        _check_bool_bytes(flat, name, path)
    # Convert to native byte order (a no-op on little-endian machines, i.e. nearly all).
    flat = flat.astype(flat.dtype.newbyteorder("="), copy=False)
    return flat.reshape(info["shape"])


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the high half of a float32: put the 16 bits on top, zeros below."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _check_bool_bytes(flat: np.ndarray, name: str, path: Path) -> None:
    raw = flat.view(np.uint8)
    if raw.size and raw.max() > 1:
        raise SafetensorsError(
            f"{path}: BOOL tensor {name!r} holds byte {int(raw.max())}, expected only 0 or 1")


# ----------------------------------------------------------------------------- writing


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write {name: np.ndarray} (and optional {str: str} metadata) to a .safetensors file.

    Output is byte-identical to the reference writer's (see the module docstring).
    Everything is validated before the file is opened, so a bad argument leaves no
    half-written file behind.
    """
    if not isinstance(tensors, dict):
        raise SafetensorsError(f"tensors must be a dict of name -> np.ndarray, got {type(tensors).__name__}")
    _check_metadata_arg(metadata)
    entries = sorted((_describe(name, array) for name, array in tensors.items()),
                     key=lambda e: (_WRITE_RANK[e["dtype"]], e["name"]))

    header = {} if metadata is None else {_METADATA_KEY: dict(metadata)}
    offset = 0
    for e in entries:
        header[e["name"]] = {"dtype": e["dtype"], "shape": list(e["array"].shape),
                             "data_offsets": [offset, offset + e["array"].nbytes]}
        offset += e["array"].nbytes

    with open(path, "wb") as f:
        f.write(_encode_header(header))
        for e in entries:
            f.write(e["array"].tobytes())


def _check_metadata_arg(metadata) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"metadata must be a dict of str -> str or None, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SafetensorsError(
                f"metadata must map str -> str, got {type(key).__name__} {key!r} -> "
                f"{type(value).__name__} {value!r}")


def _describe(name, array) -> dict:
    """Validate one tensor and return it as C-contiguous little-endian bytes-to-be."""
    if not isinstance(name, str):
        raise SafetensorsError(f"tensor names must be str, got {type(name).__name__} {name!r}")
    if name == _METADATA_KEY:
        raise SafetensorsError(f"tensor name {_METADATA_KEY!r} is reserved for metadata")
    if not isinstance(array, np.ndarray):
        raise SafetensorsError(
            f"tensors[{name!r}] must be a np.ndarray, got {type(array).__name__}")
    code = f"{array.dtype.kind}{array.dtype.itemsize}"
    if code not in _NUMPY_TO_NAME:
        raise SafetensorsError(
            f"tensors[{name!r}] has dtype {array.dtype}, expected one of "
            f"float64/32/16, int64/32/16/8, uint64/32/16/8, bool (BF16 cannot be written: NumPy has no bfloat16)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SafetensorsError(f"tensor name {name!r} cannot be encoded as UTF-8") from None
    # Transposed or sliced views are fine: asarray(order="C") makes the row-major copy the
    # format requires (unlike ascontiguousarray it keeps 0-d arrays 0-d), and astype("<...")
    # fixes big-endian input.
    little = np.asarray(array, order="C").astype(array.dtype.newbyteorder("<"), copy=False)
    return {"name": name, "dtype": _NUMPY_TO_NAME[code], "array": little}


def _encode_header(header: dict) -> bytes:
    """8-byte length + compact UTF-8 JSON padded with spaces to a multiple of 8."""
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate in a metadata string
        raise SafetensorsError(f"metadata cannot be encoded as UTF-8 ({e})") from None
    raw += b" " * (-len(raw) % 8)  # padding keeps the data buffer 8-byte aligned in the file
    return struct.pack("<Q", len(raw)) + raw
