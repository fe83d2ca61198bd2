"""Engine benchmarks: KV cache, batching, llama.cpp, online serving, prefix caching, speculative decoding.

Lesson: lessons/08-serving.py

    tinyinfer bench engine --model smollm2 [--quick] [--rounds 3] [--json PATH] [--plots DIR]
    python -m tinyinfer.bench.engine --model teacher ...

Every comparison runs its contenders in the same process, alternating them round after round (the
order rotates every round) and reports the median of the per-round ratios with their IQR, next to
the machine and its load average (tinyinfer/bench/timing.py says why). Each section is a function
that returns a dict, so the tour and the lessons call them directly; nothing here prints except
print_report. What is measured, and how:

1. bench_kv: KV cache vs recompute at 512-token sequences. Decode tokens/s over the last `window`
   positions before `long_len`: the contiguous cache (one new token per step) against running
   the whole prefix through the model again for every token; both through the same forward
   (tinyinfer/inference.py), so the ratio is the cache's alone. "growing" (small models only):
   generation from a 16-token prompt all the way to long_len, against the same recompute loop.

2. bench_offline: the heavy-tailed workload of tinyinfer/bench/workloads.py (ShareGPT-shaped
   lengths, held-out text prompts), greedy, ignore_eos so every request produces exactly its
   max_tokens, all requests at t = 0. Output tokens/s of:
   (a) naive: one request at a time, no cache, the whole sequence through tinyinfer.model.forward
       per token, on a representative subset (`naive_requests`; 0 skips it);
   (b) one request at a time with the KV cache (tinyinfer.generate.stream_tokens: Model.generate's
       loop), on `cached_requests` of them (None: all) picked evenly across total lengths;
   (c) static batching: max_num_seqs requests admitted together, the next group only when the
       *longest* has finished (LLM.generate group by group); the engine packs real tokens (no
       padding) and a finished request's slot idles for free, so (c) is the stricter baseline;
   (c') static, padded decode: as (c), every request decoding until its group's longest is done;
   (d) continuous batching: LLM.generate with every request queued at once.
   Ratios: (d)/(c), (d)/(c'), (d)/(b), (b)/(a). Every way must give the same greedy tokens: checked.

3. tinyinfer/bench/batching.py: decode tokens/s against the batch size (pure decode steps of B
   sequences), where batching stops paying (memory-bound -> compute-bound), a profile of one step,
   what the batch-invariant attention costs against BLAS, other designs of a real model's products
   (its blocks as loaded, expanded to float32 for BLAS, rounded to Q8_0) at batch 1 and 32, and
   llama.cpp's batch-1 decode on the same GGUF file beside tinyinfer's aggregate at 32.

4. bench_online: the same kind of workload with Poisson arrivals at `rate` requests/s (default:
   half the request throughput (d) measured), driven in real time through add_request() + step().
   TTFT and end-to-end latency count from the *scheduled* arrival time; TPOT =
   (E2E - TTFT) / (output tokens - 1), as vLLM's benchmark defines it. Median and p99.

5. bench_prefix: a multi-turn chat sharing a long system prompt (workloads.chat_session; the
   model's chat template when it has one): a fresh engine plays turns 1..N-1 (generating the
   answers), then turn N's time to first token is read from the request metrics, with
   enable_prefix_caching on vs off, alternated; also how much of turn N's prompt was shared.

6. tinyinfer/bench/speculative.py: prompt-lookup speculative decoding against batch-1 decoding,
   for several draft lengths, on a workload whose answers repeat their prompt and on one whose
   answers do not; and a layer-skip draft for comparison.

--quick shrinks everything (for the smoke test and busy machines); its figures are not the claim.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import machine, save_results
from .timing import alternate, median_ratio, pct, ratio_iqr  # noqa: F401  (alternate, median_ratio: lessons use them)

REAL_MODEL_PARAMS = 50_000_000  # above this, a model gets the real-model settings (SmolLM2: 135M)

# ------------------------------------------------------------------------------------------------
# settings


@dataclass
class Settings:
    # the offline workload (tinyinfer/bench/workloads.py)
    num_requests: int = 64
    scale: float = 0.25             # ShareGPT's mean lengths (161 prompt, 338 output) times this
    max_tokens: int = 256           # the output cap
    max_prompt: int | None = None   # vLLM's filter limits (None: 1024 and 2048 times scale), fit() caps them
    max_total: int | None = None
    # the engine
    max_num_seqs: int = 32          # a modest server batch (vLLM's default is 256)
    block_size: int = 16
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None  # None: the model's n_ctx, at most 2048
    # baselines
    naive_requests: int = 2         # (a) runs on this many (0: skipped)
    cached_requests: int | None = None  # (b) runs on this many (None: all)
    rounds: int = 3                 # offline and KV-cache rounds
    # online
    online_requests: int = 32
    rate: float | None = None       # requests/s; None: half the measured continuous throughput
    # prefix caching
    chat_turns: int = 5
    chat_rounds: int = 5
    chat_system: int | None = None  # system prompt tokens (None: a quarter of max_model_len)
    chat_answer: int = 48           # an answer's max tokens (the model may stop earlier)
    # KV cache vs recompute
    long_len: int = 512
    window: int = 32
    kv_growing: bool = True
    # decode scaling and llama.cpp (tinyinfer/bench/batching.py)
    batch_sizes: tuple = (1, 2, 4, 8, 16, 32, 64)
    scaling_context: int = 128      # tokens each sequence holds when its decode steps are timed
    scaling_steps: int = 6
    scaling_rounds: int = 3
    llama_tokens: int = 32          # llama.cpp decode steps per round
    llama_threads: tuple = (1, 2)   # llama.cpp's best of these thread counts is the reference
    # speculative decoding (tinyinfer/bench/speculative.py)
    spec_ks: tuple = (1, 2, 3, 4, 6, 8)
    spec_requests: int = 4
    spec_new_tokens: int = 96
    spec_rounds: int = 3
    sections: tuple = ("kv_cache", "offline", "scaling", "designs", "llamacpp", "online", "prefix_cache", "speculative")
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides):
        base = dict(num_requests=8, max_num_seqs=4, scale=0.1, max_tokens=40, naive_requests=1, rounds=1,
                    online_requests=8, chat_turns=3, chat_rounds=2, chat_answer=12, long_len=128, window=8,
                    batch_sizes=(1, 2, 4), scaling_steps=3, scaling_rounds=1, scaling_context=32,
                    llama_tokens=8, llama_threads=(2,), spec_ks=(2, 4), spec_requests=1, spec_new_tokens=24,
                    spec_rounds=1)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def real_model(cls, **overrides):
        """A model whose weights stream from memory (SmolLM2-135M): the same measurements with
        fewer of the slow baselines, sized to finish in minutes on 2 cores."""
        base = dict(naive_requests=1, cached_requests=16, max_model_len=1024, chat_system=512, chat_rounds=3,
                    window=4, kv_growing=False)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def for_model(cls, model, quick: bool = False, **overrides):
        if quick:
            return cls.quick(**overrides)
        return (cls.real_model if model.num_params() > REAL_MODEL_PARAMS else cls)(**overrides)

    def fit(self, n_ctx: int) -> "Settings":
        """Clamp lengths so every request fits the model's context (and the engine's max_model_len)."""
        self.max_model_len = min(self.max_model_len or n_ctx, n_ctx, 2048)
        limit = self.max_model_len
        self.max_total = min(self.max_total or int(2048 * self.scale), limit)
        self.max_prompt = min(self.max_prompt or int(1024 * self.scale), self.max_total // 2)
        self.max_tokens = min(self.max_tokens, self.max_total - 4)
        self.long_len = min(self.long_len, limit)
        self.window = max(1, min(self.window, self.long_len - 16))
        self.scaling_context = min(self.scaling_context, limit // 2)
        self.spec_new_tokens = min(self.spec_new_tokens, limit // 4)
        self.max_num_batched_tokens = max(self.max_num_batched_tokens, self.max_prompt)
        if self.chat_system is None:
            self.chat_system = limit // 4
        self.chat_system = min(self.chat_system, limit // 3)
        self.chat_answer = min(self.chat_answer, max(2, (limit - self.chat_system) // (2 * self.chat_turns)))
        return self


# ------------------------------------------------------------------------------------------------
# helpers


def fast_model(model):
    """The model's weights laid out for inference, once (tinyinfer/inference.py)."""
    from ..inference import InferenceModel

    return model if isinstance(model, InferenceModel) else InferenceModel(model)


