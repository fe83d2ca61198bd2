# Lesson 08: serving many requests: continuous batching, the scheduler, latency, the HTTP server.
# Source of notebooks/08-serving.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/08-serving.py` from the repository root.

# %% [markdown]
# # Lesson 08 — Serving: many requests, one model
#
# Lesson 07 made one sequence fast. A server has a different problem: requests arrive at random
# times, with prompts and answers of every length, and it should answer many of them per second
# *and* answer each one quickly. The tool is **batching**: running several sequences through the
# model in one forward pass, so the weights are read once for all of them. How the batch is
# formed makes a large difference, and that is what this lesson measures (targets from the
# project's TARGETS.md):
#
# | claim | what we measure | section |
# |---|---|---|
# | continuous batching ≥ 3x static batching, ≥ 10x one request at a time (mixed lengths) | output tokens/s of the four ways to serve one workload, same process, interleaved | 2 |
# | bigger batches, more throughput | tokens/s against `max_num_seqs` | 3 |
# | a long prompt need not stall everyone else | step times with and without chunked prefill | 4 |
# | latency under load | time to first token (TTFT) and time per output token (TPOT), median and p99, at rising request rates | 5 |
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
# | how a request samples and stops | `tinyinfer/engine/sampling_params.py: SamplingParams`, `tinyinfer/sampling.py: sample_token` |
# | the OpenAI-compatible HTTP server | `tinyinfer/engine/server.py: make_server`, `OpenAIServer`, `EngineLoop` |
# | the workloads and ways of serving we reuse | `tinyinfer/bench/engine.py: make_workload`, `run_cached`, `run_static`, `run_continuous`, `bench_offline`, `bench_online` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes every workload small: its figures show the
# shapes of the curves, not the benchmark's claims (`python -m tinyinfer.bench.engine` measures those).

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
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import Patch
import numpy as np

import tinyinfer
from tinyinfer.bench import machine
from tinyinfer.bench.engine import (Settings, bench_offline, bench_online, make_workload, params_for, run_continuous,
                                    run_static)
from tinyinfer.engine import LLM, SamplingParams
from tinyinfer.engine.server import make_server

from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
MODEL_DIR = ROOT / "models" / "teacher"
model = tinyinfer.load(MODEL_DIR)
config = model.config
tok = model.tokenizer
# The benchmark's settings (tinyinfer/bench/engine.py: Settings): its quick ones on small settings, a
# mid-sized workload otherwise; fit() clamps the lengths to the model's context.
settings = (Settings.quick() if SMALL else Settings(num_requests=32, max_num_seqs=16, rounds=2,
                                                    online_requests=24)).fit(config.n_ctx)
print(f"small settings: {SMALL}; model: {MODEL_DIR.relative_to(ROOT)}, {model.num_params():,} parameters, "
      f"n_ctx {config.n_ctx}")
print(f"workload: {settings.num_requests} requests, prompts {settings.prompt_len[0]}-{settings.prompt_len[1]} "
      f"tokens, answers {settings.output_len[0]}-{settings.output_len[1]} tokens, max_num_seqs {settings.max_num_seqs}")

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


demo = make_workload(8, config.vocab_size, settings.prompt_len, (4, 48), seed=5)  # answers 4..48 tokens
demo_seqs = 4
traces = {}
for label, group, pad in (("static, padded", demo_seqs, True), ("static, finished rows leave", demo_seqs, False),
                          ("continuous", None, False)):
    llm = LLM(model, max_num_seqs=demo_seqs, max_num_batched_tokens=settings.max_num_batched_tokens,
              enable_prefix_caching=False)
    run_traced(llm, demo[:2], group, pad)  # warm-up
    traces[label] = run_traced(llm, demo, group, pad)

