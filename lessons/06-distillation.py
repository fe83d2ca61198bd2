# Lesson 06: distillation, a small student taught by a big teacher's whole distribution.
# Source of notebooks/06-distillation.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/06-distillation.py` from the repository root.

# %% [markdown]
# # Lesson 06 — Distillation: learning from the teacher's doubts
#
# Quantization (lesson 04) and pruning (lesson 05) shrink a trained model. Distillation trains a
# *new*, smaller model — the student — and uses the big model — the teacher — as its tutor. The
# article's sentence:
#
# > **A student with 10% of the teacher's parameters can keep 95% of its capability and run 10x
# > faster, because the teacher's full output distribution carries more information than the
# > labels.**
#
# | claim | what we measure | section |
# |---|---|---|
# | the distribution carries more than the label ("dark knowledge") | the teacher's real next-token probabilities, at several temperatures | 1 |
# | soft targets teach better than labels | the same student trained both ways, at equal steps and equal wall time, 2 seeds | 5, 6 |
# | (and at what cost) | training tokens/s with the teacher run on the fly vs cached once | 4 |
# | 10% of the parameters, 95% of the capability | the shipped student's top-1 accuracy against the teacher's | 7 |
# | 10x faster | batch-1 decode, student vs teacher, interleaved | 7 |
# | (a student that keeps more) | retention against size, and the teacher pruned to the student's shape as its start (Minitron) | 8 |
#
# Where the code is:
#
# | piece | where |
# |---|---|
# | the KD loss, forward and backward (Hinton et al.) | `tinyinfer/distill.py: kd_loss_forward`, `kd_loss_backward` |
# | teacher logits on the fly | `tinyinfer/distill.py: distillation_loss_fn` |
# | the teacher's top-k, cached once | `tinyinfer/distill.py: teacher_topk`, `build_teacher_cache`, `TeacherCache` |
# | KD on the cached top-k (k + 1 buckets) | `tinyinfer/distill.py: kd_topk_loss_forward`, `kd_topk_loss_backward` (NumPy, the reference); `kd_topk_loss_and_grad` (the same loss and gradient in one compiled pass a row, what training uses) |
# | the training loop all three ways share | `tinyinfer/distill.py: train_on_windows` |
# | the student's shape | `tinyinfer/presets.py: PRESETS["student"]` |
# | the study (sweep, equal steps, equal wall time) | `tinyinfer/bench/distill.py` → `benchmarks/distill.md` |
# | Minitron: the teacher cut down to the student's shape | `tinyinfer/sparse/minitron.py: minitron_prune` |
# | the retention study (sizes, inits, equal CPU time) | `tinyinfer/bench/retention.py` → `benchmarks/retention.md` |
# | the command line | `tinyinfer distill [--labels-only] [--cache-windows N] [--init minitron] --temperature T --alpha A` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) shrinks every measurement and training run here;
# the real figures come from `benchmarks/distill.json` when it exists.

# %%
# %matplotlib inline
import os

# One BLAS thread: these matrices are small, and on a busy machine a second thread is slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinyinfer
from tinyinfer.bench import interleaved, machine
from tinyinfer.corpus import token_stream
from tinyinfer.distill import (build_teacher_cache, cached_distillation_loss_fn, distillation_loss_fn,
                               kd_loss_backward, kd_loss_forward, kd_topk_loss_forward, stream_windows,
                               teacher_topk, train_on_windows)
from tinyinfer.evaluate import evaluate
from tinyinfer.gradcheck import numerical_grad
from tinyinfer.model import init_params, loss_and_grads
from tinyinfer.ops import log_softmax
from tinyinfer.presets import get_preset

from tinyinfer.lesson_tools import compare, ratio_spread, spread, spread_note, workload
from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
teacher = tinyinfer.load(ROOT / "models" / "teacher")
tok = teacher.tokenizer
val = token_stream(tok, "val", progress=False)
student_config, student_tc = get_preset("student")
print(f"small settings: {SMALL}")
print(f"teacher: {teacher.num_params():,} parameters, {teacher.config.n_layer} layers, C={teacher.config.n_embd}")
print(f"student preset: {student_config.num_params():,} parameters "
      f"({student_config.num_params() / teacher.num_params():.1%}), {student_config.n_layer} layer, "
      f"C={student_config.n_embd}")
V = teacher.config.vocab_size

# %% [markdown]
# ## 1. Dark knowledge, on the teacher's real distributions
#
# A training label says one thing: *the next token was `,`*. The teacher says much more. Here is
# a real sentence from the held-out split (the pydoc page on truth values), stopped right after
# "(including strings, tuples". The label is `,`; look at what else the teacher thinks:

# %%
window = val[:257].astype(np.int64)
logp = log_softmax(teacher.logits(window[:-1]).astype(np.float64))  # (256, V)
# the first position whose text so far ends in "strings, tuples": found, not hard-coded
pos = next(i for i in range(256) if tok.decode(list(window[: i + 1])).endswith("strings, tuples"))
context, label = tok.decode(list(window[max(0, pos - 24): pos + 1])), int(window[pos + 1])
logits_here = teacher.logits(window[: pos + 1])[-1].astype(np.float64)  # (V,)
top10 = np.argsort(-logits_here)[:10]
print("context:", repr(context[-70:]), "  label:", repr(tok.decode([label])),
      f"(teacher probability {np.exp(log_softmax(logits_here))[label]:.3f})")
for T in (1.0, 2.0, 4.0):
    p = np.exp(log_softmax(logits_here / T))
    print(f"T={T:g}: " + "  ".join(f"{tok.decode([int(j)])!r} {p[j]:.3f}" for j in top10[:6]))

# %%
fig, ax = plt.subplots(figsize=(10, 3.6))
width = 0.27
for n, T in enumerate((1.0, 2.0, 4.0)):
    p = np.exp(log_softmax(logits_here / T))
    ax.bar(np.arange(10) + (n - 1) * width, p[top10], width, label=f"T = {T:g}")
