"""GGUF, llama.cpp's file format: a short writer and a reader that trusts nothing.

Lesson: lessons/10-formats.py

A GGUF file is one header, a table of contents, and the weights, all little-endian:

    header        "GGUF" (4 bytes) | version u32 (3) | tensor count u64 | key/value count u64
    key/values    count times:  key (string) | value type u32 | value
    tensor infos  count times:  name (string) | n_dims u32 | ne[0..n_dims) u64 | ggml type u32 | offset u64
    padding       zeros up to a multiple of the alignment (general.alignment, 32 if absent)
    data          each tensor's bytes at data_start + offset; every offset a multiple of the alignment

    string        length u64 | UTF-8 bytes (no terminating zero)
    array value   element type u32 | count u64 | the elements (strings or scalars, never mixed)

Two things surprise people:
  * `ne` is ggml's shape, *innermost dimension first*: a NumPy (N, K) matrix (row-major, K
    contiguous) is stored with ne = [K, N]. This module speaks NumPy shapes outside and
    reverses them at the file boundary.
  * A tensor's bytes are whatever its ggml type says: float32 and float16 are plain arrays;
    Q8_0 and Q4_0 are ggml's blocks (tinyinfer/quant/formats.py), 34 and 18 bytes per 32 weights.
    The reader computes every tensor's size from its type's block table and refuses a file
    whose tensors overlap, run past the end, or have a type it does not know.

The model-level mapping (which tensor is `blk.3.attn_q.weight`, which keys llama.cpp needs) lives
in tinyinfer/gguf_model.py; this file knows only the container.

    write_gguf(path, metadata, tensors)     metadata: {key: value}, tensors: [GGUFTensor(...)]
    f = read_gguf(path)                     f.metadata, f.tensors[name], f.tensor_array(name)

Every problem with a file raises GGUFError (a ValueError) naming the byte offset and what was
expected there. Counts and lengths the header declares (tensors, keys, string bytes, array
lengths) are held to tinyinfer/limits.py and to the bytes the file really has before anything is
allocated for them. read_gguf memory-maps the file: tensors are read-only views into the mapping.
"""
from __future__ import annotations

import enum
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .limits import GGUF_MAX_ARRAY_LENGTH, GGUF_MAX_KEYS, GGUF_MAX_STRING_BYTES, MAX_TENSORS

__all__ = ["GGUFError", "ValueType", "TensorType", "GGUFTensor", "TensorInfo", "GGUFFile",
           "write_gguf", "read_gguf", "tensor_nbytes"]

MAGIC = b"GGUF"
VERSION = 3  # version 2 has the same layout; version 1 used 32-bit counts and is long gone
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS


class GGUFError(ValueError):
    """A file (or a request to write one) that is not valid GGUF."""


# --------------------------------------------------------------------------------------------
# the two type tables: metadata values and tensor element types


class ValueType(enum.IntEnum):
    """The type tag before each metadata value (gguf.h: enum gguf_type)."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Each scalar type as a NumPy dtype (little-endian); BOOL is one byte, 0 or 1.
SCALAR_DTYPES = {
    ValueType.UINT8: np.dtype("<u1"), ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"), ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"), ValueType.INT32: np.dtype("<i4"),
    ValueType.UINT64: np.dtype("<u8"), ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT32: np.dtype("<f4"), ValueType.FLOAT64: np.dtype("<f8"),
    ValueType.BOOL: np.dtype("u1"),
}


class TensorType(enum.IntEnum):
    """ggml's element types (ggml.h: enum ggml_type). Only some are listed; see TENSOR_BLOCKS."""
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ4_NL = 20
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    BF16 = 30


