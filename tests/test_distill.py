"""The distillation loss: its gradient, its limits, its errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.distill import kd_loss_backward, kd_loss_forward
from tinyinfer.gradcheck import numerical_grad
from tinyinfer.ops import cross_entropy_forward


@given(B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(2, 7), temperature=st.floats(0.5, 5.0),
       alpha=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_kd_gradient_matches_finite_differences(B, T, V, temperature, alpha, seed):
    rng = np.random.default_rng(seed)
    s, t = rng.standard_normal((B, T, V)) * 2, rng.standard_normal((B, T, V)) * 2
    y = rng.integers(0, V, (B, T))
    loss, _, cache = kd_loss_forward(s, t, y, temperature, alpha)
    analytic = kd_loss_backward(1.0, cache)
    numeric = numerical_grad(lambda: kd_loss_forward(s, t, y, temperature, alpha)[0], s)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_limits():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    y = rng.integers(0, 9, 4)
    # alpha = 0 is plain cross-entropy
    assert kd_loss_forward(s, t, y, 3.0, 0.0)[0] == pytest.approx(cross_entropy_forward(s, y)[0])
    # a student equal to its teacher has zero KL, whatever T
    assert kd_loss_forward(t, t, y, 4.0, 1.0)[1]["kl"] == pytest.approx(0.0, abs=1e-12)
    assert kd_loss_forward(s, t, y, 4.0, 1.0)[1]["kl"] > 0


def test_errors():
    s = np.zeros((2, 5))
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss_forward(s, np.zeros((2, 4)), np.zeros(2, int))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss_forward(s, s, np.zeros(2, int), temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss_forward(s, s, np.zeros(2, int), alpha=1.5)


def test_distilled_student_moves_towards_its_teacher(tmp_path):
    """On random labels only the teacher carries signal: distilling must bring the student far
    closer to it than training on the labels alone does, from the same start and steps."""
    from conftest import small_config, small_model
    from tinyinfer.distill import distillation_loss_fn
    from tinyinfer.evaluate import evaluate
    from tinyinfer.model import Model, init_params
    from tinyinfer.train import TrainConfig, train

    teacher = small_model("llama", vocab_size=37, n_embd=32, n_head=4, ffn_hidden=48)
    teacher.params["lm_head.weight"] *= 3  # a confident teacher: its distribution has shape to learn
    stream = np.random.default_rng(0).integers(0, 37, 3000)
    config = small_config("llama", vocab_size=37, n_embd=32, n_layer=2)
    tc = TrainConfig(seq_len=8, batch_size=4, max_steps=60, warmup_steps=2, eval_every=100, lr=1e-2)
    kl = lambda m: evaluate(m, stream, 8, 20, reference=teacher)["kl_divergence"]  # noqa: E731
    before = kl(Model(config, init_params(config, 0)))
    runs = {}
    for alpha in (1.0, 0.0):
        runs[alpha] = kl(train(config, tc, stream, stream[:200], tmp_path / str(alpha), progress=False,
                               log=lambda *_: None, loss_fn=distillation_loss_fn(teacher, 2.0, alpha)))
    assert runs[1.0] < 0.75 * before  # measured: 1.03 -> 0.66
    assert runs[1.0] < 0.7 * runs[0.0]  # labels alone: 1.09


# --------------------------------------------------------------------------------------------
# the student preset and `tinyinfer distill`


def test_student_preset_is_at_most_a_tenth_of_the_teacher():
    from tinyinfer.presets import get_preset

    student, _ = get_preset("student")
    teacher, _ = get_preset("teacher")
    assert student.vocab_size == teacher.vocab_size and student.family == teacher.family == "llama"
    assert student.num_params() <= 0.10 * teacher.num_params()  # 209,184 / 2,164,800 = 9.7%


def distill_cli(*args, check=True):
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "tinyinfer", "distill", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tinyinfer distill {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


# models/tiny stands in for the teacher (same tokenizer and vocabulary, 164K parameters)
QUICK = ["--teacher", "tiny", "--max-docs", "30", "--seq-len", "32", "--batch-size", "4", "--eval-every", "4"]


def test_distill_then_resume(tmp_path):
    import json

    out = tmp_path / "student"
    distill_cli(*QUICK, "--out", str(out), "--temperature", "2", "--alpha", "0.5", "--max-steps", "4")
    first = json.loads((out / "history.json").read_text())
    assert first["tokens_seen"] == 4 * 4 * 32
    assert first["distill"] == json.loads((out / "distill.json").read_text())
    assert first["distill"]["temperature"] == 2.0 and first["distill"]["alpha"] == 0.5
    assert not first["distill"]["labels_only"] and first["distill"]["teacher"].endswith("tiny")
    from conftest import ROOT
    from tinyinfer.tokenizer import Tokenizer

    copied = Tokenizer.from_file(out / "tokenizer.json").to_dict()
    assert copied == Tokenizer.from_file(f"{ROOT}/models/tiny/tokenizer.json").to_dict()  # the teacher's
    proc = distill_cli(*QUICK, "--out", str(out), "--temperature", "2", "--alpha", "0.5", "--max-steps", "8")
    assert "resuming from step 4" in proc.stdout
    second = json.loads((out / "history.json").read_text())
    assert second["tokens_seen"] == 8 * 4 * 32 and [v["step"] for v in second["val"]] == [4, 8]
    assert second["distill"] == first["distill"]
    # a changed setting is refused, naming it, rather than silently mixing two losses in one run
    proc = distill_cli(*QUICK, "--out", str(out), "--temperature", "4", "--max-steps", "12", check=False)
    assert proc.returncode != 0 and "--temperature" in proc.stderr


def test_distill_labels_only(tmp_path):
    import json

    out = tmp_path / "baseline"
    distill_cli(*QUICK, "--out", str(out), "--labels-only", "--max-steps", "4")
    history = json.loads((out / "history.json").read_text())
    assert history["distill"]["labels_only"] and history["distill"]["temperature"] is None
    assert history["tokens_seen"] == 4 * 4 * 32 and np.isfinite(history["val"][-1]["loss"])


@pytest.mark.parametrize("args, named", [
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "-0.1"], "--alpha"),
    (["--teacher", "no/such/teacher"], "--teacher"),
    (["--seq-len", "1000"], "--seq-len"),
    (["--cache-windows", "0"], "--cache-windows"),
    (["--top-k", "0"], "--top-k"),
])
def test_distill_bad_arguments(tmp_path, args, named):
    from tinyinfer.cli import main

    with pytest.raises(SystemExit, match=named):
        main(["distill", "--teacher", "tiny", "--out", str(tmp_path / "never"), *args])


def test_distill_refuses_a_teacher_with_another_vocabulary(tmp_path):
    from conftest import small_model
    from tinyinfer import save
    from tinyinfer.cli import main

    save(small_model("llama", vocab_size=37), tmp_path / "teacher37")
    with pytest.raises(SystemExit, match=r"--teacher .*vocab_size 37 .* 1024"):
        main(["distill", "--teacher", str(tmp_path / "teacher37"), "--out", str(tmp_path / "never")])


# --------------------------------------------------------------------------------------------
# KD from the teacher's cached top-k (k + 1 buckets)


def _topk_case(rng, B, T, V, k, temperature):
    from tinyinfer.distill import teacher_topk

    s, t = rng.standard_normal((B, T, V)) * 2, rng.standard_normal((B, T, V)) * 2
    ids, _, tail = teacher_topk(t, k, [temperature])
    top = np.take_along_axis(t, ids.astype(np.int64), axis=-1)  # exact float64 logits, not float16
    return s, t, ids, top, tail[..., 0].astype(np.float64)


@given(B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(2, 9), k=st.integers(1, 9),
       temperature=st.floats(0.5, 5.0), alpha=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_kd_topk_gradient_matches_finite_differences(B, T, V, k, temperature, alpha, seed):
    from tinyinfer.distill import kd_topk_loss_backward, kd_topk_loss_forward

    k = min(k, V)
    rng = np.random.default_rng(seed)
    s, _, ids, top, tail = _topk_case(rng, B, T, V, k, temperature)
    y = rng.integers(0, V, (B, T))
    f = lambda: kd_topk_loss_forward(s, ids, top, tail, y, temperature, alpha)[0]  # noqa: E731
    analytic = kd_topk_loss_backward(1.0, kd_topk_loss_forward(s, ids, top, tail, y, temperature, alpha)[2])
    np.testing.assert_allclose(analytic, numerical_grad(f, s), rtol=1e-6, atol=1e-8)


@given(V=st.integers(2, 12), k=st.integers(1, 12), temperature=st.floats(0.5, 5.0), seed=st.integers(0, 1000))
def test_kd_topk_is_full_kd_when_k_is_v_and_a_lower_bound_otherwise(V, k, temperature, seed):
    from tinyinfer.distill import kd_topk_loss_forward

    k = min(k, V)
    rng = np.random.default_rng(seed)
    s, t, ids, top, tail = _topk_case(rng, 2, 3, V, k, temperature)
    y = rng.integers(0, V, (2, 3))
    full = kd_loss_forward(s, t, y, temperature, 1.0)[1]["kl"]
    topk = kd_topk_loss_forward(s, ids, top, tail, y, temperature, 1.0)[1]["kl"]
    if k == V:
        assert np.all(np.isneginf(tail))  # nothing outside the top-k
        assert topk == pytest.approx(full, rel=1e-9, abs=1e-12)
    else:  # merging the tail into one bucket can only lose information (data processing inequality)
        # (tail_lse is float32: allow its rounding)
        assert -1e-12 <= topk <= full * (1 + 1e-6) + 1e-9


@settings(deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(2, 40), k=st.integers(1, 40),
       temperature=st.sampled_from([1.0, 0.7, 2.0, 4.0]), alpha=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_fused_kd_topk_agrees_with_the_numpy_twin(B, T, V, k, temperature, alpha, seed):
    from tinyinfer.distill import kd_topk_loss_and_grad, kd_topk_loss_backward, kd_topk_loss_forward

    k = min(k, V)
    rng = np.random.default_rng(seed)
    s, _, ids, top, tail = _topk_case(rng, B, T, V, k, temperature)
    s, top, tail = s.astype(np.float32), top.astype(np.float32), tail.astype(np.float32)
    y = rng.integers(0, V, (B, T))
    loss, parts, cache = kd_topk_loss_forward(s, ids, top, tail, y, temperature, alpha)
    grad = kd_topk_loss_backward(1.0, cache)
    fused_loss, fused_parts, fused_grad = kd_topk_loss_and_grad(s, ids, top, tail, y, temperature, alpha)
    assert fused_grad.shape == s.shape and fused_grad.dtype == np.float32
    assert fused_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert fused_parts["kl"] == pytest.approx(parts["kl"], rel=1e-4, abs=1e-6)
    assert fused_parts["ce"] == pytest.approx(parts["ce"], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(fused_grad, grad, rtol=1e-4, atol=1e-7)


def test_fused_kd_topk_errors():
    from tinyinfer.distill import kd_topk_loss_and_grad

    s, ids, top, tail, y = np.zeros((2, 5)), np.zeros((2, 3), int), np.zeros((2, 3)), np.zeros(2), np.zeros(2, int)
    with pytest.raises(ValueError, match="topk_logits"):
        kd_topk_loss_and_grad(s, ids, np.zeros((2, 4)), tail, y)
    with pytest.raises(ValueError, match="targets"):
        kd_topk_loss_and_grad(s, ids, top, tail, np.zeros(3, int))
    with pytest.raises(ValueError, match="topk_ids must be in"):
        kd_topk_loss_and_grad(s, ids + 5, top, tail, y)
    with pytest.raises(ValueError, match="targets must be in"):
        kd_topk_loss_and_grad(s, ids, top, tail, y - 1)
    with pytest.raises(ValueError, match="alpha"):
        kd_topk_loss_and_grad(s, ids, top, tail, y, alpha=2.0)


def test_teacher_topk_keeps_the_largest_logits_and_the_exact_tail_mass():
    from tinyinfer.distill import teacher_topk

    rng = np.random.default_rng(0)
    t = rng.standard_normal((5, 40)).astype(np.float32) * 3
    ids, top, tail = teacher_topk(t, 6, [1.0, 2.0])
    assert ids.dtype == np.int16 and top.dtype == np.float16 and tail.shape == (5, 2)
    for row in range(5):
        assert set(ids[row]) == set(np.argsort(-t[row])[:6])
        rest = np.delete(t[row], ids[row].astype(int)).astype(np.float64)
        for j, temperature in enumerate((1.0, 2.0)):
            assert tail[row, j] == pytest.approx(np.log(np.exp(rest / temperature).sum()), rel=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        teacher_topk(t, 41, [1.0])


def test_kd_topk_errors():
    from tinyinfer.distill import kd_topk_loss_forward

    s, ids, top, tail, y = np.zeros((2, 5)), np.zeros((2, 3), int), np.zeros((2, 3)), np.zeros(2), np.zeros(2, int)
    with pytest.raises(ValueError, match="topk_logits"):
        kd_topk_loss_forward(s, ids, np.zeros((2, 4)), tail, y)
    with pytest.raises(ValueError, match="tail_lse"):
        kd_topk_loss_forward(s, ids, top, np.zeros(3), y)
    with pytest.raises(ValueError, match="temperature"):
        kd_topk_loss_forward(s, ids, top, tail, y, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        kd_topk_loss_forward(s, ids, top, tail, y, alpha=-0.5)


def test_teacher_cache_round_trip_and_temperature_check(tmp_path):
    from conftest import small_model
    from tinyinfer.distill import TeacherCache, build_teacher_cache, stream_windows

    teacher = small_model("llama", vocab_size=37)
    windows = stream_windows(np.random.default_rng(0).integers(0, 37, 200), 16)
    assert windows.shape == (12, 17) and np.array_equal(windows[1, 0], windows[0, -1])
    cache = build_teacher_cache(teacher, windows, k=5, temperatures=(1.0, 2.0), batch_size=5, progress=False)
    cache.save(tmp_path / "c.safetensors")
    back = TeacherCache.load(tmp_path / "c.safetensors")
    for name in ("windows", "ids", "logits", "tail_lse"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cache, name))
    assert back.temperatures == [1.0, 2.0] and back.seconds == pytest.approx(cache.seconds)
    assert cache.cpu_seconds > 0 and back.cpu_seconds == pytest.approx(cache.cpu_seconds)  # process CPU time too
    # the cached top-k are the teacher's own logits at those positions
    logits = teacher.logits(windows[3, :-1].astype(np.int64))  # (16, 37)
    np.testing.assert_allclose(back.logits[3].astype(np.float32),
                               np.take_along_axis(logits, back.ids[3].astype(np.int64), -1), rtol=1e-3, atol=1e-3)
    half = back.subset([0, 1, 2])
    assert half.seconds == pytest.approx(cache.seconds / 4) and half.windows.shape == (3, 17)
    assert half.cpu_seconds == pytest.approx(cache.cpu_seconds / 4)
    both = TeacherCache.concat(half, half)
    assert both.cpu_seconds == pytest.approx(cache.cpu_seconds / 2) and both.windows.shape == (6, 17)
    with pytest.raises(ValueError, match="temperature must be one the cache was built for"):
        back.temperature_index(4.0)


def test_train_on_windows_resumes_exactly_and_cached_kd_moves_towards_the_teacher(tmp_path):
    """Stopped and resumed gives the same weights as one run; KD from a cached top-k, like the
    full KD above, pulls the student towards a teacher that the random labels say nothing about."""
    from conftest import small_config, small_model
    from tinyinfer.distill import (build_teacher_cache, cached_distillation_loss_fn, stream_windows,
                                   train_on_windows)
    from tinyinfer.evaluate import evaluate
    from tinyinfer.train import TrainConfig

    teacher = small_model("llama", vocab_size=37, n_embd=32, n_head=4, ffn_hidden=48)
    teacher.params["lm_head.weight"] *= 3
    stream = np.random.default_rng(0).integers(0, 37, 3000)
    windows = stream_windows(stream, 8)
    cache = build_teacher_cache(teacher, windows, k=16, temperatures=(2.0,), progress=False)
    config = small_config("llama", vocab_size=37, n_embd=32, n_layer=2)
    tc = TrainConfig(seq_len=8, batch_size=4, max_steps=60, warmup_steps=2, eval_every=100, lr=1e-2, eval_windows=20)
    quiet = dict(progress=False, log=lambda *_: None)
    kd = cached_distillation_loss_fn(cache, 2.0, 1.0)
    whole, _ = train_on_windows(config, tc, windows, stream[:200], tmp_path / "whole", loss_fn=kd, **quiet)
    tc_half = TrainConfig(**{**tc.__dict__, "max_steps": 60})
    train_on_windows(config, tc_half, windows, stream[:200], tmp_path / "split", loss_fn=kd, max_seconds=0.0, **quiet)
    resumed, history = train_on_windows(config, tc_half, windows, stream[:200], tmp_path / "split", loss_fn=kd, **quiet)
    assert history["val"][0]["step"] == 1 and history["val"][-1]["step"] == 60
    assert 0 < history["step_cpu_seconds"]  # CPU time of the steps, kept across the resume
    for name, value in whole.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)
    labels, _ = train_on_windows(config, tc, windows, stream[:200], tmp_path / "labels", **quiet)
    kl = lambda m: evaluate(m, stream, 8, 20, reference=teacher)["kl_divergence"]  # noqa: E731
    assert kl(whole) < 0.8 * kl(labels)  # measured: 0.80 vs 1.10 (top-4: 1.05, top-8: 0.94, full KD: 0.80)


def test_cached_kd_with_every_logit_is_the_on_the_fly_loss():
    from conftest import small_config, small_model
    from tinyinfer.distill import build_teacher_cache, cached_distillation_loss_fn, distillation_loss_fn, stream_windows
    from tinyinfer.model import init_params

    teacher = small_model("llama", vocab_size=37)
    windows = stream_windows(np.random.default_rng(1).integers(0, 37, 400), 16)
    cache = build_teacher_cache(teacher, windows, k=37, temperatures=(2.0,), progress=False)
    config = small_config("llama", vocab_size=37)
    params, rows = init_params(config, 0), np.array([3, 0, 7])
    x, y = windows[rows, :-1].astype(np.int64), windows[rows, 1:].astype(np.int64)
    cached_loss, cached_grads = cached_distillation_loss_fn(cache, 2.0, 0.7)(params, config, x, y, rows)
    fly_loss, fly_grads = distillation_loss_fn(teacher, 2.0, 0.7)(params, config, x, y)
    assert cached_loss == pytest.approx(fly_loss, rel=1e-3)  # float16 teacher logits in the cache
    for name, g in fly_grads.items():
        np.testing.assert_allclose(cached_grads[name], g, rtol=0.05, atol=1e-4)


def test_distill_from_a_cache_then_resume(tmp_path):
    import json

    out = tmp_path / "cached"
    args = [*QUICK, "--out", str(out), "--cache-windows", "40", "--top-k", "8", "--temperature", "2"]
    proc = distill_cli(*args, "--max-steps", "4")
    assert "teacher top-8 cache: 40 windows" in proc.stdout
    cache_file = out / "teacher_top8_first40.safetensors"
    assert cache_file.exists()
    first = json.loads((out / "history.json").read_text())
    assert first["tokens_seen"] == 4 * 4 * 32 and first["distill"]["cache_windows"] == 40
    assert first["distill"]["cache_seconds"] > 0
    built = cache_file.stat().st_mtime_ns
    proc = distill_cli(*args, "--max-steps", "8")
    assert "resuming from step 4" in proc.stdout and cache_file.stat().st_mtime_ns == built  # reused, not rebuilt
    assert json.loads((out / "history.json").read_text())["tokens_seen"] == 8 * 4 * 32
    proc = distill_cli(*[a if a != "8" else "16" for a in args], "--max-steps", "12", check=False)
    assert proc.returncode != 0 and "--top-k" in proc.stderr  # another cache is another run
    # a temperature the cache has no tail mass for is refused by name
    proc = distill_cli(*QUICK, "--out", str(tmp_path / "t3"), "--cache-windows", "40", "--top-k", "8",
                       "--cache", str(cache_file), "--temperature", "3", "--max-steps", "2", check=False)
    assert proc.returncode != 0 and "--temperature" in proc.stderr


def test_study_refuses_a_single_seed():
    from tinyinfer.bench.distill import main

    with pytest.raises(SystemExit, match="--seeds"):
        main(["--seeds", "0"])


def test_distill_from_the_pruned_teacher(tmp_path):
    """--init minitron starts the student from the teacher cut to the preset's shape: far below a random
    start's loss after a single step; a preset whose head size differs from the teacher's is refused."""
    import json

    out = tmp_path / "student25"
    quick = ["--max-docs", "30", "--seq-len", "32", "--batch-size", "2", "--eval-every", "1"]
    distill_cli("--teacher", "teacher", "--preset", "student25", "--init", "minitron", "--out", str(out),
                "--max-steps", "1", "--temperature", "1", "--alpha", "0.9", *quick)
    history = json.loads((out / "history.json").read_text())
    assert history["distill"]["init"] == "minitron" and (out / "minitron_init" / "model.safetensors").exists()
    assert history["val"][0]["loss"] < np.log(1024) - 1.0  # random weights start at about log(V) = 6.93 nats
    proc = distill_cli("--teacher", "tiny", "--preset", "student25", "--init", "minitron", "--out",
                       str(tmp_path / "bad"), "--max-steps", "1", *quick, check=False)
    assert proc.returncode != 0 and "head_dim" in proc.stderr
