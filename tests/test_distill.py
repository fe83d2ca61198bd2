"""The distillation loss: its gradient, its limits, its errors."""
import numpy as np
import pytest
from hypothesis import given
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
