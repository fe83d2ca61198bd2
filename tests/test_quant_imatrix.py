"""The importance matrix: collected as the mean squared input of every linear layer's columns, saved
and loaded with checks, and used by ggml's weighted scale searches (which lower the weighted error)."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyinfer
from conftest import ROOT, small_model
from tinyinfer.model import forward
from tinyinfer.quant import quantize
from tinyinfer.quant import blocks
from tinyinfer.quant.imatrix import (IMATRIX_FILE, check_imatrix, collect_imatrix, load_imatrix, save_imatrix)
from tinyinfer.quant.model import linear_weight_names, quantize_model

WEIGHTED = ["q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]  # the formats whose scale search an imatrix weights


def model32(family):
    return small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)


def test_imatrix_is_the_mean_square_of_each_layers_inputs(family):
    model = model32(family)
    ids = np.random.default_rng(0).integers(0, 50, size=(5, 12))
    imatrix = collect_imatrix(model, ids, batch=2, progress=False)
    caches = {}
    forward(model.params, model.config, ids, caches=caches)  # one full training-mode pass keeps every input
    for name in linear_weight_names(model.config):
        layer = name[: -len(".weight")]
        block = int(layer.split(".")[2])
        x = caches["layers"][block][layer][0].reshape(-1, imatrix[name].shape[0])  # (W * T, K)
        np.testing.assert_allclose(imatrix[name], (x.astype(np.float64) ** 2).mean(axis=0), rtol=1e-5)
    assert set(imatrix) == set(linear_weight_names(model.config))


def test_imatrix_does_not_depend_on_the_batch():
    model = model32("llama")
    ids = np.random.default_rng(1).integers(0, 50, size=(7, 10))
    one, many = collect_imatrix(model, ids, batch=1, progress=False), collect_imatrix(model, ids, batch=8, progress=False)
    for name in one:
        np.testing.assert_allclose(one[name], many[name], rtol=1e-5)


def test_imatrix_needs_float_weights():
    model = model32("llama")
    with pytest.raises(TypeError, match="float"):
        collect_imatrix(quantize_model(model, "q8_0"), np.zeros((1, 4), np.int64), progress=False)


def test_save_and_load(tmp_path):
    model = model32("llama")
    imatrix = collect_imatrix(model, np.arange(24).reshape(2, 12) % 50, progress=False)
    path = tmp_path / IMATRIX_FILE
    save_imatrix(path, imatrix, {"tokens": 24, "text": "test"})
    back, info = load_imatrix(path, model.config, model.params)
    assert info == {"tokens": 24, "text": "test"}
    for name in imatrix:
        np.testing.assert_array_equal(back[name], imatrix[name])


def test_bad_imatrices_are_named(tmp_path):
    model = model32("llama")
    imatrix = collect_imatrix(model, np.arange(12).reshape(1, 12), progress=False)
    first = linear_weight_names(model.config)[0]
    with pytest.raises(ValueError, match="no entry"):
        check_imatrix({k: v for k, v in imatrix.items() if k != first}, model.config)
    with pytest.raises(ValueError, match="K = 32"):
        check_imatrix({**imatrix, first: np.ones(31)}, model.config, model.params)
    with pytest.raises(ValueError, match="finite and >= 0"):
        check_imatrix({**imatrix, first: -np.ones(32)}, model.config)
    with pytest.raises(TypeError, match="dict"):
        check_imatrix([1, 2], model.config)
    from tinyinfer.safetensors import write_safetensors

    write_safetensors(tmp_path / "other.safetensors", {"x": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="not an imatrix file"):
        load_imatrix(tmp_path / "other.safetensors")


@pytest.mark.parametrize("fmt", WEIGHTED)
def test_quantize_model_uses_each_layers_imatrix(fmt):
    model = model32("llama")
    imatrix = collect_imatrix(model, np.random.default_rng(2).integers(0, 50, size=(3, 16)), progress=False)
    qmodel = quantize_model(model, fmt, imatrix=imatrix)
    for name in linear_weight_names(model.config):
        expected = quantize(model.params[name], fmt, importance=imatrix[name])
        assert np.array_equal(qmodel.params[name].to_bytes(), expected.to_bytes())


@pytest.mark.parametrize("fmt", WEIGHTED)
def test_weighted_search_lowers_the_weighted_error(fmt):
    # the error the search minimises, sum_j wt_j (w_j - value_j)^2, is lower than round-to-nearest's
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    importance = np.exp(2 * rng.standard_normal(256)).astype(np.float32)  # uneven, as real activations
    wt = blocks.importance_weights(w, importance)
    err = lambda qt: float(np.sum(wt * (qt.dequantize() - w) ** 2))  # noqa: E731
    assert err(quantize(w, fmt, importance=importance)) < 0.9 * err(quantize(w, fmt))


def test_q8_0_ignores_the_imatrix_as_ggml_does():
    w = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    assert np.array_equal(quantize(w, "q8_0", importance=np.arange(64.0)).to_bytes(), quantize(w, "q8_0").to_bytes())


def test_importance_argument_errors():
    w = np.ones((4, 64), np.float32)
    with pytest.raises(ValueError, match=r"\(K,\) = \(64,\)"):
        quantize(w, "q4_0", importance=np.ones(32))
    with pytest.raises(ValueError, match="finite and >= 0"):
        quantize(w, "q4_0", importance=np.full(64, np.nan))
    with pytest.raises(ValueError, match="finite and >= 0"):
        quantize(w, "iq4_nl", importance=-np.ones(64))


# --------------------------------------------------------------------------------------------
# the searches against a scalar reading of ggml's C, loop by loop (tests/test_quant_llamacpp.py
# compares the bytes with ggml itself when llama-cpp-python is installed)


def _qx_as_in_c(x, wt, nmax):
    """make_qx_quants(n = 32, nmax, x, L, rmse_type = 1, qw = wt) for one block, scalar float32."""
    f = np.float32
    amax, mx = f(0), f(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < f(1e-15):
        return f(0), [0] * 32

    def fit(iscale):
        L, sumlx, suml2 = [], f(0), f(0)
        for v, w in zip(x, wt):
            l = min(max(int(np.rint(f(iscale * v))), -nmax), nmax - 1)
            L.append(l + nmax)
            sumlx = f(sumlx + f(f(w * v) * f(l)))
            suml2 = f(suml2 + f(f(w * f(l)) * f(l)))
        return L, sumlx, suml2

    L, sumlx, suml2 = fit(f(f(-nmax) / mx))
    scale = f(sumlx / suml2) if suml2 else f(0)
    best = f(scale * sumlx)
    for t in range(-9, 10):
        if t == 0:
            continue
        trial, sumlx, suml2 = fit(f(-f(f(nmax) + f(f(0.1) * f(t))) / mx))
        if suml2 > 0 and f(sumlx * sumlx) > f(best * suml2):
            L, scale = trial, f(sumlx / suml2)
            best = f(scale * sumlx)
    return scale, L


def _qkx3_as_in_c(x, wt, nmax):
    """make_qkx3_quants(32, nmax, x, wt, ..., rmin -0.9, rdelta 0.05, nstep 36, use_mad false), scalar."""
    f = np.float32
    mn = mx = x[0]
    sum_w = wt[0]
    sum_x = f(sum_w * x[0])
    for v, w in zip(x[1:], wt[1:]):
        mn, mx = (v if v < mn else mn), (v if v > mx else mx)
        sum_w, sum_x = f(sum_w + w), f(sum_x + f(w * v))
    if mn > 0:
        mn = f(0)
    if mx <= mn:
        return f(0), mn, [0] * 32

    def levels(iscale, m):
        return [min(max(int(np.rint(f(iscale * f(v - m)))), 0), nmax) for v in x]

    def error(d, m, L):
        e = f(0)
        for v, w, l in zip(x, wt, L):
            diff = f(f(f(d * f(l)) + m) - v)
            e = f(e + f(w * f(diff * diff)))
        return e

    iscale = f(f(nmax) / f(mx - mn))
    scale = f(f(1) / iscale)
    L = levels(iscale, mn)
    best = error(scale, mn, L)
    for t in range(37):
        iscale = f(f(f(f(-0.9) + f(f(0.05) * f(t))) + f(nmax)) / f(mx - mn))
        trial = levels(iscale, mn)
        sl = sl2 = sxl = f(0)
        for v, w, l in zip(x, wt, trial):
            sl, sl2, sxl = f(sl + f(w * f(l))), f(sl2 + f(f(w * f(l)) * f(l))), f(sxl + f(f(w * f(l)) * v))
        D = f(f(sum_w * sl2) - f(sl * sl))
        if D > 0:
            this_d = f(f(f(sum_w * sxl) - f(sum_x * sl)) / D)
            this_m = f(f(f(sl2 * sum_x) - f(sl * sxl)) / D)
            if this_m > 0:
                this_m, this_d = f(0), f(sxl / sl2)
            e = error(this_d, this_m, trial)
            if e < best:
                L, best, scale, mn = trial, e, this_d, this_m
    return scale, mn, L


@st.composite
def weighted_blocks(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = (rng.standard_normal(32) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    kind = draw(st.sampled_from(["plain", "positive", "zero", "grid", "constant"]))
    if kind == "positive":
        x = np.abs(x)
    elif kind == "zero":
        x[:] = 0
    elif kind == "grid":
        x = np.round(x * 2) / 2
    elif kind == "constant":
        x[:] = x[0]
    wt = rng.uniform(0.01, 10, 32).astype(np.float32)
    return x, wt


@pytest.mark.parametrize("nmax", [8, 16])
@settings(max_examples=40, deadline=None)
@given(block=weighted_blocks())
def test_make_qx_quants_follows_ggml_loop_by_loop(nmax, block):
    x, wt = block
    d, L = blocks.make_qx_quants(x[None], wt[None], nmax)
    d_c, L_c = _qx_as_in_c([np.float32(v) for v in x], [np.float32(v) for v in wt], nmax)
    assert d[0] == d_c and L[0].tolist() == L_c


@pytest.mark.parametrize("nmax", [15, 31])
@settings(max_examples=25, deadline=None)
@given(block=weighted_blocks())
def test_make_qkx3_quants_follows_ggml_loop_by_loop(nmax, block):
    x, wt = block
    d, m, L = blocks.make_qkx3_quants(x[None], wt[None], nmax)
    d_c, m_c, L_c = _qkx3_as_in_c([np.float32(v) for v in x], [np.float32(v) for v in wt], nmax)
    assert d[0] == d_c and np.float16(m[0]) == np.float16(m_c) and L[0].tolist() == L_c


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"])
def test_block_scales_and_round_to_grid_are_the_plain_quantizer(fmt):
    # what GPTQ builds on: the block's scale, then each weight rounded against it, gives RTN's bytes
    w = np.random.default_rng(5).standard_normal((6, 96)).astype(np.float32)
    w[0, :32] = 0  # an all-zero block
    x = w.reshape(-1, 32)
    d, m = blocks.block_scales(fmt, x)
    codes = blocks.round_to_grid(fmt, x, d, m).reshape(6, 3, 32)
    d16 = blocks.to_float16(d).reshape(6, 3)
    parts = blocks.pack_codes(fmt, codes, d16, None if m is None else blocks.to_float16(m).reshape(6, 3))
    expected = blocks.QUANTIZERS[fmt](w)
    assert set(parts) == set(expected)
    for key in parts:
        assert np.array_equal(parts[key].view(np.uint8), expected[key].view(np.uint8)), key


# --------------------------------------------------------------------------------------------
# the command line


def test_quantize_command_collects_saves_and_reloads_an_imatrix(tmp_path):
    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "tinyinfer", "quantize", "--model", "tiny", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = run("--format", "iq4_nl", "--imatrix", "--calib-windows", "4", "--calib-seq-len", "32",
              "--out", str(tmp_path / "a"))
    assert "imatrix of 128 training tokens saved" in out
    imatrix, info = load_imatrix(tmp_path / "a" / IMATRIX_FILE)
    assert info["tokens"] == 128 and info["text"] == "corpus training split"
    out = run("--format", "q4_0", "--imatrix", str(tmp_path / "a" / IMATRIX_FILE), "--out", str(tmp_path / "b"))
    assert "imatrix-weighted" in out
    float_model = tinyinfer.load("tiny", dtype="float32")
    loaded = tinyinfer.load(tmp_path / "b")
    for name in linear_weight_names(float_model.config):
        expected = quantize(float_model.params[name], "q4_0", importance=imatrix[name])
        assert np.array_equal(loaded.params[name].to_bytes(), expected.to_bytes())
    out = run("--format", "q4_1", "--gptq", "--imatrix", "--calib-windows", "4", "--calib-seq-len", "32",
              "--out", str(tmp_path / "c"))
    assert "GPTQ" in out and "round-to-nearest's" in out
    assert all(tinyinfer.load(tmp_path / "c").params[n].fmt == "q4_1" for n in linear_weight_names(float_model.config))
