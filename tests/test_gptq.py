"""GPTQ writes valid ggml Q4_0 blocks that beat round-to-nearest where it counts; ternary is ternary."""
import os

import numpy as np
import pytest

import tinyinfer
from conftest import ROOT, small_model
from tinyinfer.quant import QTensor, quantize
from tinyinfer.quant.blocks import FORMATS
from tinyinfer.quant.gptq import (awq_scale_model, awq_search_scale, calibration_windows, choose_damp,
                                  gptq_quantize_matrix, gptq_quantize_model, hessian, inverse_cholesky_upper,
                                  layer_objective, predicted_error_ratio, refit_scales, relative_output_error)
from tinyinfer.quant.lowbit import ternarize, ternary_model
from tinyinfer.quant.model import linear_weight_names, quantize_model


def correlated_inputs(rng, M, K):
    """(M, K) inputs with correlated features of uneven size, like real activations."""
    mix = np.eye(K) + 2 * rng.standard_normal((K, K)) / np.sqrt(K)  # (K, K)
    return (rng.standard_normal((M, K)) @ mix) * np.exp(rng.standard_normal(K))  # (M, K)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_lowers_the_layer_objective_below_rtn(seed):
    rng = np.random.default_rng(seed)
    N, K, M = 48, 128, 1024
    x = correlated_inputs(rng, M, K)
    w = rng.standard_normal((N, K)).astype(np.float32)
    H = hessian(x)
    gptq = gptq_quantize_matrix(w, H).dequantize()
    rtn = quantize(w, "q4_0").dequantize()
    # the objective, computed directly as ||W X^T - What X^T||^2 and through H
    direct = lambda w_hat: float(np.sum((x @ (w - w_hat).T.astype(np.float64)) ** 2)) / M  # noqa: E731
    assert layer_objective(w, gptq, H) == pytest.approx(direct(gptq), rel=1e-6)
    assert direct(gptq) < 0.8 * direct(rtn)  # measured ~0.6; a margin, not a tie


