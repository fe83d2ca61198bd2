"""End-to-end tuning of block scales: the gradient is right, the codes stay, the calibration KL falls."""
import numpy as np
import pytest

from conftest import small_model
from tinyinfer.model import Model, backward, forward
from tinyinfer.ops import log_softmax
from tinyinfer.quant import QTensor
from tinyinfer.quant.gptq import _stored_float
from tinyinfer.quant.model import linear_weight_names, quantize_model
from tinyinfer.quant.scale_tuning import _Layer, kl_and_dlogits, tune_block_scales


def model32(family):
    return small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)


@pytest.mark.parametrize("fmt", ["q4_1", "iq4_nl"])
def test_scale_gradient_matches_finite_differences(family, fmt):
    base = model32(family)
    model = Model(base.config, {k: v.astype(np.float64) for k, v in base.params.items()})  # float64: clean differences
    qmodel = quantize_model(base, fmt)
    names = linear_weight_names(model.config)
    layers = {n: _Layer(qmodel.params[n]) for n in names}
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 9))
    teacher_logp = log_softmax(model.logits(ids).astype(np.float64))

    def loss_and_grad():
        params = dict(model.params)
        for n, layer in layers.items():
            params[n] = _stored_float(layer.dense().astype(np.float64), model.config)
        caches = {}
        logits = forward(params, model.config, ids, caches=caches)
        kl, dlogits = kl_and_dlogits(logits, teacher_logp)
        g = backward(dlogits.astype(np.float64), params, model.config, caches)
        return kl, g

    name = names[len(names) // 2]
    layer = layers[name]
    _, g = loss_and_grad()
    dW = g[name].T if model.config.family == "gpt2" else g[name]
    ds, dt = layer.grads(dW)
    for param, grad in ((layer.s, ds), (layer.t, dt)):
        if param is None:
            continue
        for index in [(0, 0), (1, 0)]:
            eps = 1e-4
            param[index] += eps
            up = loss_and_grad()[0]
            param[index] -= 2 * eps
            down = loss_and_grad()[0]
            param[index] += eps
            numeric = (up - down) / (2 * eps)
            assert grad[index] == pytest.approx(numeric, rel=2e-2, abs=1e-7)


def test_tuning_keeps_the_codes_and_lowers_the_calibration_kl(family):
    model = model32(family)
    qmodel = quantize_model(model, "q4_0")
    calib = np.random.default_rng(1).integers(0, 50, size=(8, 16))
    history = []
    tuned = tune_block_scales(qmodel, model, calib, steps=40, lr=5e-3, batch=8, progress=False, history=history)
    assert len(history) == 40 and np.mean(history[-5:]) < 0.9 * np.mean(history[:5])
    for name in linear_weight_names(model.config):
        before, after = qmodel.params[name], tuned.params[name]
        assert isinstance(after, QTensor) and after.fmt == "q4_0" and after.nbytes == before.nbytes
        assert np.array_equal(after.quants, before.quants)  # the same codes, new scales
    assert not np.array_equal(tuned.params[name].scales, qmodel.params[name].scales)


def test_tuning_needs_a_quantized_model():
    model = model32("llama")
    with pytest.raises(TypeError, match="not quantized"):
        tune_block_scales(model, model, np.zeros((1, 4), np.int64), steps=1, progress=False)
