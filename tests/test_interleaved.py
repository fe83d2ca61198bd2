"""quant/interleaved.py: 16 rows of W side by side, its kernels against their NumPy twin, same bits
alone and batched. On hosts without AVX-512 VNNI the kernels run generic vector IR (the same
integers), so these tests check the same arithmetic everywhere."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.quant import interleaved as il
from tinyinfer.quant import kernels, quantize
from tinyinfer.quant.formats import quantized_matmul_reference

FMTS = list(il.FORMATS)


def _weights(seed, N, K, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((N, K)) * scale).astype(np.float32)


def run(fmt, qt, x, parts=1):
    """qt's product with x by the interleaved kernels, and x's blocks."""
    xq, xd, xs = kernels.quantize_x(x, fmt == "q4_1")
    out = np.full((x.shape[0], qt.shape[0]), np.nan, np.float32)
    il.product(il.TAGS[fmt], qt.records, xq, xd, xs, out, parts)
    return out, (xq, xd, xs)


def test_q4_1_record_layout_by_hand():
    qt = quantize(_weights(0, 17, 64), "q4_1")
    rec = qt.records
    assert rec.shape == (2, 2, il.RECORD_BYTES["q4_1"]) and il.RECORD_BYTES["q4_1"] == 256 + 32 + 32
    for n in (0, 5, 15, 16):
        g, r = divmod(n, 16)
        for b in range(2):
            for h in range(4):
                assert list(rec[g, b, 64 * h + 4 * r:64 * h + 4 * r + 4]) == list(qt.quants[n, b, 4 * h:4 * h + 4])
            assert rec[g, b, 256 + 2 * r:258 + 2 * r].view(np.float16)[0] == qt.scales[n, b]
            assert rec[g, b, 288 + 2 * r:290 + 2 * r].view(np.float16)[0] == qt.mins[n, b]
    # rows 17..31 of the second group are zeros: weights, scales and minima
    for r in range(1, 16):
        for h in range(4):
            assert not rec[1, :, 64 * h + 4 * r:64 * h + 4 * r + 4].any()
        assert not rec[1, :, 256 + 2 * r:258 + 2 * r].any() and not rec[1, :, 288 + 2 * r:290 + 2 * r].any()


def test_q8_0_record_holds_q_plus_128():
    qt = quantize(_weights(1, 16, 32), "q8_0")
    rec = qt.records
    assert rec.shape == (1, 1, 8 * 64 + 32)
    for r in (0, 7, 15):
        for h in range(8):
            expect = (qt.quants[r, 0, 4 * h:4 * h + 4].astype(np.int16) + 128).astype(np.uint8)
            assert list(rec[0, 0, 64 * h + 4 * r:64 * h + 4 * r + 4]) == list(expect)


@st.composite
def shapes(draw):
    return (draw(st.sampled_from(FMTS)), draw(st.integers(1, 40)), draw(st.integers(1, 5)),
            draw(st.integers(1, 9)), draw(st.integers(0, 2**31)), draw(st.sampled_from([1e-3, 1.0, 50.0])))


@settings(max_examples=40, deadline=None)
@given(shapes())
def test_repack_and_unpack_are_inverses(case):
    fmt, N, NB, _, seed, scale = case
    qt = quantize(_weights(seed, N, 32 * NB, scale), fmt)
    quants, scales, mins = il.unpack(fmt, qt.records, N)
    assert np.array_equal(quants, qt.quants)
    assert np.array_equal(scales.view(np.uint16), qt.scales.view(np.uint16))
    if fmt == "q4_1":
        assert np.array_equal(mins.view(np.uint16), qt.mins.view(np.uint16))


@settings(max_examples=60, deadline=None)
@given(shapes(), st.sampled_from([1, 2]))
def test_kernel_equals_its_numpy_twin(case, parts):
    """Awkward shapes: N not a multiple of 16 (1, 17, 33), one block, B not a multiple of the tile."""
    fmt, N, NB, B, seed, scale = case
    qt = quantize(_weights(seed, N, 32 * NB, scale), fmt)
    x = _weights(seed + 1, B, 32 * NB)
    out, (xq, xd, xs) = run(fmt, qt, x, parts)
    twin = il.reference_matmul(fmt, qt.records, N, xq, xd, xs)
    # the same integer sums and block order; a fused multiply-add rounds once where NumPy rounds twice
    size = np.abs(qt.dequantize()) @ np.abs(x).T  # (N, B): the scale of the terms that are added
    np.testing.assert_allclose(out, twin, rtol=0, atol=float(4e-6 * size.max() + 1e-30))
    # and the project's reference product (formats.quantized_matmul_reference), another order
    ref = quantized_matmul_reference(fmt, qt.scales.astype(np.float32), qt.quants, x,
                                     None if qt.mins is None else qt.mins.astype(np.float32))
    np.testing.assert_allclose(out, ref, rtol=0, atol=float(2e-5 * size.max() + 1e-30))


@settings(max_examples=30, deadline=None)
@given(shapes())
def test_a_row_gives_the_same_bits_alone_batched_and_on_two_threads(case):
    fmt, N, NB, B, seed, scale = case
    qt = quantize(_weights(seed, N, 32 * NB, scale), fmt)
    x = _weights(seed + 2, B, 32 * NB)
    batched, _ = run(fmt, qt, x, 1)
    two, _ = run(fmt, qt, x, 2)
    assert np.array_equal(batched.view(np.uint32), two.view(np.uint32))
    for r in range(B):
        alone, _ = run(fmt, qt, x[r:r + 1], 1)
        assert np.array_equal(alone[0].view(np.uint32), batched[r].view(np.uint32)), r


@pytest.mark.parametrize("fmt", FMTS)
def test_qtensor_matmul_takes_this_path_where_it_is_used(fmt):
    qt = quantize(_weights(3, 48, 96), fmt)
    x = _weights(4, 5, 96)
    got = qt.matmul(x)
    expect, _ = run(fmt, qt, x, 1)
    if fmt in il.USED_FORMATS:
        assert np.array_equal(got.view(np.uint32), expect.view(np.uint32))
    else:  # without VNNI quant/simd.py's kernels answer: the same product, another rounding order
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-4)


def test_repack_rejects_other_formats():
    qt = quantize(_weights(5, 4, 32), "q5_0")
    with pytest.raises(ValueError, match="fmt must be one of"):
        il.repack("q5_0", qt.quants, qt.scales)
