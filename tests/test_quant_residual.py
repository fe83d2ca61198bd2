"""Two-pass activation rounding (tinyinfer/quant/residual.py): x's 8-bit blocks, then what they missed."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.model import head_product
from tinyinfer.quant import quantize
from tinyinfer.quant.blocks import FORMATS
from tinyinfer.quant.formats import BLOCK, quantize_activations
from tinyinfer.quant.residual import two_pass_matmul

pytest.importorskip("tinyinfer.quant.kernels")  # Numba


@st.composite
def problems(draw):
    """Awkward shapes: N = 1 and odd N, K = 32 (one block) or 32 * odd, B = 1 or odd; zero blocks."""
    N = draw(st.sampled_from([1, 2, 3, 7, 13]))
    K = BLOCK * draw(st.sampled_from([1, 2, 3, 5]))
    B = draw(st.sampled_from([1, 2, 3, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = (rng.standard_normal((B, K)) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    if draw(st.booleans()):
        x[:, :BLOCK] = 0
    return w, x


def second_pass_bound(qt, x):
    """|two-pass - x @ deq.T| bound: x = x1 + r exactly (x1 = Q8(x)); the second pass multiplies
    Q8(256 r) / 256 instead of r, so the error is sum_k |r - Q8(256 r) / 256| |deq| (elementwise,
    computed here from the blocks), plus s's float16 rounding for q4_1 / q5_1, plus float32 adds."""
    deq = qt.dequantize().astype(np.float64)
    xq, xd, _ = quantize_activations(x)
    r = (x - (xq.astype(np.float32) * xd[..., None]).reshape(x.shape)) * np.float32(256)
    rq, rd, _ = quantize_activations(r)
    missed = np.abs(r.astype(np.float64) - (rq.astype(np.float64) * rd[..., None]).reshape(x.shape)) / 256
    bound = missed @ np.abs(deq).T + 2e-5 * np.abs(x) @ np.abs(deq).T + 1e-30
    if qt.mins is not None:
        for q, d, scale in ((xq, xd, 1), (rq, rd, 256)):
            # the kernel's s = float16(d32 sum q) per block, against the d16 sum q the blocks stand
            # for: d32 and d16 differ by 2^-11 of d, or by up to 2^-25 where float16 is subnormal,
            # and rounding s to float16 adds the same again
            qsum = np.abs(q.astype(np.float64).sum(-1))  # (B, NB)
            off = 2 ** -10 * 1.01 * qsum * d + 2 ** -25 * (qsum + 1)
            bound += off / scale @ np.abs(qt._mins_f32.astype(np.float64)).T
    return bound


@pytest.mark.parametrize("fmt", list(FORMATS))
@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_within_the_second_pass_bound(fmt, problem):
    w, x = problem
    qt = quantize(w, fmt)
    exact = x.astype(np.float64) @ qt.dequantize().T.astype(np.float64)
    out = two_pass_matmul(qt, x)
    assert out.dtype == np.float32 and out.shape == exact.shape
    assert np.all(np.abs(out - exact) <= second_pass_bound(qt, x))


@pytest.mark.parametrize("fmt,gain", [("q8_0", 50), ("q4_0", 50), ("q4_1", 5)])
def test_two_passes_are_far_closer_than_one(fmt, gain):
    """The point of it: the activation error drops by up to ~254x (the residual is <= d / 2, rounded
    to 1/127 of that). For q4_1 the float16 block sums s (2^-11 of |s|, times the weights' minima)
    stay in both passes, which leaves ~10-15x."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 576)).astype(np.float32)
    x = rng.standard_normal((8, 576)).astype(np.float32)
    qt = quantize(w, fmt)
    exact = x.astype(np.float64) @ qt.dequantize().T.astype(np.float64)
    one = np.abs(qt.matmul(x) - exact).max()
    two = np.abs(two_pass_matmul(qt, x) - exact).max()
    assert two < one / gain, (one, two)


def test_rows_do_not_depend_on_the_batch():
    rng = np.random.default_rng(1)
    qt = quantize(rng.standard_normal((37, 96)).astype(np.float32), "q8_0")
    x = rng.standard_normal((9, 96)).astype(np.float32)
    batch = two_pass_matmul(qt, x)
    for b in range(len(x)):
        assert np.array_equal(two_pass_matmul(qt, x[b]), batch[b])


def test_agrees_with_the_numpy_twin(monkeypatch):
    rng = np.random.default_rng(2)
    qt = quantize(rng.standard_normal((11, 160)).astype(np.float32), "q4_1")
    x = rng.standard_normal((3, 160)).astype(np.float32)
    fast = two_pass_matmul(qt, x)
    monkeypatch.setenv("TINYINFER_REFERENCE", "1")
    twin = two_pass_matmul(qt, x)
    assert np.allclose(fast, twin, rtol=1e-5, atol=1e-5)


def test_shapes():
    rng = np.random.default_rng(3)
    qt = quantize(rng.standard_normal((5, 64)).astype(np.float32), "q4_0")
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    out = two_pass_matmul(qt, x)
    assert out.shape == (2, 3, 5) and np.array_equal(out.reshape(6, 5), two_pass_matmul(qt, x.reshape(6, 64)))
    assert two_pass_matmul(qt, x[0, 0]).shape == (5,)
    assert two_pass_matmul(qt, np.zeros((0, 64), np.float32)).shape == (0, 5)
    assert np.array_equal(two_pass_matmul(qt, x.astype(np.float64)), out)


@pytest.mark.parametrize("x,error,words", [
    (np.zeros(63, np.float32), ValueError, r"K = 64, got shape \(63,\)"),
    (np.zeros(64, np.int64), TypeError, "x must be a float array"),
    (np.full(64, np.nan, np.float32), ValueError, "NaN/Inf"),
    (np.full(64, 1e30, np.float32), ValueError, "float16"),
])
def test_bad_x_is_named(x, error, words):
    qt = quantize(np.ones((3, 64), np.float32), "q8_0")
    with pytest.raises(error, match=words):
        two_pass_matmul(qt, x)


def test_only_quantized_weights():
    with pytest.raises(TypeError, match="qt must be a QTensor, got ndarray"):
        two_pass_matmul(np.ones((3, 64), np.float32), np.ones(64, np.float32))


def test_head_product_two_passes_for_quantized_heads_only():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((7, 64)).astype(np.float32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    assert np.array_equal(head_product(w, x), x @ w.T)
    qt = quantize(w, "q8_0")
    assert np.array_equal(head_product(qt, x), two_pass_matmul(qt, x))
