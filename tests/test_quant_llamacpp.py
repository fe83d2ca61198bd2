"""Our blocks and products against llama.cpp's own C code (the ggml libraries llama-cpp-python ships).

Three things, through ctypes (no model file needed):
- weights: QTensor bytes equal ggml_quantize_chunk's for every format, on awkward shapes, without
  and with an imatrix (the importance-weighted scale searches of q4_0, q4_1, q5_0, q5_1, iq4_nl);
- activations: our Q8_0 / Q8_1 blocks equal the CPU backend's quantize_row_q8_0 / q8_1 (the SIMD
  code llama.cpp runs on this machine, not the _ref one);
- products: a decode row equals the CPU backend's vec_dot bit for bit for q8_0, q4_0, q4_1, q5_0
  and q5_1 (same lanes, same fused multiply-adds, same horizontal sum); iq4_nl within float32
  rounding (ggml adds its blocks in two interleaved accumulators there).
Skips when llama-cpp-python is not installed (pip install llama-cpp-python).
"""
import ctypes
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.quant import quantize
from tinyinfer.quant.blocks import BLOCK, BLOCK_DTYPES, quantize_activations, quantize_iq4_nl

llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python")
LIB = Path(llama_cpp.__file__).parent / "lib"
GGML_TYPE = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20}  # ggml.h: enum ggml_type
Q8_1 = np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", (BLOCK,))])


def _load(name):
    path = LIB / name
    if not path.exists():
        pytest.skip(f"{path} not found in this llama-cpp-python build")
    return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)