def test_gptq_output_is_valid_q4_0():
    rng = np.random.default_rng(3)
    N, K = 24, 96
    w = rng.standard_normal((N, K)).astype(np.float32)
    qt = gptq_quantize_matrix(w, hessian(correlated_inputs(rng, 256, K)))
    assert isinstance(qt, QTensor) and qt.fmt == "q4_0" and qt.shape == (N, K)
    assert qt.scales.dtype == np.float16 and qt.scales.shape == (N, K // 32)
    assert qt.quants.dtype == np.uint8 and qt.quants.shape == (N, K // 32, 16)
    assert np.isfinite(qt.scales).all()
    b = qt.to_bytes()
    assert b.size == qt.nbytes == N * (K // 32) * 18  # ggml's 18-byte blocks
    back = QTensor.from_bytes(bytes(b), "q4_0", (N, K))
    np.testing.assert_array_equal(back.to_bytes(), b)
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())
    # and the product works as for any Q4_0 weight
    x = rng.standard_normal((5, K)).astype(np.float32)
    np.testing.assert_allclose(back.matmul(x), x @ qt.dequantize().T, atol=0.05 * np.abs(x @ qt.dequantize().T).max())


@pytest.mark.parametrize("scale", [1.0, 1e-3, 50.0])
def test_identity_hessian_gives_rtn_bytes(scale):
    # with no correlation between inputs no error can be moved anywhere: GPTQ is RTN exactly
    w = np.random.default_rng(4).standard_normal((16, 64)).astype(np.float32)
    qt = gptq_quantize_matrix(w, scale * np.eye(64))
    np.testing.assert_array_equal(qt.to_bytes(), quantize(w, "q4_0").to_bytes())


def test_inverse_cholesky_and_dead_inputs():
    rng = np.random.default_rng(5)
    x = correlated_inputs(rng, 200, 32)
    x[:, 7] = 0  # a feature that never fires
    H = hessian(x)
    U = inverse_cholesky_upper(H, damp=0.01)
    assert np.allclose(U, np.triu(U))
    Hd = H.copy()
    Hd[7, 7] = 1.0
    Hd += 0.01 * np.mean(np.diag(Hd)) * np.eye(32)
    np.testing.assert_allclose(U.T @ U @ Hd, np.eye(32), atol=1e-8)
    qt = gptq_quantize_matrix(rng.standard_normal((8, 32)).astype(np.float32), H)
    assert np.isfinite(qt.dequantize()).all()


def test_clear_errors():
    w = np.zeros((4, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="H must be"):
        gptq_quantize_matrix(w, np.eye(32))
    with pytest.raises(ValueError, match="fmt must be one of"):
        gptq_quantize_matrix(w, np.eye(64), fmt="q3_k")
    with pytest.raises(ValueError, match="importance must have shape"):
        gptq_quantize_matrix(w, np.eye(64), importance=np.ones(32))
    with pytest.raises(ValueError, match="multiple of 32"):
        gptq_quantize_matrix(np.zeros((4, 40), dtype=np.float32), np.eye(40))


def test_gptq_model_on_both_families(family):
    model = small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)
    calib = np.random.default_rng(6).integers(0, 50, size=(4, 16))
    qmodel = gptq_quantize_model(model, calib, progress=False)
    for name in linear_weight_names(model.config):
        assert isinstance(qmodel.params[name], QTensor) and qmodel.params[name].fmt == "q4_0"
        assert isinstance(model.params[name], np.ndarray)  # the float model is untouched
    ids = np.arange(12) % 50
    ref = model.logits(ids)
    assert np.abs(qmodel.logits(ids) - ref).max() < 0.6 * np.abs(ref).max()
    with pytest.raises(ValueError, match="already quantized"):
        gptq_quantize_model(quantize_model(model, "q4_0"), calib, progress=False)


def test_gptq_beats_rtn_on_the_tiny_model():
    from tinyinfer.corpus import token_stream
    from tinyinfer.evaluate import evaluate

    model = tinyinfer.load(os.path.join(ROOT, "models", "tiny"))
    # a slice of the training split is enough to calibrate (and quick to tokenize when not cached)
    train = token_stream(model.tokenizer, "train", max_docs=120, progress=False)
    val = token_stream(model.tokenizer, "val", progress=False)
    gptq = gptq_quantize_model(model, calibration_windows(train, 16, 128, seed=0), progress=False)
    kl = {name: evaluate(m, val, 128, 8, reference=model)["kl_divergence"]
          for name, m in (("rtn", quantize_model(model, "q4_0")), ("gptq", gptq))}
    assert kl["gptq"] < 0.9 * kl["rtn"]


def test_ternary_weights_take_three_values_a_block():
    model = small_model("llama", n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)
    tmodel = ternary_model(model)
    for name in linear_weight_names(model.config):
        w = tmodel.params[name]  # (N, K) for LLaMA
        blocks = w.reshape(w.shape[0], -1, 32)
        for row in blocks.reshape(-1, 32):
            values = np.unique(row)
            assert len(values) <= 3
            magnitudes = np.unique(np.abs(values[values != 0]))
            assert len(magnitudes) <= 1  # {-g, 0, +g} or a subset: one scale g per block
    trits, scales = ternarize(np.random.default_rng(7).standard_normal((4, 64)).astype(np.float32))
    assert set(np.unique(trits)) <= {-1, 0, 1} and scales.shape == (4, 2) and (scales > 0).all()
    assert np.isfinite(tmodel.logits(np.arange(10) % 50)).all()


def test_awq_rescaling_keeps_the_function_and_never_loses_on_its_data(family):
    model = small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)
    calib = np.random.default_rng(8).integers(0, 50, size=(4, 16))
    scaled = awq_scale_model(model, calib, progress=False)
    ids = np.arange(12) % 50
    ref = model.logits(ids)
    np.testing.assert_allclose(scaled.logits(ids), ref, atol=1e-4 * np.abs(ref).max())  # same function
    assert isinstance(quantize_model(scaled, "q4_0").params[linear_weight_names(model.config)[0]], QTensor)
    # alpha = 0 (s = 1, plain RTN) is on the grid, so the chosen scale is at least as good on x
    rng = np.random.default_rng(9)
    x = correlated_inputs(rng, 512, 64).astype(np.float32)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    s, alpha = awq_search_scale(x, [w])
    err = lambda w_hat, xs: float(np.sum((xs @ w_hat.T - x @ w.T) ** 2))  # noqa: E731
    assert err(quantize(w * s, "q4_0").dequantize(), x / s) <= err(quantize(w, "q4_0").dequantize(), x)


# --------------------------------------------------------------------------------------------
# every format, act-order, importance-weighted scales, damping chosen on held-out windows, refit


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
def test_identity_hessian_gives_rtn_bytes_in_every_format(fmt, act_order):
    # nothing can move between uncorrelated inputs of equal size: GPTQ is the format's own RTN
    w = np.random.default_rng(11).standard_normal((8, 96)).astype(np.float32)
    qt = gptq_quantize_matrix(w, 3.0 * np.eye(96), fmt, act_order=act_order)
    np.testing.assert_array_equal(qt.to_bytes(), quantize(w, fmt).to_bytes())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act_order, weighted", [(False, False), (True, False), (True, True)])
def test_gptq_lowers_the_objective_in_every_format(fmt, act_order, weighted):
    rng = np.random.default_rng(12)
    N, K, M = 32, 128, 1024
    x = correlated_inputs(rng, M, K)
    w = rng.standard_normal((N, K)).astype(np.float32)
    H = hessian(x)
    importance = np.diag(H) / 2 if weighted else None
    gptq = gptq_quantize_matrix(w, H, fmt, act_order=act_order, importance=importance)
    assert gptq.fmt == fmt and gptq.shape == (N, K)
    rtn = quantize(w, fmt, importance=importance).dequantize()
    assert layer_objective(w, gptq.dequantize(), H) < 0.85 * layer_objective(w, rtn, H)


def test_act_order_helps_when_a_few_inputs_are_large():
    # act-order rounds the columns with the largest inputs first, while most columns can still absorb
    # their errors; measured over three seeds (one seed could go either way)
    ratios = []
    for seed in range(3):
        rng = np.random.default_rng(20 + seed)
        x = correlated_inputs(rng, 2048, 128)
        x[:, rng.choice(128, 6, replace=False)] *= 8  # a few outlier channels, as in real LLMs
        w = rng.standard_normal((32, 128)).astype(np.float32)
        H = hessian(x)
        plain, ordered = (layer_objective(w, gptq_quantize_matrix(w, H, "q4_0", act_order=a).dequantize(), H)
                          for a in (False, True))
        ratios.append(ordered / plain)
    assert np.mean(ratios) < 1.0


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "iq4_nl"])
def test_refit_scales_are_least_squares_for_the_codes(fmt):
    rng = np.random.default_rng(13)
    x = correlated_inputs(rng, 1024, 96)
    w = rng.standard_normal((16, 96)).astype(np.float32)
    H = hessian(x)
    plain = gptq_quantize_matrix(w, H, fmt)
    refit = gptq_quantize_matrix(w, H, fmt, refit=True)
    assert np.array_equal(refit.quants, plain.quants)  # the same codes, new scales
    damped = H + 0.01 * np.mean(np.diag(H)) * np.eye(96)  # refit_scales minimises the damped objective
    assert layer_objective(w, refit.dequantize(), damped) <= layer_objective(w, plain.dequantize(), damped) * 1.001
    # and no other scale does better: nudging any one block's d by a float16 step does not lower it
    best = layer_objective(w, refit.dequantize(), damped)
    for b in range(3):
        nudged = QTensor(fmt, refit.shape, refit.scales.copy(), refit.quants, refit.mins, refit.high_bits)
        nudged.scales[:, b] = (nudged.scales[:, b].astype(np.float32) * 1.01).astype(np.float16)
        assert layer_objective(w, nudged.dequantize(), damped) >= best * (1 - 1e-4)


