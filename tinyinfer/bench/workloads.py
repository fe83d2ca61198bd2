"""Workloads as serving benchmarks build them: heavy-tailed lengths, real text, arrivals, shared prefixes.

Lesson: lessons/08-serving.py

A serving benchmark is only as honest as its requests. Uniform lengths flatter static batching
(every request of a batch finishes at about the same time); random token ids flatter nothing in
particular but are not text (a draft model or a prefix cache behaves differently on them). So:

**Lengths: ShareGPT as vLLM's benchmark uses it.** vLLM's `benchmark_serving.py --dataset-name
sharegpt` takes the first human turn of each ShareGPT conversation as the prompt and the length of
ChatGPT's answer as `max_tokens`, and drops pairs with fewer than 4 prompt or output tokens, more
than 1,024 prompt tokens or more than 2,048 in total (`sample_sharegpt_requests`). The vLLM paper
(Kwon et al., SOSP 2023, section 6.1 and its figure 11) reports that dataset's means: 161 prompt
tokens and 338 output tokens, both distributions right-skewed with a tail past 1,000 tokens.
We do not ship or download ShareGPT (its provenance is contested and it is 650 MB); we model it:

    prompt length  ~ lognormal, mean 161 tokens, sigma 1.0  (median 161 / e^(1/2) = 98)
    output length  ~ lognormal, mean 338 tokens, sigma 1.0  (median 338 / e^(1/2) = 205)

then apply vLLM's filter to the drawn pairs (rejecting, not clipping, so the shape is kept) and
cap the output at `max_tokens`. The means are the published ones; sigma is our choice, not a fit
(a sigma of 1 puts the 90th percentile at 3.6x the median and the 99th at 10x: the "a few
requests are very long" that makes static batching wait). `scale` multiplies both means (and the
filter's limits) for machines where 338-token answers take too long to serve many times: the
*shape* of the distribution, which is what separates the ways of batching, is unchanged.

**Text: held-out corpus text.** Prompts are windows of the embedded corpus's held-out split
(tinyinfer/corpus.py: Python's standard library and its documentation, never trained on by the
shipped models), tokenized by the model's own tokenizer, each exactly its drawn length; as vLLM
sends ShareGPT prompts to /v1/completions, they are plain text, no chat template. A model without
a tokenizer gets seeded random ids instead.

**Arrivals.** Offline: every request at t = 0. Online: a Poisson process (independent arrivals at
an average rate; gaps drawn from an exponential distribution), as vLLM's `--request-rate`.

**A chat that shares a prefix.** A system prompt (held-out text of a given length), then user
turns; each turn's prompt is the whole conversation so far, so everything but the newest message
is a prefix the cache has seen (tinyinfer/bench/engine.py plays it for prefix caching).

    reqs = offline_requests(model.tokenizer, 64, seed=0, scale=0.25, max_tokens=256)
    reqs = online_requests(model.tokenizer, 64, rate=2.0, seed=0)     # .arrival in seconds
    describe(reqs)  # -> {"num_requests", "prompt_len": {...}, "output_len": {...}}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Request", "LogNormal", "SHAREGPT_PROMPT", "SHAREGPT_OUTPUT", "VLLM_FILTER", "sample_lengths",
           "corpus_prompts", "offline_requests", "online_requests", "poisson_arrivals", "chat_session",
           "describe", "heldout_ids"]


@dataclass(frozen=True)
class LogNormal:
    """A length distribution: log(length) ~ Normal(log(median), sigma)."""
    mean: float    # tokens
    sigma: float   # of log(length)

    @property
    def median(self) -> float:
        return self.mean / math.exp(self.sigma ** 2 / 2)  # the lognormal's mean is median * e^(sigma^2/2)

    def sample(self, rng, n: int, scale: float = 1.0) -> np.ndarray:
        """n lengths (int, >= 1) from the distribution with its mean multiplied by scale."""
        return np.maximum(1, np.rint(rng.lognormal(math.log(self.median * scale), self.sigma, n))).astype(int)


SHAREGPT_PROMPT = LogNormal(mean=161.0, sigma=1.0)  # vLLM paper, figure 11: mean 161 prompt tokens
SHAREGPT_OUTPUT = LogNormal(mean=338.0, sigma=1.0)  # mean 338 output tokens
VLLM_FILTER = dict(min_len=4, max_prompt=1024, max_total=2048)  # sample_sharegpt_requests's limits


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int
    arrival: float = 0.0          # seconds after the start (0 for offline workloads)
    messages: list | None = None  # the chat messages the prompt was rendered from, if any
    meta: dict = field(default_factory=dict)


def sample_lengths(n: int, seed: int = 0, scale: float = 1.0, max_tokens: int | None = None,
                   prompt=SHAREGPT_PROMPT, output=SHAREGPT_OUTPUT, max_prompt: int | None = None,
                   max_total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt length, output length) pairs: drawn, filtered as vLLM's benchmark filters
    (limits multiplied by scale unless given), outputs capped at max_tokens. -> two int arrays (n,)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng(seed)
    min_len = VLLM_FILTER["min_len"]
    max_prompt = max_prompt if max_prompt is not None else max(min_len, int(VLLM_FILTER["max_prompt"] * scale))
    max_total = max_total if max_total is not None else max(2 * min_len, int(VLLM_FILTER["max_total"] * scale))
    prompts, outputs = [], []
    for _ in range(1000):  # rejection sampling: each pass keeps ~90%; never loops for long
        p, o = prompt.sample(rng, 2 * n, scale), output.sample(rng, 2 * n, scale)
        keep = (p >= min_len) & (o >= min_len) & (p <= max_prompt) & (p + o <= max_total)
        prompts += p[keep].tolist()
        outputs += o[keep].tolist()
        if len(prompts) >= n:
            break
    else:
        raise ValueError(f"the filter (prompt {min_len}..{max_prompt}, total <= {max_total}) rejects almost "
                         f"every drawn pair at scale {scale}; raise the limits")
    p, o = np.array(prompts[:n]), np.array(outputs[:n])
    if max_tokens is not None:
        o = np.minimum(o, max_tokens)
    return p, o


def heldout_ids(tokenizer) -> np.ndarray:
    """The held-out split of the corpus in the tokenizer's ids (cached on disk by tinyinfer.corpus)."""
    from ..corpus import token_stream

    return token_stream(tokenizer, "val", progress=False)


