"""Training: AdamW, warmup + cosine learning rate, gradient clipping, resumable checkpoints.

Lesson: lessons/03-training.py

The arithmetic of one step is model.loss_and_grads (the hand-written backward pass); this module
is the loop around it. Everything random comes from a generator seeded by (seed, step), so a run
that is stopped and resumed draws exactly the batches an uninterrupted run would have drawn.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .model import Model, init_params, loss_and_grads


@dataclass
class TrainConfig:
    seq_len: int = 256          # T of each training window
    batch_size: int = 8         # B windows a step
    max_steps: int = 1000       # length of the cosine schedule (and of the run)
    lr: float = 2e-3            # peak learning rate
    min_lr: float = 2e-4        # the cosine ends here
    warmup_steps: int = 100     # linear warmup from 0 to lr
    weight_decay: float = 0.1   # AdamW's decoupled decay, on matrices only (not norms or biases)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0      # clip the global gradient norm to this (0 disables)
    seed: int = 0
    eval_every: int = 250       # steps between held-out evaluations and checkpoints
    eval_windows: int = 32      # held-out windows per evaluation during training


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine decay from lr to min_lr at max_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), state kept as name -> array."""

    def __init__(self, params: dict, tc: TrainConfig):
        self.tc = tc
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params: dict, grads: dict, lr: float, masks: dict | None = None):
        """One update in place. masks (name -> 0/1 array) keep pruned weights and their state at 0."""
        tc = self.tc
        self.t += 1
        bias1 = 1.0 - tc.beta1 ** self.t
        bias2 = 1.0 - tc.beta2 ** self.t
        for name, p in params.items():
            g = grads[name]
            if masks is not None and name in masks:
                g = g * masks[name]
            m, v = self.m[name], self.v[name]
            m *= tc.beta1
            m += (1.0 - tc.beta1) * g
            v *= tc.beta2
            v += (1.0 - tc.beta2) * (g * g)
            if p.ndim >= 2 and tc.weight_decay:
                p *= 1.0 - lr * tc.weight_decay
            p -= lr * (m / bias1) / (np.sqrt(v / bias2) + 1e-8)
            if masks is not None and name in masks:
                p *= masks[name]


def sample_batch(stream: np.ndarray, tc: TrainConfig, step: int):
    """(B, T) inputs and targets from random windows; the same (seed, step) gives the same batch."""
    rng = np.random.default_rng([tc.seed, step])
    starts = rng.integers(0, len(stream) - tc.seq_len - 1, size=tc.batch_size)
    idx = starts[:, None] + np.arange(tc.seq_len + 1)[None, :]
    window = stream[idx].astype(np.int64)
    return window[:, :-1], window[:, 1:]


# --------------------------------------------------------------------------------------------
# checkpoints: one safetensors file with parameters, optimizer state and the step, written
# atomically, plus history.json; the model itself also goes out in Hugging Face layout.


def save_train_state(out_dir: Path, params, opt: AdamW, step: int, tc: TrainConfig, mc: ModelConfig,
                     masks: dict | None = None):
    from .safetensors import write_safetensors

    tensors = {f"param/{k}": v for k, v in params.items()}
    tensors.update({f"adam_m/{k}": v for k, v in opt.m.items()})
    tensors.update({f"adam_v/{k}": v for k, v in opt.v.items()})
    tensors.update({f"mask/{k}": v for k, v in (masks or {}).items()})  # pruning masks, so a resume keeps them
    meta = {"step": str(step), "adam_t": str(opt.t), "train_config": json.dumps(dataclasses.asdict(tc)),
            "model_config": json.dumps(mc.to_dict())}
    tmp = out_dir / "train_state.safetensors.tmp"
    write_safetensors(tmp, tensors, meta)
    tmp.replace(out_dir / "train_state.safetensors")



def _metadata_json(meta: dict, key: str, path):
    """A JSON value stored in a safetensors file's metadata, parsed within limits (never a RecursionError)."""
    from .jsonfile import load_json
    from .limits import SAFETENSORS_HEADER_BYTES

    if key not in meta:
        raise ValueError(f"{path}: metadata lacks {key!r}; is this a tinyinfer training state?")
    return load_json(meta[key].encode(), what=f"{path} metadata {key!r}", max_bytes=SAFETENSORS_HEADER_BYTES)