ax.set_xticks(np.arange(10), [repr(tok.decode([int(j)])) for j in top10], rotation=30, fontsize=8)
ax.set_xlabel("the teacher's 10 most likely next tokens (at T = 1)")
ax.set_ylabel("teacher probability")
ax.set_title(f"after ...{context[-30:]!r}: the label is {tok.decode([label])!r}, a one-hot vector")
ax.legend(loc="best")
plt.tight_layout()
plt.show()

# %% [markdown]
# The teacher does not bet everything on the label `,`: it ranks `)` first and spreads the rest
# over `),` and `).` — the other ways a parenthesised list can go on or end. That ranking of *wrong* answers is
# what Hinton, Vinyals and Dean (2015) called dark knowledge: a one-hot label cannot say that `)`
# was nearly right and `def` was absurd, the teacher's distribution does.
#
# Dividing the logits by a **temperature** T > 1 before the softmax flattens the distribution so
# that those small probabilities weigh more in a loss. How much flatter, over many real positions:

# %%
positions = 64 if SMALL else 512
ids = val[: positions + 1].astype(np.int64)
teacher_logits = np.concatenate([teacher.logits(ids[s: min(s + 256, positions)])
                                 for s in range(0, positions, 256)])  # (P, V), P = positions
temps = [0.5, 1.0, 2.0, 4.0, 8.0]
entropy, top1_mass, top32_mass = [], [], []
for T in temps:
    lp = log_softmax(teacher_logits.astype(np.float64) / T)
    p = np.exp(lp)
    entropy.append(float(-(p * lp).sum(-1).mean()))
    srt = np.sort(p, axis=-1)[:, ::-1]
    top1_mass.append(float(srt[:, 0].mean()))
    top32_mass.append(float(srt[:, :32].sum(-1).mean()))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].plot(temps, np.exp(entropy), "o-")
axes[0].set_xscale("log", base=2)
axes[0].set_xlabel("temperature T")
axes[0].set_ylabel("exp(entropy): effective tokens")
axes[0].set_title(f"the teacher's spread, mean over {positions} held-out positions")
axes[1].plot(temps, top1_mass, "o-", label="top-1")
axes[1].plot(temps, top32_mass, "s-", label="top-32")
axes[1].set_xscale("log", base=2)
axes[1].set_xlabel("temperature T")
axes[1].set_ylabel("probability mass")
axes[1].set_title("how much of the distribution the top tokens hold")
axes[1].legend()
plt.tight_layout()
plt.show()
for T, h, m1, m32 in zip(temps, entropy, top1_mass, top32_mass):
    print(f"T={T:>3}: {np.exp(h):7.1f} effective tokens ({np.exp(h) / V:5.1%} of the {V:,}), "
          f"top-1 holds {m1:.2f}, top-32 holds {m32:.3f}, outside the top 32: {1 - m32:.1%}")

# %% [markdown]
# "Effective tokens", exp(entropy), is the size of a uniform choice that is exactly as uncertain:
# the higher the temperature, the more of the vocabulary counts. Read the last column too: the
# share of the softened distribution that lies *outside* the teacher's 32 most likely tokens grows
# with T. That matters in section 3.
#
# ## 2. The loss
#
# `tinyinfer/distill.py: kd_loss_forward` mixes two terms with a weight α:
#
# $$ \mathcal{L} = \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T)\big) + (1-\alpha)\,\mathrm{CE}(s, y) $$
#
# where t and s are the teacher's and student's logits and y the label. Its gradient with respect
# to the student's logits is short (`kd_loss_backward`):
#
# $$ \frac{\partial \mathcal{L}}{\partial s} = \alpha\,T\,\big(\mathrm{softmax}(s/T) - \mathrm{softmax}(t/T)\big) + (1-\alpha)\,\big(\mathrm{softmax}(s) - \mathrm{onehot}(y)\big) $$
#
# The KL term's own gradient carries a 1/T (from s/T); Hinton et al. multiply by T² so that
# changing T does not silently change the soft term's weight against the hard one. Checked here
# against finite differences in float64, as every op in tinyinfer is (tests/test_distill.py runs
# the same check under hypothesis):

# %%
rng = np.random.default_rng(0)
s, t = rng.standard_normal((2, 3, 11)) * 2, rng.standard_normal((2, 3, 11)) * 2
y = rng.integers(0, 11, (2, 3))
loss, parts, cache = kd_loss_forward(s, t, y, temperature=2.0, alpha=0.7)
analytic = kd_loss_backward(1.0, cache)
numeric = numerical_grad(lambda: kd_loss_forward(s, t, y, 2.0, 0.7)[0], s)
print(f"loss {loss:.4f} = 0.7 * 4 * KL {parts['kl']:.4f} + 0.3 * CE {parts['ce']:.4f}")
print(f"max |analytic - numeric| = {np.abs(analytic - numeric).max():.2e}")

# %% [markdown]
# Why the T²: the size of the soft gradient as T grows, with and without it, for the teacher's
# real logits against an untrained student's:

# %%
student0 = tinyinfer.Model(student_config, init_params(student_config, 0))
n_real = min(256, positions)
s_real = student0.logits(ids[:n_real]).astype(np.float64)  # (n, V)
t_real = teacher_logits[:n_real].astype(np.float64)  # (n, V)
y_real = ids[1:n_real + 1]  # (n,) the labels
T_axis = [1, 2, 4, 8, 16]
norms = []
for T in T_axis:
    _, _, c = kd_loss_forward(s_real, t_real, y_real, T, 1.0)
    norms.append(np.linalg.norm(kd_loss_backward(1.0, c)))  # alpha = 1: the soft term only
plt.figure(figsize=(6, 3.4))
plt.plot(T_axis, norms, "o-", label="with T² (what we train with)")
plt.plot(T_axis, [n / T ** 2 for n, T in zip(norms, T_axis)], "s-", label="without T²")
plt.xscale("log", base=2)
plt.yscale("log")
plt.xlabel("temperature T")
plt.ylabel("‖∂ soft loss / ∂ student logits‖")
plt.title("the soft term's gradient, teacher vs untrained student")
plt.legend(loc="best")
plt.tight_layout()
plt.show()
print(f"from T = {T_axis[0]} to T = {T_axis[-1]}: the gradient changes {norms[-1] / norms[0]:.2f}x with T², "
      f"{norms[-1] / T_axis[-1] ** 2 / norms[0]:.4f}x without it")

