"""The training loop: schedule, AdamW, clipping, determinism and exact resumption."""
import json

import numpy as np
import pytest

from conftest import small_config
from tinyinfer.model import init_params
from tinyinfer.train import AdamW, TrainConfig, clip_grad_norm, lr_at, sample_batch, train


def test_schedule_warms_up_then_decays_to_min_lr():
    tc = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, tc) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone after warmup
    assert lrs[110] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.55)


def test_adamw_matches_the_textbook_update():
    tc = TrainConfig(weight_decay=0.1, beta1=0.9, beta2=0.95)
    p = {"w": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    opt = AdamW(p, tc)
    g = {"w": np.array([[0.3, -0.1]]), "b": np.array([0.2])}
    opt.step(p, g, lr=0.01)
    # first step: m/(1-b1) = g, v/(1-b2) = g^2, so the step is lr * g/|g| (+ decay on matrices)
    np.testing.assert_allclose(p["w"], np.array([[1.0, -2.0]]) * (1 - 0.001) - 0.01 * np.sign([[0.3, -0.1]]),
                               rtol=1e-6)
    np.testing.assert_allclose(p["b"], [0.5 - 0.01], rtol=1e-6)  # no decay on vectors


def test_adamw_masks_keep_pruned_weights_and_state_at_zero():
    p = {"w": np.ones((2, 2))}
    mask = {"w": np.array([[1.0, 0.0], [0.0, 1.0]])}
    p["w"] *= mask["w"]
    opt = AdamW(p, TrainConfig())
    for _ in range(3):
        opt.step(p, {"w": np.full((2, 2), 0.5)}, lr=0.1, masks=mask)
    assert p["w"][0, 1] == 0 and p["w"][1, 0] == 0 and opt.m["w"][0, 1] == 0 and opt.v["w"][1, 0] == 0


def test_clip_grad_norm():
    g = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert np.sqrt(g["a"] ** 2 + g["b"] ** 2)[0] == pytest.approx(1.0, rel=1e-5)


def test_batches_depend_only_on_seed_and_step():
    stream = np.arange(1000) % 37
    tc = TrainConfig(seq_len=8, batch_size=3, seed=5)
    x1, y1 = sample_batch(stream, tc, 7)
    x2, y2 = sample_batch(stream, tc, 7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one
    assert not np.array_equal(sample_batch(stream, tc, 8)[0], x1)


def _run(out_dir, max_steps, stream, config, stop_at_step=None):
    tc = TrainConfig(seq_len=8, batch_size=2, max_steps=max_steps, warmup_steps=2, eval_every=3,
                     eval_windows=2, lr=1e-2)
    return train(config, tc, stream, stream[:100], out_dir, progress=False, log=lambda *_: None,
                 stop_at_step=stop_at_step)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    config = small_config("llama")
    stream = np.random.default_rng(0).integers(0, config.vocab_size, 2000)
    straight = _run(tmp_path / "a", 8, stream, config)
    stopped = _run(tmp_path / "b", 8, stream, config, stop_at_step=5)
    assert json.loads((tmp_path / "b" / "history.json").read_text())["tokens_seen"] == 5 * 16
    resumed = _run(tmp_path / "b", 8, stream, config)
    for name in straight.params:
        assert not np.array_equal(stopped.params[name], straight.params[name]) or name.endswith("norm.weight")
        np.testing.assert_array_equal(resumed.params[name], straight.params[name])
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history["tokens_seen"] == 8 * 16 and history["val"][-1]["step"] == 8


def test_resuming_a_finished_run_changes_nothing_and_training_lowers_the_loss(tmp_path):
    config = small_config("llama")
    stream = np.tile(np.arange(20), 100) % config.vocab_size  # a learnable, repeating pattern
    model = _run(tmp_path, 30, stream, config)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["val"][-1]["loss"] < history["val"][0]["loss"] - 0.5
    before = {k: v.copy() for k, v in model.params.items()}
    again = _run(tmp_path, 30, stream, config)
    for k in before:
        np.testing.assert_array_equal(before[k], again.params[k])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_divergence_is_reported_not_hidden(tmp_path):
    config = small_config("llama")
    params = init_params(config)
    params["model.norm.weight"][:] = np.inf
    stream = np.arange(500) % config.vocab_size
    tc = TrainConfig(seq_len=8, batch_size=2, max_steps=3, eval_every=10)
    with pytest.raises(FloatingPointError, match="loss"):
        train(config, tc, stream, stream, tmp_path, progress=False, init_from=params)


def test_fixed_windows_must_match_seq_len_and_feed_the_loss_their_rows(tmp_path):
    """train(windows=...) draws batch `step` from windows[sample_rows(...)] and hands those rows
    to loss_fn; windows of the wrong length are refused before anything runs."""
    from tinyinfer.model import loss_and_grads
    from tinyinfer.train import sample_rows

    cfg = small_config("llama")
    tc = TrainConfig(batch_size=2, seq_len=8, max_steps=3, eval_every=3, eval_windows=1, warmup_steps=1)
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, (10, 9))
    stream = windows.reshape(-1)
    with pytest.raises(ValueError, match=r"windows must have shape \(N, seq_len \+ 1\)"):
        train(cfg, tc, None, stream, tmp_path / "bad", windows=windows[:, :5], progress=False, log=lambda *_: None)
    seen = []

    def loss_fn(params, config, inputs, targets, rows):
        seen.append(rows.tolist())
        np.testing.assert_array_equal(inputs, windows[rows, :-1])
        return loss_and_grads(params, config, inputs, targets)

    train(cfg, tc, None, stream, tmp_path / "ok", windows=windows, loss_fn=loss_fn, progress=False, log=lambda *_: None)
    assert seen == [sample_rows(10, 2, tc.seed, step).tolist() for step in range(3)]
    history = json.loads((tmp_path / "ok" / "history.json").read_text())
    assert 0 < history["step_seconds"] <= history["train_seconds"]
