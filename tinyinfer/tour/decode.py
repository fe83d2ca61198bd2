"""The tour's decoding modes: one workload, five ways to serve it, each timing itself.

Lesson: lessons/09-putting-it-together.py

Every runner takes the same workload (a list of (prompt ids, number of new tokens)), decodes it
greedily and returns (generated ids per request, seconds). Greedy decoding makes the modes
comparable token for token: all modes that run the same weights must produce the same tokens,
and the tour checks that they do.

    naive        one request at a time, no KV cache: the whole prefix through the model per token
    cached       one request at a time, contiguous KV cache (Model.generate)
    engine       all requests at once through the engine (paged KV cache, continuous batching)
    speculative  one request at a time, a draft model proposes k tokens, the target verifies
"""
from __future__ import annotations

import time

import numpy as np

# The two one-at-a-time baselines are the engine benchmark's own: one piece of code measures both.
from ..bench.engine import run_cached, run_naive  # noqa: F401 (re-exported for the tour's stages)


def make_workload(stream, num_requests: int, prompt_len: int, new_tokens: int, seed: int = 0) -> list:
    """num_requests prompts of prompt_len real held-out tokens, each to be extended by new_tokens.

    Real text, not random ids: a draft model's acceptance rate (speculative decoding) depends on
    how predictable the text is, and random tokens would make it meaninglessly low.
    """
    if num_requests < 1 or prompt_len < 1 or new_tokens < 1:
        raise ValueError(f"num_requests, prompt_len and new_tokens must be >= 1, got "
                         f"{num_requests}, {prompt_len}, {new_tokens}")
    if len(stream) < num_requests * prompt_len * 2:
        raise ValueError(f"the held-out stream has {len(stream)} tokens, too few for {num_requests} "
                         f"prompts of {prompt_len}")
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(len(stream) - prompt_len, size=num_requests, replace=False))
    return [([int(t) for t in stream[s:s + prompt_len]], new_tokens) for s in starts]


def run_engine(model, work, block_size: int = 16):
    """Every request queued at t=0; the engine batches them per iteration (continuous batching)."""
    from ..engine import LLM, SamplingParams

    longest = max(len(p) + n for p, n in work)
    llm = LLM(model, block_size=block_size, max_num_seqs=len(work),
              max_num_batched_tokens=max(512, longest), enable_prefix_caching=False)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for _, n in work]
    t0 = time.perf_counter()
    res = llm.generate([p for p, _ in work], params)
    return [r.token_ids for r in res], time.perf_counter() - t0


def run_speculative(target, draft, work, k: int, stats: dict | None = None):
    """One request at a time: draft proposes k, target verifies (tinyinfer/speculative.py)."""
    from ..speculative import speculative_generate

    out = []
    totals = dict(rounds=0, drafted=0, accepted=0)
    t0 = time.perf_counter()
    for prompt, n in work:
        ids, st = speculative_generate(target, draft, prompt, n, k=k, return_stats=True)
        out.append(ids[len(prompt):].tolist())
        for key in totals:
            totals[key] += st[key]
    seconds = time.perf_counter() - t0
    if stats is not None:
        stats.update(totals)
        stats["acceptance_rate"] = totals["accepted"] / max(1, totals["drafted"])
        stats["tokens_per_round"] = sum(n for _, n in work) / max(1, totals["rounds"])
    return out, seconds
