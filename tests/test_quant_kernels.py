"""The Numba kernels against their NumPy twins, and against the float matmul within a derived bound."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypothesis import settings

from tinyinfer.quant import QTensor, quantize
from tinyinfer.quant.blocks import FORMATS, integer_values
from tinyinfer.quant.formats import BLOCK, quantize_activations, quantized_matmul_reference

kernels = pytest.importorskip("tinyinfer.quant.kernels")  # Numba

FMTS = ["q8_0", "q4_0"]  # the older tests below, written for the first two formats
ALL_FMTS = list(FORMATS)
KERNELS = ["simd", "loops"]


def twin(qt, x):
    return quantized_matmul_reference(qt.fmt, qt._scales_f32, qt.quants, x, qt._mins_f32, qt.high_bits)


@st.composite
def problems(draw):
    """Awkward shapes: N = 1 and odd N, K = 32 (one block) or 32 * odd, B = 1 or odd; zeros."""
    N = draw(st.sampled_from([1, 2, 3, 5, 7, 13]))
    K = BLOCK * draw(st.sampled_from([1, 3, 5, 2]))
    B = draw(st.sampled_from([1, 2, 3, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = (rng.standard_normal((B, K)) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    zeros = draw(st.sampled_from(["none", "x", "w", "one block"]))
    if zeros == "x":
        x[:] = 0
    elif zeros == "w":
        w[:] = 0
    elif zeros == "one block":
        w[:, :BLOCK] = 0
        x[:, -BLOCK:] = 0
    return w, x


def twin_tolerance(fmt, qt, x):
    """|kernel - twin| bound: both sum the same exact integer block dots; only the order and
    fusing of the float32 adds differ (fastmath). 1e-5 of the sum of |terms| covers that."""
    xq, xd, xs = quantize_activations(x)
    wq = np.abs(integer_values(qt.fmt, qt.quants, qt.high_bits).astype(np.float32) * qt._scales_f32[..., None])
    xa = np.abs(xq.astype(np.float32)) * xd[..., None]  # |xq * xd|
    terms = np.einsum("bkj,nkj->bn", xa, wq)
    if qt.mins is not None:
        terms += np.abs(xs) @ np.abs(qt._mins_f32).T
    return 1e-5 * terms + 1e-30


@pytest.mark.parametrize("fmt", ALL_FMTS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("parallel", [False, True])
@settings(max_examples=20, deadline=None)
@given(problem=problems())
def test_kernels_equal_numpy_twin(fmt, kernel, parallel, problem):
    assert_kernel_matches_twin(fmt, parallel, *problem, kernel=kernel)


def assert_kernel_matches_twin(fmt, parallel, w, x, kernel="simd"):
    qt = quantize(w, fmt)
    ref = twin(qt, x)
    out = kernels.qtensor_matmul(qt, x, parallel=parallel, kernel=kernel)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.all(np.abs(out - ref) <= twin_tolerance(fmt, qt, x))


@st.composite
def batched_problems(draw):
    """Batches around the register tile's edges: B on both sides of multiples of TILE_X (and 33),
    N on both sides of TILE_W and of the prefetch distance, K from one block to seven."""
    B = draw(st.sampled_from([2, 3, 4, 5, 7, 8, 9, 33]))
    N = draw(st.sampled_from([1, 3, 4, 5, 9, 13, 67]))
    K = BLOCK * draw(st.sampled_from([1, 2, 3, 7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = (rng.standard_normal((B, K)) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    if draw(st.booleans()):
        x[draw(st.integers(0, B - 1))] = 0  # an all-zero row inside a tile
    return w, x


@pytest.mark.parametrize("fmt", ALL_FMTS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("parallel", [False, True])
@settings(max_examples=15, deadline=None)
@given(problem=batched_problems())
def test_batched_kernels_equal_numpy_twin(fmt, kernel, parallel, problem):
    assert_kernel_matches_twin(fmt, parallel, *problem, kernel=kernel)


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_every_tile_shape_computes_each_output_the_same_way(fmt):
    # Rows of x land in 4-wide tiles, a one-row tile (one row left) or a 4-wide tile padded with zero
    # rows (two or three left); rows of W in full tiles or in the last one (which repeats its last row):
    # each output's lanes, scale products and final sum are the same operations in every case, so a
    # row of a batch equals its own matvec.
    rng = np.random.default_rng(5)
    w = rng.standard_normal((10, 160)).astype(np.float32)
    x = rng.standard_normal((7, 160)).astype(np.float32)
    qt = quantize(w, fmt)
    for parallel in (False, True):
        for rows in (2, 3, 5, 6, 7):  # remainders 2, 3, 1, 2, 3
            batch = kernels.qtensor_matmul(qt, x[:rows], parallel=parallel)
            for b in range(rows):
                one = kernels.qtensor_matmul(qt, x[b:b + 1], parallel=parallel)  # the decode kernel
                assert np.array_equal(batch[b], one[0])


def test_wrong_quants_dtype_is_named():
    qt = quantize(np.ones((3, 64), np.float32), "q8_0")
    with pytest.raises(TypeError, match="w_quants must be uint8 for q4_0, got int8"):
        kernels.quantized_matmul("q4_0", qt._scales_f32, qt.quants, np.ones((2, 64), np.float32))


@settings(deadline=None)
@given(x=st.integers(0, 2**31).map(lambda s: np.random.default_rng(s).standard_normal((3, 160)).astype(np.float32)))
def test_activation_kernel_is_bit_identical(x):
    x[0, :32] = np.round(x[0, :32] * 4) / 4  # exact .5 ties after scaling are likely here
    x[1, :32] *= 1e-3
    x[2, 32:64] = 0
    x[1, 64:96] *= np.float32(1e-39)  # subnormal x: d below float16's smallest subnormal
    x[2, 96:128] *= np.float32(2e6)  # d near float16's largest value (65504), s past it
    xq = np.empty((3, 5, BLOCK), np.int8)
    xd = np.empty((3, 5), np.float32)
    xs = np.empty((3, 5), np.float32)
    kernels.quantize_activations(x, xq, xd, xs)
    ref_q, ref_d, ref_s = quantize_activations(x)
    assert np.array_equal(xq, ref_q) and np.array_equal(xd, ref_d) and np.array_equal(xs, ref_s)


@settings(deadline=None, max_examples=30)
@given(B=st.integers(1, 11), NB=st.integers(1, 7), seed=st.integers(0, 2**16), bad_row=st.integers(-1, 10))
def test_parallel_activation_rounding_is_the_same_bits(B, NB, seed, bad_row):
    """quantize_activations_parallel splits the rows over threads: same quants, scales, sums and
    bad-block counts as the serial loop, also when a row holds a NaN or a sum too large for float16."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, NB * BLOCK)).astype(np.float32)
    if 0 <= bad_row < B:
        x[bad_row, 0] = np.nan
        x[bad_row, -BLOCK:] = 60000.0  # d * sum q ~ 32 * 60000: overflows float16's s
    out = [(np.empty((B, NB, BLOCK), np.int8), np.empty((B, NB), np.float32), np.empty((B, NB), np.float32))
           for _ in range(2)]
    serial = kernels.quantize_activations(x, *out[0])
    parallel = kernels.quantize_activations_parallel(x, *out[1])
    assert serial == parallel
    for a, b in zip(*out):
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@given(bits=st.integers(0, 2**32 - 1))
def test_float16_rounding_in_numba_equals_numpy(bits):
    v = np.array([bits], np.uint32).view(np.float32)[0]
    with np.errstate(over="ignore", invalid="ignore"):
        _check_float16_rounding(v)


