"""Pruning masks (torch's exact-k semantics, Wanda, N:M), structured pruning, sparse models."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import small_model

from tinyinfer import ops
from tinyinfer.sparse import CSRMatrix, prune, sparsify_model
from tinyinfer.train import AdamW, TrainConfig
from tinyinfer.model import loss_and_grads


def random_weights(seed=0, shapes=((8, 6), (5, 12))):
    rng = np.random.default_rng(seed)
    return {f"w{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}


# --------------------------------------------------------------------------------------------
# unstructured


@pytest.mark.parametrize("amount, n, k", [(0.5, 48, 24), (0.3, 5, 2), (0.5, 5, 2), (0.7, 5, 4), (0.0, 9, 0),
                                          (1.0, 9, 9), (3, 9, 3)])
def test_count_is_torchs_exact_k(amount, n, k):
    assert prune.count_to_prune(amount, n) == k  # round(1.5) = 2, round(2.5) = 2, round(3.5) = 4


@pytest.mark.parametrize("amount", [1.5, -0.1, 10, True, "half"])
def test_bad_amount_is_refused(amount):
    with pytest.raises((ValueError, TypeError), match="amount"):
        prune.count_to_prune(amount, 9)


@pytest.mark.parametrize("amount", [0.1, 0.25, 0.5, 0.9])
def test_magnitude_prunes_exactly_k_smallest(amount):
    weights = random_weights()
    for name, mask in prune.magnitude_masks(weights, amount).items():
        w = weights[name]
        k = round(amount * w.size)
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        assert int((mask == 0).sum()) == k
        if 0 < k < w.size:  # every pruned |w| <= every kept |w|
            assert np.abs(w[mask == 0]).max() <= np.abs(w[mask == 1]).min()


def test_repeated_pruning_acts_on_the_unpruned_only():
    weights = {"w": np.random.default_rng(3).standard_normal((10, 10)).astype(np.float32)}
    first = prune.magnitude_masks(weights, 0.5)
    second = prune.magnitude_masks(weights, 0.5, previous=first)
    assert (first["w"] == 0).sum() == 50 and (second["w"] == 0).sum() == 75  # 0.5 then 0.5 -> 75 %
    assert np.all(second["w"] <= first["w"])  # nothing comes back
    third = prune.global_magnitude_masks(weights, 0.2, previous=second)
    assert (third["w"] == 0).sum() == 75 + 5  # round(0.2 * 25)


def test_ties_prune_the_earliest_entries_first():
    weights = {"w": np.ones((3, 4), np.float32), "v": np.ones((2, 2), np.float32)}
    masks = prune.magnitude_masks({"w": weights["w"]}, 5)
    np.testing.assert_array_equal(masks["w"].reshape(-1), [0] * 5 + [1] * 7)
    glob = prune.global_magnitude_masks(weights, 14)  # all of w, then two of v
    np.testing.assert_array_equal(glob["v"].reshape(-1), [0, 0, 1, 1])


def test_global_ranks_all_matrices_together():
    rng = np.random.default_rng(4)
    weights = {"small": rng.standard_normal((10, 10)).astype(np.float32) * 0.01,
               "large": rng.standard_normal((10, 10)).astype(np.float32)}
    per_layer = prune.magnitude_masks(weights, 0.5)
    glob = prune.global_magnitude_masks(weights, 0.5)
    assert (per_layer["small"] == 0).sum() == (per_layer["large"] == 0).sum() == 50
    assert (glob["small"] == 0).sum() + (glob["large"] == 0).sum() == 100
    assert (glob["small"] == 0).sum() > 90  # the small layer pays most
    kept = np.concatenate([np.abs(w[glob[n] == 1]) for n, w in weights.items()])
    pruned = np.concatenate([np.abs(w[glob[n] == 0]) for n, w in weights.items()])
    assert pruned.max() <= kept.min()


def test_wanda_prunes_each_row_by_weight_times_input_norm():
    weights = random_weights(5)
    norms = {n: np.random.default_rng(6).random(w.shape[1]).astype(np.float32) * 10 for n, w in weights.items()}
    masks = prune.wanda_masks(weights, norms, 0.5)
    for name, mask in masks.items():
        w = weights[name]
        K = w.shape[1]
        assert np.all((mask == 0).sum(axis=1) == round(0.5 * K))  # the same count in every row
        score = np.abs(w) * norms[name]
        for n in range(w.shape[0]):
            assert score[n][mask[n] == 0].max() <= score[n][mask[n] == 1].min()
    # a large input norm protects a small weight that magnitude pruning would drop
    w = {"w": np.array([[0.1, 1.0, 2.0, 3.0]], np.float32)}
    assert prune.magnitude_masks(w, 1)["w"][0, 0] == 0
    assert prune.wanda_masks(w, {"w": np.array([100.0, 1, 1, 1])}, 1)["w"][0, 0] == 1


def test_collect_input_norms_reads_each_linear_layers_input():
    model = small_model("llama")
    ids = np.array([[1, 5, 9, 2, 7], [3, 3, 0, 36, 4]])
    norms = prune.collect_input_norms(model, ids)
    assert set(norms) == set(prune.linear_weights(model))
    p = "model.layers.0."
    x = model.params["model.embed_tokens.weight"][ids]  # (B, T, C): the first block's input
    h, _ = ops.rmsnorm_forward(x, model.params[p + "input_layernorm.weight"], model.config.norm_eps)
    expected = np.sqrt((h.reshape(-1, h.shape[-1]).astype(np.float64) ** 2).sum(axis=0))
    for role in ("q", "k", "v"):
        np.testing.assert_allclose(norms[p + f"self_attn.{role}_proj.weight"], expected, rtol=1e-5)
    assert norms[p + "mlp.down_proj.weight"].shape == (model.config.ffn_hidden,)


def test_input_norms_in_batches_equal_one_pass():
    model = small_model("llama")
    ids = np.random.default_rng(2).integers(0, model.config.vocab_size, size=(5, 7))
    whole, batched = prune.collect_input_norms(model, ids), prune.collect_input_norms(model, ids, batch_size=2)
    for name in whole:
        np.testing.assert_allclose(batched[name], whole[name], rtol=1e-6)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_holds(n, m):
    weights = random_weights(7, shapes=((6, 16), (3, 8)))
    for name, mask in prune.nm_masks(weights, n, m).items():
        w = weights[name]
        groups = mask.reshape(w.shape[0], -1, m)
        assert np.all(groups.sum(axis=-1) == n)
        a = np.abs(w).reshape(groups.shape)
        assert np.all(np.where(groups == 0, a, -np.inf).max(-1) <= np.where(groups == 1, a, np.inf).min(-1))
    with pytest.raises(ValueError, match="not a multiple of m = 4"):
        prune.nm_masks({"w": np.ones((2, 6), np.float32)})


# --------------------------------------------------------------------------------------------
# masks on a model: AdamW keeps them, structured pruning, CSR models


def test_masks_stay_applied_through_adamw_steps(family):
    model = small_model(family)
    masks = prune.to_param_layout(prune.magnitude_masks(prune.linear_weights(model), 0.6), model.config)
    params = prune.apply_masks(model, masks).params
    params = {k: v.copy() for k, v in params.items()}
    opt = AdamW(params, TrainConfig())
    rng = np.random.default_rng(0)
    for _ in range(3):
        ids = rng.integers(0, model.config.vocab_size, size=(2, 6))
        _, grads = loss_and_grads(params, model.config, ids, np.roll(ids, -1, axis=1))
        opt.step(params, grads, 1e-2, masks=masks)
    for name, mask in masks.items():
        assert np.all(params[name][mask == 0] == 0)
        assert np.any(params[name][mask == 1] != model.params[name][mask == 1])  # the rest trained


def test_pruned_neurons_give_a_smaller_model_with_the_masked_logits(family):
    model = small_model(family)
    smaller = prune.prune_mlp_neurons(model, 7)
    assert smaller.config.ffn_hidden == model.config.ffn_hidden - 7
    masked = prune.apply_masks(model, prune.mlp_neuron_masks(model, 7))
    ids = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 0, 36, 4, 4]])
    np.testing.assert_allclose(smaller.logits(ids), masked.logits(ids), rtol=1e-5, atol=1e-5)
    # zeroing just the neurons' output (down_proj) columns is the same removal
    masks = prune.mlp_neuron_masks(model, 7)
    only_down = {n: m for n, m in masks.items() if n.endswith(("down_proj.weight", "mlp.c_proj.weight"))}
    assert len(only_down) == model.config.n_layer
    np.testing.assert_allclose(prune.apply_masks(model, only_down).logits(ids), masked.logits(ids),
                               rtol=1e-5, atol=1e-5)


IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 0, 36, 4, 4]])


@pytest.mark.parametrize("family, amount", [("llama", 2), ("llama", 0.5), ("gpt2", 1), ("gpt2", 3), ("gpt2", 0.5)])
def test_head_masks_remove_the_weakest_heads(family, amount):
    model = small_model(family)
    cfg = model.config
    masks = prune.head_masks(model, amount)
    o_names = [n for n in masks if n.endswith(("o_proj.weight", "attn.c_proj.weight"))]
    masked = prune.apply_masks(model, masks)
    only_o = prune.apply_masks(model, {n: masks[n] for n in o_names})
    # zeroing a head's o_proj columns alone already removes it
    np.testing.assert_allclose(masked.logits(IDS), only_o.logits(IDS), rtol=1e-5, atol=1e-5)
    n_remove = prune.heads_to_remove(cfg, amount)
    assert n_remove == (2 if isinstance(amount, float) else amount)
    scores = prune.head_scores(model)
    for i in range(cfg.n_layer):
        w_o = prune.linear_weights(masked)[o_names[i]].reshape(cfg.n_embd, cfg.n_head, cfg.head_dim)
        gone = np.flatnonzero(np.abs(w_o).sum(axis=(0, 2)) == 0)
        assert gone.size == n_remove
        if cfg.n_kv_head < cfg.n_head:  # GQA: the same number from every group
            groups = gone // (cfg.n_head // cfg.n_kv_head)
            assert np.all(np.bincount(groups, minlength=cfg.n_kv_head) == n_remove // cfg.n_kv_head)
        else:
            assert scores[i, gone].max() <= np.delete(scores[i], gone).min()


@pytest.mark.parametrize("n_kv_head, amount, new_h, new_g", [(2, 2, 2, 2), (2, 0.5, 2, 2), (1, 3, 1, 1),
                                                             (4, 1, 3, 3), (4, 0.5, 2, 2)])
def test_pruned_llama_heads_give_a_smaller_model_with_the_masked_logits(n_kv_head, amount, new_h, new_g):
    model = small_model("llama", n_kv_head=n_kv_head)
    cfg = model.config
    smaller = prune.prune_heads(model, amount)
    new = smaller.config
    assert (new.n_head, new.n_kv_head, new.head_dim) == (new_h, new_g, cfg.head_dim)
    assert new.num_params() < cfg.num_params()
    q = smaller.params["model.layers.0.self_attn.q_proj.weight"]
    o = smaller.params["model.layers.0.self_attn.o_proj.weight"]
    k = smaller.params["model.layers.0.self_attn.k_proj.weight"]
    assert q.shape == (new_h * cfg.head_dim, cfg.n_embd) and o.shape == (cfg.n_embd, new_h * cfg.head_dim)
    assert k.shape == (new_g * cfg.head_dim, cfg.n_embd)  # GQA keeps every K/V head; MHA loses them with q
    masked = prune.apply_masks(model, prune.head_masks(model, amount))
    np.testing.assert_allclose(smaller.logits(IDS), masked.logits(IDS), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(smaller.generate(IDS[0, :3], 6), masked.generate(IDS[0, :3], 6))  # KV cache


def test_pruned_gpt2_heads_stay_zeroed_in_a_same_size_model():
    model = small_model("gpt2")
    pruned = prune.prune_heads(model, 2)
    assert pruned.config == model.config  # GPT-2's config needs n_head * head_dim = n_embd
    masked = prune.apply_masks(model, prune.head_masks(model, 2))
    for name, value in masked.params.items():
        np.testing.assert_array_equal(pruned.params[name], value)


def test_structured_amounts_are_checked():
    llama = small_model("llama")  # 4 heads in 2 KV groups, F = 24
    with pytest.raises(ValueError, match="multiple of n_kv_head = 2"):
        prune.head_masks(llama, 1)
    with pytest.raises(ValueError, match="at least one must stay"):
        prune.prune_heads(llama, 4)
    with pytest.raises(ValueError, match="at least one must stay"):
        prune.prune_heads(llama, 0.9)  # round(0.9 * 2) = 2 of each group of 2
    with pytest.raises(ValueError, match="at least one must stay"):
        prune.prune_mlp_neurons(llama, 1.0)
    assert prune.prune_mlp_neurons(llama, 0.25).config.ffn_hidden == 24 - 6


def test_sparse_model_equals_masked_dense_model(family):
    model = small_model(family)
    masks = prune.to_param_layout(prune.magnitude_masks(prune.linear_weights(model), 0.75), model.config)
    sparse = sparsify_model(model, masks, min_sparsity=0.5)
    dense = prune.apply_masks(model, masks)
    for name in prune.linear_weight_names(model.config):
        w = sparse.params[name]
        assert isinstance(w, CSRMatrix) and w.shape == prune.linear_weights(dense)[name].shape
        np.testing.assert_array_equal(w.to_dense(), prune.linear_weights(dense)[name])
    ids = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 0, 36, 4, 4]])
    np.testing.assert_allclose(sparse.logits(ids), dense.logits(ids), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(sparse.generate(ids[0, :3], 6), dense.generate(ids[0, :3], 6))
    # layers less sparse than min_sparsity stay dense arrays
    kept = sparsify_model(model, None, min_sparsity=0.5)
    assert all(isinstance(kept.params[n], np.ndarray) for n in prune.linear_weight_names(model.config))
    with pytest.raises(ValueError, match="already a CSRMatrix"):
        sparsify_model(sparse, None, min_sparsity=0.0)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 40), levels=st.integers(1, 6), nans=st.booleans(),
       seed=st.integers(0, 2**31), frac=st.floats(0, 1))
def test_lowest_per_row_is_the_stable_argsort_selection(rows, cols, levels, nans, seed, frac):
    # few distinct values, so rows are full of ties; NaN sorts last, as in np.argsort
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (rows, cols)).astype(np.float64)
    if nans:
        scores[rng.random((rows, cols)) < 0.2] = np.nan
    k = round(frac * cols)
    expected = np.zeros((rows, cols), bool)
    np.put_along_axis(expected, np.argsort(scores, axis=1, kind="stable")[:, :k], True, axis=1)
    np.testing.assert_array_equal(prune.lowest_per_row(scores, k), expected)


def test_lowest_per_row_names_a_bad_count():
    with pytest.raises(ValueError, match="k must be between 0 and the row length 4, got 5"):
        prune.lowest_per_row(np.zeros((2, 4)), 5)
