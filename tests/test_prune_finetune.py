"""Fine-tuning with masks (train(masks=)), the cubic schedule, exact-k levels and the experiment's pieces."""
import json

import numpy as np
import pytest

from conftest import small_model
from tinyinfer.sparse import prune
from tinyinfer.sparse.csr import CSRMatrix
from tinyinfer.sparse.experiment import (Evaluator, calibration_ids, finetuned_rows, linear_sparsity, markdown,
                                         one_shot_rows, ship, structured_rows, targets)
from tinyinfer.sparse.finetune import (FinetuneSettings, cubic_levels, cubic_sparsity, finetune, prune_to,
                                       sparsity_of, weights_of)
from tinyinfer.train import TrainConfig, check_masks, load_train_state, train

QUIET = dict(progress=False, log=lambda *_: None)


def _stream(config, n=3000, seed=0):
    return np.random.default_rng(seed).integers(0, config.vocab_size, n)


def _half_masks(model):
    return prune.to_param_layout(prune.magnitude_masks(prune.linear_weights(model), 0.5), model.config)


def _tc(max_steps=6):
    return TrainConfig(seq_len=8, batch_size=2, max_steps=max_steps, warmup_steps=2, eval_every=3,
                       eval_windows=2, lr=1e-2)


# --------------------------------------------------------------------------------------------
# train(masks=)


def test_finetuning_keeps_pruned_weights_and_their_adam_state_exactly_zero(tmp_path):
    model = small_model("llama")
    masks = _half_masks(model)
    stream = _stream(model.config)
    before = {k: v.copy() for k, v in model.params.items()}
    tuned = train(model.config, _tc(), stream, stream[:200], tmp_path, init_from=dict(model.params), masks=masks,
                  **QUIET)
    params, (m, v, _t), step, *_ = load_train_state(tmp_path)
    assert step == 6
    for name, mask in masks.items():
        pruned = mask == 0
        assert pruned.sum() == round(0.5 * mask.size)
        assert np.all(tuned.params[name][pruned] == 0) and np.all(params[name][pruned] == 0)
        assert np.all(m[name][pruned] == 0) and np.all(v[name][pruned] == 0)
        assert np.all(v[name][~pruned] > 0)  # the survivors did train
        assert not np.array_equal(tuned.params[name][~pruned], before[name][~pruned])
    for name in masks:  # the masked arrays are fresh copies: the caller's weights were not zeroed
        np.testing.assert_array_equal(model.params[name], before[name])


def test_a_resumed_masked_run_keeps_the_stored_masks_and_equals_an_uninterrupted_one(tmp_path):
    model = small_model("llama")
    masks = _half_masks(model)
    stream = _stream(model.config)
    straight = train(model.config, _tc(), stream, stream[:200], tmp_path / "a",
                     init_from={k: v.copy() for k, v in model.params.items()}, masks=masks, **QUIET)
    train(model.config, _tc(), stream, stream[:200], tmp_path / "b", init_from={k: v.copy() for k, v in model.params.items()},
          masks=masks, stop_at_step=4, **QUIET)
    assert set(load_train_state(tmp_path / "b", with_masks=True)[-1]) == set(masks)
    resumed = train(model.config, _tc(), stream, stream[:200], tmp_path / "b", **QUIET)  # no masks given: stored ones
    for name in straight.params:
        np.testing.assert_array_equal(resumed.params[name], straight.params[name])


def test_all_ones_masks_train_exactly_like_no_masks(tmp_path):
    model = small_model("llama")
    stream = _stream(model.config)
    ones = {k: np.ones_like(v) for k, v in _half_masks(model).items()}
    plain = train(model.config, _tc(), stream, stream[:200], tmp_path / "a",
                  init_from={k: v.copy() for k, v in model.params.items()}, **QUIET)
    masked = train(model.config, _tc(), stream, stream[:200], tmp_path / "b",
                   init_from={k: v.copy() for k, v in model.params.items()}, masks=ones, **QUIET)
    for name in plain.params:
        np.testing.assert_array_equal(plain.params[name], masked.params[name])


def test_bad_masks_are_named():
    params = {"w": np.zeros((2, 3), np.float32)}
    with pytest.raises(ValueError, match="'x'.*not a parameter"):
        check_masks({"x": np.ones((2, 3))}, params)
    with pytest.raises(ValueError, match=r"masks\['w'\] has shape \(3, 2\)"):
        check_masks({"w": np.ones((3, 2))}, params)
    with pytest.raises(ValueError, match="only 0s and 1s"):
        check_masks({"w": np.full((2, 3), 0.5)}, params)


# --------------------------------------------------------------------------------------------
# schedules and levels


