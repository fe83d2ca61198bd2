"""The whole model: gradients, the KV cache, dtypes, generation and clear errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import small_config, small_model
from tinyinfer import model as M
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.model import Model, init_params


def whole_model_gradcheck(config, seed, B, T, n_checks=40):
    """Compare loss_and_grads with central differences on a random subset of every parameter."""
    params = init_params(config, seed, np.float64)
    rng = np.random.default_rng(seed)
    for value in params.values():
        value += rng.standard_normal(value.shape) * 0.2
    ids = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    _, grads = M.loss_and_grads(params, config, ids, targets)
    assert set(grads) == set(params)
    for name, value in params.items():
        flat, gflat = value.reshape(-1), grads[name].reshape(-1)
        for i in rng.choice(flat.size, size=min(n_checks, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            plus, _ = M.loss_and_grads(params, config, ids, targets)
            flat[i] = old - 1e-6
            minus, _ = M.loss_and_grads(params, config, ids, targets)
            flat[i] = old
            numeric = (plus - minus) / 2e-6
            assert abs(numeric - gflat[i]) <= 1e-6 + 1e-5 * abs(numeric), (name, i, numeric, gflat[i])


@given(family=st.sampled_from(["llama", "gpt2"]), n_kv_head=st.sampled_from([1, 2, 4]),
       tied=st.booleans(), B=st.integers(1, 2), T=st.integers(1, 6), seed=st.integers(0, 100))
def test_whole_model_gradients_match_finite_differences(family, n_kv_head, tied, B, T, seed):
    if family == "gpt2":
        config = small_config("gpt2", vocab_size=13, n_embd=8, n_head=2, ffn_hidden=12, n_ctx=8)
    else:
        config = small_config("llama", vocab_size=13, n_embd=16, n_head=4, n_kv_head=n_kv_head,
                              ffn_hidden=12, n_ctx=8, tie_word_embeddings=tied)
    whole_model_gradcheck(config, seed, B, T, n_checks=6)


def test_kv_cache_equals_full_recompute(family):
    model = small_model(family, np.float64)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (3, 11))
    full = M.forward(model.params, model.config, ids)
    cache = ContiguousKVCache(model.config, 3, np.float64)
    pieces = [M.forward(model.params, model.config, ids[:, :4], 0, cache)]
    for t in range(4, 11):  # then one token at a time, as decoding does
        pieces.append(M.forward(model.params, model.config, ids[:, t:t + 1], t, cache))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-10, atol=1e-12)


def test_logits_shapes_dtype_and_batch_rows_are_independent(family):
    model = small_model(family)
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    out = model.logits(ids)
    assert out.shape == (2, 4, model.config.vocab_size) and out.dtype == np.float32
    np.testing.assert_allclose(model.logits(ids[1]), out[1], rtol=1e-5, atol=1e-6)
    assert model.logits([3]).shape == (1, model.config.vocab_size)


def test_float64_model_agrees_with_float32(family):
    m32 = small_model(family, np.float32)
    m64 = Model(m32.config, {k: v.astype(np.float64) for k, v in m32.params.items()})
    ids = np.arange(10) % m32.config.vocab_size
    assert m64.logits(ids).dtype == np.float32  # the public contract is float32 out
    np.testing.assert_allclose(M.forward(m64.params, m64.config, ids[None])[0], m32.logits(ids), atol=2e-5)


def test_causality_a_later_token_never_changes_earlier_logits(family):
    model = small_model(family, np.float64)
    a = np.array([1, 2, 3, 4, 5])
    b = np.array([1, 2, 3, 9, 9])
    np.testing.assert_allclose(model.logits(a)[:3], model.logits(b)[:3], rtol=1e-6)


def test_greedy_generate_equals_argmax_of_recompute(family):
    model = small_model(family)
    prompt = [1, 2, 3]
    out = model.generate(prompt, 8)
    seq = list(prompt)
    for _ in range(8):
        seq.append(int(np.argmax(model.logits(seq)[-1])))
    assert list(out) == seq


def test_sampling_is_seeded_and_rows_do_not_depend_on_neighbours():
    model = small_model("llama")
    a = model.generate([1, 2], 10, temperature=1.0, top_p=0.9, seed=3)
    b = model.generate([1, 2], 10, temperature=1.0, top_p=0.9, seed=3)
    assert list(a) == list(b)
    batch = model.generate([[1, 2], [7, 8]], 10, temperature=1.0, top_k=5, seed=3)
    alone = model.generate([[1, 2]], 10, temperature=1.0, top_k=5, seed=3)
    assert list(batch[0]) == list(alone[0])


@pytest.mark.parametrize("bad, error, words", [
    ([[1, 2], [3]], ValueError, "rectangular"),
    (np.array([1.5, 2.0]), TypeError, "integer"),
    ([1, 99], ValueError, "vocab_size"),
    ([-1], ValueError, "vocab_size"),
    (np.zeros((1, 1, 2), int), ValueError, "shape"),
    ([], ValueError, "empty"),
    (list(range(30)), ValueError, "n_ctx"),
])
def test_bad_ids_get_clear_errors(bad, error, words):
    model = small_model("llama")
    with pytest.raises(error, match=words):
        model.logits(bad)


def test_generate_argument_errors():
    model = small_model("llama")
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate([1] * 20, 10)
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], 2, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate([1], 2, temperature=1, top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate([1], 2, temperature=1, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate([1], -1)


def test_params_that_do_not_match_the_config_are_refused():
    config = small_config("llama")
    params = init_params(config)
    params["model.norm.weight"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="model.norm.weight"):
        Model(config, params)
    del params["model.norm.weight"]
    with pytest.raises(ValueError, match="missing"):
        Model(config, params)


def test_bad_configs_are_refused():
    from tinyinfer.config import ModelConfig

    with pytest.raises(ValueError, match="family"):
        ModelConfig(family="bert")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(vocab_size=0)


def test_num_params_counts_every_array_once(family):
    model = small_model(family)
    assert model.num_params() == sum(v.size for v in model.params.values())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_inference_params_give_the_same_logits(family):
    """The engine's and speculative decoding's weight layout (model.py: TransposedWeight) is the
    same product: logits over a few rows agree with the plain weights', and GPT-2's are untouched."""
    from tinyinfer.model import TransposedWeight, inference_params

    model = small_model(family, dtype=np.float64, seed=3)
    fast = inference_params(model.params, model.config)
    transposed = [n for n, w in fast.items() if isinstance(w, TransposedWeight)]
    assert (len(transposed) == 7 * model.config.n_layer) if family == "llama" else not transposed
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 5))
    np.testing.assert_allclose(M.forward(fast, model.config, ids), M.forward(model.params, model.config, ids),
                               rtol=1e-12, atol=1e-12)