colors = {"prefill": "C0", "decode": "C2", "padding": "0.7"}
fig, axes = plt.subplots(len(traces), 1, figsize=(11, 2.2 * len(traces)), sharex=True)
for ax, (label, steps) in zip(axes, traces.items()):
    start = steps[0][0]
    for t0, t1, marks in steps:
        for i, kind in marks:
            ax.barh(i, (t1 - t0) * 1e3, left=(t0 - start) * 1e3, height=0.7, color=colors[kind], lw=0)
    n_tok = sum(kind != "padding" for _, _, marks in steps for _, kind in marks)
    seconds = steps[-1][1] - start
    ax.set_title(f"{label}: {seconds * 1e3:.0f} ms, {len(steps)} steps, {sum(n for _, n in demo) / seconds:.0f} "
                 f"output tokens/s", fontsize=10)
    ax.set_ylabel("request")
    ax.set_yticks(range(len(demo)))
    ax.invert_yaxis()
axes[0].legend(handles=[Patch(color=color, label=kind) for kind, color in colors.items()], fontsize=8,
               loc="upper right", ncol=3)
axes[-1].set_xlabel("wall-clock time (ms)")
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
# ## 2. Measured: one at a time, static, continuous
#
# `tinyinfer/bench/engine.py: bench_offline` serves the benchmark's workload (seeded random
# prompts, answers spread ~10x, greedy, every request producing exactly its max_tokens) every
# way, alternating them round after round in one process:
#
# * (a) naive: one at a time **without** a cache, on a representative subset (it is slow);
# * (b) one at a time with the KV cache (`Model.generate`);
# * (c) static, finished rows leave; (c') static, padded;
# * (d) continuous.
#
# It also checks that every way produces the same greedy tokens: batching must not change any
# request's answer.

# %%
offline = bench_offline(model, settings)
modes = {"(a) naive,\nno cache": "naive_tok_s", "(b) one at a time,\nKV cache": "cached_tok_s",
         "(c') static,\npadded": "static_padded_tok_s", "(c) static,\nrows leave": "static_tok_s",
         "(d) continuous": "continuous_tok_s"}
for label, key in modes.items():
    print(f"{label.replace(chr(10), ' '):>32}: {offline[key]:8.1f} output tokens/s")
print(f"(d)/(c) {offline['continuous_over_static']:.2f}x, (d)/(c') {offline['continuous_over_static_padded']:.2f}x, "
      f"(d)/(b) {offline['continuous_over_cached']:.2f}x, (b)/(a) {offline['cached_over_naive']:.2f}x, "
      f"(d)/(a) {offline['continuous_over_naive']:.1f}x  (medians of per-round ratios, {offline['rounds']} round(s))")
print(f"same greedy tokens: static / padded / continuous {offline['same_tokens_static_continuous']}, "
      f"cached vs continuous {offline['same_tokens_cached_continuous']}, naive vs cached {offline['same_tokens_naive_cached']}")

plt.figure(figsize=(9, 3.6))
bars = plt.bar(list(modes), [offline[k] for k in modes.values()], color=["C3", "C1", "0.6", "C0", "C2"])
for bar, key in zip(bars, modes.values()):
    plt.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{offline[key] / offline['cached_tok_s']:.2f}x (b)",
             ha="center", va="bottom", fontsize=8)
plt.ylabel("output tokens/s")
plt.title(f"{offline['num_requests']} requests, answers {offline['output_len_min']}-{offline['output_len_max']} tokens, "
          f"max_num_seqs {offline['max_num_seqs']} ({MODEL_DIR.name})")
plt.tight_layout()
plt.show()

# %% [markdown]
# What to expect, and why our figures are smaller than a GPU server's. Batching pays because a
# decode step of one sequence is a matrix-*vector* product per layer: it reads every weight to
# do two flops with it. With B sequences in the step the same weights serve B rows, so on a GPU
# a step of 32 costs barely more than a step of 1, and continuous batching has been reported to
# give up to 23x the throughput of naive serving.
# Our model is 2M parameters on a CPU: the weights sit in cache, and much of a step is fixed cost
# (Python, NumPy calls, the scheduler), which batching amortizes, plus per-sequence work that it
# does not (attention over each sequence's own past, sampling, bookkeeping). So the gains are real
# but smaller, and (c) vs (d) depends on how unequal the answers are: with finished rows leaving
# for free, static batching loses only the idle slots. Section 3 shows where the step cost goes.
#
# ## 3. Throughput against batch size
#
# `max_num_seqs` caps how many sequences run at once. Serve the same workload with continuous and
# static batching at several caps (`run_continuous`, `run_static`). Then look inside: time engine
# steps that decode exactly k sequences (k requests admitted together, prefilled, then timed for
# a few steps while all k decode).

