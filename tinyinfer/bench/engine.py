"""Engine benchmarks: KV cache, continuous batching, online serving and prefix caching, one run.

    python -m tinyinfer.bench.engine --model teacher [--quick] [--rounds 3] [--json PATH]

Every comparison runs its contenders in the same process, alternating them round after round
(the order rotates every round) and reports the median of the per-round ratios, next to the
machine (see tinyinfer/bench/__init__.py for why). What is measured, and how:

1. KV cache vs recompute at long sequences (target: >= 20x at 512 tokens).
   * "at n_ctx": decode tokens/s over the last `window` positions before n_ctx (512 for the
     teacher): the contiguous KV cache (tinyinfer/kv_cache.py, what Model.generate uses, prompt
     prefilled untimed) against recomputing the whole prefix through tinyinfer.model.forward for
     every token. This is the figure the target is judged on.
   * "growing": Model.generate from a 16-token prompt all the way to n_ctx, against the same
     recompute loop (the average over a sequence that grows, so about half the ratio at the end).

2. Offline throughput on a mixed workload (seeded): N requests, prompt lengths and output lengths
   drawn uniformly (outputs vary ~10x), greedy, ignore_eos=True so every request produces exactly
   its max_tokens. Output tokens/s of:
   (a) naive: one request at a time, no cache: the whole sequence through forward() per token.
       It is slow, so it runs on a subset of `naive_requests` requests picked evenly across the
       workload's total lengths; its tokens/s is taken as the workload's (scaled per token), and
       (b)/(a) is measured on that same subset, interleaved.
   (b) one request at a time with the contiguous KV cache (Model.generate).
   (c) static batching: the engine admits max_num_seqs requests, runs them until the *longest*
       has finished, and only then admits the next max_num_seqs (LLM.generate called batch by
       batch). A classic static batch would pad every prompt to the longest one; left-padding is
       wrong for a causal model without attention masks, so instead the engine packs the real
       tokens. That makes (c) *faster* than real padded static batching: it keeps the idle slots
       of "wait for the longest" but pays no padding compute, so (d)/(c) is an underestimate.
       The engine also drops a finished request from the step, so its slot costs nothing; the
       target is judged against this (c), the stricter baseline. Reported beside it:
   (c') static, padded decode: as (c), but every request keeps decoding until its batch's longest
       is done (what a padded batch in transformers' generate computes); only its own tokens count.
   (d) continuous batching: LLM.generate with all N requests at t=0 (iteration-level batching).
   (c) and (d) use the same engine settings, with prefix caching off (a fresh engine each run).
   Ratios: (d)/(c) (target >= 3x), (d)/(b) (target >= 10x), (b)/(a), and (d)/(a) = (d)/(b) x (b)/(a).

3. Online serving: the same kind of workload, arrivals a Poisson process at `rate` requests/s
   (default: half the request throughput (d) just measured), driven in real time through
   add_request() + step(): before every step, every request whose arrival time has passed is
   added. TTFT and end-to-end latency count from the *scheduled* arrival time (so time spent
   waiting for the step in progress counts, as it would for a real client); TPOT =
   (E2E - TTFT) / (output tokens - 1), as vLLM's benchmark defines it. Median and p99, throughput.

4. Prefix caching on a 5-turn chat (target: >= 5x lower TTFT on turn 5): a system prompt, then
   each turn appends the model's previous answer and a new user message. A fresh engine plays
   turns 1-4 (generating each answer), then turn 5's time to first token is read from the
   request metrics; with enable_prefix_caching=True vs False, alternated for several rounds,
   median of the per-round ratios. max_num_batched_tokens = n_ctx, so turn 5 prefills in one
   step either way.

--quick shrinks everything (for the smoke test and busy machines); its figures are not the claim.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import machine, save_results

# ------------------------------------------------------------------------------------------------
# settings


@dataclass
class Settings:
    num_requests: int = 64
    max_num_seqs: int = 32          # a modest server batch (vLLM's default is 256)
    block_size: int = 16
    max_num_batched_tokens: int = 512
    prompt_len: tuple = (16, 128)   # inclusive range, uniform
    output_len: tuple = (8, 96)     # inclusive range, uniform: ~10x spread
    naive_requests: int = 4         # the subset the no-cache baseline runs on
    rounds: int = 3                 # offline and KV-cache rounds
    online_requests: int = 32
    rate: float | None = None       # requests/s; None: half the measured continuous throughput
    chat_turns: int = 5
    chat_rounds: int = 5
    long_len: int = 512             # KV cache vs recompute: grow to this (capped at n_ctx)
    window: int = 32                # decode positions timed just before long_len
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        base = dict(num_requests=8, max_num_seqs=4, prompt_len=(8, 32), output_len=(4, 40), naive_requests=2,
                    rounds=1, online_requests=8, chat_rounds=2, long_len=128, window=8)
        base.update(overrides)
        return cls(**base)

    def fit(self, n_ctx: int) -> "Settings":
        """Clamp lengths so every request fits the model's context."""
        lo, hi = self.prompt_len
        hi = min(hi, n_ctx // 2)
        olo, ohi = self.output_len
        ohi = min(ohi, n_ctx - hi)
        self.prompt_len = (min(lo, hi), hi)
        self.output_len = (min(olo, ohi), ohi)
        self.long_len = min(self.long_len, n_ctx)
        self.window = min(self.window, self.long_len - 16)
        self.max_num_batched_tokens = max(self.max_num_batched_tokens, self.prompt_len[1])
        return self


# ------------------------------------------------------------------------------------------------
# helpers


def alternate(fns: dict, rounds: int, warmup: int = 0) -> dict:
    """Run self-timing callables (each returns its own seconds, so set-up can stay untimed) in a
    rotating order, round after round -> {name: [seconds per round]}."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(fns[name]())
    return times


def median_ratio(slow: list, fast: list) -> float:
    """Median over rounds of slow time / fast time (> 1: fast is faster)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def pct(values, q) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else None


def make_workload(n: int, vocab_size: int, prompt_len, output_len, seed: int) -> list:
    """n requests (prompt token ids, max_tokens), seeded; random tokens (greedy, ignore_eos)."""
    rng = np.random.default_rng(seed)
    work = []
    for _ in range(n):
        p = int(rng.integers(prompt_len[0], prompt_len[1] + 1))
        o = int(rng.integers(output_len[0], output_len[1] + 1))
        work.append((rng.integers(0, vocab_size, size=p).tolist(), o))
    return work


def representative_subset(work: list, k: int) -> list:
    """k requests evenly spaced through the workload sorted by total length (prompt + output)."""
    order = sorted(range(len(work)), key=lambda i: len(work[i][0]) + work[i][1])
    picks = sorted({order[int(round(j * (len(order) - 1) / max(1, k - 1)))] for j in range(k)})
    return [work[i] for i in picks]


def params_for(max_tokens: int):
    from ..engine import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def make_engine(model, s: Settings, max_num_seqs=None, prefix_caching=False, max_num_batched_tokens=None):
    from ..engine import LLM

    return LLM(model, block_size=s.block_size, max_num_seqs=max_num_seqs or s.max_num_seqs,
               max_num_batched_tokens=max_num_batched_tokens or s.max_num_batched_tokens,
               enable_prefix_caching=prefix_caching)


# ------------------------------------------------------------------------------------------------
# the four offline modes: each returns (generated token ids per request, seconds)


def run_naive(model, work):
    """(a) one at a time, no cache: the whole sequence through the model for every new token."""
    from ..model import forward

    out = []
    t0 = time.perf_counter()
    for prompt, n in work:
        seq = list(prompt)
        for _ in range(n):
            seq.append(int(np.argmax(forward(model.params, model.config, np.array([seq]))[0, -1])))
        out.append(seq[len(prompt):])
    return out, time.perf_counter() - t0


def run_cached(model, work):
    """(b) one at a time with the contiguous KV cache (Model.generate)."""
    out = []
    t0 = time.perf_counter()
    for prompt, n in work:
        out.append(model.generate(prompt, n)[len(prompt):].tolist())
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


def bench_offline(model, s: Settings) -> dict:
    work = make_workload(s.num_requests, model.config.vocab_size, s.prompt_len, s.output_len, s.seed)
    subset = representative_subset(work, s.naive_requests)
    n_tokens = sum(n for _, n in work)
    n_sub = sum(n for _, n in subset)
    tokens = {}

    def timed(name, fn, *args):
        def run():
            toks, secs = fn(*args)
            tokens[name] = toks
            return secs
        return run

    warm = work[:2]
    for fn, args in [(run_naive, (model, warm[:1])), (run_cached, (model, warm)),
                     (run_static, (model, warm, s)), (run_continuous, (model, warm, s))]:
        fn(*args)  # warm-up: first-call costs out of the way
    times = alternate({"naive_subset": timed("naive_subset", run_naive, model, subset),
                       "cached_subset": timed("cached_subset", run_cached, model, subset),
                       "cached": timed("cached", run_cached, model, work),
                       "static": timed("static", run_static, model, work, s),
                       "static_padded": timed("static_padded", run_static, model, work, s, True),
                       "continuous": timed("continuous", run_continuous, model, work, s)}, s.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    b_over_a = median_ratio(times["naive_subset"], times["cached_subset"])
    d_over_b = median_ratio(times["cached"], times["continuous"])
    same = sum(a == b == c for a, b, c in zip(tokens["static"], tokens["static_padded"], tokens["continuous"]))
    same_cached = sum(a == b for a, b in zip(tokens["cached"], tokens["continuous"]))
    same_naive = sum(a == b for a, b in zip(tokens["naive_subset"], tokens["cached_subset"]))
    return {
        "num_requests": len(work), "output_tokens": n_tokens,
        "prompt_len_mean": float(np.mean([len(p) for p, _ in work])),
        "output_len_mean": float(np.mean([n for _, n in work])),
        "output_len_min": min(n for _, n in work), "output_len_max": max(n for _, n in work),
        "max_num_seqs": s.max_num_seqs, "rounds": s.rounds,
        "naive_subset": {"num_requests": len(subset), "output_tokens": n_sub,
                         "prompt_len_mean": float(np.mean([len(p) for p, _ in subset])),
                         "output_len_mean": float(np.mean([n for _, n in subset]))},
        "naive_tok_s": n_sub / med["naive_subset"],
        "naive_est_full_s": n_tokens / (n_sub / med["naive_subset"]),  # scaled per token
        "cached_subset_tok_s": n_sub / med["cached_subset"],
        "cached_tok_s": n_tokens / med["cached"],
        "static_tok_s": n_tokens / med["static"],
        "static_padded_tok_s": n_tokens / med["static_padded"],
        "continuous_tok_s": n_tokens / med["continuous"],
        "continuous_req_s": len(work) / med["continuous"],
        "continuous_over_static": median_ratio(times["static"], times["continuous"]),
        "continuous_over_static_padded": median_ratio(times["static_padded"], times["continuous"]),
        "continuous_over_cached": d_over_b,
        "cached_over_naive": b_over_a,
        "continuous_over_naive": d_over_b * b_over_a,
        "same_tokens_static_continuous": f"{same}/{len(work)}",
        "same_tokens_cached_continuous": f"{same_cached}/{len(work)}",
        "same_tokens_naive_cached": f"{same_naive}/{len(subset)}",
        "seconds": {k: v for k, v in times.items()},
    }


# ------------------------------------------------------------------------------------------------
# online: Poisson arrivals, real time


def bench_online(model, s: Settings, rate: float) -> dict:
    work = make_workload(s.online_requests, model.config.vocab_size, s.prompt_len, s.output_len, s.seed + 1)
    rng = np.random.default_rng(s.seed + 2)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=len(work)))
    arrivals -= arrivals[0]  # the first request arrives at t = 0
    llm = make_engine(model, s)
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
            "duration_s": last,
            "throughput_tok_s": n_tokens / last, "throughput_req_s": len(work) / last,
            "ttft_median_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
            "tpot_median_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99),
            "e2e_median_s": pct(e2e, 50), "e2e_p99_s": pct(e2e, 99),
            "max_num_seqs": s.max_num_seqs}


