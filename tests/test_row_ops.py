"""row_ops: the Numba row kernels of InferenceModel against their NumPy twins in ops.py, on
awkward shapes (one row, odd widths), and row by row the same bits whatever the batch."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from tinyinfer import ops, row_ops


@settings(deadline=None, max_examples=40)
@given(R=st.integers(1, 9), C=st.integers(1, 97), dtype=st.sampled_from([np.float32, np.float64]),
       scale=st.sampled_from([1e-3, 1.0, 300.0]), seed=st.integers(0, 2**16))
def test_rmsnorm_rows_matches_ops(R, C, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((R, C)) * scale).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    got = row_ops.rmsnorm_rows(x, w, 1e-5)
    want = ops.rmsnorm_forward(x, w, 1e-5)[0]
    assert got.dtype == x.dtype and got.shape == x.shape
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(w).max())


@settings(deadline=None, max_examples=40)
@given(B=st.integers(1, 3), T=st.integers(1, 5), heads=st.integers(1, 4), D=st.sampled_from([2, 6, 64]),
       extra=st.integers(0, 7), seed=st.integers(0, 2**16))
def test_rope_heads_matches_ops(B, T, heads, D, extra, seed):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B * T, heads * D + extra)).astype(np.float32)
    cos, sin = ops.rope_tables(D, rng.integers(0, 5000, T), 1e5, np.float32)
    want = ops.rope_forward(qkv[:, :heads * D].reshape(B, T, heads, D).transpose(0, 2, 1, 3), cos, sin)[0]
    got = qkv.copy()
    row_ops.rope_heads(got, cos, sin, T, heads, D)
    np.testing.assert_allclose(got[:, :heads * D].reshape(B, T, heads, D).transpose(0, 2, 1, 3), want,
                               rtol=1e-6, atol=1e-6)
    assert np.array_equal(got[:, heads * D:], qkv[:, heads * D:])  # columns past the heads untouched


@settings(deadline=None, max_examples=40)
@given(R=st.integers(1, 9), F=st.integers(1, 77), seed=st.integers(0, 2**16))
def test_swiglu_rows_matches_ops(R, F, seed):
    rng = np.random.default_rng(seed)
    gate_up = (rng.standard_normal((R, 2 * F)) * 4).astype(np.float32)
    got = row_ops.swiglu_rows(gate_up)
    want = ops.swiglu_forward(gate_up[:, :F], gate_up[:, F:])[0]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


@settings(deadline=None, max_examples=30)
@given(R=st.integers(1, 9), F=st.integers(1, 77), seed=st.integers(0, 2**16))
def test_swiglu_parallel_is_the_same_bits(R, F, seed):
    gate_up = (np.random.default_rng(seed).standard_normal((R, 2 * F)) * 4).astype(np.float32)
    serial, parallel = np.empty((R, F), np.float32), np.empty((R, F), np.float32)
    row_ops._swiglu(gate_up, serial)
    row_ops._swiglu_parallel(gate_up, parallel)
    assert np.array_equal(serial, parallel)


def test_extreme_gate_values_stay_finite():
    gate_up = np.array([[-1000.0, 1000.0, 0.0, 3.0, 2.0, 5.0]], np.float32)
    got = row_ops.swiglu_rows(gate_up)
    assert np.all(np.isfinite(got)) and got[0, 0] == 0.0 and got[0, 1] == np.float32(1000.0 * 2.0)


@settings(deadline=None, max_examples=20)
@given(n=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_a_row_is_the_same_bits_alone_and_in_a_batch(n, seed):
    rng = np.random.default_rng(seed)
    C, D, heads = 24, 8, 3
    x = rng.standard_normal((n, C)).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    cos, sin = ops.rope_tables(D, np.array([17]), 1e4, np.float32)
    whole_norm = row_ops.rmsnorm_rows(x, w, 1e-5)
    whole_gate = row_ops.swiglu_rows(x)
    whole_rope = x.copy()
    row_ops.rope_heads(whole_rope, cos, sin, 1, heads, D)  # T = 1: every row at the same position
    for r in range(n):
        one = x[r:r + 1].copy()
        assert np.array_equal(row_ops.rmsnorm_rows(one, w, 1e-5), whole_norm[r:r + 1])
        assert np.array_equal(row_ops.swiglu_rows(one), whole_gate[r:r + 1])
        row_ops.rope_heads(one, cos, sin, 1, heads, D)
        assert np.array_equal(one, whole_rope[r:r + 1])


EXP32_REL = 4e-7  # measured: at most 3.0e-7 relative (4.5 float32 ulp) over 20M random points in [-87, 88]


@settings(deadline=None, max_examples=60)
@given(x=st.floats(-87.0, 88.0, width=32))
def test_exp32_is_close_to_numpy(x):
    x = np.float32(x)
    got = np.float64(row_ops.exp32(x))
    want = np.exp(np.float64(x))
    assert abs(got - want) <= EXP32_REL * want


def test_exp32_edges_and_a_vectorized_loop():
    assert np.isnan(row_ops.exp32(np.float32(np.nan)))
    assert row_ops.exp32(np.float32(89.0)) == np.inf and row_ops.exp32(np.float32(np.inf)) == np.inf
    assert 0 < row_ops.exp32(np.float32(-1000.0)) < 2e-38  # held at exp(-87): no denormal scaling
    assert row_ops.exp32(np.float32(0.0)) == 1.0
    # inside a loop (where LLVM vectorizes it) and inside a fastmath kernel, the same values
    x = np.linspace(-87, 88, 100_003).astype(np.float32)
    got = np.empty_like(x)
    _exp_loop(x, got)
    want = np.exp(x.astype(np.float64))
    assert np.all(np.abs(got.astype(np.float64) - want) <= EXP32_REL * want)


@njit(fastmath=True)
def _exp_loop(x, out):
    for i in range(x.size):
        out[i] = row_ops.exp_of(x[i])