def _check_float16_rounding(v):
    for u in (v, np.float32(v * np.float32(1e-30)), np.float32(v * np.float32(1e30))):
        got, want = kernels.float16_round(u), np.float32(np.float16(u)) if np.isfinite(u) else u
        assert (np.isnan(got) and np.isnan(want)) or got == want


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_matvec_equals_matmul_with_one_row(fmt):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 96)).astype(np.float32)
    x = rng.standard_normal(96).astype(np.float32)
    qt = quantize(w, fmt)
    vec = qt.matmul(x)  # (N,): the matvec kernel
    mat = kernels.qtensor_matmul(qt, np.stack([x, x]))  # the batch kernel
    assert vec.shape == (9,)
    assert np.allclose(vec, mat[0], rtol=1e-5, atol=1e-6) and np.allclose(mat[0], mat[1])
    assert np.array_equal(qt.matmul(x[None])[0], vec)


@pytest.mark.parametrize("fmt", ALL_FMTS)
@settings(max_examples=30, deadline=None)
@given(problem=problems())
def test_close_to_float_matmul_within_derived_bound(fmt, problem):
    # x = xq * xd + e with |e| <= xd / 2 per element, so the quantized product differs from
    # x @ deq.T by at most sum_k (xd[b,k] / 2) * sum_j |deq[n,k,j]|, plus float32 rounding.
    # (xd is the float16-rounded scale: still |x - xq * xd| <= xd / 2 up to that rounding, which
    # moves xq * xd by at most 127 * |d - d16| <= 127 * 2^-11 d: the 1 + 0.07 below. For q4_1/q5_1,
    # s = float16(d * sum q) adds |s - d16 sum q| <= (2^-11 + 2^-11) |d sum q| per block.)
    w, x = problem
    qt = quantize(w, fmt)
    deq = qt.dequantize()  # (N, K)
    exact = x.astype(np.float64) @ deq.T.astype(np.float64)  # (B, N)
    _, xd, _ = quantize_activations(x)  # (B, NB)
    N, K = w.shape
    abs_blocks = np.abs(deq).reshape(N, K // BLOCK, BLOCK).sum(-1)  # (N, NB)
    bound = 0.5 * (1 + 0.07) * xd.astype(np.float64) @ abs_blocks.T + 1e-5 * np.abs(x) @ np.abs(deq).T + 1e-30
    if qt.mins is not None:
        xq, xd16, _ = quantize_activations(x)
        sums = np.abs(xq.astype(np.float64).sum(-1)) * xd16  # |d sum q| per block, (B, NB)
        bound += 2 ** -10 * 1.01 * sums @ np.abs(qt._mins_f32.astype(np.float64)).T
    out = qt.matmul(x)
    assert np.all(np.abs(out - exact) <= bound)


def test_float_input_shapes_and_dtypes():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 64)).astype(np.float32)
    qt = quantize(w, "q4_0")
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    out = qt.matmul(x)  # (B, T, K) as the model passes it
    assert out.shape == (2, 3, 5) and out.dtype == np.float32
    assert np.array_equal(out.reshape(6, 5), qt.matmul(x.reshape(6, 64)))
    # float64 is handled: converted to float32 (the result is float32)
    out64 = qt.matmul(x.astype(np.float64))
    assert out64.dtype == np.float32 and np.array_equal(out64, out)
    assert qt.matmul(np.zeros((0, 64), np.float32)).shape == (0, 5)