# %%
sweep_work = make_workload(16 if SMALL else 48, config.vocab_size, settings.prompt_len, settings.output_len, seed=1)
n_out = sum(n for _, n in sweep_work)
batch_sizes = [1, 4, 16] if SMALL else [1, 2, 4, 8, 16, 32]
sweep = {}
for b in batch_sizes:
    s_b = replace(settings, max_num_seqs=b)
    _, t_cont = run_continuous(model, sweep_work, s_b)
    _, t_static = run_static(model, sweep_work, s_b, pad_decode=True)
    sweep[b] = (n_out / t_cont, n_out / t_static)
    print(f"max_num_seqs {b:3d}: continuous {sweep[b][0]:7.1f} tokens/s, static padded {sweep[b][1]:7.1f} tokens/s")



def decode_step_seconds(k, steps=8):
    """Seconds of each of `steps` engine steps that decode exactly k sequences (one token each)."""
    llm = LLM(model, max_num_seqs=k, max_num_batched_tokens=max(settings.max_num_batched_tokens, 32 * k),
              enable_prefix_caching=False)
    for prompt, _ in make_workload(k, config.vocab_size, (16, 32), (1, 1), seed=k):
        llm.add_request(prompt, params_for(steps + 4))
    for _ in range(3):  # prefill everyone (one step), then two untimed decode steps
        llm.step()
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        llm.step()
        seconds.append(time.perf_counter() - t0)
        assert llm.last_schedule.num_new_tokens == [1] * k  # a pure decode step of k sequences
    return seconds


step_ks = sorted(set(batch_sizes) | {2, 8})
step_times = {k: decode_step_seconds(k) for k in step_ks}
k_seqs = np.array([k for k in step_ks for _ in step_times[k]])
k_secs = np.array([t for k in step_ks for t in step_times[k]])

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
ax = axes[0]
ax.plot(batch_sizes, [sweep[b][0] for b in batch_sizes], "o-", label="continuous")
ax.plot(batch_sizes, [sweep[b][1] for b in batch_sizes], "s--", label="static, padded")
ax.set_xscale("log", base=2)
ax.set_xlabel("max_num_seqs")
ax.set_ylabel("output tokens/s")
ax.set_title(f"{len(sweep_work)} requests, {n_out} output tokens")
ax.legend()
ax.grid(alpha=0.3)
ax = axes[1]
ax.plot(k_seqs, k_secs * 1e3, ".", alpha=0.4, label="one decode step")
medians = np.array([np.median(step_times[k]) for k in step_ks])  # seconds
ax.plot(step_ks, medians * 1e3, "k-", label="median")
ax.plot(step_ks, medians * 1e3 / np.array(step_ks), "C1--", label="median / k: time per token")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequences decoding in the step (k)")
ax.set_ylabel("ms")
ax.set_title("one decode step of k sequences")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()
fit = np.polyfit(k_seqs, k_secs, 1)  # seconds = fit[1] + fit[0] * k
print(f"a decode step costs about {fit[1] * 1e3:.1f} ms + {fit[0] * 1e3:.2f} ms per sequence (least squares over "
      f"k = {step_ks}): the fixed part is what batching shares")