def base_model(model):
    from ..inference import InferenceModel

    return model.model if isinstance(model, InferenceModel) else model


def make_workload(n: int, vocab_size: int, prompt_len, output_len, seed: int) -> list:
    """n requests (prompt token ids, max_tokens), seeded; random tokens, uniform lengths (the
    lessons' small demonstrations; the benchmark's own workload is heavy-tailed: offline_work)."""
    rng = np.random.default_rng(seed)
    work = []
    for _ in range(n):
        p = int(rng.integers(prompt_len[0], prompt_len[1] + 1))
        o = int(rng.integers(output_len[0], output_len[1] + 1))
        work.append((rng.integers(0, vocab_size, size=p).tolist(), o))
    return work


def offline_work(model, s: Settings, n: int | None = None, seed_offset: int = 0) -> list:
    """The heavy-tailed workload as [(prompt ids, max_tokens)] (tinyinfer/bench/workloads.py)."""
    from .workloads import offline_requests

    m = base_model(model)
    reqs = offline_requests(m.tokenizer, n or s.num_requests, seed=s.seed + seed_offset, scale=s.scale,
                            max_tokens=s.max_tokens, vocab_size=m.config.vocab_size, max_prompt=s.max_prompt,
                            max_total=s.max_total)
    return [(r.prompt_ids, r.max_tokens) for r in reqs]