# (values per block, bytes per block): how many bytes a row of ne[0] values takes.
# The quantized rows must hold whole blocks, so ne[0] is a multiple of the block size.
TENSOR_BLOCKS = {
    TensorType.F32: (1, 4), TensorType.F16: (1, 2), TensorType.BF16: (1, 2), TensorType.F64: (1, 8),
    TensorType.I8: (1, 1), TensorType.I16: (1, 2), TensorType.I32: (1, 4), TensorType.I64: (1, 8),
    TensorType.Q4_0: (32, 18), TensorType.Q4_1: (32, 20), TensorType.Q5_0: (32, 22),
    TensorType.Q5_1: (32, 24), TensorType.Q8_0: (32, 34), TensorType.IQ4_NL: (32, 18),
    TensorType.Q2_K: (256, 84), TensorType.Q3_K: (256, 110), TensorType.Q4_K: (256, 144),
    TensorType.Q5_K: (256, 176), TensorType.Q6_K: (256, 210), TensorType.Q8_K: (256, 292),
}

# The types that are plain arrays, and their NumPy dtypes (tensor_array returns these as arrays).
PLAIN_DTYPES = {TensorType.F32: np.dtype("<f4"), TensorType.F16: np.dtype("<f2"),
                TensorType.F64: np.dtype("<f8"), TensorType.I8: np.dtype("<i1"),
                TensorType.I16: np.dtype("<i2"), TensorType.I32: np.dtype("<i4"),
                TensorType.I64: np.dtype("<i8")}


def tensor_nbytes(tensor_type: TensorType, shape: tuple) -> int:
    """Bytes of a tensor of NumPy shape `shape` (rows of shape[-1] values) in `tensor_type`."""
    per_block, block_bytes = TENSOR_BLOCKS[tensor_type]
    row = shape[-1] if shape else 1
    if row % per_block:
        raise GGUFError(f"a {tensor_type.name} tensor's rows must hold whole blocks of {per_block} values, "
                        f"but shape {tuple(shape)} has rows of {row}")
    n_rows = math.prod(shape[:-1])  # Python ints: a corrupt file's huge dims must not overflow
    return n_rows * (row // per_block) * block_bytes


# --------------------------------------------------------------------------------------------
# writing


@dataclass
class GGUFTensor:
    """One tensor to write: its name, ggml type, NumPy shape (outermost first) and raw bytes."""
    name: str
    type: TensorType
    shape: tuple
    data: bytes | np.ndarray  # exactly tensor_nbytes(type, shape) bytes

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, tensor_type: TensorType = TensorType.F32):
        """A float array stored as F32 or F16 (the cast happens here)."""
        if tensor_type not in (TensorType.F32, TensorType.F16):
            raise GGUFError(f"from_array stores F32 or F16, got {tensor_type!r}; quantized tensors "
                            f"come as bytes (QTensor.to_bytes())")
        dtype = PLAIN_DTYPES[tensor_type]
        with np.errstate(over="ignore"):
            data = np.ascontiguousarray(array, dtype=dtype)
        if not np.isfinite(data).all():
            raise GGUFError(f"tensor {name!r} has NaN/Inf values as {tensor_type.name} "
                            f"(float16 holds |x| <= 65504)")
        return cls(name, tensor_type, tuple(array.shape), data)


