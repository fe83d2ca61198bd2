"""Tests for tinyinfer/safetensors.py: round trips, agreement with the reference package,
and corrupt files that must raise SafetensorsError instead of crashing or hanging."""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinyinfer.safetensors import MAX_HEADER_BYTES, SafetensorsError, read_safetensors, write_safetensors

DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8",
          "uint64", "uint32", "uint16", "uint8", "bool"]


# ----------------------------------------------------------------------------- helpers


def tensor_dicts(max_tensors: int = 4):
    """Hypothesis: {name: array} over every writable dtype, 0-d and zero-size shapes included."""
    names = st.text(max_size=8).filter(lambda s: s != "__metadata__")
    arrays = st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(
        np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
    return st.dictionaries(names, arrays, max_size=max_tensors)


def assert_same_tensors(got: dict, expected: dict) -> None:
    """Bit-exact comparison: NaN payloads and -0.0 must survive too."""
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        assert got[name].tobytes() == want.tobytes(), name


def raw_file(path: Path, header, data: bytes = b"", pad: bool = True) -> Path:
    """Write a safetensors file by hand; `header` is a JSON-able object or raw bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def f32(begin, end, shape=(1,), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(tensors=tensor_dicts(), metadata=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
def test_round_trip(tensors, metadata):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.safetensors"
        write_safetensors(path, tensors, metadata)
        got, got_metadata = read_safetensors(path)
    assert_same_tensors(got, tensors)
    assert got_metadata == (metadata or {})


def test_header_is_padded_to_multiple_of_8_and_tensors_are_aligned(tmp_path):
    tensors = {"b": np.arange(3, dtype=np.int8), "a": np.ones((2, 2), np.float64),
               "c": np.zeros(5, np.float16), "d": np.zeros(3, np.float32)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, {"format": "pt"})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0
    header = json.loads(blob[8:8 + n])
    for name, info in header.items():
        if name != "__metadata__":
            assert info["data_offsets"][0] % tensors[name].itemsize == 0, name


def test_non_contiguous_and_big_endian_input_is_written_row_major_little_endian(tmp_path):
    source = np.arange(6, dtype=">f4").reshape(2, 3).T  # transposed view, big-endian
    write_safetensors(tmp_path / "t.safetensors", {"x": source})
    got, _ = read_safetensors(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(got["x"], source)
    assert got["x"].dtype == np.dtype("float32") and got["x"].dtype.isnative


def test_returned_arrays_are_independent_writable_copies(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": np.arange(4, dtype=np.float32)})
    got, _ = read_safetensors(path)
    path.write_bytes(b"overwritten")  # the file is gone; the array must not care
    got["x"][0] = 42.0
    assert got["x"].flags.writeable
    np.testing.assert_array_equal(got["x"], [42.0, 1.0, 2.0, 3.0])


def test_bf16_is_read_by_widening_to_float32(tmp_path):
    # These values have all-zero low 16 bits, so bfloat16 holds them exactly.
    values = np.array([1.0, -2.5, 0.0, np.inf, 3.0e38], dtype=np.float32)
    values = (values.view(np.uint32) & 0xFFFF0000).view(np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    raw_file(tmp_path / "t.safetensors", {"w": f32(0, 10, (5,), "BF16")}, bits.tobytes())
    got, _ = read_safetensors(tmp_path / "t.safetensors")
    assert got["w"].dtype == np.float32
    assert got["w"].tobytes() == values.tobytes()


def test_empty_file_with_only_metadata(tmp_path):
    write_safetensors(tmp_path / "t.safetensors", {}, {"format": "pt"})
    assert read_safetensors(tmp_path / "t.safetensors") == ({}, {"format": "pt"})


# ----------------------------------------------------------------------------- the reference package


@settings(max_examples=30, deadline=None)
@given(tensors=tensor_dicts())
def test_agrees_with_reference_both_ways(tensors):
    ref = pytest.importorskip("safetensors.numpy")
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp) / "ours.safetensors", Path(tmp) / "theirs.safetensors"
        write_safetensors(ours, tensors, {"format": "pt"})
        ref.save_file(tensors, str(theirs), metadata={"format": "pt"})
        assert_same_tensors(ref.load_file(str(ours)), tensors)
        got, metadata = read_safetensors(theirs)
        assert_same_tensors(got, tensors)
        assert metadata == {"format": "pt"}


def test_reference_writer_is_deterministic():
    ref = pytest.importorskip("safetensors.numpy")
    tensors = {"b": np.arange(3, dtype=np.int8), "a": np.ones((2, 2), np.float32)}
    assert ref.save(tensors, metadata={"format": "pt"}) == ref.save(tensors, metadata={"format": "pt"})


@settings(max_examples=30, deadline=None)
@given(tensors=tensor_dicts(max_tensors=6),
       metadata=st.sampled_from([None, {}, {"format": "pt"}, {"é": "ü\x01/\"\\"}]))
def test_byte_identical_to_reference_writer(tensors, metadata):
    # At most one metadata entry: the reference keeps metadata in a hash map, so with
    # several entries even two runs of the reference may order them differently.
    ref = pytest.importorskip("safetensors.numpy")
    # safetensors 0.8 writes `{},"__metadata__":{}}` (not JSON) for no tensors and empty
    # metadata; that is a bug in the reference, not something to copy.
    assume(tensors or metadata != {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ours.safetensors"
        write_safetensors(path, tensors, metadata)
        assert path.read_bytes() == ref.save(tensors, metadata=metadata)


# ----------------------------------------------------------------------------- corrupt files

GOOD = {"a": f32(0, 4), "b": f32(4, 12, (2,))}
GOOD_DATA = b"\0" * 12

# (id, header, data, words the error message must contain). Each case is also checked
# against the reference reader, which must reject it too (unless marked stricter).
CORRUPT = [
    ("header-not-json", b"{abc", b"", "not valid JSON"),
    ("header-not-utf8", b'{"\xff":1}', b"", "UTF-8"),
    ("header-is-a-list", b"[1, 2]", b"", "JSON object"),
    ("entry-not-object", {"a": 3}, b"", "entry must be an object"),
    ("missing-offsets", {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets"),
    ("unknown-dtype", {"a": f32(0, 4, (1,), "X32")}, b"\0" * 4, "unsupported dtype"),
    ("shape-negative", {"a": f32(0, 4, (-1,))}, b"\0" * 4, "shape"),
    ("shape-float", {"a": f32(0, 4, (1.0,))}, b"\0" * 4, "shape"),
    ("shape-bool", {"a": f32(0, 4, (True,))}, b"\0" * 4, "shape"),
    ("shape-not-list", {"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
    ("offsets-three", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]}}, b"\0" * 4, "[begin, end]"),
    ("offsets-negative", {"a": f32(-4, 0)}, b"\0" * 4, "[begin, end]"),
    ("offsets-reversed", {"a": f32(4, 0)}, b"\0" * 4, "begin <= end"),
    ("size-mismatch", {"a": f32(0, 8)}, b"\0" * 8, "needs 4 bytes"),
    ("shape-overflow", {"a": f32(0, 4, (2**62, 4))}, b"\0" * 4, "needs"),
    ("out-of-range", {"a": f32(0, 4)}, b"\0" * 2, "cover 4 bytes"),
    ("hole-at-start", {"a": f32(4, 8)}, b"\0" * 8, "hole"),
    ("hole-in-middle", {"a": f32(0, 4), "b": f32(8, 12)}, b"\0" * 12, "hole"),
    ("overlap", {"a": f32(0, 4), "b": f32(2, 6, (1,), "F32")}, b"\0" * 6, "overlaps"),
    ("same-offsets", {"a": f32(0, 4), "b": f32(0, 4)}, b"\0" * 4, "overlaps"),
    ("trailing-bytes", {"a": f32(0, 4)}, b"\0" * 8, "cover 4 bytes"),
    ("metadata-int", {"__metadata__": {"k": 1}, **GOOD}, GOOD_DATA, "__metadata__['k']"),
    ("metadata-list", {"__metadata__": ["pt"], **GOOD}, GOOD_DATA, "__metadata__"),
]
STRICTER_THAN_REFERENCE = [
    ("duplicate-name", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                       b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, "twice"),
    ("bool-byte-2", {"a": f32(0, 2, (2,), "BOOL")}, b"\x01\x02", "only 0 or 1"),
]


@pytest.mark.parametrize("header,data,words", [c[1:] for c in CORRUPT + STRICTER_THAN_REFERENCE],
                         ids=[c[0] for c in CORRUPT + STRICTER_THAN_REFERENCE])
def test_corrupt_header_raises(tmp_path, header, data, words):
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=None) as info:
        read_safetensors(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)  # the error says which file


@pytest.mark.parametrize("header,data", [c[1:3] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_reference_rejects_the_same_files(tmp_path, header, data):
    ref = pytest.importorskip("safetensors.numpy")
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(Exception):
        ref.load_file(str(path))


def test_good_handmade_file_is_accepted(tmp_path):
    # Sanity check for the corrupt cases above: the same builder makes a valid file.
    got, metadata = read_safetensors(raw_file(tmp_path / "ok.safetensors", GOOD, GOOD_DATA))
    assert sorted(got) == ["a", "b"] and metadata == {}


def test_zero_size_tensors_may_share_an_offset(tmp_path):
    header = {"e1": f32(0, 0, (0,)), "e2": f32(0, 0, (0, 3)), "a": f32(0, 4), "e3": f32(4, 4, (0,))}
    got, _ = read_safetensors(raw_file(tmp_path / "ok.safetensors", header, b"\0" * 4))
    assert got["e2"].shape == (0, 3)


def test_file_shorter_than_8_bytes(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1\0\0")
    with pytest.raises(SafetensorsError, match="at least 8"):
        read_safetensors(path)


def test_header_length_past_end_of_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(SafetensorsError, match="past the end"):
        read_safetensors(path)


def test_absurd_header_length(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(SafetensorsError, match=f"exceeds the limit {MAX_HEADER_BYTES:,}"):
        read_safetensors(path)


def test_edited_bytes_of_a_real_file_are_caught(tmp_path):
    """Corrupt a file our writer produced by overwriting bytes inside its header."""
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)})
    blob = path.read_bytes()
    edits = {
        b'"shape":[2]': b'"shape":[3]',               # size no longer matches offsets
        b'"dtype":"F32"': b'"dtype":"F31"',           # unknown dtype
        b'"data_offsets":[8,20]': b'"data_offsets":[9,20]',  # hole + size mismatch
    }
    for old, new in edits.items():
        assert old in blob, old
        path.write_bytes(blob.replace(old, new, 1))
        with pytest.raises(SafetensorsError):
            read_safetensors(path)


def test_every_truncation_raises_and_never_hangs(tmp_path):
    source = tmp_path / "t.safetensors"
    write_safetensors(source, {"a": np.arange(5, dtype=np.float32), "b": np.ones((2, 2), np.int16)},
                      {"format": "pt"})
    blob = source.read_bytes()
    path = tmp_path / "cut.safetensors"
    for size in range(len(blob)):
        path.write_bytes(blob[:size])
        with pytest.raises(SafetensorsError):
            read_safetensors(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------- writer errors


@pytest.mark.parametrize("tensors,words", [
    ({"a": [1.0, 2.0]}, "must be a np.ndarray, got list"),
    ({"a": np.zeros(2, np.complex64)}, "has dtype complex64"),
    ({"a": np.array(["x"], dtype=object)}, "has dtype object"),
    ({"__metadata__": np.zeros(1, np.float32)}, "reserved"),
    ({1: np.zeros(1, np.float32)}, "names must be str"),
], ids=["list", "complex", "object", "reserved-name", "int-name"])
def test_writer_rejects_bad_tensors(tmp_path, tensors, words):
    path = tmp_path / "t.safetensors"
    with pytest.raises(SafetensorsError) as info:
        write_safetensors(path, tensors)
    assert words in str(info.value)
    assert not path.exists()  # validated before the file was opened


def test_writer_rejects_non_string_metadata(tmp_path):
    with pytest.raises(SafetensorsError, match="str -> str"):
        write_safetensors(tmp_path / "t.safetensors", {}, {"format": 1})