@pytest.fixture(scope="module")
def ggml():
    base, cpu = _load("libggml-base.so"), _load("libggml-cpu.so")
    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    cpu.ggml_cpu_init()
    for name in ("quantize_row_q8_0", "quantize_row_q8_1"):
        getattr(cpu, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return base, cpu


def ggml_quantize(base, w, fmt, importance=None):
    N, K = w.shape
    w = np.ascontiguousarray(w, np.float32)
    out = np.zeros(N * (K // BLOCK) * BLOCK_DTYPES[fmt].itemsize, np.uint8)
    imatrix = None if importance is None else np.ascontiguousarray(importance, np.float32)
    base.ggml_quantize_chunk(GGML_TYPE[fmt], w.ctypes.data, out.ctypes.data, 0, N, K,
                             None if imatrix is None else imatrix.ctypes.data)
    return out


@st.composite
def matrices(draw):
    N = draw(st.sampled_from([1, 2, 3, 7]))
    K = BLOCK * draw(st.sampled_from([1, 3, 18]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.standard_normal((N, K)) * draw(st.sampled_from([1e-6, 1e-2, 1.0, 500.0]))
    kind = draw(st.sampled_from(["plain", "zero block", "constant block", "ties", "grid"]))
    if kind == "zero block":
        w[rng.integers(N), :BLOCK] = 0
    elif kind == "constant block":
        w[0, :BLOCK] = w[0, 0]
    elif kind == "ties":
        w[0, 3], w[0, 9] = 7.0, -7.0
    elif kind == "grid":
        w = np.round(w * 4) / 4
    return w.astype(np.float32)


@pytest.mark.parametrize("fmt", list(GGML_TYPE))
@settings(max_examples=25, deadline=None)
@given(w=matrices())
def test_bytes_equal_ggml_quantize_chunk(ggml, fmt, w):
    assert np.array_equal(quantize(w, fmt).to_bytes(), ggml_quantize(ggml[0], w, fmt))


@settings(max_examples=15, deadline=None)
@given(w=matrices(), seed=st.integers(0, 2**31))
def test_iq4_nl_with_importance_equals_ggml(ggml, w, seed):
    column_weights = np.random.default_rng(seed).uniform(0.01, 10, w.shape[1]).astype(np.float32)  # an imatrix row
    ours = quantize_iq4_nl(w, importance=np.broadcast_to(column_weights, w.shape))
    structs = np.empty(ours["d"].shape, BLOCK_DTYPES["iq4_nl"])
    structs["d"], structs["qs"] = ours["d"], ours["qs"]
    assert np.array_equal(structs.reshape(-1).view(np.uint8), ggml_quantize(ggml[0], w, "iq4_nl", column_weights))


@pytest.mark.parametrize("fmt", list(GGML_TYPE))
@settings(max_examples=20, deadline=None)
@given(w=matrices(), seed=st.integers(0, 2**31), spread=st.sampled_from([1.0, 1e3]))
def test_bytes_with_an_imatrix_equal_ggml_quantize_chunk(ggml, fmt, w, seed, spread):
    # llama-quantize --imatrix: ggml_quantize_chunk with one weight per column (q4_0, q4_1, q5_0, q5_1
    # and iq4_nl search their scales with it; q8_0 ignores it)
    imatrix = (np.random.default_rng(seed).uniform(0.01, 1, w.shape[1]) * spread).astype(np.float32)
    assert np.array_equal(quantize(w, fmt, importance=imatrix).to_bytes(), ggml_quantize(ggml[0], w, fmt, imatrix))


@settings(max_examples=25, deadline=None)
@given(w=matrices())
def test_activation_blocks_equal_the_cpu_backend(ggml, w):
    cpu = ggml[1]
    xq, xd, xs = quantize_activations(w)
    NB = w.shape[1] // BLOCK
    for b in range(w.shape[0]):
        row = np.ascontiguousarray(w[b])
        q8_0 = np.zeros(NB, BLOCK_DTYPES["q8_0"])
        cpu.quantize_row_q8_0(row.ctypes.data, q8_0.ctypes.data, w.shape[1])
        q8_1 = np.zeros(NB, Q8_1)
        cpu.quantize_row_q8_1(row.ctypes.data, q8_1.ctypes.data, w.shape[1])
        assert np.array_equal(q8_0["qs"], xq[b]) and np.array_equal(q8_0["d"].astype(np.float32), xd[b])
        assert np.array_equal(q8_1["qs"], xq[b]) and np.array_equal(q8_1["d"].astype(np.float32), xd[b])
        assert np.array_equal(q8_1["s"].astype(np.float32), xs[b])


class _CpuTraits(ctypes.Structure):  # ggml-cpu.h: struct ggml_type_traits_cpu
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


_VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                            ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@pytest.mark.parametrize("fmt", list(GGML_TYPE))
def test_decode_rows_equal_ggml_vec_dot(ggml, fmt):
    simd = pytest.importorskip("tinyinfer.quant.simd")
    # bit equality holds for the 8-lane AVX2 kernels, whose lanes are those of ggml's AVX2 vec_dot;
    # with AVX-512 tinyinfer's lanes differ (16 lanes, or two blocks a vector with VNNI), so the
    # sums round differently and only agree to float32 rounding
    exact = simd.AVX2 and simd.LANES == 8 and fmt != "iq4_nl"
    cpu = ggml[1]
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_CpuTraits)
    traits = cpu.ggml_get_type_traits_cpu(GGML_TYPE[fmt]).contents
    vec_dot, x_type = _VEC_DOT(traits.vec_dot), traits.vec_dot_type
    from_float = _FROM_FLOAT(cpu.ggml_get_type_traits_cpu(x_type).contents.from_float)
    rng = np.random.default_rng(3)
    K = 576  # SmolLM2-135M's width
    qt = quantize((rng.standard_normal((9, K)) * 0.05).astype(np.float32), fmt)
    rows = qt.to_bytes().reshape(9, -1)
    x = (rng.standard_normal(K) * rng.uniform(0.01, 30, K)).astype(np.float32)
    x_blocks = np.zeros((K // BLOCK) * (34 if x_type == GGML_TYPE["q8_0"] else 36), np.uint8)
    from_float(x.ctypes.data, x_blocks.ctypes.data, K)
    theirs = np.zeros(9, np.float32)
    for n in range(9):
        s = ctypes.c_float()
        vec_dot(K, ctypes.byref(s), 0, rows[n].ctypes.data, 0, x_blocks.ctypes.data, 0, 1)
        theirs[n] = s.value
    ours = qt.matmul(x)
    if exact:
        assert np.array_equal(ours, theirs)
    else:  # iq4_nl: ggml's loop keeps two accumulators (even and odd blocks); or AVX-512's lanes
        assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-6 * np.abs(theirs).max())