def corpus_prompts(tokenizer, lengths, seed: int = 0, vocab_size: int | None = None) -> list[list[int]]:
    """One prompt of exactly each length: a window of held-out text at a seeded random offset
    (documents' end-of-text separators avoided at the window's start). Without a tokenizer,
    seeded random ids below vocab_size."""
    rng = np.random.default_rng(seed)
    if tokenizer is None:
        if vocab_size is None:
            raise ValueError("without a tokenizer, corpus_prompts needs vocab_size for random ids")
        return [rng.integers(0, vocab_size, int(n)).tolist() for n in lengths]
    stream = heldout_ids(tokenizer)
    longest = int(max(lengths))
    if longest >= len(stream):
        raise ValueError(f"a prompt of {longest} tokens is longer than the held-out text ({len(stream)} tokens)")
    eot = tokenizer.eos_id
    out = []
    for n in lengths:
        for _ in range(100):
            start = int(rng.integers(0, len(stream) - int(n)))
            if stream[start] != eot:
                break
        out.append(stream[start:start + int(n)].astype(np.int64).tolist())
    return out


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> np.ndarray:
    """n arrival times (seconds, the first at 0) of a Poisson process of `rate` requests/s."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    times = np.cumsum(gaps)
    return times - times[0]


def offline_requests(tokenizer, n: int, seed: int = 0, scale: float = 1.0, max_tokens: int | None = None,
                     vocab_size: int | None = None, **length_args) -> list[Request]:
    """n requests, all arriving at t = 0: ShareGPT-shaped lengths, held-out text prompts."""
    prompt_lens, output_lens = sample_lengths(n, seed, scale, max_tokens, **length_args)
    prompts = corpus_prompts(tokenizer, prompt_lens, seed + 1, vocab_size)
    return [Request(p, int(o)) for p, o in zip(prompts, output_lens)]


def online_requests(tokenizer, n: int, rate: float, seed: int = 0, scale: float = 1.0,
                    max_tokens: int | None = None, vocab_size: int | None = None, **length_args) -> list[Request]:
    """As offline_requests, with Poisson arrival times at `rate` requests/s."""
    requests = offline_requests(tokenizer, n, seed, scale, max_tokens, vocab_size, **length_args)
    for r, t in zip(requests, poisson_arrivals(n, rate, seed + 2)):
        r.arrival = float(t)
    return requests


USER_TURNS = ["Summarize the text above in two sentences.", "Which names does it define?",
              "Explain its first part to a beginner.", "What could go wrong when using it?",
              "Give one example of how it is used.", "Rewrite the first sentence more simply.",
              "What is its main idea?", "List two questions a reader might ask about it."]


def chat_session(tokenizer, system_tokens: int, turns: int, seed: int = 0) -> dict:
    """A conversation that shares one long system prompt: {"system": text, "users": [turns texts]}.

    The system prompt is held-out text of about system_tokens tokens, presented as a document the
    assistant answers questions about; the users' messages are short questions about it. The
    bench plays it turn by turn (each prompt = the conversation so far + the next question), so
    by the last turn the shared prefix is most of the prompt."""
    stream = heldout_ids(tokenizer)
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, len(stream) - system_tokens))
    excerpt = tokenizer.decode(stream[start:start + system_tokens].astype(np.int64).tolist())
    system = "You answer questions about this document.\n\n" + excerpt
    order = rng.permutation(len(USER_TURNS))
    return {"system": system, "users": [USER_TURNS[order[i % len(order)]] for i in range(turns)]}


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "min": int(v.min()), "max": int(v.max()), "total": int(v.sum())}


def describe(requests: list[Request]) -> dict:
    """Sizes of a workload: prompt and output lengths (mean, median, p90, p99, min, max, total)."""
    out = {"num_requests": len(requests), "prompt_len": _stats([len(r.prompt_ids) for r in requests]),
           "output_len": _stats([r.max_tokens for r in requests])}
    if any(r.arrival for r in requests):
        span = max(r.arrival for r in requests)
        out["arrival_span_s"] = span
        out["rate_req_s"] = (len(requests) - 1) / span if span > 0 else None
    return out