@pytest.mark.parametrize("x,error,words", [
    (np.zeros(63, np.float32), ValueError, r"K = 64, got shape \(63,\)"),
    (np.zeros((2, 32), np.float32), ValueError, "K = 64"),
    (np.float32(1.0), ValueError, "x must have shape"),
    (np.zeros(64, np.int64), TypeError, "x must be a float array"),
    (np.zeros(64, complex), TypeError, "x must be a float array"),
    (np.full(64, np.nan, np.float32), ValueError, "64 NaN/Inf"),
])
def test_bad_x(x, error, words):
    qt = quantize(np.ones((3, 64), np.float32), "q8_0")
    with pytest.raises(error, match=words):
        qt.matmul(x)


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_reference_switch(fmt, monkeypatch):
    rng = np.random.default_rng(2)
    qt = quantize(rng.standard_normal((4, 64)).astype(np.float32), fmt)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    monkeypatch.setenv("TINYINFER_REFERENCE", "1")
    calls, real = [], kernels.qtensor_matmul
    monkeypatch.setattr(kernels, "qtensor_matmul", lambda *a, **k: calls.append(a) or real(*a, **k))
    out = qt.matmul(x)  # read at call time: no re-import needed
    assert calls == []
    assert np.array_equal(out, twin(qt, x))
    monkeypatch.setenv("TINYINFER_REFERENCE", "0")
    qt.matmul(x)
    assert len(calls) == 1