def _typed_value(key: str, value) -> tuple[ValueType, object]:
    """Pick the GGUF type of a Python value: (ValueType, value) pairs are taken as given.

    str -> STRING, bool -> BOOL, int -> UINT32 (what llama.cpp expects for sizes and ids),
    float -> FLOAT32, a list of str -> ARRAY of STRING, a 1-D NumPy array -> ARRAY of its dtype.
    """
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], ValueType):
        return value
    if isinstance(value, str):
        return ValueType.STRING, value
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL, bool(value)
    if isinstance(value, (int, np.integer)):
        if not 0 <= value < 2**32:
            raise GGUFError(f"metadata {key!r}: int {value} does not fit UINT32; pass "
                            f"(ValueType.INT64, value) or another explicit type")
        return ValueType.UINT32, int(value)
    if isinstance(value, (float, np.floating)):
        return ValueType.FLOAT32, float(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ValueType.ARRAY, (ValueType.STRING, list(value))
    if isinstance(value, np.ndarray) and value.ndim == 1:
        for vtype, dtype in SCALAR_DTYPES.items():
            if vtype != ValueType.BOOL and value.dtype.newbyteorder("<") == dtype:
                return ValueType.ARRAY, (vtype, value)
    raise GGUFError(f"metadata {key!r}: cannot store a {type(value).__name__} ({value!r:.60}); expected "
                    f"str, bool, int, float, a list of str, a 1-D numeric array or (ValueType, value)")


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(vtype: ValueType, value) -> bytes:
    if vtype == ValueType.STRING:
        return _pack_string(value)
    if vtype == ValueType.ARRAY:
        elem_type, items = value
        head = struct.pack("<IQ", elem_type, len(items))
        if elem_type == ValueType.STRING:
            return head + b"".join(_pack_string(s) for s in items)
        if elem_type == ValueType.ARRAY:
            raise GGUFError("arrays of arrays are not supported here")
        return head + np.asarray(items, dtype=SCALAR_DTYPES[elem_type]).tobytes()
    return np.asarray(value, dtype=SCALAR_DTYPES[vtype]).tobytes()


def _pad(n: int, alignment: int) -> int:
    """Bytes of zeros that bring n up to a multiple of alignment."""
    return (-n) % alignment


def write_gguf(path, metadata: dict, tensors: list[GGUFTensor], alignment: int = DEFAULT_ALIGNMENT) -> int:
    """Write a GGUF v3 file; returns its size in bytes.

    metadata: {key: value}, types chosen by _typed_value (or given as (ValueType, value)).
    If alignment is not 32, "general.alignment" must say so, and is added when missing.
    """
    if alignment < 1 or alignment & (alignment - 1):
        raise GGUFError(f"alignment must be a power of two, got {alignment}")
    metadata = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT or "general.alignment" in metadata:
        stated = metadata.setdefault("general.alignment", alignment)
        if stated != alignment and stated != (ValueType.UINT32, alignment):
            raise GGUFError(f"metadata general.alignment is {stated!r} but alignment={alignment}")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise GGUFError(f"tensor names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")

    # header and key/values
    out = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(metadata))]
    for key, value in metadata.items():
        vtype, v = _typed_value(key, value)
        out += [_pack_string(key), struct.pack("<I", vtype), _pack_value(vtype, v)]

    # tensor infos: offsets are relative to the data section, each one aligned
    blobs, offset = [], 0
    for t in tensors:
        if len(t.shape) > MAX_DIMS:
            raise GGUFError(f"tensor {t.name!r} has {len(t.shape)} dims; ggml allows at most {MAX_DIMS}")
        data = np.frombuffer(t.data, dtype=np.uint8) if isinstance(t.data, bytes) else t.data.reshape(-1).view(np.uint8)
        expected = tensor_nbytes(TensorType(t.type), tuple(t.shape))
        if data.size != expected:
            raise GGUFError(f"tensor {t.name!r}: {data.size} bytes given, a {TensorType(t.type).name} tensor of "
                            f"shape {tuple(t.shape)} takes {expected}")
        ne = tuple(reversed(t.shape))  # ggml order: innermost dimension first
        out += [_pack_string(t.name), struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t.type, offset)]
        blobs.append(data)
        offset += data.size + _pad(data.size, alignment)

    header = b"".join(out)
    with open(path, "wb") as f:
        f.write(header)
        f.write(b"\0" * _pad(len(header), alignment))
        for data in blobs:
            f.write(data.tobytes())
            f.write(b"\0" * _pad(data.size, alignment))
        return f.tell()


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class TensorInfo:
    """A tensor's entry in the table of contents. offset is absolute (from the start of the file)."""
    name: str
    type: TensorType
    shape: tuple  # NumPy order: outermost first (ne reversed)
    offset: int
    nbytes: int


