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

The teacher's forward pass costs more than the student's whole training step (about 3x the
student's throughput, measured in benchmarks/distill.md). So the teacher can be asked once:
build_teacher_cache runs it over fixed windows of the training stream and keeps, per position,
its top-k logits (float16), their token ids (int16) and the exact log-mass of the other V - k
tokens at each temperature that will be used. kd_topk_loss_forward then matches the student to
the teacher over k + 1 buckets (the k tokens, and "everything else" as one bucket): exact on the
top-k, and on the tail only its total mass is matched, not its shape. train_on_windows is the
training loop the three ways share (labels only, teacher on the fly, teacher from the cache), so
they see exactly the same batches.
"""
from __future__ import annotations

import json
import math

import numpy as np
from numba import njit

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


# --------------------------------------------------------------------------------------------
# the teacher's top-k, cached once


def teacher_topk(teacher_logits, k, temperatures):
    """teacher_logits (..., V) -> ids int16 (..., k), logits float16 (..., k), tail_lse float32 (..., nT).

    tail_lse[..., j] = log sum over the V - k tokens outside the top-k of exp(logit / temperatures[j]):
    with it the teacher's softened distribution over (top-k tokens, the rest) is exact at that T.
    """
    V = teacher_logits.shape[-1]
    if not 1 <= k <= V:
        raise ValueError(f"k must be in [1, vocab_size={V}], got {k!r}")
    t = teacher_logits.reshape(-1, V).astype(np.float32, copy=False)  # (n, V)
    ids = np.argpartition(-t, k - 1, axis=-1)[:, :k]  # (n, k), the k largest in no particular order
    top = np.take_along_axis(t, ids, axis=-1)  # (n, k)
    tail = t.copy()
    np.put_along_axis(tail, ids, -np.inf, axis=-1)  # (n, V), the top-k masked out
    tail_lse = np.empty((t.shape[0], len(temperatures)), np.float32)  # (n, nT)
    for j, temperature in enumerate(temperatures):
        tail_lse[:, j] = _logsumexp(tail / temperature)
    lead = teacher_logits.shape[:-1]
    return (ids.astype(np.int16).reshape(*lead, k), top.astype(np.float16).reshape(*lead, k),
            tail_lse.reshape(*lead, len(temperatures)))


def _logsumexp(x):
    """log sum exp over the last axis; -inf when every entry is -inf (an empty tail)."""
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


class TeacherCache:
    """The teacher's top-k over N fixed windows of the training stream.

    windows (N, L + 1) token ids: inputs are [:, :-1], labels [:, 1:]
    ids (N, L, k) int16, logits (N, L, k) float16, tail_lse (N, L, nT) float32 at `temperatures`
    seconds: wall time the teacher spent building it (charged to distilled runs in the study).
    cpu_seconds: the same as process CPU time (time.process_time), which a machine shared with other
    jobs does not inflate; None for a cache saved before it was recorded.
    """

    def __init__(self, windows, ids, logits, tail_lse, temperatures, seconds, cpu_seconds=None):
        self.windows, self.ids, self.logits, self.tail_lse = windows, ids, logits, tail_lse
        self.temperatures = [float(x) for x in temperatures]
        self.seconds = float(seconds)
        self.cpu_seconds = None if cpu_seconds is None else float(cpu_seconds)

    @property
    def k(self):
        return self.ids.shape[-1]

    def temperature_index(self, temperature):
        for j, cached in enumerate(self.temperatures):
            if abs(cached - temperature) < 1e-9:
                return j
        raise ValueError(f"temperature must be one the cache was built for {self.temperatures}, got {temperature!r}")

    def save(self, path):
        from .safetensors import write_safetensors

        meta = {"temperatures": json.dumps(self.temperatures), "seconds": str(self.seconds)}
        if self.cpu_seconds is not None:
            meta["cpu_seconds"] = str(self.cpu_seconds)
        write_safetensors(path, {"windows": self.windows, "ids": self.ids, "logits": self.logits,
                                 "tail_lse": self.tail_lse}, meta)

    @classmethod
    def load(cls, path):
        from .safetensors import read_safetensors

        t, meta = read_safetensors(path)
        from .jsonfile import load_json
        from .limits import SAFETENSORS_HEADER_BYTES

        temperatures = load_json(meta["temperatures"].encode(), what=f"{path} metadata 'temperatures'",
                                 max_bytes=SAFETENSORS_HEADER_BYTES, expect_object=False)
        cpu = meta.get("cpu_seconds")
        return cls(t["windows"], t["ids"], t["logits"], t["tail_lse"], temperatures,
                   float(meta["seconds"]), None if cpu is None else float(cpu))

    @staticmethod
    def concat(first, second):
        """Two caches of the same teacher, k and temperatures as one (their build times add up)."""
        if first.k != second.k or first.temperatures != second.temperatures:
            raise ValueError(f"second has top-{second.k} at {second.temperatures}; first has top-{first.k} at "
                             f"{first.temperatures}; they must match")
        join = lambda name: np.concatenate([getattr(first, name), getattr(second, name)])  # noqa: E731
        cpu = (None if first.cpu_seconds is None or second.cpu_seconds is None
               else first.cpu_seconds + second.cpu_seconds)
        return TeacherCache(join("windows"), join("ids"), join("logits"), join("tail_lse"), first.temperatures,
                            first.seconds + second.seconds, cpu)

    def subset(self, rows):
        """The cache restricted to some windows; its cost is charged pro rata."""
        rows = np.asarray(rows)
        share = len(rows) / len(self.windows)
        return TeacherCache(self.windows[rows], self.ids[rows], self.logits[rows], self.tail_lse[rows],
                            self.temperatures, self.seconds * share,
                            None if self.cpu_seconds is None else self.cpu_seconds * share)


def stream_windows(stream, seq_len):
    """(N, seq_len + 1) consecutive windows of a token stream, overlapping by one token (the label)."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"the stream has {len(stream)} tokens, too few for one window of {seq_len + 1}")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return np.asarray(stream)[idx].astype(np.uint16 if int(np.max(stream)) < 65536 else np.int64)


def build_teacher_cache(teacher, windows, k=32, temperatures=(1.0, 2.0, 4.0), batch_size=8, progress=True):
    """Run the teacher once over every window and keep its top-k (see teacher_topk)."""
    import time

    from tqdm import tqdm

    if teacher.config.vocab_size > 32767:
        raise ValueError(f"the cache stores token ids as int16; vocab_size {teacher.config.vocab_size} is too big")
    N, L1 = windows.shape
    ids = np.empty((N, L1 - 1, k), np.int16)
    logits = np.empty((N, L1 - 1, k), np.float16)
    tail_lse = np.empty((N, L1 - 1, len(temperatures)), np.float32)
    started, cpu_started = time.time(), time.process_time()
    for start in tqdm(range(0, N, batch_size), desc="teacher top-k", unit="batch", disable=not progress):
        rows = slice(start, start + batch_size)
        out = teacher.logits(windows[rows, :-1].astype(np.int64))  # (B, L, V)
        ids[rows], logits[rows], tail_lse[rows] = teacher_topk(out, k, temperatures)
    return TeacherCache(windows, ids, logits, tail_lse, temperatures, time.time() - started,
                        time.process_time() - cpu_started)


def window_order(num_windows, seed=1234):
    """A fixed random order of a stream's windows: a cache of N windows takes the first N, so a
    smaller cache (the study's pool) is a part of a bigger one (the shipped student's)."""
    return np.random.default_rng(seed).permutation(num_windows)


def load_or_build_cache(teacher, train_stream, seq_len, path, first, count, k=32, temperatures=(1.0, 2.0, 4.0),
                        progress=True):
    """The teacher's top-k over windows window_order[first:first + count] of the stream, read from
    path when it exists, else built (timed) and saved there."""
    from pathlib import Path

    path = Path(path)
    if path.exists():
        return TeacherCache.load(path)
    windows = stream_windows(train_stream, seq_len)
    if first + count > len(windows):
        raise ValueError(f"first + count = {first + count} windows asked for, but the stream has only "
                         f"{len(windows)} windows of {seq_len + 1} tokens")
    rows = window_order(len(windows))[first:first + count]
    cache = build_teacher_cache(teacher, windows[rows], k, temperatures, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.save(path)
    return cache


# --------------------------------------------------------------------------------------------
# KD on the cached top-k: k + 1 buckets


def _check_topk_args(student_logits, topk_ids, topk_logits, tail_lse, temperature, alpha):
    """The shapes and settings both top-k KD losses take, checked with the argument named."""
    if topk_ids.shape != topk_logits.shape or topk_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"topk_ids {topk_ids.shape} and topk_logits {topk_logits.shape} must be (..., k) "
                         f"with the leading shape of student_logits {student_logits.shape}")
    if np.shape(tail_lse) != student_logits.shape[:-1]:
        raise ValueError(f"tail_lse has shape {np.shape(tail_lse)}, expected {student_logits.shape[:-1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


def kd_topk_loss_forward(student_logits, topk_ids, topk_logits, tail_lse, targets, temperature=2.0, alpha=0.5):
    """KD against a teacher known only by its top-k logits and the log-mass of the rest.

    student_logits (..., V); topk_ids int (..., k); topk_logits (..., k); tail_lse (...): the
    teacher's log sum exp(logit / T) over the other V - k tokens at this temperature (-inf when
    k = V). The teacher's softened distribution becomes k + 1 buckets, q_i for its top-k tokens
    and q_rest for the rest, exact; the student's is p_i and p_rest = 1 - sum p_i at the same T:

        kl = sum_i q_i log(q_i / p_i) + q_rest log(q_rest / p_rest)

    This is the full KL when k = V and never more than it otherwise (merging outcomes can only
    lose information): the student is told how much mass the tail deserves, not how to spread it.
    Returns (loss, {"loss", "kl", "ce"}, cache) like kd_loss_forward.
    """
    _check_topk_args(student_logits, topk_ids, topk_logits, tail_lse, temperature, alpha)
    V, k = student_logits.shape[-1], topk_ids.shape[-1]
    s = student_logits.reshape(-1, V)
    n = s.shape[0]
    ids = topk_ids.reshape(n, k).astype(np.int64)
    tz = topk_logits.reshape(n, k).astype(s.dtype) / temperature  # (n, k)
    t_rest = np.asarray(tail_lse, dtype=s.dtype).reshape(n)  # (n,)
    t_all = np.logaddexp(_logsumexp(tz), t_rest)  # (n,) the teacher's normaliser at T
    log_q = tz - t_all[:, None]  # (n, k)
    log_q_rest = t_rest - t_all  # (n,), -inf for an empty tail
    log_ps_T = log_softmax(s / temperature)  # (n, V)
    log_p = np.take_along_axis(log_ps_T, ids, axis=-1)  # (n, k)
    rest = log_ps_T.copy()
    np.put_along_axis(rest, ids, -np.inf, axis=-1)
    log_p_rest = _logsumexp(rest)  # (n,)
    q, q_rest = np.exp(log_q), np.exp(log_q_rest)
    with np.errstate(invalid="ignore"):  # 0 * (-inf - -inf) for an empty tail: the term is 0
        rest_term = np.where(q_rest > 0, q_rest * (log_q_rest - log_p_rest), 0.0)
    kl = float(((q * (log_q - log_p)).sum() + rest_term.sum()) / n)
    y = targets.reshape(-1)
    log_ps = log_softmax(s)
    ce = float(-log_ps[np.arange(n), y].mean())
    loss = alpha * temperature ** 2 * kl + (1.0 - alpha) * ce
    cache = (log_ps_T, ids, q, log_q_rest, log_p_rest, log_ps, y, temperature, alpha, student_logits.shape)
    return loss, {"loss": loss, "kl": kl, "ce": ce}, cache


def kd_topk_loss_backward(dloss, cache):
    """d loss / d student_logits (..., V).

    The KL term's gradient is (p - q_full) / T as in full KD, where q_full is the teacher's top-k
    probabilities and, on the tail, q_rest spread in proportion to the student's own tail:
    q_full_j = q_rest * p_j / p_rest. Times alpha T^2, that leaves alpha T (p - q_full).
    """
    log_ps_T, ids, q, log_q_rest, log_p_rest, log_ps, y, temperature, alpha, shape = cache
    n = y.size
    with np.errstate(invalid="ignore"):
        target = np.exp(log_ps_T + np.where(np.isfinite(log_q_rest), log_q_rest - log_p_rest, -np.inf)[:, None])
    np.put_along_axis(target, ids, q, axis=-1)  # (n, V): the teacher, its tail shaped like the student's
    dsoft = alpha * temperature * (np.exp(log_ps_T) - target)
    dhard = np.exp(log_ps)
    dhard[np.arange(n), y] -= 1.0
    dhard *= 1.0 - alpha
    return ((dsoft + dhard) * (dloss / n)).reshape(shape)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _kd_topk_rows(e, m, s1, e1, m1, ids, topk_logits, tail_lse, y, temperature, alpha, grad_scale, grad):
    """The row loop of kd_topk_loss_and_grad: returns (sum of KL, sum of CE) over the rows and writes
    d loss / d s * grad_scale into grad (n, V). e = exp(s / T - m) with m the row maxima of s / T;
    e1, m1 the same at T = 1 (the same arrays when T = 1); s1 = s (the logits at T = 1)."""
    n, V = e.shape
    k = ids.shape[1]
    inv_t = 1.0 / temperature
    in_top = np.zeros(V, np.bool_)
    kl_sum = 0.0
    ce_sum = 0.0
    soft = alpha * temperature
    for r in range(n):
        total = 0.0
        for j in range(V):
            total += e[r, j]
        top = 0.0
        for i in range(k):
            in_top[ids[r, i]] = True
            top += e[r, ids[r, i]]
        rest = 0.0  # the mass off the teacher's top-k, summed as such (no 1 - top: no cancellation)
        for j in range(V):
            rest += 0.0 if in_top[j] else e[r, j]
        log_total = math.log(total)
        log_p_rest = math.log(rest) - log_total if rest > 0.0 else -np.inf
        # the teacher's k + 1 buckets
        tm = -np.inf
        for i in range(k):
            tm = max(tm, topk_logits[r, i] * inv_t)
        t_sum = 0.0
        for i in range(k):
            t_sum += math.exp(topk_logits[r, i] * inv_t - tm)
        t_top = tm + math.log(t_sum)
        t_rest = tail_lse[r]
        t_all = max(t_top, t_rest) + math.log1p(math.exp(-abs(t_top - t_rest))) if t_rest > -np.inf else t_top
        log_q_rest = t_rest - t_all
        q_rest = math.exp(log_q_rest)
        kl = q_rest * (log_q_rest - log_p_rest) if q_rest > 0.0 else 0.0
        total1 = total
        if e1 is not e:
            total1 = 0.0
            for j in range(V):
                total1 += e1[r, j]
        log_total1 = math.log(total1)
        ce_sum += -(s1[r, y[r]] - m1[r] - log_total1)
        # gradient: alpha T (p_T - q_full) + (1 - alpha) (p_1 - onehot), q_full's tail shaped like p_T's
        tail_ratio = math.exp(log_q_rest - log_p_rest) if q_rest > 0.0 else 0.0
        a_top = soft / total * grad_scale
        a_rest = soft * (1.0 - tail_ratio) / total * grad_scale
        a_hard = (1.0 - alpha) / total1 * grad_scale
        for j in range(V):
            grad[r, j] = e[r, j] * (a_top if in_top[j] else a_rest) + e1[r, j] * a_hard
        grad[r, y[r]] -= (1.0 - alpha) * grad_scale
        for i in range(k):
            j = ids[r, i]
            log_q = topk_logits[r, i] * inv_t - t_all
            q = math.exp(log_q)
            kl += q * (log_q - (s1[r, j] * inv_t - m[r] - log_total))
            grad[r, j] -= soft * q * grad_scale
            in_top[j] = False
        kl_sum += kl
    return kl_sum, ce_sum


def kd_topk_loss_and_grad(student_logits, topk_ids, topk_logits, tail_lse, targets, temperature=2.0, alpha=0.5):
    """kd_topk_loss_forward and kd_topk_loss_backward(1.0, ...) in one compiled pass a row: the same
    loss and gradient (to float32 rounding; tests/test_distill.py compares them), a few times faster,
    so a distilled training step costs little more than a labels-only one.
    Returns (loss, {"loss", "kl", "ce"}, d loss / d student_logits float32)."""
    _check_topk_args(student_logits, topk_ids, topk_logits, tail_lse, temperature, alpha)
    if np.shape(targets) != student_logits.shape[:-1]:
        raise ValueError(f"targets has shape {np.shape(targets)}, expected {student_logits.shape[:-1]}")
    V, k = student_logits.shape[-1], topk_ids.shape[-1]
    s = np.ascontiguousarray(student_logits, dtype=np.float32).reshape(-1, V)
    n = s.shape[0]
    ids = np.ascontiguousarray(topk_ids, dtype=np.int64).reshape(n, k)
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"topk_ids must be in [0, {V}), got values in [{ids.min()}, {ids.max()}]")
    y = np.ascontiguousarray(targets, dtype=np.int64).reshape(n)
    if y.size and (y.min() < 0 or y.max() >= V):
        raise ValueError(f"targets must be in [0, {V}), got values in [{y.min()}, {y.max()}]")
    grad = np.empty_like(s)
    z = s if temperature == 1.0 else s / np.float32(temperature)
    m = z.max(axis=1)
    e = np.exp(z - m[:, None])  # NumPy's vectorized exp: the one pass over (n, V) that is not in cache
    e1, m1 = (e, m) if temperature == 1.0 else (np.exp(s - s.max(axis=1)[:, None]), s.max(axis=1))
    kl_sum, ce_sum = _kd_topk_rows(e, m, s, e1, m1, ids, np.ascontiguousarray(topk_logits, dtype=np.float32).reshape(n, k),
                                   np.ascontiguousarray(tail_lse, dtype=np.float32).reshape(n), y,
                                   float(temperature), float(alpha), 1.0 / n, grad)
    kl, ce = kl_sum / n, ce_sum / n
    loss = alpha * temperature ** 2 * kl + (1.0 - alpha) * ce
    return loss, {"loss": loss, "kl": kl, "ce": ce}, grad.reshape(student_logits.shape)


def cached_distillation_loss_fn(cache: TeacherCache, temperature=2.0, alpha=0.5):
    """A loss_fn for train_on_windows: soft targets read from the cache, no teacher forward pass."""
    from .model import backward, forward

    j = cache.temperature_index(temperature)

    def loss_fn(params, config, inputs, targets, rows):
        caches = {}
        student_logits = forward(params, config, inputs, caches=caches)  # (B, T, V)
        loss, _, dlogits = kd_topk_loss_and_grad(student_logits, cache.ids[rows], cache.logits[rows],
                                                 cache.tail_lse[rows, :, j], targets, temperature, alpha)
        return loss, backward(dlogits.astype(student_logits.dtype, copy=False), params, config, caches)

    return loss_fn


# --------------------------------------------------------------------------------------------
# one training loop over fixed windows, for all three ways of training the student


def train_on_windows(model_config, tc, windows, val_stream, out_dir, loss_fn=None, tokenizer=None,
                     max_minutes=None, max_seconds=None, progress=True, log=print, init_from=None):
    """Train a student on batches of fixed windows (N, T + 1): tinyinfer.train.train with windows=.

    loss_fn(params, config, inputs, targets, rows) -> (loss, grads); None is plain cross-entropy.
    rows are the windows' indices (a cached teacher is looked up by them), the same for every
    loss at a given (seed, step) (tinyinfer.train.sample_rows), so labels-only, on-the-fly and
    cached distillation see identical batches. Resumable; max_seconds counts training steps only.
    init_from: starting parameters (e.g. the teacher pruned to the student's shape,
    tinyinfer/sparse/minitron.py) instead of a random initialisation. Returns (model, history).
    """
    from pathlib import Path

    from .train import train

    model = train(model_config, tc, None, val_stream, out_dir, tokenizer=tokenizer, max_minutes=max_minutes,
                  progress=progress, log=log, loss_fn=loss_fn, windows=windows, max_train_seconds=max_seconds,
                  init_from=init_from)
    return model, json.loads((Path(out_dir) / "history.json").read_text())


def record_run_settings(out_dir, settings: dict):
    """Write out_dir/distill.json, or refuse (ValueError naming the flags) if a run there differs.

    A resumed run must keep its loss: one whose temperature, alpha or teacher changed half-way
    compares with nothing. settings: {"teacher": path, "labels_only", "temperature", "alpha", ...}.
    """
    from pathlib import Path

    path = Path(out_dir) / "distill.json"
    if path.exists():
        before = json.loads(path.read_text())
        keys = (["labels_only"] if before.get("labels_only") != settings["labels_only"] else
                ["temperature", "alpha", "cache_windows", "top_k", "init"])
        changed = [f"--{key.replace('_', '-')} (was {before.get(key)}, now {settings.get(key)})"
                   for key in keys if before.get(key) != settings.get(key)]
        if Path(before["teacher"]).resolve() != Path(settings["teacher"]).resolve():
            changed.append(f"--teacher (was {before['teacher']}, now {settings['teacher']})")
        if changed:
            raise ValueError(f"{out_dir} holds a run with other settings: {', '.join(changed)}; "
                             "resume with the same settings or choose a new --out")
    path.write_text(json.dumps(settings, indent=1))
