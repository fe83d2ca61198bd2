"""Knowledge distillation: a student learns from the teacher's whole output distribution.

Lesson: lessons/06-distillation.py

Hinton, Vinyals & Dean (2015): soften both distributions with a temperature T, so the teacher's
small probabilities ("dark knowledge": which wrong answers are nearly right) carry weight, and
match them with KL(teacher || student). The gradient of that term shrinks like 1/T², so it is
multiplied by T² to keep its scale as T changes. It is mixed with the ordinary hard-label
cross-entropy by a weight alpha:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

averaged over positions. kd_loss_forward / kd_loss_backward follow the op convention of
tinyinfer/ops.py, and tests/test_distill.py checks the backward against finite differences.
"""
from __future__ import annotations

import numpy as np

from .ops import log_softmax


def kd_loss_forward(student_logits, teacher_logits, targets, temperature=2.0, alpha=0.5):
    """student_logits, teacher_logits: (..., V); targets: int (...) -> (loss, {"loss", "kl", "ce"}, cache).

    The middle dict reports the two terms separately, for loss curves.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits has shape {teacher_logits.shape}, student_logits {student_logits.shape}; "
                         "they must match")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)
    t = teacher_logits.reshape(-1, V).astype(s.dtype, copy=False)
    y = targets.reshape(-1)
    n = y.size
    log_ps_T = log_softmax(s / temperature)  # student, softened
    log_pt_T = log_softmax(t / temperature)  # teacher, softened
    pt_T = np.exp(log_pt_T)
    kl = float((pt_T * (log_pt_T - log_ps_T)).sum() / n)
    log_ps = log_softmax(s)
    ce = float(-log_ps[np.arange(n), y].mean())
    loss = alpha * temperature ** 2 * kl + (1.0 - alpha) * ce
    cache = (log_ps_T, pt_T, log_ps, y, temperature, alpha, student_logits.shape)
    return loss, {"loss": loss, "kl": kl, "ce": ce}, cache


def kd_loss_backward(dloss, cache):
    """d loss / d student_logits, shape (..., V). The teacher gets no gradient."""
    log_ps_T, pt_T, log_ps, y, temperature, alpha, shape = cache
    n = y.size
    # d KL / d s = (softmax(s/T) - softmax(t/T)) / T per position; times T^2 leaves a factor T
    dsoft = alpha * temperature * (np.exp(log_ps_T) - pt_T)
    dhard = np.exp(log_ps)
    dhard[np.arange(n), y] -= 1.0
    dhard *= 1.0 - alpha
    return ((dsoft + dhard) * (dloss / n)).reshape(shape)


def distillation_loss_fn(teacher, temperature=2.0, alpha=0.5):
    """A loss_fn for tinyinfer.train.train: the teacher's logits are computed on the fly.

    That costs a teacher forward pass per step (the lesson measures how much); the student's
    backward pass is the model's own, fed with the KD loss's gradient instead of plain CE's.
    """
    from .model import backward, forward

    def loss_fn(params, config, inputs, targets):
        teacher_logits = teacher.logits(inputs)  # (B, T, V), no gradient
        caches = {}
        student_logits = forward(params, config, inputs, caches=caches)
        loss, _, cache = kd_loss_forward(student_logits, teacher_logits, targets, temperature, alpha)
        return loss, backward(kd_loss_backward(1.0, cache), params, config, caches)

    return loss_fn


def record_run_settings(out_dir, settings: dict):
    """Write out_dir/distill.json, or refuse (ValueError naming the flags) if a run there differs.

    A resumed run must keep its loss: one whose temperature, alpha or teacher changed half-way
    compares with nothing. settings: {"teacher": path, "labels_only", "temperature", "alpha", ...}.
    """
    import json
    from pathlib import Path

    path = Path(out_dir) / "distill.json"
    if path.exists():
        before = json.loads(path.read_text())
        keys = ["labels_only"] if before.get("labels_only") != settings["labels_only"] else ["temperature", "alpha"]
        changed = [f"--{key.replace('_', '-')} (was {before.get(key)}, now {settings[key]})"
                   for key in keys if before.get(key) != settings[key]]
        if Path(before["teacher"]).resolve() != Path(settings["teacher"]).resolve():
            changed.append(f"--teacher (was {before['teacher']}, now {settings['teacher']})")
        if changed:
            raise ValueError(f"{out_dir} holds a run with other settings: {', '.join(changed)}; "
                             "resume with the same settings or choose a new --out")
    path.write_text(json.dumps(settings, indent=1))
