"""tinyinfer/gguf.py: the GGUF container, checked against the independent `gguf` package (gguf-py,
llama.cpp's own Python reader), and its reader against broken files.

The model mapping (LLaMA names, RoPE order, tokenizer) is tests/test_export.py.
"""
import re
import struct

import gguf
import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinyinfer.gguf import (TENSOR_BLOCKS, GGUFError, GGUFTensor, TensorType, ValueType, parse_gguf,
                            read_gguf, tensor_nbytes, write_gguf)
from tinyinfer.quant import quantize

RNG = np.random.default_rng(0)
W = RNG.standard_normal((3, 64)).astype(np.float32)  # (N, K): K a multiple of 32 for the block types

METADATA = {
    "general.architecture": "llama",
    "general.name": "tést ✓",  # UTF-8
    "some.u32": 7,
    "some.f32": 0.25,
    "some.bool": True,
    "some.false": False,
    "some.strings": ["a", "", "Ġthe", "<|endoftext|>"],
    "some.i32s": np.array([1, -3, 5], dtype=np.int32),
    "some.f32s": np.array([0.5, -1.5], dtype=np.float32),
    "some.u64": (ValueType.UINT64, 2**40 + 3),
    "some.i8": (ValueType.INT8, -5),
    "some.f64": (ValueType.FLOAT64, 1e-300),
}


def tensors():
    q8, q4 = quantize(W, "q8_0"), quantize(W, "q4_0")
    return [
        GGUFTensor.from_array("vec", np.arange(5, dtype=np.float32)),  # 20 bytes: the next one needs padding
        GGUFTensor.from_array("mat16", W, TensorType.F16),
        GGUFTensor("q8", TensorType.Q8_0, q8.shape, q8.to_bytes()),
        GGUFTensor("q4", TensorType.Q4_0, q4.shape, q4.to_bytes()),
        GGUFTensor.from_array("cube", np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
    ]


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "t.gguf"
    size = write_gguf(path, METADATA, tensors())
    assert size == path.stat().st_size
    return path


# --------------------------------------------------------------------------------------------
# what we write, read by gguf-py


def test_gguf_py_reads_every_key_with_its_type(written):
    reader = gguf.GGUFReader(written)
    assert reader.fields["GGUF.version"].contents() == 3
    assert reader.fields["GGUF.kv_count"].contents() == len(METADATA)
    expected_types = {
        "general.architecture": [gguf.GGUFValueType.STRING], "some.u32": [gguf.GGUFValueType.UINT32],
        "some.f32": [gguf.GGUFValueType.FLOAT32], "some.bool": [gguf.GGUFValueType.BOOL],
        "some.strings": [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING],
        "some.i32s": [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32],
        "some.f32s": [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32],
        "some.u64": [gguf.GGUFValueType.UINT64], "some.i8": [gguf.GGUFValueType.INT8],
        "some.f64": [gguf.GGUFValueType.FLOAT64],
    }
    for key, types in expected_types.items():
        assert reader.fields[key].types == types, key
    assert reader.fields["general.name"].contents() == "tést ✓"
    assert reader.fields["some.u32"].contents() == 7
    assert reader.fields["some.f32"].contents() == 0.25
    assert reader.fields["some.bool"].contents() is True and reader.fields["some.false"].contents() is False
    assert reader.fields["some.strings"].contents() == METADATA["some.strings"]
    assert reader.fields["some.i32s"].contents() == [1, -3, 5]
    assert reader.fields["some.f32s"].contents() == [0.5, -1.5]
    assert reader.fields["some.u64"].contents() == 2**40 + 3
    assert reader.fields["some.i8"].contents() == -5
    assert reader.fields["some.f64"].contents() == 1e-300


def test_gguf_py_reads_every_tensor_byte_for_byte(written):
    reader = gguf.GGUFReader(written)
    ours = {t.name: t for t in tensors()}
    assert [t.name for t in reader.tensors] == list(ours)
    for t in reader.tensors:
        mine = ours[t.name]
        assert int(t.tensor_type) == int(mine.type), t.name
        assert tuple(int(n) for n in t.shape) == tuple(reversed(mine.shape)), t.name  # ggml's ne order
        assert np.asarray(t.data).tobytes() == np.asarray(mine.data).tobytes(), t.name
        assert t.data_offset % 32 == 0, t.name
    # gguf-py's own dequantizers agree with QTensor's: the blocks are ggml's, not look-alikes
    for name, fmt in (("q8", "q8_0"), ("q4", "q4_0")):
        t = next(t for t in reader.tensors if t.name == name)
        np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type), quantize(W, fmt).dequantize())
    mat16 = next(t for t in reader.tensors if t.name == "mat16")
    np.testing.assert_array_equal(np.asarray(mat16.data), W.astype(np.float16))


def test_block_table_matches_gguf_py():
    for tensor_type, (per_block, block_bytes) in TENSOR_BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(tensor_type))] == (per_block, block_bytes)