def describe_work(work: list) -> dict:
    from .workloads import Request, describe

    return describe([Request(p, n) for p, n in work])


def representative_subset(work: list, k: int) -> list:
    """k requests evenly spaced through the workload sorted by total length (prompt + output)."""
    order = sorted(range(len(work)), key=lambda i: len(work[i][0]) + work[i][1])
    picks = sorted({order[int(round(j * (len(order) - 1) / max(1, k - 1)))] for j in range(k)})
    return [work[i] for i in picks]


def params_for(max_tokens: int):
    from ..engine import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def make_engine(model, s: Settings, max_num_seqs=None, prefix_caching=False, max_num_batched_tokens=None):
    """An engine with the benchmark's settings; model may be an InferenceModel (prepared once)."""
    from ..engine import LLM

    m = base_model(model)
    return LLM(model, block_size=s.block_size, max_num_seqs=max_num_seqs or s.max_num_seqs,
               max_num_batched_tokens=max_num_batched_tokens or s.max_num_batched_tokens,
               enable_prefix_caching=prefix_caching, max_model_len=min(s.max_model_len or m.config.n_ctx,
                                                                         m.config.n_ctx))


# ------------------------------------------------------------------------------------------------
# the offline modes: each returns (generated token ids per request, seconds)


def run_naive(model, work):
    """(a) one at a time, no cache: the whole sequence through the model for every new token."""
    from ..model import forward

    m = base_model(model)
    out = []
    t0 = time.perf_counter()
    for prompt, n in work:
        seq = list(prompt)
        for _ in range(n):
            seq.append(int(np.argmax(forward(m.params, m.config, np.array([seq]), logits_rows=[-1])[0, -1])))
        out.append(seq[len(prompt):])
    return out, time.perf_counter() - t0


def run_cached(model, work):
    """(b) one at a time with the contiguous KV cache (stream_tokens: Model.generate's loop)."""
    from ..generate import stream_tokens

    fast = fast_model(model)
    out = []
    t0 = time.perf_counter()
    for prompt, n in work:
        out.append(list(stream_tokens(fast, prompt, n)))
    return out, time.perf_counter() - t0


def run_static(model, work, s: Settings, pad_decode: bool = False):
    """(c) static batching: admit max_num_seqs requests, wait for the longest, then the next batch.

    pad_decode=False: a finished request leaves the batch and its slot idles (no compute).
    pad_decode=True ((c'), what a padded static batch does, e.g. transformers' generate): every
    request keeps decoding until the batch's longest is done; only its own tokens count.
    """
    llm = make_engine(model, s)
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(work), s.max_num_seqs):
        batch = work[i:i + s.max_num_seqs]
        longest = max(n for _, n in batch)
        res = llm.generate([p for p, _ in batch], [params_for(longest if pad_decode else n) for _, n in batch])
        out.extend(r.token_ids[:n] for r, (_, n) in zip(res, batch))
    return out, time.perf_counter() - t0


def run_continuous(model, work, s: Settings):
    """(d) continuous batching: every request queued at t=0, the engine batches per iteration."""
    llm = make_engine(model, s)
    t0 = time.perf_counter()
    res = llm.generate([p for p, _ in work], [params_for(n) for _, n in work])
    return [r.token_ids for r in res], time.perf_counter() - t0