# %% [markdown]
# The KL term's gradient carries a factor 1/T from each of the two softmaxes of logits / T, so
# without T² a higher temperature quietly turns the soft term down, here by the second factor
# printed above. The T² undoes exactly that; what is left (the first factor) is the real shrinking
# of the KL as both softened distributions flatten towards each other. So with T², α keeps far
# more of its meaning when T changes.
#
# ## 3. Asking the teacher once: a top-k cache
#
# Every training step of a distilled student needs the teacher's logits for the same batch, and
# the teacher is a much larger model than the student (the first cell printed both): its forward
# pass can cost more than the student's whole step (forward *and* backward). Section 4 measures
# how much. Since the training data is fixed, the teacher can instead be run **once** over fixed
# windows of the training stream, keeping per position only its top-k logits (float16 values and
# int16 ids) and, for each temperature we will use, the exact log-mass of the other V - k tokens
# (`teacher_topk`).
#
# `kd_topk_loss_forward` then compares teacher and student over **k + 1 buckets**: the k tokens,
# and "everything else" as one. That is exact on the top-k; on the tail it matches only the total
# mass, not its shape. Merging outcomes can only hide differences, so this KL is never more than
# the full one (and equals it when k = V; tests/test_distill.py checks both). Its gradient is the
# full one with the teacher's tail replaced by *the student's own tail shape*, scaled to the
# teacher's tail mass. Training calls `kd_topk_loss_and_grad` instead, the same loss and gradient
# computed in one compiled pass over each position's row (the NumPy pair makes ~20 passes over
# whole (positions, V) arrays), so a step from the cache costs little more than a labels-only
# step (section 4 measures it). How much is lost, on real positions, teacher against an untrained
# student (and what a position costs to store):

# %%
print(f"per position: top-32 in float16 + int16 = {32 * (2 + 2)} bytes (+ 4 per temperature for the tail), "
      f"all {V:,} logits in float32 = {4 * V:,} bytes")
kl_seen = {}  # (T, k) -> share of the full KL the k + 1 buckets see
for T in (1.0, 2.0, 4.0):
    full_kl = kd_loss_forward(s_real, t_real, y_real, T, 1.0)[1]["kl"]
    for k in (8, 32, 128):
        top_ids, top_logits, tail = teacher_topk(t_real, k, [T])
        kl_k = kd_topk_loss_forward(s_real, top_ids, top_logits, tail[:, 0], y_real, T, 1.0)[1]["kl"]
        kl_seen[T, k] = kl_k / full_kl
        print(f"T={T:g} top-{k:<3}: KL {kl_k:.3f} of the full {full_kl:.3f} ({kl_k / full_kl:.0%})")
for T in (1.0, 2.0, 4.0):
    print(f"at T = {T:g} the top-32 and the tail bucket see {kl_seen[T, 32]:.0%} of the full KL; "
          f"the other {1 - kl_seen[T, 32]:.0%} is the shape of the teacher's tail, which the cache throws away")

# %% [markdown]
# The more the temperature softens the teacher, the more of the KL lies in the *shape* of its
# tail (section 1 showed why: softened, much of the mass is outside the top 32). So a top-k cache
# and a high temperature work against each other: the cache keeps the teacher's ranking of its
# best guesses, and a high T is meant to teach the rest. The study measures what this costs in a
# trained student: a student trained with full-vocabulary KD (teacher on the fly) against one
# trained from the top-32 cache, same everything else (`benchmarks/distill.md`, "What the top-k
# approximation costs").
#
# ## 4. What the teacher costs: tokens/s three ways
#
# One training step of the student, timed three ways in the same process, round by round
# (`tinyinfer/bench/distill.py: measure_throughput`): labels only, KD from the cache, KD with
# the teacher run on the fly.

# %%
B, T_len = (2, 64) if SMALL else (8, 256)
windows = stream_windows(token_stream(tok, "train", max_docs=40 if SMALL else 200, progress=False), T_len)
cache_t0 = time.perf_counter()
small_cache = build_teacher_cache(teacher, windows[:16 * B], k=32, temperatures=(2.0,), progress=False)
params = init_params(student_config, 0)
ways = {"labels only": lambda x, y, r: loss_and_grads(params, student_config, x, y),
        "KD from cache": lambda x, y, r: cached_distillation_loss_fn(small_cache, 2.0, 0.5)(params, student_config,
                                                                                              x, y, r),
        "KD, teacher on the fly": lambda x, y, r: distillation_loss_fn(teacher, 2.0, 0.5)(params, student_config,
                                                                                        x, y)}
rounds = 6 if SMALL else 9
print(workload("the timings below", batch=B, window_tokens=T_len, rounds=rounds, warmup_rounds=1,
               blas_threads=os.environ.get("OPENBLAS_NUM_THREADS"), machine=machine()["cpu"]))
times = {w: [] for w in ways}
for rnd in range(rounds + 1):  # round 0 warms up (first calls allocate and fill caches)
    rows = np.arange(rnd * B, (rnd + 1) * B) % len(small_cache.windows)  # windows the cache holds
    x, y = windows[rows, :-1].astype(np.int64), windows[rows, 1:].astype(np.int64)
    names = list(ways)
    for w in names[rnd % 3:] + names[: rnd % 3]:  # rotate the order, so no way always goes first
        t0 = time.perf_counter()
        ways[w](x, y, rows)
        if rnd:
            times[w].append(time.perf_counter() - t0)
here = {w: B * T_len / statistics.median(v) for w, v in times.items()}
for w, v in times.items():
    print(f"{w:<24} {here[w]:8,.0f} tokens/s; a step {spread(v)}")