# %% [markdown]
# The right panel is the whole story of batching: a step has a fixed cost and a per-sequence cost,
# and throughput at batch k is about k / (fixed + k · per-sequence), which flattens out at
# 1 / per-sequence. The more the fixed part dominates (large weights, a GPU), the more batching
# gives. Larger batches also need more KV-cache memory at once (lesson 07), which is why the cache
# size, not compute, usually sets `max_num_seqs` on a real server.
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
results, preemption_steps = {}, {}
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
    results[label] = outs
    print(f"{label:>5}: {llm.num_blocks:3d} blocks, {step} steps, {fed_tokens} tokens fed to the model, preemptions "
          f"per request {[outs[i].metrics['num_preemptions'] for i in range(len(tight))]}")
same = all(results["roomy"][i].token_ids == results["tight"][i].token_ids for i in range(len(tight)))
print(f"every request's greedy tokens identical with and without preemption: {same}")
print("first preemptions (step, request):", preemption_steps["tight"][:6])

# %% [markdown]
# The tight pool feeds more tokens in total (the recomputed ones) and takes more steps, but every
# answer is the same: a preempted request's keys and values are recomputed from its tokens, and
# its sampler state lives in the request (section 6), not in the cache.
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
rates = [online[f]["rate_req_s"] for f in fractions]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, metric in zip(axes, ("ttft", "tpot")):
    ax.plot(rates, [online[f][f"{metric}_median_s"] * 1e3 for f in fractions], "o-", label="median")
    ax.plot(rates, [online[f][f"{metric}_p99_s"] * 1e3 for f in fractions], "s--", label="p99")
    ax.set_xlabel("request rate (requests/s, Poisson)")
    ax.set_ylabel(f"{metric.upper()} (ms)")
    ax.set_title({"ttft": "time to first token", "tpot": "time per output token"}[metric])
    ax.legend()
    ax.grid(alpha=0.3)