def test_large_problem_takes_the_parallel_path_and_agrees():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((300, 512)).astype(np.float32)
    x = rng.standard_normal((33, 512)).astype(np.float32)
    for fmt in ALL_FMTS:
        qt = quantize(w, fmt)
        assert 33 * 300 * 512 >= kernels.PARALLEL_MIN_WORK // 8  # large enough to exercise many row tasks
        ref = twin(qt, x)
        for parallel in (False, True):
            for xx, rr in ((x, ref), (x[:1], ref[:1])):  # batch tiles and the decode slabs
                out = kernels.qtensor_matmul(qt, xx, parallel=parallel)
                assert np.all(np.abs(out - rr) <= twin_tolerance(fmt, qt, xx))


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("parallel", [False, True])
def test_extreme_quants_pair_sums_stay_exact(fmt, parallel):
    # The block step adds neighbouring products in int32 (vpmaddwd): with every weight quant at its
    # extreme (-128 for q8_0 as a GGUF file may hold, -8 for q4_0) and x at +-127, a block's sum is
    # as large as it gets; integers that large are exact in float32, so the only error left is the
    # float32 rounding of the scaled sums.
    rng = np.random.default_rng(4)
    N, NB = 7, 5
    w_scales = rng.uniform(0.5, 2, (N, NB)).astype(np.float16).astype(np.float32)  # scales are float16 values
    if fmt == "q8_0":
        w_quants = rng.choice(np.array([-128, 127, -127], np.int8), size=(N, NB, BLOCK))
    else:
        w_quants = np.zeros((N, NB, BLOCK // 2), np.uint8)  # every nibble 0: the value -8
    x = rng.choice(np.array([-1.0, 1.0], np.float32), size=(3, NB * BLOCK))  # quantizes to +-127
    ref = quantized_matmul_reference(fmt, w_scales, w_quants, x)
    out = kernels.quantized_matmul(fmt, w_scales, w_quants, x, parallel=parallel)
    xq, xd, _ = quantize_activations(x)
    wq = w_quants.astype(np.float32) if fmt == "q8_0" else np.full((N, NB, BLOCK), -8.0, np.float32)
    terms = np.einsum("bkj,nkj,bk,nk->bn", np.abs(xq.astype(np.float32)), np.abs(wq), xd, w_scales)
    assert np.all(np.abs(out - ref) <= 1e-5 * terms)


@pytest.mark.parametrize("fmt", ["q4_1", "q5_0", "q5_1", "iq4_nl"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_extreme_blocks_of_the_new_formats(fmt, kernel):
    # every nibble and 5th bit set (q = 15 or 31, the largest iq4_nl level 113) or clear, x at +-127
    rng = np.random.default_rng(6)
    N, NB = 5, 3
    scales = rng.uniform(0.5, 2, (N, NB)).astype(np.float16)
    quants = rng.choice(np.array([0x00, 0xFF, 0xF0], np.uint8), size=(N, NB, BLOCK // 2))
    mins = rng.uniform(-1, 1, (N, NB)).astype(np.float16) if fmt in ("q4_1", "q5_1") else None
    high = rng.choice(np.array([0x00, 0xFF], np.uint8), size=(N, NB, 4)) if fmt.startswith("q5") else None
    qt = QTensor(fmt, (N, NB * BLOCK), scales, quants, mins, high)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), size=(3, NB * BLOCK))
    for xx in (x, x[:1]):
        for parallel in (False, True):
            out = kernels.qtensor_matmul(qt, xx, parallel=parallel, kernel=kernel)
            assert np.all(np.abs(out - twin(qt, xx)) <= twin_tolerance(fmt, qt, xx))


def test_unknown_kernel_is_named():
    qt = quantize(np.ones((3, 64), np.float32), "q4_1")
    with pytest.raises(ValueError, match="kernel must be 'simd' or 'loops'"):
        kernels.qtensor_matmul(qt, np.ones((2, 64), np.float32), kernel="fast")


@pytest.mark.parametrize("shape", [(64,), (3, 64)])
def test_x_too_large_for_a_float16_block_scale(shape):
    qt = quantize(np.ones((3, 64), np.float32), "q4_0")
    x = np.ones(shape, np.float32)
    x[..., 5] = 1e7  # amax / 127 > 65504: the Q8_0 block's float16 scale would be inf
    with pytest.raises(ValueError, match="float16 scale"):
        qt.matmul(x)
    x[..., 5] = 8e6  # just inside
    assert np.all(np.isfinite(qt.matmul(x)))
    # q4_1 also needs Q8_1's s = d * sum q, here 8e6 / 127 * 127: past float16
    with pytest.raises(ValueError, match="whose sum is too large for the float16 s"):
        quantize(np.ones((3, 64), np.float32), "q4_1").matmul(x)


def test_entry_point_cache_gives_the_same_answer_as_the_dispatcher():
    # the second call goes straight to the compiled entry point: it must see the same arguments
    rng = np.random.default_rng(8)
    for fmt in ALL_FMTS:
        qt = quantize(rng.standard_normal((9, 96)).astype(np.float32), fmt)
        x = rng.standard_normal((5, 96)).astype(np.float32)
        first = [kernels.qtensor_matmul(qt, x[:b], parallel=p) for b in (1, 5) for p in (False, True)]
        again = [kernels.qtensor_matmul(qt, x[:b], parallel=p) for b in (1, 5) for p in (False, True)]
        for a, b in zip(first, again):
            assert np.array_equal(a, b)