for w in ("KD from cache", "KD, teacher on the fly"):
    cost = ratio_spread(times[w], times["labels only"])
    print(compare(cost.median, what=f"{w}: a step", verb="takes", of="the time of labels only", more="slower",
                  less="faster", measured=cost))
    if spread_note(cost, w):
        print("   " + spread_note(cost, w))

# %%
results_path = ROOT / "benchmarks" / "distill.json"
study = json.loads(results_path.read_text()) if results_path.exists() else None
if study is None:
    print("benchmarks/distill.json not found: run `python -m tinyinfer.bench.distill --json benchmarks/distill.json "
          "--md benchmarks/distill.md` for the full study; sections 5 and 6 use tiny runs instead")
labels_ = ["labels only", "KD from cache", "KD, teacher\non the fly"]
fig, ax = plt.subplots(figsize=(7, 3.4))
if study is not None:
    full = study["throughput"]["tokens_per_s"]
    ax.bar(np.arange(3) - 0.2, [full["labels"], full["topk"], full["full"]], 0.4, label="study (B=8, T=256)")
ax.bar(np.arange(3) + 0.2, list(here.values()), 0.4, label=f"just now (B={B}, T={T_len})")
ax.set_xticks(np.arange(3), labels_)
ax.set_xlabel("how the student's step gets its targets")
ax.set_ylabel("student training tokens/s")
ax.set_title("what the teacher costs a distilled student's step")
ax.legend(loc="best")
plt.tight_layout()
plt.show()

# %% [markdown]
# The sentences above say what the teacher costs in this run; the study's bars (full settings,
# `benchmarks/distill.json`) are there to compare. The cache moves that cost to one pass over the
# data, paid before training: worth it when the student sees the data more than once (several
# epochs, several runs, a sweep), no saving for a single pass. The study charges the cache's build
# time to the distilled run when it compares at equal wall time.
#
# ## 5. Distilled vs labels only: the same student, the same batches
#
# `tinyinfer/distill.py: train_on_windows` draws each step's windows from `(seed, step)` alone,
# so a labels-only run and a distilled run with the same seed see identical batches; only the
# loss differs. The study (`python -m tinyinfer.bench.distill`) runs both with 2 seeds. Its
# held-out curves, or, without it, a tiny run of each here:

# %%
def tiny_comparison(steps):
    """Labels only vs KD from the small cache, same seed and batches, a few steps."""
    out = {}
    tc = get_preset("student")[1]
    tc.max_steps, tc.seq_len, tc.batch_size, tc.warmup_steps = steps, T_len, B, 5
    tc.eval_every, tc.eval_windows = max(1, steps // 4), 4
    for name, fn in (("labels", None), ("distilled", cached_distillation_loss_fn(small_cache, 2.0, 0.5))):
        with tempfile.TemporaryDirectory() as d:
            _, history = train_on_windows(student_config, tc, small_cache.windows, val, d, loss_fn=fn,
                                          progress=False, log=lambda *_: None)
        out[name] = [{"step": v["step"], "loss": v["loss"]} for v in history["val"]]
    return out


fig, ax = plt.subplots(figsize=(7.5, 3.8))
if study is not None:
    runs = study["equal_steps"]
    for group, color in (("labels", "C0"), ("distilled", "C1")):
        for r in runs[group]:
            ax.plot([c["step"] for c in r["curve"]], [c["loss"] for c in r["curve"]], "o-", color=color, ms=3,
                    label=f"{group}, seed {r['seed']}")
    for r in study["equal_wall_runs"]["labels"]:
        ax.plot([c["step"] for c in r["curve"]], [c["loss"] for c in r["curve"]], ":", color="C0", alpha=0.6,
                label=f"labels, equal wall time, seed {r['seed']}")
    ax.set_title(f"held-out cross-entropy on the labels, {study['settings']['eval_windows']} windows of 256")
else:
    tiny = tiny_comparison(12 if SMALL else 60)
    for group, color in (("labels", "C0"), ("distilled", "C1")):
        ax.plot([c["step"] for c in tiny[group]], [c["loss"] for c in tiny[group]], "o-", color=color, label=group)
    ax.set_title("a tiny run (no benchmarks/distill.json)")
ax.set_xlabel("optimizer step")
ax.set_ylabel("held-out loss (nats)")
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The loss plotted is the ordinary cross-entropy on the true next tokens, the quantity
# perplexity is made of; the distilled student never optimised it alone.
#
# ## 6. The sweep over T and α, and the verdict at equal steps and equal wall time

# %%
if study is not None:
    sweep = study["sweep"]
    base = next(r for r in sweep if r["mode"] == "labels")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for a in sorted({r["alpha"] for r in sweep if r["alpha"] is not None}):
        pts = sorted((r["temperature"], r) for r in sweep if r["alpha"] == a)
        axes[0].plot([t for t, _ in pts], [r["perplexity"] for _, r in pts], "o-", label=f"α = {a}")
        axes[1].plot([t for t, _ in pts], [100 * r["top1"] for _, r in pts], "o-", label=f"α = {a}")
    axes[0].axhline(base["perplexity"], color="k", ls="--", label="labels only")
    axes[1].axhline(100 * base["top1"], color="k", ls="--", label="labels only")
    for ax, what in zip(axes, ("held-out perplexity", "held-out top-1 (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("temperature T")
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
    fig.suptitle(f"sweep: {study['settings']['sweep_steps']} steps each, seed 0")
    plt.tight_layout()
    plt.show()
    blocks = [("equal steps", study["equal_steps"]), ("equal wall time, whole cache charged", study["equal_wall_runs"])]
    if "equal_wall_amortized_runs" in study:
        blocks.append(("equal wall time, cache shared by the study's runs", study["equal_wall_amortized_runs"]))
    for title, block in blocks:
        print(f"{title}:")
        for group in ("labels", "distilled"):
            sm = block["summary"][group]
            print(f"  {group:<10} {sm['steps']['mean']:6.0f} steps: perplexity {sm['perplexity']['mean']:.2f} "
                  f"(seeds {', '.join(f'{v:.2f}' for v in sm['perplexity']['values'])}), top-1 "
                  f"{100 * sm['top1']['mean']:.2f}% (seeds {', '.join(f'{100 * v:.2f}' for v in sm['top1']['values'])})")
    print("top-k cache vs full-vocabulary KD (teacher on the fly), same alpha, steps and seed:")
    for fv in study["full_vs_topk"] if isinstance(study["full_vs_topk"], list) else [study["full_vs_topk"]]:
        for label in ("full", "topk"):
            r = fv[label]
            print(f"  T={r['temperature']:g} alpha={r['alpha']:g} {label:<5} perplexity {r['perplexity']:7.2f}, "
                  f"top-1 {100 * r['top1']:.2f}%")
    for fv in study["full_vs_topk"] if isinstance(study["full_vs_topk"], list) else [study["full_vs_topk"]]:
        full_ppl, topk_ppl = fv["full"]["perplexity"], fv["topk"]["perplexity"]
        print(compare(full_ppl, topk_ppl, what=f"At T = {fv['temperature']:g}, full-vocabulary KD", verb="ends at",
                      of="the perplexity of KD from the top-32 cache",
                      more="worse than the cache", less="better: the cache's approximation costs something here",
                      same="about the same: the cache is not what hurts"))
        print(compare(full_ppl, base["perplexity"], what="    and", verb="at", of="the perplexity of labels only",
                      more="worse than labels only", less="better than labels only", same="level with labels only"))
else:
    print("no study results: run `python -m tinyinfer.bench.distill --json benchmarks/distill.json`")

# %% [markdown]
# Read the sweep with section 3 in mind. With a top-32 cache, a higher temperature moves more of
# the target into the one "rest" bucket, whose inside the student is left to shape like its own
# distribution. So when the curves for high T sit above the labels-only line, is that the cache's
# approximation, or the temperature itself? The study answers by training the same student with
# full-vocabulary KD (the teacher on the fly) at two temperatures; the last lines above read its
# answer off the results. Where full KD at a high temperature is no better than the cache and
# worse than labels only, the temperature itself hurts in runs this short: the student spends its
# few steps matching a flattened target made mostly of the teacher's tail and learns the likely
# tokens late. Hinton et al.'s T of 2 to 5 comes from much longer training; the shipped student
# uses the sweep's winner.
#
# Then read the comparison with the spread in mind: a difference between labels-only and
# distilled counts only if it is larger than the gap between two seeds of the same recipe. And
# check the equal-wall-time rows: charging the whole cache build to one short run, as the strict
# comparison does, gives labels-only far more steps; shared over the runs that reuse the cache,
# the teacher costs each much less.
#
# **The caveat.** Distillation transfers what the teacher knows; it cannot transfer what it does
# not. A student distilled from an undertrained teacher is pulled towards that teacher's
# mistakes, and a student trained on labels alone for long enough can pass such a teacher, at
# which point the soft targets hold it back. `models/tiny` plays the undertrained teacher here
# (both teachers' training is printed below). Same student, same batches: labels vs KD from the
# weak teacher vs KD from the good one:

# %%
weak = tinyinfer.load(ROOT / "models" / "tiny")
for name in ("teacher", "tiny"):
    history = json.loads((ROOT / "models" / name / "history.json").read_text())
    print(f"models/{name}: {history['tokens_seen']:,} training tokens, held-out top-1 "
          f"{history['val'][-1]['top1']:.1%} at its last checkpoint")
steps = 10 if SMALL else 80
tc = get_preset("student")[1]
tc.max_steps, tc.seq_len, tc.batch_size, tc.warmup_steps, tc.eval_every, tc.eval_windows = (
    steps, T_len, B, 5, steps, 8 if SMALL else 32)
caveat = {}
for name, teacher_model in (("labels only", None), ("KD from the weak teacher (tiny)", weak),
                            ("KD from the trained teacher", teacher)):
    fn = None
    if teacher_model is not None:
        fly = distillation_loss_fn(teacher_model, 1.0, 0.9)  # the sweep's best setting
        fn = lambda p, c, x, y, r, fly=fly: fly(p, c, x, y)  # noqa: E731
    with tempfile.TemporaryDirectory() as d:
        m, _ = train_on_windows(student_config, tc, windows, val, d, loss_fn=fn, progress=False, log=lambda *_: None)
    caveat[name] = evaluate(m, val, T_len, tc.eval_windows)
weak_eval = evaluate(weak, val, T_len, tc.eval_windows)
for name, r in caveat.items():
    print(f"{name:<34} perplexity {r['perplexity']:7.2f}  top-1 {r['top1']:.1%}")
print(f"{'(the weak teacher itself)':<34} perplexity {weak_eval['perplexity']:7.2f}  top-1 {weak_eval['top1']:.1%}")
print(workload("the three runs", steps=steps, batch=B, window_tokens=T_len, temperature=1, alpha=0.9,
               held_out_windows=tc.eval_windows))
best = min(caveat, key=lambda name: caveat[name]["perplexity"])
print(f"in this run the lowest held-out perplexity came from: {best}")

# %% [markdown]
# How far this short run gets depends on its length: early on, any teacher's smooth targets help a
# student that knows nothing (even the weak teacher is better than uniform), and the harm appears
# once the student passes the weak teacher and keeps being pulled back towards it. Exercise 3 asks
# you to find that crossing.
#
# ## 7. The shipped student against the teacher
#
# `models/student/` is the student preset distilled for longer from the cached top-32 (its model
# card has the command, time, machine and every figure). The claim we test: ≥ 95% of the teacher's
# top-1 with ≤ 10% of its parameters, and ≥ 5x (the article says 10x) faster decode.

# %%
student_dir = ROOT / "models" / "student"
shipped = student_dir / "model.safetensors"
student = tinyinfer.load(student_dir) if shipped.is_file() else tinyinfer.Model(student_config, params)
eval_windows = 8 if SMALL else 48
te = evaluate(teacher, val, 256, eval_windows)
st = evaluate(student, val, 256, eval_windows, reference=teacher)
new_tokens, rounds = (16, 3) if SMALL else (64, 7)
prompt = ids[:16]
speed = interleaved(lambda: student.generate(prompt, new_tokens), lambda: teacher.generate(prompt, new_tokens),
                    rounds=rounds)
print(f"student: {'models/student' if shipped.is_file() else 'UNTRAINED preset (models/student not shipped yet)'}")
print(workload("the comparison below", held_out_windows=f"{eval_windows} x 256 tokens", prompt_tokens=len(prompt),
               new_tokens=new_tokens, decoding="greedy, batch 1", rounds=rounds))
print(f"parameters     {student.num_params():>10,} vs {teacher.num_params():,}  "
      f"({student.num_params() / teacher.num_params():.1%}; the claim: <= 10%)")
print(f"top-1          {st['top1']:>10.1%} vs {te['top1']:.1%}  "
      f"({st['top1'] / te['top1']:.1%} of the teacher's; the claim: >= 95%)")
print(f"perplexity     {st['perplexity']:>10.2f} vs {te['perplexity']:.2f}")
print(f"agreement      {st['top1_agreement']:>10.1%} of positions pick the teacher's top-1;  "
      f"KL(teacher||student) {st['kl_divergence']:.3f}")
print(f"decode, batch 1: {new_tokens / speed['fast_s']:.0f} vs {new_tokens / speed['baseline_s']:.0f} tokens/s, "
      f"median ratio {speed['ratio']:.1f}x over {rounds} rounds (the claim: >= 5x)")
embedding = student.config.vocab_size * student.config.n_embd
print(f"the student's embedding (tied to its output head), {student.config.vocab_size:,} x {student.config.n_embd} = "
      f"{embedding:,} parameters, is {embedding / student.num_params():.0%} of its {student.num_params():,}")

# %% [markdown]
# Why the student has one layer (the reasoning is in `tinyinfer/presets.py`, next to the preset):
# at this size a batch-1 decode step is paid in Python and NumPy call overhead per op, and the ops
# come per layer, so the layer count sets the decode speed more than the width does; the parameter
# budget then goes into width, and a large share of it into the embedding (printed above). The
# price is capability: one attention layer cannot build an induction head (copying a name seen
# earlier takes two layers in series, lesson 01's exercise 3), a skill the teacher uses all the
# time on code. That is why 95% of the teacher's top-1 is hard here; the lines above say how far
# the shipped student got, and `benchmarks/distill.md` and the student's model card have the
# full-size figures.

# %% [markdown]
# ## 8. Students that retain more: their size, and where they start
#
# Retention is the student's held-out top-1 divided by the teacher's. Two things should raise it:
# more parameters (the retention curve: students of about 5, 10, 25 and 50% of the teacher's
# parameters, all trained on the same tokens), and a better starting point. The second is the
# idea of Minitron (Muralidharan et al., 2024): do not start the student from random weights;
# *prune the teacher* down to the student's shape and distill into that.
# `tinyinfer/sparse/minitron.py: minitron_prune` drops whole blocks first (greedily, the block
# whose removal raises the loss on calibration text least, `layers_to_keep`), then ranks what is
# left by how much it is used on the same text (`activation_importance`: attention heads by the
# size of their output, MLP neurons by |silu(gate) · up|, embedding channels by the size of the
# normalized activations) and keeps the top ones (`prune_width`). The student keeps the teacher's
# head size and KV heads, so the cut is a valid model of the smaller shape.
#
# Before any training: the teacher cut to the 25% shape (`tinyinfer/bench/retention.py: SHAPES`)
# against a random model of the same shape.

# %%
from tinyinfer.bench.retention import SHAPES, shape_config
from tinyinfer.sparse.experiment import calibration_ids
from tinyinfer.sparse.minitron import minitron_prune

train_stream = token_stream(tok, "train", progress=False)
calib = calibration_ids(train_stream, 4 if SMALL else 16, 257, seed=0)
t0 = time.perf_counter()
cut, info = minitron_prune(teacher, calib, **SHAPES["25%"])
prune_s = time.perf_counter() - t0
shape25 = shape_config(teacher.config, "25%")
random25 = tinyinfer.Model(shape25, init_params(shape25, 0))
before = {"the teacher itself": te,  # section 7's held-out windows, for all three
          "the teacher cut to 25% (Minitron)": evaluate(cut, val, 256, eval_windows),
          "random weights, same shape": evaluate(random25, val, 256, eval_windows)}
print(f"minitron_prune: kept blocks {info['layers']} of {teacher.config.n_layer}, C {teacher.config.n_embd} -> "
      f"{cut.config.n_embd}, {teacher.config.n_head} -> {cut.config.n_head} heads, F {teacher.config.ffn_hidden} -> "
      f"{cut.config.ffn_hidden}: {cut.num_params():,} parameters ({cut.num_params() / teacher.num_params():.1%}), "
      f"{prune_s:.1f} s on {len(calib)} calibration windows")
for name, r in before.items():
    print(f"  {name:<36} perplexity {r['perplexity']:9.2f}  top-1 {r['top1']:6.1%}")
cut_r, rand_r = before["the teacher cut to 25% (Minitron)"], before["random weights, same shape"]
print(f"the cut starts at {cut_r['perplexity'] / before['the teacher itself']['perplexity']:.0f}x the teacher's "
      f"perplexity and {rand_r['perplexity'] / cut_r['perplexity']:.1f}x below random weights'; top-1 "
      f"{cut_r['top1']:.1%} against {rand_r['top1']:.1%}")

# %% [markdown]
# The cut has lost most of what the teacher could do, but it does not start from nothing: its
# surviving blocks and channels still compute features the teacher found useful, and training
# repairs them instead of building them from scratch. (Which blocks survive depends on the
# calibration text: run the cell with 4 windows and with 16.)
# How much that is worth after training, and how retention grows with size, is what the study
# `tinyinfer/bench/retention.py` measures (results in `benchmarks/retention.md`; about 3 CPU hours,
# resumable): each shape trained for the same number of steps (so on the same tokens) on labels
# only and distilled from the teacher's cached top-32, from random weights and from the Minitron
# cut, two seeds each.

# %%
retention_path = ROOT / "benchmarks" / "retention.json"
ret = json.loads(retention_path.read_text()) if retention_path.exists() else None
if ret is not None:
    sizes = [s for s in ret["shapes"] if s in ret["params"]]
    frac = {s: 100 * ret["params"][s] / ret["teacher_params"] for s in sizes}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    styles = {("random", "labels"): ("tab:gray", "o--"), ("random", "distilled"): ("tab:blue", "o-"),
              ("minitron", "labels"): ("tab:orange", "s--"), ("minitron", "distilled"): ("tab:red", "s-")}
    for (init, mode), (color, fmt) in styles.items():
        keys = [f"{s} {init} {mode}" for s in sizes]
        if not all(k in ret["summary"] for k in keys):
            continue
        xs = [frac[s] for s in sizes]
        for ax, metric, scale in ((axes[0], "retention", 100), (axes[1], "perplexity", 1)):
            ys = [scale * ret["summary"][k][metric]["mean"] for k in keys]
            lo = [scale * min(ret["summary"][k][metric]["values"]) for k in keys]
            hi = [scale * max(ret["summary"][k][metric]["values"]) for k in keys]
            ax.errorbar(xs, ys, yerr=[np.subtract(ys, lo), np.subtract(hi, ys)], fmt=fmt, color=color, capsize=3,
                        label=f"{init} init, {mode}")
    axes[0].plot([10], [95], "k*", ms=12, label="the article's claim (10%, 95%)")
    axes[0].set_ylabel("student top-1 / teacher top-1 (%)")
    axes[1].axhline(ret["teacher"]["perplexity"], color="k", ls=":", label="the teacher")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("held-out perplexity")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("student parameters (% of the teacher's)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    steps = ret["settings"]["steps"]
    fig.suptitle(f"students trained {steps} steps of 8 x 256 tokens each ({steps * 2048 / 1e6:.1f}M tokens), "
                 f"{len(ret['settings']['seeds'])} seeds (bars: their range)", fontsize=10)
    plt.tight_layout()
    plt.show()
    print(f"teacher: top-1 {ret['teacher']['top1']:.1%}, perplexity {ret['teacher']['perplexity']:.2f}")
    for s in sizes:
        best = max(((init, mode) for init, mode in styles if f"{s} {init} {mode}" in ret["summary"]),
                   key=lambda im: ret["summary"][f"{s} {im[0]} {im[1]}"]["retention"]["mean"])
        sm = ret["summary"][f"{s} {best[0]} {best[1]}"]
        print(f"{s:>4} shape ({frac[s]:.1f}% of the parameters): best {best[0]} init, {best[1]}: top-1 "
              f"{sm['top1']['mean']:.1%}, retention {sm['retention']['mean']:.1%} "
              f"(seeds {', '.join(f'{v:.1%}' for v in sm['retention']['values'])})")
    for s in sizes:
        for mode in ("labels", "distilled"):
            r_, m_ = (ret["summary"].get(f"{s} {i} {mode}") for i in ("random", "minitron"))
            if r_ and m_:
                print(f"{s:>4} {mode:<9}: Minitron init {m_['top1']['mean']:.1%} vs random {r_['top1']['mean']:.1%} "
                      f"top-1 ({m_['top1']['mean'] / r_['top1']['mean']:.2f}x)")
    if ret.get("equal_time"):
        print("equal CPU time (labels only gets the distilled run's CPU time plus the whole teacher cache's):")
        for e in ret["equal_time"]:
            lab, kd = e["labels"], e["distilled"]
            print(f"  {e['size']:>4} {e['init']:<8} seed {e['seed']}: distilled {kd['steps']} steps, perplexity "
                  f"{kd['perplexity']:.2f}, top-1 {kd['top1']:.1%} vs labels only {e['labels_steps']} steps, "
                  f"{lab['perplexity']:.2f}, {lab['top1']:.1%}: "
                  f"{'distilled' if kd['perplexity'] < lab['perplexity'] else 'labels only'} ahead (perplexity)")
else:
    print("no retention study results: run `python -m tinyinfer.bench.retention --json benchmarks/retention.json "
          "--md benchmarks/retention.md`")

# %% [markdown]
# What the study's lines say (they are read from `benchmarks/retention.json`, the run its model
# card-like report `benchmarks/retention.md` describes):
#
# * **Where the student starts matters more than how it is taught.** At the 25% and 50% shapes the
#   Minitron cut ends 1.4-2x above the random start in top-1 after the same steps; distillation
#   adds one to three points of top-1 on top of either. At 5% and 10% the gain is small: those shapes keep a single
#   block of the teacher's five (the last line of the report names the blocks kept), so little of
#   what the teacher computed survives the cut.
# * **Retention grows with size, but slowly from random weights**: in runs this short a random
#   student of half the teacher's size keeps about half its top-1, while the cut of the same size
#   keeps nearly nine tenths.
# * **At equal CPU time the teacher's cost decides.** Building the top-32 cache took about as much
#   CPU time as a whole distilled run or more, so when one run is charged the whole cache, labels
#   only gets two to five times the steps, and more tokens beat better targets. The cache pays when many students
#   reuse it, as in this study (16 distilled runs shared one).

# %% [markdown]
# That last comparison depends on the budget. The cache is built once for the pool of windows, so
# a run that passes over the pool many times pays for it once; and a distilled step from the cache
# costs little more than a labels-only step (`kd_topk_loss_and_grad`; at T = 1 the study measured
# it at 0.95-0.98x of one, side by side). The same study run for
# 3,000 steps at the 10% and 25% shapes from the Minitron start (`benchmarks/retention_long.md`:
# six passes over the 4,000 cached windows; labels only again gets the distilled run's CPU time
# plus the whole cache's, from step costs measured side by side):

# %%
long_path = ROOT / "benchmarks" / "retention_long.json"
long_study = json.loads(long_path.read_text()) if long_path.exists() else None
if long_study is not None:
    print(f"{long_study['settings']['steps']} steps, seeds {long_study['settings']['seeds']}; CPU s a step (side by "
          "side): " + ", ".join(f"{s}: labels {v['labels']:.3f}, distilled {v['distilled']:.3f}"
                                for s, v in long_study["probe"].items()))
    fig, ax = plt.subplots(figsize=(9, 4))
    groups, width = [], 0.38
    for i, e in enumerate(long_study["equal_time"]):
        lab, kd = e["labels"], e["distilled"]
        print(f"  {e['size']:>4} {e['init']} seed {e['seed']}: distilled {kd['steps']} steps, perplexity "
              f"{kd['perplexity']:.2f}, top-1 {kd['top1']:.1%} vs labels only {e['labels_steps']} steps, "
              f"{lab['perplexity']:.2f}, {lab['top1']:.1%}: "
              f"{'distilled' if kd['perplexity'] < lab['perplexity'] else 'labels only'} ahead (perplexity)")
        ax.bar(i - width / 2, kd["perplexity"], width, color="tab:red", label="distilled" if i == 0 else None)
        ax.bar(i + width / 2, lab["perplexity"], width, color="tab:gray",
               label="labels only, same CPU time" if i == 0 else None)
        groups.append(f"{e['size']} seed {e['seed']}\n{kd['steps']} vs {e['labels_steps']} steps")
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_xlabel("student size, seed; steps distilled vs labels only at equal CPU time (cache charged)")
    ax.set_title(f"equal CPU time after {long_study['settings']['steps']} distilled steps (Minitron starts)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    plt.tight_layout()
    plt.show()
else:
    print("no longer study: run `python -m tinyinfer.bench.retention --steps 3000 --sizes 10% 25% --inits minitron "
          "--workers 2 --json benchmarks/retention_long.json --md benchmarks/retention_long.md`")

# %% [markdown]
# What the longer study's lines say (read from `benchmarks/retention_long.json`): with six passes
# over the cached pool, **distillation is ahead at equal CPU time** at both shapes and both seeds,
# the whole cache charged to every distilled run: at 10%, 27.4-28.0 perplexity against labels
# only's 29.3-29.5 after 1.45x the steps; at 25%, 19.2-19.3 against 21.5-21.9 after 1.15x the
# steps, with top-1 ahead too (+0.2 and +1.3 to +1.4 points). In the 500-step runs above the same
# cache cost one to two whole distilled runs of CPU time; here it is about half a run (10%) and a
# fifth of one (25%), and the soft targets' lead at equal steps (2.6 perplexity points at both
# shapes) outlasts it.

# %% [markdown]
# The study's runs are short (the same few steps for every shape, so that the curve compares
# shapes and not training budgets). `models/student25` is its best recipe at the 25% shape —
# the Minitron cut, distilled with T = 1 and α = 0.9 from the cached top-32 — trained for longer
# (its model card has the command, the tokens and the time). Against the teacher, and against the
# shipped one-layer student of section 7:

# %%
s25_dir = ROOT / "models" / "student25"
if (s25_dir / "model.safetensors").is_file():
    s25 = tinyinfer.load(s25_dir)
    r25 = evaluate(s25, val, 256, eval_windows, reference=teacher)
    speed25 = interleaved(lambda: s25.generate(prompt, new_tokens), lambda: teacher.generate(prompt, new_tokens),
                          rounds=rounds)
    print(workload("the comparison below", held_out_windows=f"{eval_windows} x 256 tokens", prompt_tokens=len(prompt),
                   new_tokens=new_tokens, decoding="greedy, batch 1", rounds=rounds))
    for name, m, r in (("models/student25", s25, r25), ("models/student", student, st)):
        print(f"{name:<17} {m.num_params():>8,} parameters ({m.num_params() / teacher.num_params():5.1%}), top-1 "
              f"{r['top1']:.1%} = {r['top1'] / te['top1']:.1%} of the teacher's, perplexity {r['perplexity']:.2f}")
    print(f"models/student25 decodes at batch 1 {speed25['ratio']:.1f}x the teacher's speed (median of {rounds} "
          f"rounds; two blocks instead of five)")
else:
    print("models/student25 is not shipped in this checkout")

# %% [markdown]
# ## Exercises
#
# Each exercise is an experiment, so each has a worked solution rather than a check cell, in
# `lessons/solutions/06-distillation.py` (run it from the repository root; with
# `TINYINFER_LESSON_SMALL=1` it trains for a few steps only and says what to change for a full run).
#
# 1. **Two layers.** Make a student preset with 2 layers and C=64 (about 164K parameters), time
#    its decode against the teacher with `interleaved` as in section 7, and distill it with the
#    study's best T and α. Does the second layer buy more top-1 than the lost speed is worth?
# 2. **k.** Build caches with k = 4, 8, 32, 128 (`build_teacher_cache`) and distill the same
#    student from each for the same steps. Where does the top-k approximation start to cost?
#    Compare with full-vocabulary KD on the fly and with the cache's bytes per position.
# 3. **The weak teacher's crossing.** Rerun the caveat cell with 50, 150, 400 and 1,000 steps.
#    At what point does distilling from `models/tiny` start to lose to labels only, and is that
#    where the student's top-1 passes the weak teacher's?
# 4. **Only the teacher.** Set α = 1 (no labels at all). How close does the student get to the
#    α = 0.9 one? What does that say about how much of the signal is in the labels?
# 5. **Sequence-level distillation.** Instead of matching distributions, let the teacher *write*
#    text (`teacher.generate` with temperature 1) and train the student on it with plain
#    cross-entropy (Kim & Rush, 2016). Compare with KD at equal teacher compute.
# 6. **Where they disagree.** For the shipped student, collect held-out positions where its top-1
#    differs from the teacher's. Which tokens are they (names repeated from earlier in the file?
#    indentation?) and does that fit the one-layer story of section 7?