def bench_offline(model, s: Settings, work: list | None = None, progress: bool = False) -> dict:
    """Section 2 of the module docstring -> tokens/s of every way, ratios, same-token checks."""
    fast = fast_model(model)
    work = offline_work(fast, s) if work is None else work
    naive_sub = representative_subset(work, s.naive_requests) if s.naive_requests else []
    cached_sub = work if s.cached_requests is None else representative_subset(work, s.cached_requests)
    n_tokens = sum(n for _, n in work)
    tokens = {}

    def timed(name, fn, *args):
        def run():
            toks, secs = fn(*args)
            tokens[name] = toks
            return secs
        return run

    warm = [(p[:8], 4) for p, _ in work[:2]]
    for fn, args in [(run_cached, (fast, warm)), (run_static, (fast, warm, s)), (run_continuous, (fast, warm, s))]:
        fn(*args)  # warm-up: first-call costs (compilation, page faults) out of the way
    fns = {"cached_subset": timed("cached_subset", run_cached, fast, cached_sub),
           "static": timed("static", run_static, fast, work, s),
           "static_padded": timed("static_padded", run_static, fast, work, s, True),
           "continuous": timed("continuous", run_continuous, fast, work, s)}
    if naive_sub:
        run_naive(fast, [(p[:4], 2) for p, _ in naive_sub[:1]])
        fns = {"naive_subset": timed("naive_subset", run_naive, fast, naive_sub),
               "naive_cached_subset": timed("naive_cached_subset", run_cached, fast, naive_sub), **fns}
    times = alternate(fns, s.rounds, progress=progress, desc="offline (one at a time, static, continuous)")
    med = {k: statistics.median(v) for k, v in times.items()}
    n_cached = sum(n for _, n in cached_sub)
    # (b)'s tokens/s on its subset, against (d)'s on the whole workload, round by round
    b_rate = [n_cached / t for t in times["cached_subset"]]
    d_rate = [n_tokens / t for t in times["continuous"]]
    d_over_b = [d / b for d, b in zip(d_rate, b_rate)]
    same = sum(a == b == c for a, b, c in zip(tokens["static"], tokens["static_padded"], tokens["continuous"]))
    index = {tuple(p): i for i, (p, _) in enumerate(work)}
    same_cached = sum(t == tokens["continuous"][index[tuple(p)]]
                      for (p, _), t in zip(cached_sub, tokens["cached_subset"]))
    result = {
        "workload": describe_work(work), "num_requests": len(work), "output_tokens": n_tokens,
        "prompt_len_mean": float(np.mean([len(p) for p, _ in work])),
        "output_len_mean": float(np.mean([n for _, n in work])),
        "output_len_min": min(n for _, n in work), "output_len_max": max(n for _, n in work),
        "max_num_seqs": s.max_num_seqs, "rounds": s.rounds,
        "cached_subset": {"num_requests": len(cached_sub), "output_tokens": n_cached},
        "cached_tok_s": n_cached / med["cached_subset"],
        "static_tok_s": n_tokens / med["static"],
        "static_padded_tok_s": n_tokens / med["static_padded"],
        "continuous_tok_s": n_tokens / med["continuous"],
        "continuous_req_s": len(work) / med["continuous"],
        "continuous_over_static": median_ratio(times["static"], times["continuous"]),
        "continuous_over_static_iqr": ratio_iqr(times["static"], times["continuous"]),
        "continuous_over_static_padded": median_ratio(times["static_padded"], times["continuous"]),
        "continuous_over_cached": statistics.median(d_over_b),
        "continuous_over_cached_iqr": [float(np.percentile(d_over_b, 25)), float(np.percentile(d_over_b, 75))],
        "same_tokens_static_continuous": f"{same}/{len(work)}",
        "same_tokens_cached_continuous": f"{same_cached}/{len(cached_sub)}",
        "seconds": times,
    }
    if naive_sub:
        n_sub = sum(n for _, n in naive_sub)
        b_over_a = median_ratio(times["naive_subset"], times["naive_cached_subset"])
        same_naive = sum(a == b for a, b in zip(tokens["naive_subset"], tokens["naive_cached_subset"]))
        result.update({
            "naive_subset": {"num_requests": len(naive_sub), "output_tokens": n_sub,
                             "prompt_len_mean": float(np.mean([len(p) for p, _ in naive_sub])),
                             "output_len_mean": float(np.mean([n for _, n in naive_sub]))},
            "naive_tok_s": n_sub / med["naive_subset"],
            "cached_over_naive": b_over_a,
            "continuous_over_naive": result["continuous_over_cached"] * b_over_a,
            "same_tokens_naive_cached": f"{same_naive}/{len(naive_sub)}"})
    return result


# ------------------------------------------------------------------------------------------------
# online: Poisson arrivals, real time


def bench_online(model, s: Settings, rate: float, work: list | None = None) -> dict:
    """Section 4 of the module docstring: latency percentiles and throughput under Poisson arrivals."""
    from .workloads import poisson_arrivals

    fast = fast_model(model)
    work = offline_work(fast, s, s.online_requests, seed_offset=1) if work is None else work
    arrivals = poisson_arrivals(len(work), rate, s.seed + 2)
    llm = make_engine(fast, s)
    finished = {}
    nxt = 0
    t0 = time.perf_counter()
    while len(finished) < len(work):
        now = time.perf_counter() - t0
        while nxt < len(work) and arrivals[nxt] <= now:
            prompt, n = work[nxt]
            llm.add_request(prompt, params_for(n), request_id=str(nxt))
            nxt += 1
        if llm.has_unfinished_requests():
            for out in llm.step():
                if out.finished:
                    finished[int(out.request_id)] = out.output
        elif nxt < len(work):
            time.sleep(max(0.0, arrivals[nxt] - (time.perf_counter() - t0)))
    ttft, tpot, e2e = [], [], []
    last = 0.0
    for i, out in finished.items():
        m = out.metrics
        arrive = t0 + arrivals[i]  # the scheduled arrival
        ttft.append(m["first_token_time"] - arrive)
        e2e.append(m["finish_time"] - arrive)
        if m["num_output_tokens"] > 1:
            tpot.append((e2e[-1] - ttft[-1]) / (m["num_output_tokens"] - 1))
        last = max(last, m["finish_time"] - t0)
    n_tokens = sum(len(o.token_ids) for o in finished.values())
    return {"num_requests": len(work), "rate_req_s": rate, "arrival_span_s": float(arrivals[-1]),
            "duration_s": last, "workload": describe_work(work),
            "throughput_tok_s": n_tokens / last, "throughput_req_s": len(work) / last,
            "ttft_median_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
            "tpot_median_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99),
            "e2e_median_s": pct(e2e, 50), "e2e_p99_s": pct(e2e, 99),
            "max_num_seqs": s.max_num_seqs}


