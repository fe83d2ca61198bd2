"""Minitron-style depth and width pruning: the right shapes, the right units, the same function when nothing goes."""
import numpy as np
import pytest
from conftest import small_model

from tinyinfer.sparse import minitron


def calib(model, W=4, T=10, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, size=(W, T + 1))


def test_keeping_everything_is_the_same_model():
    model = small_model("llama", n_layer=3)
    ids = calib(model)
    cfg = model.config
    same, info = minitron.minitron_prune(model, ids, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.ffn_hidden)
    assert info["layers"] == [0, 1, 2]
    np.testing.assert_allclose(same.logits(ids[:, :-1]), model.logits(ids[:, :-1]), rtol=1e-5, atol=1e-5)


def test_pruned_model_has_the_asked_shape_and_keeps_head_dim_and_kv_heads():
    model = small_model("llama", n_layer=3, n_embd=16, n_head=4, n_kv_head=2, ffn_hidden=24)
    small, info = minitron.minitron_prune(model, calib(model), n_layer=2, n_embd=12, n_head=2, ffn_hidden=10)
    cfg = small.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.ffn_hidden, cfg.head_dim) == (2, 12, 2, 2, 10, 4)
    assert len(info["layers"]) == 2 and info["layers"] == sorted(info["layers"])
    assert small.num_params() == cfg.num_params()
    assert np.isfinite(small.logits(calib(model)[:, :-1])).all()


def test_dropping_a_unit_that_is_never_used_changes_nothing():
    """A neuron whose down_proj column is zero, a channel no layer reads or writes: both rank last."""
    model = small_model("llama", n_layer=1, n_embd=16, n_head=4, n_kv_head=2, ffn_hidden=24)
    p = model.params
    names = minitron.layer_names(model.config, 0)
    p[names["up"] + ".weight"][5] = 0.0  # neuron 5 outputs silu(gate) * 0 = 0
    ids = calib(model)
    importance = minitron.activation_importance(model, ids[:, :-1])
    assert importance["neurons"][0].argmin() == 5
    narrower = minitron.prune_width(model, importance, 16, 4, 23)
    np.testing.assert_allclose(narrower.logits(ids[:, :-1]), model.logits(ids[:, :-1]), rtol=1e-5, atol=1e-5)


def test_a_block_that_writes_nothing_can_go_without_changing_the_logits():
    model = small_model("llama", n_layer=3)
    names = minitron.layer_names(model.config, 1)
    for role in ("o", "down"):  # block 1 adds nothing to the residual stream
        model.params[names[role] + ".weight"][:] = 0.0
    ids = calib(model)[:, :-1]
    np.testing.assert_allclose(minitron.keep_layers(model, [0, 2]).logits(ids), model.logits(ids), rtol=1e-6)


def test_depth_pruning_drops_the_block_whose_removal_costs_least():
    model = small_model("llama", n_layer=3, seed=3)
    ids = calib(model)
    losses = {i: minitron.calibration_loss(minitron.keep_layers(model, [j for j in range(3) if j != i]), ids)
              for i in range(3)}
    cheapest = min(losses, key=losses.get)
    assert minitron.layers_to_keep(model, 2, ids) == [j for j in range(3) if j != cheapest]
    with pytest.raises(ValueError, match="layers"):
        minitron.keep_layers(model, [0, 0])


@pytest.mark.parametrize("kwargs, named", [
    (dict(n_layer=0, n_embd=16, n_head=4, ffn_hidden=24), "n_layer"),
    (dict(n_layer=1, n_embd=17, n_head=4, ffn_hidden=24), "n_embd"),
    (dict(n_layer=1, n_embd=16, n_head=3, ffn_hidden=24), "n_head"),
    (dict(n_layer=1, n_embd=16, n_head=4, ffn_hidden=0), "ffn_hidden"),
])
def test_bad_shapes_are_named(kwargs, named):
    model = small_model("llama")
    with pytest.raises(ValueError, match=named):
        minitron.minitron_prune(model, calib(model), **kwargs)


def test_gpt2_is_refused_with_a_reason():
    model = small_model("gpt2")
    with pytest.raises(ValueError, match="llama"):
        minitron.minitron_prune(model, calib(model), 1, 16, 4, 24)
