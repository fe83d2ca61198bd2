"""tinyinfer/inference.py: the inference forward gives model.forward's logits, for every weight kind."""
import numpy as np
import pytest
from conftest import small_model

from tinyinfer.inference import InferenceModel, fuse_rows
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.model import forward


def _decode_logits(run, model, ids, steps):
    """Prefill ids, then feed `steps` more tokens one at a time; every step's last logits row."""
    cache = ContiguousKVCache(model.config, ids.shape[0], np.float32, max_len=ids.shape[1] + steps)
    out = [run(ids, np.arange(ids.shape[1]), cache)[:, -1]]
    for t in range(steps):
        token = (ids[:, -1:] + t + 1) % model.config.vocab_size
        out.append(run(token, np.array([ids.shape[1] + t]), cache)[:, -1])
    return np.stack(out)


@pytest.mark.parametrize("kind", ["dense", "q8_0", "q4_0"])
def test_inference_forward_matches_model_forward(family, kind):
    model = small_model(family, n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50)
    if kind != "dense":
        from tinyinfer.quant.model import quantize_model

        model = quantize_model(model, kind)
    fast = InferenceModel(model)
    ids = np.array([[1, 5, 7, 2, 9], [3, 3, 8, 1, 0]])

    def reference(x, positions, cache):
        return forward(model.params, model.config, x, kv_cache=cache, positions=positions)

    def fast_run(x, positions, cache):
        return fast.forward(x, positions, cache)

    expected = _decode_logits(reference, model, ids, 4)
    got = _decode_logits(fast_run, model, ids, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_quantized_head_logits_are_the_head_times_hidden():
    """A quantized head multiplies in two passes (model.head_product) on every path: model.forward,
    InferenceModel.forward (prefill and one-token decode steps), and hidden() then head_product."""
    from tinyinfer.model import head_product
    from tinyinfer.quant.formats import QTensor
    from tinyinfer.quant.model import quantize_model

    model = quantize_model(small_model("llama", n_embd=64, n_head=4, ffn_hidden=64, vocab_size=50), "q8_0",
                           quantize_head=True)
    fast = InferenceModel(model)
    assert isinstance(fast.head, QTensor)
    ids = np.array([[1, 5, 7, 2, 9]])

    def reference(x, positions, cache):
        return forward(model.params, model.config, x, kv_cache=cache, positions=positions)

    def split(x, positions, cache):
        return head_product(fast.head, fast.hidden(x, positions, cache))

    expected = _decode_logits(reference, model, ids, 4)
    np.testing.assert_allclose(_decode_logits(fast.forward, model, ids, 4), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_decode_logits(split, model, ids, 4), _decode_logits(fast.forward, model, ids, 4))
    cache = ContiguousKVCache(model.config, 1, np.float32, max_len=8)
    rows = fast.hidden(ids, np.arange(5), cache, logits_rows=[4])
    assert rows.shape == (1, 1, 64)


def test_hidden_is_for_llama_models():
    fast = InferenceModel(small_model("gpt2", n_embd=32, n_head=4, ffn_hidden=64, vocab_size=50))
    with pytest.raises(ValueError, match="hidden is for LLaMA-family models"):
        fast.hidden(np.array([[1, 2]]), np.arange(2), None)


def test_fuse_rows_stacks_dense_and_quantized_rows():
    from tinyinfer.quant import quantize

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 64)).astype(np.float32), rng.standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_array_equal(fuse_rows([a, b]), np.concatenate([a, b]))
    qa, qb = quantize(a, "q4_0"), quantize(b, "q4_0")
    fused = fuse_rows([qa, qb])
    assert fused.shape == (8, 64)
    np.testing.assert_array_equal(fused.dequantize(), np.concatenate([qa.dequantize(), qb.dequantize()]))
    x = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(fused.matmul(x), np.concatenate([qa.matmul(x), qb.matmul(x)]))
    assert fuse_rows([qa, quantize(b, "q8_0")]) is None  # formats differ: kept apart


@pytest.mark.parametrize("shape", [(2, 3), (1, 2, 3, 5), (64, 3, 16, 64 * 9), (1, 1, 1, (2 << 20) // 4 + 3)])
def test_cache_zeros_is_np_zeros_of_the_shape(shape):
    """kv_cache.cache_zeros (a large cache on 2 MB pages where the system lends them): zeros, the
    dtype and shape asked for, C-contiguous and writable, large ones starting on a 2 MB boundary."""
    import sys

    from tinyinfer.kv_cache import HUGE_PAGE_BYTES, HUGE_PAGE_MIN_BYTES, cache_zeros

    for dtype in (np.float32, np.float64):
        a = cache_zeros(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert not a.any()
        a[...] = 1.5  # every byte is writable memory
        assert float(a.sum()) == 1.5 * a.size
        if a.nbytes >= HUGE_PAGE_MIN_BYTES and sys.platform == "linux":
            assert a.ctypes.data % HUGE_PAGE_BYTES == 0