def test_cubic_schedule_rises_fast_then_flattens():
    s = [cubic_sparsity(t, 0.9, 10, 110) for t in range(0, 130)]
    assert s[0] == s[10] == 0.0 and s[110] == s[129] == pytest.approx(0.9)
    assert cubic_sparsity(60, 0.9, 10, 110) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    steps = np.diff(s[10:111])
    assert np.all(steps >= 0) and np.all(np.diff(steps) <= 1e-12)  # monotone, each rise smaller than the last
    assert cubic_sparsity(10, 0.9, 10, 110, initial_sparsity=0.3) == pytest.approx(0.3)
    levels = cubic_levels(0.9, 3)
    assert levels == pytest.approx([0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9])


def test_cubic_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="end_step"):
        cubic_sparsity(0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="final_sparsity"):
        cubic_sparsity(0, 0.5, 0, 10, initial_sparsity=0.7)
    with pytest.raises(ValueError, match="n_levels"):
        cubic_levels(0.5, 0)


def test_prune_to_hits_exact_totals_and_acts_only_on_survivors():
    rng = np.random.default_rng(0)
    weights = {"a": rng.standard_normal((7, 9)).astype(np.float32), "b": rng.standard_normal((5, 4)).astype(np.float32)}
    half = prune_to(weights, 0.5)
    for name, w in weights.items():
        assert (half[name] == 0).sum() == round(0.5 * w.size)
    # fine-tuning moves the survivors: a pruned weight may now look large, yet it must stay pruned
    moved = {k: w * half[k] + (1 - half[k]) * 100.0 for k, w in weights.items()}
    more = prune_to(moved, 0.7, previous=half)
    for name, w in weights.items():
        assert (more[name] == 0).sum() == round(0.7 * w.size)
        assert np.all(more[name][half[name] == 0] == 0)
    assert sparsity_of(more) == pytest.approx(1 - sum(np.count_nonzero(m) for m in more.values()) / 83)
    with pytest.raises(ValueError, match="can only rise"):
        prune_to(weights, 0.3, previous=half)


# --------------------------------------------------------------------------------------------
# the experiment's pieces


def test_calibration_samples_depend_on_their_seed_only():
    stream = np.arange(5000)
    a, b = calibration_ids(stream, 3, 16, seed=0), calibration_ids(stream, 3, 16, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 16) and np.all(np.diff(a, axis=1) == 1)  # contiguous windows of the stream
    assert not np.array_equal(a, calibration_ids(stream, 3, 16, seed=1))


def test_linear_sparsity_counts_dense_and_csr_layers_alike():
    model = small_model("llama")
    pruned = prune.apply_masks(model, _half_masks(model))
    assert linear_sparsity(pruned) == pytest.approx(0.5, abs=1e-3)
    params = dict(pruned.params)
    for name in prune.linear_weight_names(model.config)[:3]:
        params[name] = CSRMatrix.from_dense(params[name])
    from tinyinfer.model import Model

    assert linear_sparsity(Model(model.config, params)) == pytest.approx(linear_sparsity(pruned))


def test_the_loop_compares_each_stage_with_a_dense_control_on_the_same_batches(tmp_path):
    teacher = small_model("llama", n_ctx=32)
    streams = (_stream(teacher.config, seed=1), _stream(teacher.config, 600, seed=2))
    settings = FinetuneSettings(steps=3, batch_size=2, seq_len=8, lr=1e-3, warmup_steps=1, check_windows=1)
    evaluate_row = Evaluator(teacher, streams[1], seq_len=16, windows=2)
    r = finetuned_rows(teacher, evaluate_row, streams, settings, (0.5, 0.75), tmp_path, log=lambda *_: None,
                       progress=False)
    assert [e["after"]["linear_sparsity"] for e in r["iterative"]] == pytest.approx([0.5, 0.75], abs=1e-3)
    assert r["nm"]["after"]["linear_sparsity"] == pytest.approx(0.5)
    assert [d["steps"] for d in r["dense_control"]] == [3, 6]
    # the control's stage 0 saw the same batches as the pruned stage 0: same seed in both train configs
    for run in ("dense", "iterative", "nm24"):
        config = json.loads((tmp_path / run / "stage0" / "history.json").read_text())["train_config"]
        assert config["seed"] == settings.seed and config["max_steps"] == 3
    assert r["dense_control"][0]["perplexity"] != evaluate_row(teacher)["perplexity"]  # the control did train
    # the pruned weights of the final stage are still zero after all the fine-tuning
    final = finetune(teacher, None, *streams, settings, 1, tmp_path / "iterative" / "stage1", progress=False,
                     log=lambda *_: None)  # a finished stage is read back unchanged
    assert linear_sparsity(final) == pytest.approx(0.75, abs=1e-3)


def _row(ppl, **kw):
    return {"perplexity": ppl, **kw}