# ------------------------------------------------------------------------------------------------
# prefix caching: a multi-turn chat sharing a system prompt


def chat_turn_ids(tokenizer, system: str, users: list, answers: list) -> list[int]:
    """The prompt of the next turn: the conversation so far with the model's chat template."""
    messages = [{"role": "system", "content": system}]
    for i, user in enumerate(users):
        messages.append({"role": "user", "content": user})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    encode_chat = getattr(tokenizer, "encode_chat", None)
    if encode_chat is not None:
        return encode_chat(messages)
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True), special=True)


def run_chat(model, s: Settings, prefix_caching: bool) -> dict:
    """Play a chat on a fresh engine; the last turn's TTFT (seconds) and its prefix-cache hit.

    With a chat template (an instruction model): a held-out document as the system prompt, short
    questions, the model's own answers (greedy, stopping at its end of turn, at most chat_answer
    tokens). Without one: the same shape in plain token ids (held-out text, answers generated).
    """
    from ..engine import SamplingParams
    from .workloads import chat_session, corpus_prompts

    fast = fast_model(model)
    m = fast.model
    llm = make_engine(fast, s, max_num_seqs=1, prefix_caching=prefix_caching,
                      max_num_batched_tokens=s.max_model_len or m.config.n_ctx)
    template = m.tokenizer is not None and getattr(m.tokenizer, "chat_template", None)
    answer_params = SamplingParams(max_tokens=s.chat_answer, temperature=0.0)
    if template:
        session = chat_session(m.tokenizer, s.chat_system, s.chat_turns, seed=s.seed + 3)
        answers = []
        for turn in range(s.chat_turns):
            prompt = chat_turn_ids(m.tokenizer, session["system"], session["users"][:turn + 1], answers)
            last = turn == s.chat_turns - 1
            out = llm.generate(prompt, SamplingParams(max_tokens=1) if last else answer_params)[0]
            answers.append(out.text)
    else:
        user_len = max(4, s.chat_system // 8)
        system, *users = corpus_prompts(m.tokenizer, [s.chat_system] + [user_len] * s.chat_turns, s.seed + 3,
                                        m.config.vocab_size)
        prompt = list(system)
        for turn in range(s.chat_turns):
            prompt = prompt + users[turn]
            last = turn == s.chat_turns - 1
            out = llm.generate(prompt, params_for(1) if last else params_for(s.chat_answer))[0]
            if not last:
                prompt = prompt + out.token_ids
    assert llm.block_manager.num_free_blocks == llm.num_blocks  # nothing leaked
    return {"ttft_s": out.metrics["ttft"], "prompt_tokens": len(out.prompt_token_ids),
            "cached_prompt_tokens": out.metrics["num_cached_prompt_tokens"], "chat_template": bool(template)}


def bench_prefix(model, s: Settings, progress: bool = False) -> dict:
    """Section 5 of the module docstring -> TTFT of the last turn with and without the prefix cache."""
    fast = fast_model(model)
    info = {}

    def runner(flag):
        def run():
            r = run_chat(fast, s, flag)
            info[flag] = r
            return r["ttft_s"]
        return run

    times = alternate({"on": runner(True), "off": runner(False)}, s.chat_rounds, warmup=1, progress=progress,
                      desc="prefix cache (a chat, cache on / off)")
    on = info[True]
    return {"turn": s.chat_turns, "rounds": s.chat_rounds, "prompt_tokens": on["prompt_tokens"],
            "cached_prompt_tokens": on["cached_prompt_tokens"],
            "shared_fraction": on["cached_prompt_tokens"] / on["prompt_tokens"],
            "cached_prompt_tokens_without_cache": info[False]["cached_prompt_tokens"],
            "system_tokens": s.chat_system, "chat_template": on["chat_template"],
            "ttft_on_s": statistics.median(times["on"]), "ttft_off_s": statistics.median(times["off"]),
            "ttft_off_over_on": median_ratio(times["off"], times["on"]),
            "ttft_off_over_on_iqr": ratio_iqr(times["off"], times["on"]), "seconds": times}


# ------------------------------------------------------------------------------------------------
# KV cache vs recompute at long sequences


def bench_kv(model, s: Settings, progress: bool = False) -> dict:
    """Section 1 of the module docstring -> tokens/s with the cache and recomputing, and their ratio."""
    from ..generate import stream_tokens
    from ..kv_cache import ContiguousKVCache
    from .workloads import corpus_prompts

    fast = fast_model(model)
    cfg = fast.config
    L, w = s.long_len, s.window
    ids = corpus_prompts(fast.model.tokenizer, [L], s.seed + 4, cfg.vocab_size)[0]
    dtype = fast.model.dtype

    def last_logits(tokens):  # the whole prefix through the model, as if there were no past
        cache = ContiguousKVCache(cfg, 1, dtype, max_len=len(tokens))
        return fast.forward(np.array([tokens]), np.arange(len(tokens)), cache, logits_rows=[-1])[0, -1]

    # at L: the last w positions, teacher-forced so both paths do exactly the same positions
    def cached_window():
        cache = ContiguousKVCache(cfg, 1, dtype, max_len=L)
        fast.forward(np.array([ids[:L - w]]), np.arange(L - w), cache, logits_rows=[-1])  # prefill, untimed
        t0 = time.perf_counter()
        for pos in range(L - w, L):
            fast.forward(np.array([[ids[pos]]]), np.array([pos]), cache)
        return time.perf_counter() - t0

    def recompute_window():
        t0 = time.perf_counter()
        for pos in range(L - w, L):
            last_logits(ids[:pos + 1])
        return time.perf_counter() - t0

    tw = alternate({"cached": cached_window, "recompute": recompute_window}, max(3, s.rounds), warmup=1,
                   progress=progress, desc=f"KV cache vs recompute at {L} tokens")
    result = {"length": L, "window": w,
              "at_length": {"cached_tok_s": w / statistics.median(tw["cached"]),
                            "recompute_tok_s": w / statistics.median(tw["recompute"]),
                            "ratio": median_ratio(tw["recompute"], tw["cached"]),
                            "ratio_iqr": ratio_iqr(tw["recompute"], tw["cached"])}}
    if s.kv_growing:  # a 16-token prompt decoded all the way to L
        prompt, n_new = ids[:16], L - 16

        def cached_growing():
            t0 = time.perf_counter()
            list(stream_tokens(fast, prompt, n_new))
            return time.perf_counter() - t0

        def recompute_growing():
            seq = list(prompt)
            t0 = time.perf_counter()
            for _ in range(n_new):
                seq.append(int(np.argmax(last_logits(seq))))
            return time.perf_counter() - t0

        tg = alternate({"cached": cached_growing, "recompute": recompute_growing}, s.rounds, progress=progress,
                       desc=f"KV cache vs recompute, 16 -> {L} tokens")
        result["growing"] = {"from": 16, "to": L, "cached_tok_s": n_new / statistics.median(tg["cached"]),
                             "recompute_tok_s": n_new / statistics.median(tg["recompute"]),
                             "ratio": median_ratio(tg["recompute"], tg["cached"])}
    return result


# ------------------------------------------------------------------------------------------------
# goals, report, run


GOALS = {  # what each measurement is meant to reach (ratios)
    "kv_cache_over_recompute_at_512": 20.0,
    "aggregate_32_over_llamacpp_batch1": 4.0,
    "continuous_over_one_at_a_time_cached": 3.0,
    "continuous_over_static": 2.0,
    "prefix_cache_ttft": 5.0,
    "speculative_over_batch1": 1.5,
}


def goals(r: dict) -> dict:
    """Each goal's measured ratio (None when its section did not run) and whether it is met."""
    def get(*path):
        node = r
        for key in path:
            if not isinstance(node, dict) or node.get(key) is None:
                return None
            node = node[key]
        return node

    measured = {
        "kv_cache_over_recompute_at_512": get("kv_cache", "at_length", "ratio"),
        "aggregate_32_over_llamacpp_batch1": get("llamacpp", "aggregate_over_llamacpp"),
        "continuous_over_one_at_a_time_cached": get("offline", "continuous_over_cached"),
        "continuous_over_static": get("offline", "continuous_over_static"),
        "prefix_cache_ttft": get("prefix_cache", "ttft_off_over_on"),
        "speculative_over_batch1": get("speculative", "best", "speedup"),
    }
    out = {}
    for name, value in measured.items():
        out[name] = {"measured": value, "goal": f">= {GOALS[name]:g}x",
                     "met": None if value is None else bool(value >= GOALS[name])}
    if "speculative" in r and r["speculative"].get("best"):
        out["speculative_over_batch1"]["greedy_identical"] = r["speculative"]["best"]["same_tokens"]
    if "prefix_cache" in r:
        out["prefix_cache_ttft"]["shared_fraction"] = r["prefix_cache"]["shared_fraction"]
    return out


def run(model, s: Settings | None = None, model_name: str = "", quick: bool = False, progress: bool = True,
        model_path=None) -> dict:
    """Every section in s.sections, one process -> the results dict (print_report formats it).
    model_path: the GGUF file, for llama.cpp's reference (skipped without it or without llama.cpp)."""
    from . import batching, speculative

    m = base_model(model)
    s = (s or Settings.for_model(m, quick)).fit(m.config.n_ctx)
    fast = fast_model(model)
    results = {"machine": machine(), "model": model_name, "params": m.num_params(), "n_ctx": m.config.n_ctx,
               "quick": quick, "settings": asdict(s)}
    want = set(s.sections)
    if "kv_cache" in want:
        results["kv_cache"] = bench_kv(fast, s, progress)
    if "offline" in want:
        results["offline"] = bench_offline(fast, s, progress=progress)
    if "scaling" in want:
        results["scaling"] = batching.bench_decode_scaling(fast, s, progress)
    if "designs" in want and m.num_params() > REAL_MODEL_PARAMS:  # other ways to do a real model's products
        results["designs"] = batching.bench_designs(fast, s, (1, max(b for b in s.batch_sizes if b <= 32)), progress)
    if "llamacpp" in want:
        results["llamacpp"] = batching.bench_llamacpp(fast, s, model_path, progress)
    if "online" in want:
        rate = s.rate
        if rate is None:
            rate = 0.5 * results["offline"]["continuous_req_s"] if "offline" in results else 1.0
        results["online"] = bench_online(fast, s, rate)
    if "prefix_cache" in want:
        results["prefix_cache"] = bench_prefix(fast, s, progress)
    if "speculative" in want:
        results["speculative"] = speculative.bench_speculative(fast, s, progress)
    results["goals"] = goals(results)
    results["machine_after"] = {"load_average": round(os.getloadavg()[0], 2)}
    return results


def format_report(r: dict) -> str:
    """The results as text: figures, ratios with their IQR, goals."""
    from . import batching, speculative

    lines = [f"model {r['model']} ({r['params']:,} params, n_ctx {r['n_ctx']}){'  [quick]' if r['quick'] else ''}; "
             f"load average {r['machine']['load_average']} before, {r['machine_after']['load_average']} after"]
    if "kv_cache" in r:
        kv = r["kv_cache"]
        a = kv["at_length"]
        lines += ["", "KV cache vs recompute (decode tokens/s)",
                  f"  last {kv['window']} positions before {kv['length']}: cache {a['cached_tok_s']:9.1f}  recompute "
                  f"{a['recompute_tok_s']:8.2f}  ratio {a['ratio']:6.1f}x "
                  f"(IQR {a['ratio_iqr'][0]:.1f}-{a['ratio_iqr'][1]:.1f})"]
        if "growing" in kv:
            g = kv["growing"]
            lines.append(f"  growing {g['from']} -> {g['to']}: cache {g['cached_tok_s']:9.1f}  recompute "
                         f"{g['recompute_tok_s']:8.2f}  ratio {g['ratio']:6.2f}x")
    if "offline" in r:
        off = r["offline"]
        wl = off["workload"]
        lines += ["", f"offline, heavy-tailed: {off['num_requests']} requests, prompts median "
                      f"{wl['prompt_len']['median']:.0f} / mean {wl['prompt_len']['mean']:.0f} / max "
                      f"{wl['prompt_len']['max']} tokens, outputs median {wl['output_len']['median']:.0f} / mean "
                      f"{wl['output_len']['mean']:.0f} / max {wl['output_len']['max']}, max_num_seqs "
                      f"{off['max_num_seqs']}, {off['rounds']} round(s)"]
        rows = []
        if "naive_tok_s" in off:
            rows.append((f"(a) naive, no cache (subset of {off['naive_subset']['num_requests']})", "naive_tok_s"))
        rows += [(f"(b) one at a time, KV cache (subset of {off['cached_subset']['num_requests']})", "cached_tok_s"),
                 ("(c) static batching (wait for the longest)", "static_tok_s"),
                 ("(c') static, finished rows keep decoding", "static_padded_tok_s"),
                 ("(d) continuous batching", "continuous_tok_s")]
        for label, key in rows:
            lines.append(f"  {label:52s} {off[key]:10.1f} output tokens/s")
        q = off["continuous_over_static_iqr"]
        lines.append(f"  (d)/(c) {off['continuous_over_static']:.2f}x (IQR {q[0]:.2f}-{q[1]:.2f})   (d)/(c') "
                     f"{off['continuous_over_static_padded']:.2f}x   (d)/(b) {off['continuous_over_cached']:.2f}x"
                     + (f"   (b)/(a) {off['cached_over_naive']:.2f}x" if "cached_over_naive" in off else ""))
        lines.append(f"  same greedy tokens: static, static padded, continuous {off['same_tokens_static_continuous']}, "
                     f"one at a time vs continuous {off['same_tokens_cached_continuous']}"
                     + (f", naive vs cached {off['same_tokens_naive_cached']}"
                        if "same_tokens_naive_cached" in off else ""))
    if "scaling" in r:
        lines += ["", batching.format_scaling(r["scaling"])]
    if "designs" in r:
        lines += ["", batching.format_designs(r["designs"])]
    if "llamacpp" in r:
        lines += ["", batching.format_llamacpp(r["llamacpp"])]
    if "online" in r:
        onl = r["online"]
        lines += ["", f"online: {onl['num_requests']} requests, Poisson {onl['rate_req_s']:.2f} req/s: "
                      f"{onl['throughput_tok_s']:.1f} tokens/s, {onl['throughput_req_s']:.2f} req/s",
                  f"  TTFT median {onl['ttft_median_s'] * 1e3:8.1f} ms  p99 {onl['ttft_p99_s'] * 1e3:8.1f} ms",
                  f"  TPOT median {onl['tpot_median_s'] * 1e3:8.2f} ms  p99 {onl['tpot_p99_s'] * 1e3:8.2f} ms"]
    if "prefix_cache" in r:
        pre = r["prefix_cache"]
        lines += ["", f"prefix cache, chat turn {pre['turn']} ({pre['prompt_tokens']} prompt tokens, "
                      f"{pre['cached_prompt_tokens']} from the cache: {pre['shared_fraction']:.0%}): TTFT on "
                      f"{pre['ttft_on_s'] * 1e3:.1f} ms, off {pre['ttft_off_s'] * 1e3:.1f} ms, ratio "
                      f"{pre['ttft_off_over_on']:.1f}x (IQR {pre['ttft_off_over_on_iqr'][0]:.1f}-"
                      f"{pre['ttft_off_over_on_iqr'][1]:.1f}, {pre['rounds']} rounds)"]
    if "speculative" in r:
        lines += ["", speculative.format_speculative(r["speculative"])]
    lines += ["", "goals"]
    for name, g in r["goals"].items():
        value = "   n/a " if g["measured"] is None else f"{g['measured']:7.2f}x"
        met = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        lines.append(f"  {name:40s} {value}  goal {g['goal']:7s} {met}")
    return "\n".join(lines)


def save_plots(r: dict, folder) -> list:
    """The figures of a run as PNG files in folder -> their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import batching, speculative

    os.makedirs(folder, exist_ok=True)
    paths = []
    if "rows" in r.get("scaling", {}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        batching.plot_scaling(r["scaling"], ax, r.get("llamacpp"))
        paths.append(os.path.join(folder, "decode_scaling.png"))
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if "workloads" in r.get("speculative", {}):  # not skipped
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        speculative.plot_speculative(r["speculative"], axes)
        paths.append(os.path.join(folder, "speculative.png"))
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv=None):
    from .. import load
    from ..model_names import resolve as resolve_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="teacher", help="model folder, .gguf file or name (default teacher; smollm2)")
    ap.add_argument("--quick", action="store_true", help="small settings: a smoke run, not a measurement")
    ap.add_argument("--rounds", type=int, help="rounds of every timed comparison (default 3; 1 with --quick)")
    ap.add_argument("--num-requests", type=int, help="offline workload size (default 64; 8 with --quick)")
    ap.add_argument("--max-num-seqs", type=int, help="batch size of (c) and (d) (default 32; 4 with --quick)")
    ap.add_argument("--rate", type=float, help="online arrivals, requests/s (default: half of (d)'s)")
    ap.add_argument("--sections", help=f"comma-separated subset of {','.join(Settings.sections)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--plots", help="also save the figures (PNG) in this folder")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in dict(num_requests=args.num_requests, max_num_seqs=args.max_num_seqs,
                                       rate=args.rate, seed=args.seed).items() if v is not None}
    if args.rounds is not None:
        overrides.update(rounds=args.rounds, chat_rounds=args.rounds, scaling_rounds=args.rounds,
                         spec_rounds=args.rounds)
    if args.sections:
        unknown = set(args.sections.split(",")) - set(Settings.sections)
        if unknown:
            raise SystemExit(f"error: --sections: unknown {sorted(unknown)}; choose from "
                             f"{', '.join(Settings.sections)}")
        overrides["sections"] = tuple(args.sections.split(","))
    path = resolve_model_path(args.model)
    model = load(path)
    s = Settings.for_model(model, args.quick, **overrides)
    results = run(model, s, args.model, quick=args.quick, model_path=path if str(path).endswith(".gguf") else None)
    print(format_report(results))
    if args.plots:
        for p in save_plots(results, args.plots):
            print(f"figure: {p}")
    save_results(results, args.json)
    return results


if __name__ == "__main__":
    main()