def test_our_reader_reads_what_gguf_py_writes(tmp_path):
    path = tmp_path / "theirs.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 3)
    writer.add_float32("llama.rope.freq_base", 500.0)
    writer.add_array("tokenizer.ggml.tokens", ["x", "yz"])
    writer.add_bool("flag", True)
    q4 = quantize(W, "q4_0")
    writer.add_tensor("w", W)
    writer.add_tensor("q", q4.to_bytes().reshape(3, -1), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    f = read_gguf(path)
    assert f.version == 3 and f.metadata["general.architecture"] == "llama"
    assert f.metadata["llama.block_count"] == 3 and f.value_types["llama.block_count"] == ValueType.UINT32
    assert f.metadata["llama.rope.freq_base"] == 500.0
    assert f.metadata["tokenizer.ggml.tokens"] == ["x", "yz"] and f.metadata["flag"] is True
    np.testing.assert_array_equal(f.tensor_array("w"), W)
    assert f.tensors["q"].type == TensorType.Q4_0 and f.tensors["q"].shape == (3, 64)
    assert f.tensor_bytes("q").tobytes() == q4.to_bytes().tobytes()


def test_round_trip_through_our_reader(written):
    f = read_gguf(written)
    assert f.alignment == 32 and f.data_start % 32 == 0
    for key, value in METADATA.items():
        value = value[1] if isinstance(value, tuple) else value
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(f.metadata[key], value)
        else:
            assert f.metadata[key] == value, key
    assert f.value_types["some.i32s"] == (ValueType.ARRAY, ValueType.INT32)
    for t in tensors():
        assert f.tensors[t.name].shape == t.shape and f.tensors[t.name].type == t.type
        assert f.tensor_bytes(t.name).tobytes() == np.asarray(t.data).tobytes()
    np.testing.assert_array_equal(f.tensor_array("cube"), np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    with pytest.raises(GGUFError, match="not a plain array type"):
        f.tensor_array("q8")
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        f.tensor_bytes("nope")


def test_other_alignment_is_recorded_and_honoured(tmp_path):
    path = tmp_path / "a64.gguf"
    write_gguf(path, {"x": 1}, tensors(), alignment=64)
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.alignment"].contents() == 64
    assert all(t.data_offset % 64 == 0 for t in reader.tensors)
    f = read_gguf(path)
    assert f.alignment == 64 and f.tensor_bytes("q4").tobytes() == tensors()[3].data.tobytes()


# --------------------------------------------------------------------------------------------
# writer errors


@pytest.mark.parametrize("metadata, tensor_list, words", [
    ({"k": -1}, [], "does not fit UINT32"),
    ({"k": object()}, [], "cannot store a object"),
    ({"k": [1, 2]}, [], "cannot store a list"),
    ({}, [GGUFTensor("a", TensorType.F32, (2,), b"\0" * 4)], "4 bytes given"),
    ({}, [GGUFTensor("a", TensorType.Q8_0, (2, 33), b"")], "whole blocks of 32"),
    ({}, [GGUFTensor.from_array("a", np.ones(2)), GGUFTensor.from_array("a", np.ones(2))], "unique"),
    ({}, [GGUFTensor("a", TensorType.F32, (1, 1, 1, 1, 1), b"\0" * 4)], "at most 4"),
])
def test_writer_refuses_bad_input(tmp_path, metadata, tensor_list, words):
    with pytest.raises(GGUFError, match=re.escape(words)):
        write_gguf(tmp_path / "bad.gguf", metadata, tensor_list)


def test_from_array_refuses_float16_overflow_and_quant_types():
    with pytest.raises(GGUFError, match="NaN/Inf"):
        GGUFTensor.from_array("big", np.array([1e6], dtype=np.float32), TensorType.F16)
    with pytest.raises(GGUFError, match="F32 or F16"):
        GGUFTensor.from_array("q", W, TensorType.Q8_0)


def test_tensor_nbytes():
    assert tensor_nbytes(TensorType.Q8_0, (3, 64)) == 3 * 2 * 34
    assert tensor_nbytes(TensorType.Q4_0, (64,)) == 2 * 18
    assert tensor_nbytes(TensorType.F16, (2, 3, 4)) == 48


# --------------------------------------------------------------------------------------------
# reader errors: every broken file gets a GGUFError that says where and what


def _header(version=3, n_tensors=0, n_kv=0):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


@pytest.mark.parametrize("data, words", [
    (b"", "ends at 0"),
    (b"GGML" + bytes(20), "not a GGUF file"),
    (_header(version=1), "version 1 is not supported"),
    (_header(version=4), "version 4"),
    (_header(n_kv=2**60), "key/value count is 1,152,921,504,606,846,976, which exceeds the limit"),
    (_header(n_tensors=10**12), "tensor count is 1,000,000,000,000, which exceeds the limit"),
    (_header(n_kv=1000), "1,000 key/values"),  # within the limit, but not within the file
    (_header(n_tensors=1000), "1,000 tensor infos"),
    (_header(n_kv=1) + _string(b"k") + struct.pack("<I", 13) + bytes(8), "known value types"),
    (_header(n_kv=1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2**50), "length of the value of 'k' is"),
    (_header(n_kv=1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2**18), "262,144 x STRING"),
    (_header(n_kv=1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2) + _string(b"a") + struct.pack("<Q", 2**40),
     "length of the value of 'k'[1] is 1,099,511,627,776, which exceeds the limit"),
    (_header(n_kv=1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2) + _string(b"a") + struct.pack("<Q", 99),
     "the value of 'k'[1] needs 99 bytes"),
    (_header(n_kv=1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2) + _string(b"a") + _string(b"\xff"),
     "the value of 'k'[1] at offset 66 is not UTF-8"),
    (_header(n_kv=1) + _string(b"k") + struct.pack("<IIQ", 9, 7, 2) + b"\x01\x03", "bool with byte value 3"),
    (_header(n_kv=1) + struct.pack("<Q", 2**62) + b"k" * 20, "key #0"),
    (_header(n_kv=1) + struct.pack("<Q", 2**20) + b"k" * 20, "key #0 needs 1,048,576 bytes"),
    (_header(n_kv=1) + _string(b"\xff\xfe") + struct.pack("<I", 4) + bytes(4), "not UTF-8"),
    (_header(n_kv=1) + _string(b"b") + struct.pack("<I", 7) + b"\x05" + bytes(11), "0 or 1"),
    (_header(n_kv=2) + (_string(b"k") + struct.pack("<II", 4, 1)) * 2, "appears twice"),
    (_header(n_kv=1) + _string(b"general.alignment") + struct.pack("<II", 4, 48) + bytes(12), "power of two"),
    (_header(n_tensors=1) + _string(b"t") + struct.pack("<IQIQ", 1, 4, 99, 0) + bytes(32), "ggml type 99"),
    (_header(n_tensors=1) + _string(b"t") + struct.pack("<IQIQ", 5, 4, 0, 0) + bytes(32), "5 dimensions"),
    (_header(n_tensors=1) + _string(b"t") + struct.pack("<IQIQ", 1, 4, 0, 8) + bytes(32), "multiple of the alignment"),
    (_header(n_tensors=1) + _string(b"t") + struct.pack("<IQIQ", 1, 0, 0, 0) + bytes(32), "each must be in"),
    (_header(n_tensors=1) + _string(b"t") + struct.pack("<IQIQ", 1, 64, 0, 0) + bytes(16), "file ends"),
    (_header(n_tensors=1) + _string(b"t") + struct.pack("<IQIQ", 1, 33, 8, 0) + bytes(64), "whole blocks"),
    (_header(n_tensors=2) + (_string(b"t") + struct.pack("<IQIQ", 1, 2, 0, 0)) * 2 + bytes(64), "appears twice"),
    (_header(n_tensors=2) + _string(b"a") + struct.pack("<IQIQ", 1, 16, 0, 0)
     + _string(b"b") + struct.pack("<IQIQ", 1, 16, 0, 32) + bytes(128), "overlap"),
])
def test_reader_refuses_broken_files(data, words):
    with pytest.raises(GGUFError, match=re.escape(words)):
        parse_gguf(data)


def test_read_gguf_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        read_gguf(tmp_path / "nope.gguf")


def test_every_truncation_is_a_clear_error(written):
    data = written.read_bytes()
    f = read_gguf(written)
    last_tensor_end = max(t.offset + t.nbytes for t in f.tensors.values())
    for cut in range(0, last_tensor_end, 7):
        with pytest.raises(GGUFError):
            parse_gguf(data[:cut])


@given(st.data())
def test_corrupted_bytes_never_crash_outside_gguf_error(written_bytes, data):
    """Flip a few bytes anywhere before the tensor data: the reader returns or raises GGUFError."""
    buf = bytearray(written_bytes)
    header_end = read_gguf_header_end(written_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, header_end - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    try:
        parse_gguf(bytes(buf))
    except GGUFError:
        pass


@pytest.fixture(scope="module")
def written_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "t.gguf"
    write_gguf(path, METADATA, tensors())
    return path.read_bytes()


def read_gguf_header_end(data: bytes) -> int:
    return parse_gguf(data).data_start


def test_loaded_nbytes_counts_blocks_as_stored_and_plain_tensors_in_the_load_dtype(tmp_path):
    path = tmp_path / "m.gguf"
    q8 = GGUFTensor("q", TensorType.Q8_0, (3, 64), bytes(tensor_nbytes(TensorType.Q8_0, (3, 64))))
    write_gguf(path, {}, [q8, GGUFTensor.from_array("h", np.ones((2, 5)), TensorType.F16)])
    f = read_gguf(path)
    assert f.loaded_nbytes() == 3 * 2 * 34 + 10 * 4
    assert f.loaded_nbytes("float64") == 3 * 2 * 34 + 10 * 8