def test_targets_compare_with_the_dense_control_of_the_same_stage():
    r = {"dense_control": [_row(10.0), _row(9.0), _row(8.0)],
         "iterative": [{"after": _row(10.1, amount=0.5)}, {"after": _row(9.5, amount=0.7)},
                       {"after": _row(20.0, amount=0.9)}],
         "nm": {"after": _row(10.4)},
         "one_shot": [_row(15.0, method="magnitude", amount=0.5), _row(12.0, method="wanda", amount=0.5, calib_seed=0),
                      _row(16.0, method="wanda", amount=0.5, calib_seed=1)]}
    t = targets(r)
    assert t["50% unstructured + fine-tune vs dense control"]["measured"] == pytest.approx(0.01)
    assert t["50% unstructured + fine-tune vs dense control"]["met"] is True
    assert t["70% unstructured + fine-tune vs dense control"]["met"] is False  # +5.6% against 9.0, not 10.0
    assert t["90% unstructured + fine-tune vs dense control"]["met"] is None
    assert t["2:4 + fine-tune vs dense control"]["met"] is False
    assert t["Wanda ahead of magnitude at 50%, no fine-tuning"]["met"] is False  # one sample of two lost
    r["one_shot"][2]["perplexity"] = 14.0
    assert targets(r)["Wanda ahead of magnitude at 50%, no fine-tuning"]["met"] is True


def test_weights_of_is_the_models_linear_weights():
    model = small_model("gpt2")
    assert weights_of(model).keys() == prune.linear_weights(model).keys()


def test_the_report_has_every_row_and_target(tmp_path):
    teacher = small_model("llama", n_ctx=32)
    streams = (_stream(teacher.config, seed=1), _stream(teacher.config, 600, seed=2))
    settings = FinetuneSettings(steps=2, batch_size=2, seq_len=8, warmup_steps=1, check_windows=1)
    evaluate_row = Evaluator(teacher, streams[1], seq_len=16, windows=2)
    calib = {seed: calibration_ids(streams[0], 2, 16, seed) for seed in (0, 1)}
    r = {"machine": {"cpu": "test", "cores": 1}, "elapsed_s": 1.0, "teacher": evaluate_row(teacher, method="teacher"),
         "settings": {"finetune": settings.to_dict(), "eval_windows": 2, "eval_seq_len": 16},
         "one_shot": one_shot_rows(teacher, evaluate_row, calib, (0.5, 0.9)),
         "structured": structured_rows(teacher, evaluate_row)}
    r.update(finetuned_rows(teacher, evaluate_row, streams, settings, (0.5, 0.7, 0.9), tmp_path,
                            log=lambda *_: None, progress=False))
    r["targets"] = targets(r)
    r["finetune_seconds"] = {"dense/stage0": 1.0}
    text = markdown(r)
    assert [row["calib_seed"] for row in r["one_shot"] if row["method"] == "wanda"] == [0, 1, 0, 1]
    assert {row["ffn_hidden"] for row in r["structured"] if row["method"] == "neurons"} == {18, 12, 6}
    for needle in ("dense control", "2:4", "wanda", "global", "heads", "neurons", "90% unstructured"):
        assert needle in text
    assert text.count("\n| magnitude, iterative |") == 6  # before and after, three stages


def test_the_shipped_model_is_the_better_fine_tuned_one_stored_as_csr(tmp_path):
    import tinyinfer

    teacher = small_model("llama", n_ctx=32)
    tinyinfer.save(teacher, tmp_path / "teacher")
    streams = (_stream(teacher.config, seed=1), _stream(teacher.config, 600, seed=2))
    settings = FinetuneSettings(steps=2, batch_size=2, seq_len=8, warmup_steps=1, check_windows=1)
    r = finetuned_rows(teacher, Evaluator(teacher, streams[1], seq_len=16, windows=2), streams, settings, (0.5,),
                       tmp_path / "runs", log=lambda *_: None, progress=False)
    shipped = ship(r, tmp_path / "shipped", "cmd", tmp_path / "teacher", log=lambda *_: None)
    best = min(r["models"], key=lambda k: r["models"][k][0]["perplexity"])
    assert shipped["variant"] == best
    loaded = tinyinfer.load(tmp_path / "shipped")
    tuned = tinyinfer.load(r["models"][best][1])
    assert all(isinstance(loaded.params[n], CSRMatrix) for n in prune.linear_weight_names(teacher.config))
    assert shipped["file_bytes"] == (tmp_path / "shipped" / "model.safetensors").stat().st_size
    ids = np.arange(12) % teacher.config.vocab_size
    np.testing.assert_allclose(loaded.logits(ids), tuned.logits(ids), rtol=2e-2, atol=2e-2)  # float16 embedding