def test_refit_handles_an_all_zero_block():
    w = np.random.default_rng(14).standard_normal((4, 64)).astype(np.float32)
    w[:, :32] = 0
    d, m = refit_scales(w, np.eye(64), "q4_0", np.full((4, 64), 8, np.uint8))  # code 8 = level 0 everywhere
    assert np.isfinite(d).all() and m is None


def test_choose_damp_takes_the_candidate_with_the_smallest_held_out_error():
    rng = np.random.default_rng(15)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    H_fit, H_check = hessian(correlated_inputs(rng, 200, 64)), hessian(correlated_inputs(rng, 200, 64))
    damp, errors = choose_damp(w, H_fit, H_check, "q4_0", candidates=(0.001, 0.01, 0.1, 1.0))
    assert set(errors) == {0.001, 0.01, 0.1, 1.0} and errors[damp] == min(errors.values())
    q = gptq_quantize_matrix(w, H_fit, "q4_0", damp).dequantize()
    assert errors[damp] == pytest.approx(relative_output_error(w, q, H_check))


def test_full_gptq_model_reports_every_layer(family):
    model = small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)
    calib = np.random.default_rng(16).integers(0, 50, size=(6, 16))
    report = {}
    qmodel = gptq_quantize_model(model, calib, "iq4_nl", progress=False, damp=(0.01, 0.1), act_order=True,
                                 imatrix=True, refit=True, report=report)
    names = linear_weight_names(model.config)
    assert set(report) == set(names)
    for name in names:
        assert qmodel.params[name].fmt == "iq4_nl"
        assert report[name]["damp"] in (0.01, 0.1) and report[name]["rtn_error"] > 0
    assert np.median([r["gptq_error"] / r["rtn_error"] for r in report.values()]) < 1.0
    ids = np.arange(12) % 50
    ref = model.logits(ids)
    assert np.abs(qmodel.logits(ids) - ref).max() < 0.6 * np.abs(ref).max()
    with pytest.raises(ValueError, match="at least 2 calibration windows"):
        gptq_quantize_model(model, calib[:1], progress=False, damp=(0.01, 0.1))