# ------------------------------------------------------------------------------------------------
# prefix caching: a multi-turn chat


def chat_sizes(n_ctx: int, turns: int) -> dict:
    """System prompt, user message and answer lengths so the last turn's prompt fills most of n_ctx."""
    system = n_ctx // 8
    user = n_ctx // 16
    answer = max(2, (n_ctx - system - turns * user - 8) // max(1, turns - 1))
    answer = min(answer, n_ctx // 10)
    return {"system": system, "user": user, "answer": answer}


def run_chat(model, s: Settings, prefix_caching: bool) -> dict:
    """Play a chat on a fresh engine; turn `chat_turns`'s TTFT (seconds) and prefix-cache hit."""
    sizes = chat_sizes(model.config.n_ctx, s.chat_turns)
    rng = np.random.default_rng(s.seed + 3)
    V = model.config.vocab_size
    users = [rng.integers(0, V, size=sizes["user"]).tolist() for _ in range(s.chat_turns)]
    prompt = rng.integers(0, V, size=sizes["system"]).tolist()
    llm = make_engine(model, s, max_num_seqs=1, prefix_caching=prefix_caching,
                      max_num_batched_tokens=model.config.n_ctx)
    for turn in range(s.chat_turns):
        prompt = prompt + users[turn]
        last = turn == s.chat_turns - 1
        out = llm.generate(prompt, params_for(1 if last else sizes["answer"]))[0]
        if not last:
            prompt = prompt + out.token_ids
    return {"ttft_s": out.metrics["ttft"], "prompt_tokens": len(prompt),
            "cached_prompt_tokens": out.metrics["num_cached_prompt_tokens"], **sizes}


def bench_prefix(model, s: Settings) -> dict:
    info = {}

    def runner(flag):
        def run():
            r = run_chat(model, s, flag)
            info[flag] = r
            return r["ttft_s"]
        return run

    times = alternate({"on": runner(True), "off": runner(False)}, s.chat_rounds, warmup=1)
    return {"turn": s.chat_turns, "rounds": s.chat_rounds, "prompt_tokens": info[True]["prompt_tokens"],
            "cached_prompt_tokens": info[True]["cached_prompt_tokens"],
            "cached_prompt_tokens_without_cache": info[False]["cached_prompt_tokens"],
            "sizes": {k: info[True][k] for k in ("system", "user", "answer")},
            "ttft_on_s": statistics.median(times["on"]), "ttft_off_s": statistics.median(times["off"]),
            "ttft_off_over_on": median_ratio(times["off"], times["on"]), "seconds": times}


# ------------------------------------------------------------------------------------------------
# KV cache vs recompute at long sequences


def bench_kv(model, s: Settings) -> dict:
    from ..kv_cache import ContiguousKVCache
    from ..model import forward

    cfg, P = model.config, model.params
    L, w = s.long_len, s.window
    rng = np.random.default_rng(s.seed + 4)
    ids = rng.integers(0, cfg.vocab_size, size=L).tolist()

    # at L: the last w positions, teacher-forced so both paths do exactly the same positions
    def cached_window():
        cache = ContiguousKVCache(cfg, 1, model.dtype, max_len=L)
        forward(P, cfg, np.array([ids[:L - w]]), 0, cache)  # prefill, untimed
        t0 = time.perf_counter()
        for pos in range(L - w, L):
            forward(P, cfg, np.array([[ids[pos]]]), pos, cache)
        return time.perf_counter() - t0

    def recompute_window():
        t0 = time.perf_counter()
        for pos in range(L - w, L):
            forward(P, cfg, np.array([ids[:pos + 1]]))
        return time.perf_counter() - t0

    # growing: a 16-token prompt decoded all the way to L
    prompt, n_new = ids[:16], L - 16

    def cached_growing():
        t0 = time.perf_counter()
        model.generate(prompt, n_new)
        return time.perf_counter() - t0

    def recompute_growing():
        seq = list(prompt)
        t0 = time.perf_counter()
        for _ in range(n_new):
            seq.append(int(np.argmax(forward(P, cfg, np.array([seq]))[0, -1])))
        return time.perf_counter() - t0

    tw = alternate({"cached": cached_window, "recompute": recompute_window}, max(3, s.rounds), warmup=1)
    tg = alternate({"cached": cached_growing, "recompute": recompute_growing}, s.rounds)
    return {"length": L, "window": w,
            "at_length": {"cached_tok_s": w / statistics.median(tw["cached"]),
                          "recompute_tok_s": w / statistics.median(tw["recompute"]),
                          "ratio": median_ratio(tw["recompute"], tw["cached"])},
            "growing": {"from": 16, "to": L, "cached_tok_s": n_new / statistics.median(tg["cached"]),
                        "recompute_tok_s": n_new / statistics.median(tg["recompute"]),
                        "ratio": median_ratio(tg["recompute"], tg["cached"])}}


# ------------------------------------------------------------------------------------------------


def targets(r: dict) -> dict:
    rows = [("kv_cache_over_recompute_at_length", r["kv_cache"]["at_length"]["ratio"], 20.0),
            ("continuous_over_static", r["offline"]["continuous_over_static"], 3.0),
            ("continuous_over_one_at_a_time_cached", r["offline"]["continuous_over_cached"], 10.0),
            ("prefix_cache_ttft_turn5", r["prefix_cache"]["ttft_off_over_on"], 5.0)]
    return {name: {"measured": value, "target": f">= {t:g}x", "met": bool(value >= t)} for name, value, t in rows}


def print_report(r: dict):
    kv, off, onl, pre = r["kv_cache"], r["offline"], r["online"], r["prefix_cache"]
    print(f"model {r['model']} ({r['params']:,} params, n_ctx {r['n_ctx']}){'  [quick]' if r['quick'] else ''}")
    print("\nKV cache vs recompute (decode tokens/s)")
    print(f"  last {kv['window']} positions before {kv['length']}: cache {kv['at_length']['cached_tok_s']:9.1f}"
          f"  recompute {kv['at_length']['recompute_tok_s']:8.1f}  ratio {kv['at_length']['ratio']:6.2f}x")
    g = kv["growing"]
    print(f"  growing {g['from']} -> {g['to']}:{'':14s}cache {g['cached_tok_s']:9.1f}"
          f"  recompute {g['recompute_tok_s']:8.1f}  ratio {g['ratio']:6.2f}x")
    print(f"\noffline: {off['num_requests']} requests, prompts mean {off['prompt_len_mean']:.0f} tokens, outputs "
          f"{off['output_len_min']}-{off['output_len_max']} (mean {off['output_len_mean']:.0f}), "
          f"max_num_seqs {off['max_num_seqs']}, {off['rounds']} round(s)")
    ns = off["naive_subset"]
    for label, key in [(f"(a) naive, no cache (subset of {ns['num_requests']})", "naive_tok_s"),
                       ("(b) one at a time, KV cache", "cached_tok_s"),
                       ("(c) static batching (wait for the longest)", "static_tok_s"),
                       ("(c') static, finished rows keep decoding", "static_padded_tok_s"),
                       ("(d) continuous batching", "continuous_tok_s")]:
        print(f"  {label:46s} {off[key]:10.1f} output tokens/s")
    print(f"  (d)/(c) {off['continuous_over_static']:.2f}x   (d)/(c') {off['continuous_over_static_padded']:.2f}x   (d)/(b) {off['continuous_over_cached']:.2f}x   "
          f"(b)/(a) {off['cached_over_naive']:.2f}x (same subset)   (d)/(a) {off['continuous_over_naive']:.1f}x")
    print(f"  same greedy tokens: static, static padded, continuous {off['same_tokens_static_continuous']}, "
          f"cached vs continuous {off['same_tokens_cached_continuous']}, naive vs cached {off['same_tokens_naive_cached']}")
    print(f"\nonline: {onl['num_requests']} requests, Poisson {onl['rate_req_s']:.2f} req/s: "
          f"{onl['throughput_tok_s']:.1f} tokens/s, {onl['throughput_req_s']:.2f} req/s")
    print(f"  TTFT median {onl['ttft_median_s'] * 1e3:8.1f} ms  p99 {onl['ttft_p99_s'] * 1e3:8.1f} ms")
    print(f"  TPOT median {onl['tpot_median_s'] * 1e3:8.2f} ms  p99 {onl['tpot_p99_s'] * 1e3:8.2f} ms")
    print(f"\nprefix cache, chat turn {pre['turn']} ({pre['prompt_tokens']} prompt tokens, "
          f"{pre['cached_prompt_tokens']} from the cache): TTFT on {pre['ttft_on_s'] * 1e3:.2f} ms, "
          f"off {pre['ttft_off_s'] * 1e3:.2f} ms, ratio {pre['ttft_off_over_on']:.2f}x ({pre['rounds']} rounds)")
    print("\ntargets")
    for name, t in r["targets"].items():
        print(f"  {name:40s} {t['measured']:7.2f}x  target {t['target']:7s} {'met' if t['met'] else 'NOT met'}")


def run(model, s: Settings, model_name: str = "", quick: bool = False, verbose: bool = True) -> dict:
    s.fit(model.config.n_ctx)
    results = {"machine": machine(), "model": model_name, "params": model.num_params(),
               "n_ctx": model.config.n_ctx, "quick": quick}
    results["kv_cache"] = bench_kv(model, s)
    results["offline"] = bench_offline(model, s)
    rate = s.rate if s.rate is not None else 0.5 * results["offline"]["continuous_req_s"]
    results["online"] = bench_online(model, s, rate)
    results["prefix_cache"] = bench_prefix(model, s)
    results["targets"] = targets(results)
    results["settings"] = asdict(s)
    if verbose:
        print_report(results)
    return results


def main(argv=None):
    from .. import load
    from ..model_names import resolve as resolve_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="teacher", help="model folder or shipped model name (default teacher)")
    ap.add_argument("--quick", action="store_true", help="small settings: a smoke run, not a measurement")
    ap.add_argument("--rounds", type=int, help="offline and KV-cache rounds (default 3; 1 with --quick)")
    ap.add_argument("--num-requests", type=int, help="offline workload size (default 64; 8 with --quick)")
    ap.add_argument("--max-num-seqs", type=int, help="batch size of (c) and (d) (default 32; 4 with --quick)")
    ap.add_argument("--rate", type=float, help="online arrivals, requests/s (default: half of (d)'s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in dict(rounds=args.rounds, num_requests=args.num_requests,
                                       max_num_seqs=args.max_num_seqs, rate=args.rate, seed=args.seed).items()
                 if v is not None}
    s = Settings.quick(**overrides) if args.quick else Settings(**overrides)
    model = load(resolve_model_path(args.model))
    results = run(model, s, args.model, quick=args.quick)
    save_results(results, args.json)
    return results


if __name__ == "__main__":
    main()