@dataclass
class GGUFFile:
    """A parsed GGUF file: everything before the data, plus the buffer to read tensors from.

    `buffer` is the file's read-only memory map (read_gguf) or the bytes given to parse_gguf.
    tensor_bytes / tensor_array return views into it, and each view keeps the mapping alive:
    the file stays mapped (and one descriptor open) until the last view and this object are gone.
    """
    version: int
    metadata: dict  # key -> str | bool | int | float | list[str] | np.ndarray
    value_types: dict  # key -> ValueType (for arrays: (ValueType.ARRAY, element type))
    tensors: dict  # name -> TensorInfo, in file order
    alignment: int
    data_start: int  # byte where the data section begins
    buffer: bytes | mmap.mmap = field(repr=False)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's raw bytes as a read-only uint8 array (a view: no copy)."""
        info = self._info(name)
        return np.frombuffer(self.buffer, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def tensor_array(self, name: str) -> np.ndarray:
        """A plain (F32, F16, ...) tensor as a read-only NumPy array of its shape; quantized ones raise."""
        info = self._info(name)
        if info.type not in PLAIN_DTYPES:
            raise GGUFError(f"tensor {name!r} is {info.type.name}, not a plain array type; read its "
                            f"blocks with tensor_bytes (e.g. QTensor.from_bytes)")
        return self.tensor_bytes(name).view(PLAIN_DTYPES[info.type]).reshape(info.shape)

    def loaded_nbytes(self, dtype="float32") -> int:
        """Bytes the tensors take once copied out of the file: plain ones (F32, F16, ...) as `dtype`,
        ggml blocks as they are. Compare it with limits.check_memory before loading them."""
        itemsize = np.dtype(dtype).itemsize
        return sum(math.prod(info.shape) * itemsize if info.type in PLAIN_DTYPES else info.nbytes
                   for info in self.tensors.values())

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"no tensor {name!r} in this GGUF file; it has {list(self.tensors)[:8]}...")
        return self.tensors[name]


# How each scalar value type is unpacked (struct is ~10x faster than NumPy for one value).
_STRUCTS = {vtype: struct.Struct("<" + code) for vtype, code in (
    (ValueType.UINT8, "B"), (ValueType.INT8, "b"), (ValueType.UINT16, "H"), (ValueType.INT16, "h"),
    (ValueType.UINT32, "I"), (ValueType.INT32, "i"), (ValueType.UINT64, "Q"), (ValueType.INT64, "q"),
    (ValueType.FLOAT32, "f"), (ValueType.FLOAT64, "d"), (ValueType.BOOL, "B"))}
_U64 = _STRUCTS[ValueType.UINT64]