def test_gptq_takes_a_collected_imatrix(family):
    from tinyinfer.quant.imatrix import collect_imatrix

    model = small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)
    calib = np.random.default_rng(17).integers(0, 50, size=(4, 16))
    imatrix = collect_imatrix(model, calib, progress=False)
    qmodel = gptq_quantize_model(model, calib, "q4_1", progress=False, imatrix=imatrix)
    assert all(qmodel.params[n].fmt == "q4_1" for n in linear_weight_names(model.config))
    bad = dict(imatrix)
    bad.pop(linear_weight_names(model.config)[0])
    with pytest.raises(ValueError, match="no entry"):
        gptq_quantize_model(model, calib, "q4_1", progress=False, imatrix=bad)


def test_predicted_error_ratio_reads_gptqs_gain_off_h():
    assert predicted_error_ratio(np.eye(64), damp=0.0) == pytest.approx(1.0)  # nothing to move errors to
    rng = np.random.default_rng(18)
    for seed in range(3):
        x = correlated_inputs(np.random.default_rng(30 + seed), 4096, 128)
        H = hessian(x)
        w = rng.standard_normal((96, 128)).astype(np.float32)
        measured = (relative_output_error(w, gptq_quantize_matrix(w, H, "q4_0").dequantize(), H)
                    / relative_output_error(w, quantize(w, "q4_0").dequantize(), H))
        assert measured == pytest.approx(predicted_error_ratio(H), rel=0.1)
    assert predicted_error_ratio(H) < 0.9  # correlated inputs: GPTQ can gain
