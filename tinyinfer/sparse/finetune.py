"""The article's loop: prune, fine-tune to recover, repeat; and the dense control it must beat.

Lesson: lessons/05-pruning.py

    masks = prune_to(weights_of(model), 0.5)                  # (N, K) masks, exact-k per layer
    pruned = prune.apply_masks(model, prune.to_param_layout(masks, model.config))
    tuned = finetune(pruned, prune.to_param_layout(masks, model.config), train, val, settings,
                     stage=0, out_dir="runs/x/s0")
    masks = prune_to(weights_of(tuned), 0.7, previous=masks)  # the next level acts on survivors only
    control = finetune(model, None, train, val, settings, stage=0, out_dir="runs/x/d0")  # dense control

Fine-tuning is the ordinary trainer (tinyinfer/train.py `train`) started from the model's weights
with `masks=`: pruned weights, their gradients and their Adam state stay exactly zero.

Why a dense control. Fine-tuning is extra training. A pruned model fine-tuned for S steps that
is compared with the *original* model is credited with whatever those S steps would have done for
any model (on a teacher that is not fully converged, a pruned model can "beat" its own teacher
that way). So every fine-tuned pruned model is compared with the unpruned model fine-tuned with the
same data (the same seeds, so the same batches), the same learning-rate schedule and the same
number of steps: `finetune(model, None, ...)` with the same `stage`.

Schedules. `iterative` here means a few levels (50%, 70%, 90%), each pruned at once and then
fine-tuned for S steps, as the article describes. Zhu & Gupta (2017) instead raise the sparsity a
little at many steps along a cubic curve, `cubic_sparsity`, pruning fast while many redundant
weights remain and slowly near the end; `cubic_levels` samples that curve at n prune points.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model import Model
from ..train import TrainConfig, train
from . import prune

# --------------------------------------------------------------------------------------------
# schedules


def cubic_sparsity(step: int, final_sparsity: float, begin_step: int, end_step: int,
                   initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta's gradual schedule: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3.

    initial_sparsity before begin_step, final_sparsity from end_step on; in between the sparsity
    rises fastest at the start (many redundant weights to take) and flattens towards the end
    (the last weights to go matter most, so the network gets time to adapt).
    """
    if not 0.0 <= initial_sparsity <= final_sparsity <= 1.0:
        raise ValueError(f"need 0 <= initial_sparsity <= final_sparsity <= 1, got "
                         f"{initial_sparsity!r} and {final_sparsity!r}")
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be greater than begin_step ({begin_step})")
    progress = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def cubic_levels(final_sparsity: float, n_levels: int, initial_sparsity: float = 0.0) -> list:
    """The cubic schedule sampled at n_levels evenly spaced prune points (the last is final_sparsity)."""
    if n_levels < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}")
    return [cubic_sparsity(i, final_sparsity, 0, n_levels, initial_sparsity) for i in range(1, n_levels + 1)]


# --------------------------------------------------------------------------------------------
# masks at an exact total sparsity


def prune_to(weights: dict, sparsity: float, previous: dict | None = None) -> dict:
    """Per-layer magnitude masks with exactly round(sparsity * n) zeros in each (N, K) matrix.

    With `previous` masks, only the surviving weights are ranked (torch's repeated pruning), and
    each matrix loses just the count needed to reach the new total: round(s * n) - already pruned.
    """
    masks = {}
    for name, w in weights.items():
        already = 0 if previous is None or name not in previous else int(w.size - np.count_nonzero(previous[name]))
        target = prune.count_to_prune(float(sparsity), w.size, "sparsity")
        if target < already:
            raise ValueError(f"{name} already has {already} pruned weights, more than sparsity {sparsity} "
                             f"asks ({target}); sparsity can only rise")
        masks.update(prune.magnitude_masks({name: w}, target - already, previous))
    return masks


def sparsity_of(masks: dict) -> float:
    """Fraction of zeros over all masked entries."""
    total = sum(m.size for m in masks.values())
    return 1.0 - sum(int(np.count_nonzero(m)) for m in masks.values()) / max(1, total)


# --------------------------------------------------------------------------------------------
# fine-tuning


@dataclass
class FinetuneSettings:
    steps: int = 300            # S steps at each stage
    batch_size: int = 4         # B windows a step
    seq_len: int = 256          # T: the teacher's training window
    lr: float = 3e-4            # peak; the teacher ended its own schedule at 2e-4
    min_lr: float = 3e-5        # the cosine of each stage ends here
    warmup_steps: int = 30      # each stage warms up again: pruning moved the weights
    weight_decay: float = 0.1   # as the teacher was trained
    seed: int = 1000            # stage i draws batches with seed + i (the same for pruned and dense runs)
    check_windows: int = 4      # held-out windows train() itself checks at each evaluation
    evals: int = 1              # held-out checks a stage (evenly spaced; the last at its end): a curve

    def train_config(self, stage: int) -> TrainConfig:
        return TrainConfig(seq_len=self.seq_len, batch_size=self.batch_size, max_steps=self.steps, lr=self.lr,
                           min_lr=self.min_lr, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                           seed=self.seed + stage, eval_every=max(1, self.steps // max(1, self.evals)),
                           eval_windows=self.check_windows)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def float32_params(model: Model) -> dict:
    """A private float32 copy of the parameters (train() updates its arrays in place)."""
    return {name: np.array(value, dtype=np.float32, copy=True) for name, value in model.params.items()}


def finetune(model: Model, masks: dict | None, train_stream, val_stream, settings: FinetuneSettings,
             stage: int, out_dir, progress: bool = True, log=print, windows=None, loss_fn=None) -> Model:
    """Fine-tune model for settings.steps steps (stage picks the batches); masks=None is the dense control.

    masks: param layout (prune.to_param_layout). out_dir holds train()'s resumable state, so an
    interrupted stage continues where it stopped and a finished one is read back unchanged.
    The model passed in is not modified.
    windows (N, seq_len + 1): train on these fixed windows instead of random ones of train_stream
    (which may then be None); loss_fn(params, config, inputs, targets, rows) replaces cross-entropy,
    e.g. tinyinfer.distill.cached_distillation_loss_fn: distillation from the dense teacher, whose
    top-k logits were cached over the same windows. Runs with the same settings and stage see the
    same batches whatever their loss, so a distilled run and its labels-only twin compare.
    """
    return train(model.config, settings.train_config(stage), train_stream, val_stream, Path(out_dir),
                 tokenizer=model.tokenizer, progress=progress, init_from=float32_params(model), log=log,
                 masks=masks, windows=windows, loss_fn=loss_fn)


def weights_of(model: Model) -> dict:
    """name -> (N, K) block linear weights (prune.linear_weights), the input of the mask functions."""
    return prune.linear_weights(model)