def load_train_state(out_dir: Path, with_masks: bool = False):
    """-> (params, opt_state (m, v, t), step, TrainConfig, ModelConfig) or None if absent.

    with_masks: append the stored pruning masks (name -> array, {} when none) to the tuple.
    """
    from .safetensors import read_safetensors

    path = out_dir / "train_state.safetensors"
    if not path.exists():
        return None
    tensors, meta = read_safetensors(path)
    group = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    tc = TrainConfig(**_metadata_json(meta, "train_config", path))
    mc = ModelConfig.from_dict(_metadata_json(meta, "model_config", path))
    state = group("param/"), (group("adam_m/"), group("adam_v/"), int(meta["adam_t"])), int(meta["step"]), tc, mc
    return (*state, group("mask/")) if with_masks else state


def check_masks(masks: dict, params: dict) -> dict:
    """masks (name -> 0/1 array shaped like params[name]) as float arrays of params' dtype; else ValueError."""
    checked = {}
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"masks has {name!r}, which is not a parameter of the model")
        mask = np.asarray(mask)
        if mask.shape != params[name].shape:
            raise ValueError(f"masks[{name!r}] has shape {mask.shape}, params[{name!r}] has {params[name].shape}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"masks[{name!r}] must hold only 0s and 1s")
        checked[name] = mask.astype(params[name].dtype)
    return checked


# --------------------------------------------------------------------------------------------
# the loop


def sample_rows(num_windows, batch_size, seed, step):
    """Which of a fixed set of windows make batch `step`: the same (seed, step) gives the same rows,
    so runs that differ only in their loss see the same data in the same order (and a resumed run
    continues it). tinyinfer/distill.py trains students this way, against a cache of the teacher."""
    return np.random.default_rng([seed, step]).integers(0, num_windows, size=batch_size)


def batch_loss(params, config, tc, step, train_stream, windows=None, loss_fn=None):
    """(loss, grads) of batch `step`: random windows of train_stream, or rows of fixed windows
    (then loss_fn, if any, also gets the rows: see train)."""
    if windows is None:
        inputs, targets = sample_batch(train_stream, tc, step)
        return (loss_fn or loss_and_grads)(params, config, inputs, targets)
    rows = sample_rows(len(windows), tc.batch_size, tc.seed, step)  # (B,)
    batch = windows[rows].astype(np.int64)  # (B, T + 1)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if loss_fn is None:
        return loss_and_grads(params, config, inputs, targets)
    return loss_fn(params, config, inputs, targets, rows)


def start_or_resume(out_dir: Path, model_config, tc, init_from=None, masks=None, log=print):
    """(params, opt, step, history, model_config, masks) of a new run, or of the run saved in out_dir.

    A resumed run keeps its own config, optimizer state, history and stored masks (masks given
    here take precedence). Masked weights are zeroed in new arrays, so the caller's init_from
    arrays are left as they were."""
    state = load_train_state(out_dir, with_masks=True)
    history_path = out_dir / "history.json"
    if state is not None:
        params, (m, v, t), step, _, model_config, stored_masks = state
        masks = (stored_masks or None) if masks is None else masks
        opt = AdamW(params, tc)
        opt.m, opt.v, opt.t = m, v, t
        history = json.loads(history_path.read_text()) if history_path.exists() else {"train": [], "val": []}
        log(f"resuming from step {step} in {out_dir}")
    else:
        params = init_from if init_from is not None else init_params(model_config, tc.seed)
        opt, step, history = AdamW(params, tc), 0, {"train": [], "val": []}
    if masks is not None:
        masks = check_masks(masks, params)
        params = {k: v * masks[k] if k in masks else v for k, v in params.items()}
    return params, opt, step, history, model_config, masks


def train(model_config: ModelConfig, tc: TrainConfig, train_stream, val_stream, out_dir,
          tokenizer=None, max_minutes=None, progress=True, init_from: dict | None = None, log=print,
          stop_at_step: int | None = None, loss_fn=None, masks: dict | None = None, windows=None,
          max_train_seconds=None):
    """Train (or resume) a model; checkpoints to out_dir every tc.eval_every steps and at the end.

    Resuming: when out_dir holds train_state.safetensors, training continues from its step with its
    parameters and optimizer state (tc.max_steps may be raised to train longer; the cosine schedule
    is recomputed for the new length). Stops early, after a checkpoint, when max_minutes pass, at
    stop_at_step, or on Ctrl-C; running the same call again continues exactly where it stopped.
    Returns the trained Model.

    loss_fn(params, config, inputs, targets) -> (loss, grads) replaces the plain next-token
    cross-entropy (tinyinfer/distill.py passes one that asks a teacher for soft targets).

    windows (N, seq_len + 1) int: train on these fixed windows instead of random ones from
    train_stream (which may then be None); batch `step` is windows[sample_rows(...)], and loss_fn
    is called with the rows too, loss_fn(params, config, inputs, targets, rows), so a cache of
    the teacher's outputs can be looked up by them. history.json's "step_seconds" counts training
    steps only (no evaluation or checkpoints), "step_cpu_seconds" the same steps' process CPU time;
    max_train_seconds stops when step_seconds reaches it.

    masks (name -> 0/1 array shaped like the parameter, e.g. prune.to_param_layout's) fine-tune a
    pruned model: the masked weights are zeroed at the start and AdamW.step keeps them, their
    gradients and their Adam state at zero. They are saved with the train state, so a resumed run
    keeps them (masks given to the call take precedence over stored ones).
    """
    from tqdm import tqdm

    from .checkpoint import save
    from .evaluate import evaluate

    if windows is not None and (windows.ndim != 2 or windows.shape[1] != tc.seq_len + 1):
        raise ValueError(f"windows must have shape (N, seq_len + 1) = (N, {tc.seq_len + 1}), got {windows.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history_path = out_dir / "history.json"
    params, opt, step, history, model_config, masks = start_or_resume(out_dir, model_config, tc, init_from,
                                                                      masks, log)
    history["model_config"] = model_config.to_dict()
    history["train_config"] = dataclasses.asdict(tc)
    model = Model(model_config, params, tokenizer)
    tokens_per_step = tc.batch_size * tc.seq_len

    stop = {"now": False}
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    started = time.time()
    elapsed_before = history.get("train_seconds", 0.0)

    def checkpoint():
        val = evaluate(model, val_stream, tc.seq_len, tc.eval_windows)
        history["val"].append({**val, "eval_tokens": val["tokens"], "step": step, "tokens": step * tokens_per_step})
        history["train_seconds"] = elapsed_before + time.time() - started
        history["tokens_seen"] = step * tokens_per_step
        save_train_state(out_dir, params, opt, step, tc, model_config, masks)
        save(model, out_dir)
        history_path.write_text(json.dumps(history, indent=1))
        return val

    bar = tqdm(total=tc.max_steps, initial=step, desc="training", unit="step", disable=not progress)
    try:
        window_loss, window_start = [], time.time()
        while step < tc.max_steps and not stop["now"]:
            step_start, step_cpu_start = time.perf_counter(), time.process_time()
            loss, grads = batch_loss(params, model_config, tc, step, train_stream, windows, loss_fn)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at step {step}; lower the learning rate")
            for name, mask in (masks or {}).items():
                grads[name] *= mask  # pruned weights get no gradient, and none counts in the clipping norm
            norm = clip_grad_norm(grads, tc.grad_clip)
            lr = lr_at(step, tc)
            opt.step(params, grads, lr, masks=masks)
            step += 1
            history["step_seconds"] = history.get("step_seconds", 0.0) + time.perf_counter() - step_start
            # process CPU time too: on a machine shared with other jobs wall time measures the neighbours
            history["step_cpu_seconds"] = history.get("step_cpu_seconds", 0.0) + time.process_time() - step_cpu_start
            window_loss.append(loss)
            if step % 25 == 0 or step == tc.max_steps:
                tok_s = len(window_loss) * tokens_per_step / (time.time() - window_start)
                history["train"].append({"step": step, "tokens": step * tokens_per_step,
                                         "loss": float(np.mean(window_loss)), "lr": lr,
                                         "grad_norm": norm, "tokens_per_s": tok_s})
                bar.set_postfix(loss=f"{np.mean(window_loss):.3f}", lr=f"{lr:.1e}", tok_s=f"{tok_s:.0f}")
                window_loss, window_start = [], time.time()
            bar.update(1)
            if step % tc.eval_every == 0:
                val = checkpoint()
                log(f"step {step}: held-out loss {val['loss']:.4f}, top-1 {val['top1']:.3f}")
                window_loss, window_start = [], time.time()  # keep evaluation out of tokens/s
            if stop_at_step is not None and step >= stop_at_step:
                break
            if max_minutes is not None and time.time() - started > 60 * max_minutes:
                log(f"stopping after {max_minutes} minutes at step {step} (resume with the same command)")
                break
            if max_train_seconds is not None and history["step_seconds"] >= max_train_seconds:
                break
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous_handler)
    if not history["val"] or history["val"][-1]["step"] != step:
        checkpoint()
    return model