class _Cursor:
    """Reads little-endian values from a buffer, checking each one fits (and is within its limit) first."""

    def __init__(self, buffer, source: str):
        self.buffer, self.pos, self.source, self.end = buffer, 0, source, len(buffer)

    def fail(self, message: str):
        raise GGUFError(f"{self.source}: {message}")

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.end:
            self.fail(f"{what} needs {n:,} bytes at offset {self.pos:,}, but the file ends at {self.end:,} "
                      f"(truncated or corrupt)")

    def within(self, n: int, limit: int, what: str):
        """A count or length read from the file, refused before anything is allocated for it."""
        if n > limit:
            self.fail(f"{what} is {n:,}, which exceeds the limit {limit:,} (see tinyinfer/limits.py)")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        chunk = self.buffer[self.pos:self.pos + n]  # (bytes) a copy, also from a memory map
        self.pos += n
        return chunk

    def scalar(self, vtype: ValueType, what: str):
        unpacker = _STRUCTS[vtype]
        self.need(unpacker.size, what)
        (value,) = unpacker.unpack_from(self.buffer, self.pos)
        self.pos += unpacker.size
        if vtype == ValueType.BOOL:
            if value > 1:
                self.fail(f"{what} is a bool with byte value {value}, expected 0 or 1")
            return bool(value)
        return value

    def u32(self, what):
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what):
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        self.within(n, GGUF_MAX_STRING_BYTES, f"the length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} at offset {self.pos - n} is not UTF-8 ({e})")

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings in a row: string()'s checks in one tight loop (~0.5 us a string; vocabularies are long)."""
        buffer, pos, end, longest = self.buffer, self.pos, self.end, GGUF_MAX_STRING_BYTES
        unpack, out = _U64.unpack_from, []
        append = out.append
        for i in range(count):
            if pos + 8 > end or (n := unpack(buffer, pos)[0]) > longest or pos + 8 + n > end:
                self.pos = pos  # report where the bad element starts, with string()'s message
                self.string(f"{what}[{i}]")
            pos += 8
            try:
                append(buffer[pos:pos + n].decode("utf-8"))
            except UnicodeDecodeError as e:
                self.fail(f"{what}[{i}] at offset {pos} is not UTF-8 ({e})")
            pos += n
        self.pos = pos
        return out

    def value_type(self, what: str) -> ValueType:
        at, raw = self.pos, self.u32(what)
        try:
            return ValueType(raw)
        except ValueError:
            self.fail(f"{what} at offset {at} is {raw}; known value types are "
                      f"0..12 ({', '.join(t.name for t in ValueType)})")

    def value(self, vtype: ValueType, what: str):
        if vtype == ValueType.STRING:
            return self.string(what)
        if vtype != ValueType.ARRAY:
            return self.scalar(vtype, what)
        elem_type = self.value_type(f"{what} element type")
        count = self.u64(f"{what} count")
        if elem_type == ValueType.ARRAY:
            self.fail(f"{what} is an array of arrays, which this reader does not support")
        self.within(count, GGUF_MAX_ARRAY_LENGTH, f"the length of {what}")
        # Every element takes at least one byte (a string at least 8): refuse a count that cannot fit
        # before allocating anything for it.
        smallest = 8 if elem_type == ValueType.STRING else SCALAR_DTYPES[elem_type].itemsize
        self.need(count * smallest, f"{what} ({count:,} x {elem_type.name})")
        if elem_type == ValueType.STRING:
            return self.strings(count, what)
        dtype = SCALAR_DTYPES[elem_type]
        values = np.frombuffer(self.take(count * dtype.itemsize, what), dtype=dtype).copy()  # writable, ours
        if elem_type == ValueType.BOOL:
            if values.size and values.max() > 1:
                self.fail(f"{what} holds a bool with byte value {values.max()}, expected 0 or 1")
            return values.astype(bool)
        return values


