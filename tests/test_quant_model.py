"""Quantized models work everywhere a model works, and survive save / load byte for byte."""
import numpy as np
import pytest

import tinyinfer
from conftest import small_model
from tinyinfer.quant import QTensor
from tinyinfer.quant.model import linear_weight_names, quantize_model, weight_bytes


def model32(family):
    # K must be a multiple of ggml's block of 32 for every linear layer
    return small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50, n_ctx=32)


@pytest.mark.parametrize("fmt, tol", [("q8_0", 0.05), ("q4_0", 0.6), ("q4_1", 0.6), ("q5_0", 0.3), ("q5_1", 0.3),
                                      ("iq4_nl", 0.6)])
def test_quantized_logits_track_fp32(family, fmt, tol):
    model = model32(family)
    qmodel = quantize_model(model, fmt)
    for name in linear_weight_names(model.config):
        assert isinstance(qmodel.params[name], QTensor)
    assert isinstance(model.params[linear_weight_names(model.config)[0]], np.ndarray)  # original untouched
    ids = np.arange(12) % 50
    ref, out = model.logits(ids), qmodel.logits(ids)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() < tol * np.abs(ref).max()
    assert weight_bytes(qmodel) < weight_bytes(model)


def test_generate_and_batches_work_on_a_quantized_model(family):
    qmodel = quantize_model(model32(family), "q4_0")
    out = qmodel.generate([[1, 2, 3], [4, 5, 6]], 5)
    assert out.shape == (2, 8)
    seq = [1, 2, 3]
    for _ in range(5):
        seq.append(int(np.argmax(qmodel.logits(seq)[-1])))
    assert list(out[0]) == seq


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"])
def test_save_and_load_keep_the_ggml_bytes(tmp_path, family, fmt):
    qmodel = quantize_model(model32(family), fmt)
    tinyinfer.save(qmodel, tmp_path)
    loaded = tinyinfer.load(tmp_path)
    for name, value in qmodel.params.items():
        if isinstance(value, QTensor):
            assert isinstance(loaded.params[name], QTensor) and loaded.params[name].fmt == fmt
            np.testing.assert_array_equal(loaded.params[name].to_bytes(), value.to_bytes())
    ids = np.arange(9) % 50
    np.testing.assert_array_equal(loaded.logits(ids), qmodel.logits(ids))


def test_clear_errors():
    model = model32("llama")
    with pytest.raises(ValueError, match="fmt"):
        quantize_model(model, "q3_k")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(quantize_model(model, "q8_0"), "q4_0")
    with pytest.raises(ValueError, match="32"):
        quantize_model(small_model("llama"), "q8_0")  # n_embd 16: not a multiple of the block
