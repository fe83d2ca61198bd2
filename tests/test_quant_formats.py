"""Q8_0 / Q4_0 in NumPy: ggml's bytes, ggml's rounding, error bounds, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.quant import QTensor, quantize
from tinyinfer.quant.formats import BLOCK, dequantize_blocks, quantize_activations, roundf

FMTS = ["q8_0", "q4_0"]


def random_w(seed, N, K, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((N, K)) * scale).astype(np.float32)


@st.composite
def matrices(draw):
    N = draw(st.integers(1, 5))
    K = BLOCK * draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1e-3, 1.0, 300.0]))
    return random_w(draw(st.integers(0, 2**31)), N, K, scale)


# --------------------------------------------------------------------------------------------
# bytes


@pytest.mark.parametrize("fmt", FMTS)
@given(w=matrices())
def test_bytes_round_trip(fmt, w):
    qt = quantize(w, fmt)
    b = qt.to_bytes()
    assert b.dtype == np.uint8 and b.size == qt.nbytes
    back = QTensor.from_bytes(b, fmt, w.shape)
    assert np.array_equal(back.to_bytes(), b)
    assert np.array_equal(back.dequantize(), qt.dequantize())
    assert np.array_equal(QTensor.from_bytes(bytes(b), fmt, w.shape).to_bytes(), b)  # bytes objects too


def test_sizes():
    w = random_w(0, 3, 64)
    q8, q4 = quantize(w, "q8_0"), quantize(w, "q4_0")
    assert (q8.nbytes, q4.nbytes) == (3 * 2 * 34, 3 * 2 * 18)
    assert (q8.bits_per_weight, q4.bits_per_weight) == (8.5, 4.5)
    assert q8.shape == (3, 64) and q8.fmt == "q8_0" and q4.fmt == "q4_0"


def test_q8_0_block_layout_by_hand():
    w = np.zeros((1, 64), np.float32)
    w[0, :32] = np.arange(32) - 16.0  # amax 16 -> d = 16/127, q = x * 127/16
    w[0, 32 + 5] = 127.0  # second block: d = 1, q[5] = 127
    b = quantize(w, "q8_0").to_bytes()
    assert b.size == 68
    assert b[:2].view("<f2")[0] == np.float16(16 / 127)  # little-endian float16 scale first
    inv = np.float32(1) / (np.float32(16) / np.float32(127))  # ggml's id, in float32
    expected = roundf((np.arange(32) - 16).astype(np.float32) * inv)
    assert b[2:34].view(np.int8).tolist() == expected.astype(int).tolist()
    assert b[2] == np.uint8(np.int8(-127).view(np.uint8))  # -16 -> -127
    assert b[34:36].view("<f2")[0] == 1.0
    q = b[36:68].view(np.int8)
    assert q[5] == 127 and np.count_nonzero(q) == 1


def test_q4_0_block_layout_by_hand():
    # d = max / -8 with max = -8 -> d = 1: value v is stored as nibble v + 8
    values = np.array([(j % 16) - 8 for j in range(32)], np.float32)  # -8..7, twice
    values[16:] = values[16:][::-1]  # make element j and j+16 differ
    w = values[None]
    b = quantize(w, "q4_0").to_bytes()
    assert b.size == 18
    assert b[:2].view("<f2")[0] == 1.0
    for j in range(16):
        assert b[2 + j] & 0x0F == int(values[j]) + 8  # element j: low nibble
        assert b[2 + j] >> 4 == int(values[j + 16]) + 8  # element j + 16: high nibble
    assert np.array_equal(quantize(w, "q4_0").dequantize(), w)


def test_from_bytes_builds_the_block_we_describe():
    blk = np.zeros(18, np.uint8)
    blk[:2] = np.array([0.5], "<f2").view(np.uint8)
    blk[2] = 0x3F  # element 0 -> 15 - 8 = 7, element 16 -> 3 - 8 = -5
    qt = QTensor.from_bytes(blk, "q4_0", (1, 32))
    deq = qt.dequantize()[0]
    assert deq[0] == 3.5 and deq[16] == -2.5
    assert np.all(deq[[j for j in range(32) if j not in (0, 16)]] == -4.0)  # nibble 0 -> -8 * 0.5


# --------------------------------------------------------------------------------------------
# ggml's rounding rules


def test_q8_0_ties_round_half_away_from_zero():
    # amax 127 -> d = 1, id = 1: the quants are roundf(x) exactly; np.round would give 0, 2, -2
    w = np.zeros((1, 32), np.float32)
    w[0, :5] = [0.5, 1.5, 2.5, -2.5, 127.0]
    q = quantize(w, "q8_0").quants[0, 0]
    assert q[:5].tolist() == [1, 2, 3, -3, 127]


def test_roundf_near_half():
    below_half = np.nextafter(np.float32(0.5), np.float32(0))
    assert roundf(np.array([below_half, 0.5, -0.5, 1.5, -1.5, 2.5], np.float32)).tolist() == [0, 1, -1, 2, -2, 3]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_q8_0_max_maps_to_127(sign):
    w = random_w(1, 4, 64)
    w[:, 7] = sign * 50.0  # the largest magnitude of its block
    qt = quantize(w, "q8_0")
    assert np.all(qt.quants[:, 0, 7] == sign * 127)
    assert np.abs(qt.quants).max() == 127


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_q4_0_max_maps_to_minus_8(sign):
    w = random_w(2, 4, 64)
    w[:, 3] = sign * 9.0
    qt = quantize(w, "q4_0")
    low_nibbles = qt.quants[:, 0, 3] & 0x0F
    assert np.all(low_nibbles == 0)  # q = 0, value (0 - 8) * d with d = max / -8: exactly the max
    assert np.allclose(qt.dequantize()[:, 3], sign * 9.0, rtol=1e-3)  # float16 d


def test_q4_0_takes_the_first_of_equal_magnitudes():
    w = np.zeros((1, 32), np.float32)
    w[0, 2], w[0, 9] = -4.0, 4.0  # |max| tie: ggml keeps the first (strict <)
    qt = quantize(w, "q4_0")
    assert qt.scales[0, 0] == np.float16(0.5)  # d = -4 / -8
    w[0, 2], w[0, 9] = 4.0, -4.0
    qt = quantize(w, "q4_0")
    assert qt.scales[0, 0] == np.float16(-0.5)
    # the other sign lands on q = 16 -> clamped to 15: value 7 * d, ggml's MIN(15, ...)
    assert qt.dequantize()[0, 9] == np.float32(7 * -0.5)


def test_q4_0_truncates_after_adding_8_5():
    # d = 1 (max -8 first); x*id + 8.5 truncated: 0.49 -> 8, 0.5 -> 9, -0.5 -> 8, -0.51 -> 7
    w = np.zeros((1, 32), np.float32)
    w[0, 0] = -8.0
    w[0, 1:5] = [0.49, 0.5, -0.5, -0.51]
    q = quantize(w, "q4_0").quants[0, 0]
    assert [q[j] & 0x0F for j in range(1, 5)] == [8, 9, 8, 7]


def test_q4_0_sum_is_rounded_to_float32_before_truncation():
    # v = -0.50000006 (float32 just below -0.5): exactly, v + 8.5 = 7.99999994 -> 7; in float32 the
    # sum rounds to 8.0 -> 8. ggml computes in float32, so 8 is right.
    w = np.zeros((1, 32), np.float32)
    w[0, 0] = -8.0
    w[0, 1] = np.nextafter(np.float32(-0.5), np.float32(-1))
    assert quantize(w, "q4_0").quants[0, 0, 1] & 0x0F == 8


@pytest.mark.parametrize("fmt,zero_byte", [("q8_0", 0), ("q4_0", 0x88)])
def test_all_zero_block(fmt, zero_byte):
    w = random_w(3, 2, 64)
    w[1, 32:] = 0.0
    qt = quantize(w, fmt)
    assert qt.scales[1, 1] == 0
    assert np.all(qt.quants[1, 1].view(np.uint8) == zero_byte)
    assert np.all(qt.dequantize()[1, 32:] == 0)


@pytest.mark.parametrize("fmt", FMTS)
def test_tiny_block_whose_inverse_scale_overflows(fmt):
    w = np.zeros((1, 32), np.float32)
    w[0, :4] = [1e-39, -2e-39, 5e-40, 0.0]  # d ~ 1e-41: 1/d is inf in float32
    qt = quantize(w, fmt)
    assert qt.scales[0, 0] == 0 and np.all(qt.dequantize() == 0)


@pytest.mark.parametrize("fmt", FMTS)
def test_one_huge_outlier_flattens_its_block_only(fmt):
    w = random_w(4, 1, 64, 0.01)
    w[0, 10] = 1000.0
    deq = quantize(w, fmt).dequantize()
    assert abs(deq[0, 10] - 1000.0) < 1.0
    assert np.count_nonzero(deq[0, :32]) == 1  # the rest of its block rounds to zero
    assert np.allclose(deq[0, 32:], w[0, 32:], atol=np.abs(w[0, 32:]).max() / 7)  # the other block: its own d


# --------------------------------------------------------------------------------------------
# error bounds
#
# Q8_0: q = roundf(w * id) is within 0.5 of w/d, so |w - q*d| <= d/2; the stored scale is
# float16(d), which moves q*d by |q| * |d - d16| <= 127 * |d - d16|. A few float32 roundings
# (1/d, w*id) add a relative 1e-6 or so.
# Q4_0: trunc(v + 8.5) is round-half-up of v = w/d in -8..8, so the error is <= |d|/2, except that
# q = 16 is clamped to 15: elements of the opposite sign to max, with |w| > 7.5|d|, can be off by
# up to |d|. Float16 adds <= 8 * |d - d16|.


def _block_scales(w, fmt):
    N, K = w.shape
    blocks = w.reshape(N, K // BLOCK, BLOCK)
    if fmt == "q8_0":
        d = np.abs(blocks).max(axis=-1) / np.float32(127)
    else:
        first = np.abs(blocks).argmax(axis=-1)[..., None]
        d = np.take_along_axis(blocks, first, axis=-1)[..., 0] / np.float32(-8)
    return blocks, d.astype(np.float64), d.astype(np.float16).astype(np.float64)


@pytest.mark.parametrize("fmt", FMTS)
@given(w=matrices())
def test_dequantize_error_bounds(fmt, w):
    blocks, d, d16 = _block_scales(w, fmt)
    err = np.abs(quantize(w, fmt).dequantize().reshape(blocks.shape).astype(np.float64) - blocks)
    qmax = 127 if fmt == "q8_0" else 8
    slack = qmax * np.abs(d - d16)[..., None] + 1e-5 * np.abs(d)[..., None]
    if fmt == "q8_0":
        assert np.all(err <= 0.5 * np.abs(d)[..., None] + slack)
    else:
        assert np.all(err <= np.abs(d)[..., None] + slack)
        same_side = blocks * d[..., None] <= 0  # same sign as max: v = w/d <= 0, never clamped
        half_step = np.broadcast_to(0.5 * np.abs(d)[..., None] + slack, err.shape)
        assert np.all(err[same_side] <= half_step[same_side])


# --------------------------------------------------------------------------------------------
# an independent reference: gguf-py (llama.cpp's Python package) quantizes in NumPy too


@pytest.mark.parametrize("fmt", FMTS)
@settings(max_examples=10)
@given(w=matrices())
def test_bytes_equal_gguf_quantizer(fmt, w):
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize as gguf_quantize

    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[fmt]
    theirs = gguf_quantize(w, qtype).reshape(-1)
    assert np.array_equal(quantize(w, fmt).to_bytes(), theirs)


@pytest.mark.parametrize("fmt", FMTS)
def test_gguf_dequantizes_our_bytes(fmt):
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize as gguf_dequantize

    w = random_w(5, 8, 128)
    qt = quantize(w, fmt)
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[fmt]
    theirs = gguf_dequantize(qt.to_bytes().reshape(8, -1), qtype)
    assert np.array_equal(theirs, qt.dequantize())


def test_activation_quantization_is_q8_0_with_a_float32_scale():
    x = random_w(6, 3, 96)
    xq, xd = quantize_activations(x)
    qt = quantize(x, "q8_0")
    assert np.array_equal(xq, qt.quants)  # the same rule; only the scale keeps float32
    assert np.array_equal(xd.astype(np.float16), qt.scales)
    assert np.array_equal(dequantize_blocks("q8_0", qt.scales, xq), qt.dequantize())


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("w,error,words", [
    (np.zeros((2, 48), np.float32), ValueError, "multiple of 32"),
    (np.zeros(64, np.float32), ValueError, "2-D"),
    (np.zeros((2, 2, 32), np.float32), ValueError, "2-D"),
    (np.zeros((2, 32), np.int32), TypeError, "float"),
    (np.zeros((2, 32), bool), TypeError, "float"),
    (np.zeros((0, 32), np.float32), ValueError, "positive"),
])
def test_bad_weights(w, error, words):
    with pytest.raises(error, match=words):
        quantize(w, "q8_0")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_count_and_position(bad):
    w = np.zeros((3, 64), np.float32)
    w[1, 40] = bad
    w[2, 0] = bad
    with pytest.raises(ValueError, match=r"2 NaN/Inf values, the first at \[1, 40\]"):
        quantize(w, "q4_0")


@pytest.mark.parametrize("fmt,limit", [("q8_0", 1e7), ("q4_0", 6e5)])
def test_weights_too_large_for_a_float16_scale(fmt, limit):
    w = np.zeros((1, 32), np.float32)
    w[0, 0] = limit
    with pytest.raises(ValueError, match="float16 scale"):
        quantize(w, fmt)


def test_unknown_format():
    with pytest.raises(ValueError, match="fmt must be one of"):
        quantize(np.zeros((1, 32), np.float32), "q5_0")
    with pytest.raises(ValueError, match="fmt must be one of"):
        QTensor.from_bytes(np.zeros(34, np.uint8), "Q8_0", (1, 32))


def test_float64_weights_go_through_float32():
    w = random_w(7, 2, 64)
    assert np.array_equal(quantize(w.astype(np.float64), "q4_0").to_bytes(), quantize(w, "q4_0").to_bytes())


@pytest.mark.parametrize("fmt,size", [("q8_0", 34), ("q4_0", 18)])
def test_from_bytes_wrong_length(fmt, size):
    with pytest.raises(ValueError, match=f"b has {2 * size - 1} bytes but .* takes {2 * size}"):
        QTensor.from_bytes(np.zeros(2 * size - 1, np.uint8), fmt, (1, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        QTensor.from_bytes(np.zeros(size, np.uint8), fmt, (1, 33))
    with pytest.raises(ValueError, match="two ints"):
        QTensor.from_bytes(np.zeros(size, np.uint8), fmt, (32,))


def test_from_bytes_rejects_a_non_finite_scale():
    b = np.zeros(34, np.uint8)
    b[:2] = np.array([np.inf], "<f2").view(np.uint8)
    with pytest.raises(ValueError, match="block 0 of row 0"):
        QTensor.from_bytes(b, "q8_0", (1, 32))