def read_gguf(path) -> GGUFFile:
    """Parse a GGUF v2/v3 file. Validates the header, every count and every tensor's place.

    The file is memory-mapped read-only, not read: the header is parsed from the mapping and the
    tensors stay in the file until used (the operating system pages them in, and can drop them
    again, since they are backed by the file). A 100 MB model costs ~its metadata in memory here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            buffer = b""  # an empty file cannot be mapped; parse_gguf says it is truncated
        else:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # holds its own descriptor
    try:
        return parse_gguf(buffer, source=str(path))
    except BaseException:
        if isinstance(buffer, mmap.mmap):
            buffer.close()  # no view refers to it yet: unmap and release the descriptor now
        raise


def parse_gguf(buffer, source: str = "GGUF data") -> GGUFFile:
    """Parse GGUF from bytes in memory (or any buffer: read_gguf passes a memory map)."""
    cur = _Cursor(buffer, source)
    magic = cur.take(4, "the magic number 'GGUF'")
    if magic != MAGIC:
        cur.fail(f"not a GGUF file: starts with {magic!r}, expected {MAGIC!r}")
    version = cur.u32("the version")
    if version not in (2, 3):
        cur.fail(f"GGUF version {version} is not supported; expected 2 or 3")
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the key/value count")
    cur.within(n_tensors, MAX_TENSORS, "the tensor count")
    cur.within(n_kv, GGUF_MAX_KEYS, "the key/value count")
    # A key/value pair takes at least 8 + 4 bytes, a tensor info at least 8 + 4 + 8 + 4 + 8.
    cur.need(n_kv * 12 + n_tensors * 32, f"{n_kv:,} key/values and {n_tensors:,} tensor infos")
    metadata, value_types = _read_metadata(cur, n_kv)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (value_types.get("general.alignment", ValueType.UINT32) != ValueType.UINT32
            or alignment < 1 or alignment & (alignment - 1)):
        cur.fail(f"general.alignment must be a UINT32 power of two, got {alignment!r}")

    infos = [_read_tensor_info(cur, i, alignment) for i in range(n_tensors)]
    data_start = cur.pos + _pad(cur.pos, alignment)
    tensors = _place_tensors(infos, data_start, len(buffer), source)
    return GGUFFile(version, metadata, value_types, tensors, alignment, data_start, buffer)


def _read_metadata(cur: _Cursor, n_kv: int) -> tuple[dict, dict]:
    metadata, value_types = {}, {}
    for i in range(n_kv):
        key = cur.string(f"key #{i}")
        vtype = cur.value_type(f"the type of {key!r}")
        if key in metadata:
            cur.fail(f"key {key!r} appears twice")
        start = cur.pos
        metadata[key] = cur.value(vtype, f"the value of {key!r}")
        value_types[key] = vtype
        if vtype == ValueType.ARRAY:
            value_types[key] = (ValueType.ARRAY, ValueType(_STRUCTS[ValueType.UINT32].unpack_from(cur.buffer, start)[0]))
    return metadata, value_types


def _read_tensor_info(cur: _Cursor, i: int, alignment: int) -> tuple:
    """(name, type, NumPy shape, offset in the data section, bytes) of tensor #i, all checked."""
    name = cur.string(f"tensor name #{i}")
    n_dims = cur.u32(f"the dimension count of {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        cur.fail(f"tensor {name!r} has {n_dims} dimensions, expected 1..{MAX_DIMS}")
    ne = [cur.u64(f"dimension {d} of {name!r}") for d in range(n_dims)]
    at, raw_type = cur.pos, cur.u32(f"the type of {name!r}")
    try:
        tensor_type = TensorType(raw_type)
    except ValueError:
        cur.fail(f"tensor {name!r} has ggml type {raw_type} (at offset {at}), which this reader does not "
                 f"know; known: {', '.join(f'{t.name}={t.value}' for t in TensorType)}")
    offset = cur.u64(f"the offset of {name!r}")
    if offset % alignment:
        cur.fail(f"tensor {name!r} offset {offset} is not a multiple of the alignment {alignment}")
    if any(n == 0 for n in ne) or any(n > 2**40 for n in ne):
        cur.fail(f"tensor {name!r} has dimensions {ne}; each must be in 1..2^40")
    shape = tuple(reversed(ne))
    try:
        nbytes = tensor_nbytes(tensor_type, shape)
    except GGUFError as e:
        cur.fail(f"tensor {name!r}: {e}")
    return name, tensor_type, shape, offset, nbytes


def _place_tensors(infos: list, data_start: int, file_size: int, source: str) -> dict:
    """TensorInfos with absolute offsets; each must lie inside the file, none may overlap another."""
    tensors, spans = {}, []
    for name, tensor_type, shape, offset, nbytes in infos:
        if name in tensors:
            raise GGUFError(f"{source}: tensor {name!r} appears twice")
        start = data_start + offset
        if start + nbytes > file_size:
            raise GGUFError(f"{source}: tensor {name!r} ({tensor_type.name} {shape}) needs bytes "
                            f"{start:,}..{start + nbytes:,} but the file ends at {file_size:,} (truncated?)")
        tensors[name] = TensorInfo(name, tensor_type, shape, start, nbytes)
        spans.append((start, start + nbytes, name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise GGUFError(f"{source}: tensors {a!r} and {b!r} overlap in the data section")
    return tensors