plt.suptitle(f"{settings.online_requests} requests per rate, max_num_seqs {settings.max_num_seqs}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# At light load a request rarely waits, TTFT is about one prefill, and TPOT is a small batch's
# step time. As the rate approaches capacity, batches fill up (TPOT rises a little: bigger steps)
# and requests start to queue behind a full batch (TTFT, especially its p99, rises much more).
# Past capacity the queue grows for as long as requests keep coming, and so does TTFT (with a few
# dozen requests per rate, the queue has little time to build up). This is the trade every server
# tunes: a larger `max_num_seqs` buys throughput with TPOT; a smaller token budget protects TPOT
# at the expense of TTFT. With a handful of requests per rate (small settings) the p99 is close to
# the maximum and noisy.
#
# ## 6. Every request samples on its own
#
# A batch can mix greedy requests with sampled ones, each with its own temperature, top-k, top-p,
# stop strings and `max_tokens` (`SamplingParams`). Each request also owns a random generator
# seeded from its `seed` (`Sequence.rng`), and `ModelRunner.run` samples every request from its
# own row of logits with its own generator. So a seeded request gives the same text whether it
# runs alone or in any batch, and whatever order the others finish in.

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
# `data: {json}` lines ending with `data: [DONE]`), `GET /v1/models` and `GET /health`, with the
# standard library only. One thread owns the engine and loops `step()`; each HTTP connection gets
# a handler thread that hands its request to the engine thread through a queue and reads its
# tokens back from another (`EngineLoop`). So requests from different connections join the same
# running batch at the next step: continuous batching across clients.
#
# From a shell it is `tinyinfer serve --model models/teacher --port 8000`. Here we start it in
# background threads on port 0 (the system picks a free port) and talk to it with `urllib`.

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
# Several clients at once: four requests sent sequentially, then the same four from four threads
# at the same time. Concurrent requests share engine steps, so the four together should take less
# than the four in a row (how much less is section 3's batching gain).

# %%
bodies = [{"model": MODEL_DIR.name, "prompt": p, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
          for p in prompts]


def complete(body):
    with post("/completions", body) as response:
        return json.load(response)["choices"][0]["text"]


t0 = time.perf_counter()
one_by_one = [complete(b) for b in bodies]
t1 = time.perf_counter()
with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
    together = list(pool.map(complete, bodies))
t2 = time.perf_counter()
print(f"4 requests in a row: {(t1 - t0) * 1e3:.0f} ms; at the same time: {(t2 - t1) * 1e3:.0f} ms "
      f"({(t1 - t0) / (t2 - t1):.1f}x); same texts: {one_by_one == together}")
server.stop()

# %% [markdown]
# The official `openai` Python client works against it too (any API key is accepted). With a
# server running (`tinyinfer serve --model models/teacher --port 8000`):
#
# ```python
# from openai import OpenAI
#
# client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
# r = client.completions.create(model="teacher", prompt="def add(a, b):", max_tokens=32, temperature=0)
# print(r.choices[0].text, r.usage)
#
# stream = client.chat.completions.create(model="teacher", stream=True, max_tokens=32,
#                                         messages=[{"role": "user", "content": "Show me a for loop."}])
# for chunk in stream:
#     print(chunk.choices[0].delta.content or "", end="", flush=True)
# ```
#
# What the server leaves out (see its module docstring): `n > 1`, logprobs, penalties, tools,
# authentication. And the shipped models are small code models never trained on conversations:
# the chat route works end to end, the model does not chat well.
#
# The figures of this notebook next to the targets:

# %%
print(f"model: {MODEL_DIR.name}; machine: {machine()['cpu']}, {machine()['cores']} cores (possibly shared); "
      f"{'small settings: ' if SMALL else ''}{offline['num_requests']} requests, max_num_seqs {offline['max_num_seqs']}")
print(f"continuous / static (rows leave): {offline['continuous_over_static']:.2f}x, "
      f"/ static padded: {offline['continuous_over_static_padded']:.2f}x  (target >= 3x)")
print(f"continuous / one at a time with a KV cache: {offline['continuous_over_cached']:.2f}x  (target >= 10x)")
print(f"continuous / naive (no cache, one at a time): {offline['continuous_over_naive']:.1f}x")
best = max(batch_sizes, key=lambda b: sweep[b][0])
print(f"throughput: max_num_seqs 1 -> {best}: {sweep[best][0] / sweep[1][0]:.2f}x (continuous)")

# %% [markdown]
# ## Exercises
#
# 1. **Where the target is lost.** Profile one decode step at batch 16 (`cProfile` around
#    `llm.step()`): how much time goes to the model's matrix products, to attention
#    (`PagedKVCache.attend`), to `ModelRunner.prepare` and to sampling? Which of them grows with
#    the batch? Then quantize the model (`tinyinfer/quant/model.py: quantize_model`) and serve it:
#    does batching gain more or less?
# 2. **Head-of-line blocking.** The scheduler is strictly first come first served: if the request at
#    the front of the queue does not fit, nobody behind it starts. Build a workload where that
#    hurts (one huge prompt in front of many small ones with a tight cache), measure TTFT, and
#    sketch a policy that lets small requests pass. What can go wrong (starvation)?
# 3. **The budget trade.** Repeat section 5 at one rate near capacity with
#    `max_num_batched_tokens` = 32, 128 and 512 (`Settings(max_num_batched_tokens=...)`). Plot
#    TTFT p99 against TPOT p99. Which setting would you pick for a chat product, and which for a
#    batch job?
# 4. **Preemption cost.** In section 4, count the tokens recomputed because of preemption and
#    compare with the total. Then make the victim the request with the *fewest* computed tokens
#    instead of the newest (a copy of `Scheduler.schedule`): fewer recomputed tokens? Does FCFS
#    order survive?
# 5. **Streaming by hand.** Use `curl -N` or `http.client` to read the raw bytes of a streamed
#    completion: find the chunked-transfer lengths, the `data:` events and `[DONE]`. Then abort a
#    stream halfway (close the connection) and check with `server.engine_loop.aborted_ids` that
#    the engine freed the request.
# 6. **Seeds in a server.** Send the same seeded request twice at the same time as other requests.
#    Are the answers identical? Why would they not be if the server used one shared random
#    generator for all requests, as simple samplers do?
