"""Speculative decoding: a small draft model guesses k tokens, the big target checks them in one pass.

Lesson: lessons/09-putting-it-together.py

At batch 1 a decode step of a small model is mostly fixed cost (Python, NumPy calls, reading every
weight once), and that cost barely grows when the step feeds a few tokens instead of one. So:

    1. the draft (cheap: the distilled student) proposes d1..dk, one token at a time;
    2. the target (the teacher) runs ONE forward pass over [last token, d1..dk] and so gets its own
       distributions p1..p(k+1) at every one of those positions;
    3. a verification rule keeps a prefix d1..dn of the guesses and adds one token of its own, so
       every round yields between 1 and k+1 tokens for one target pass.

Verification (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling"):

* greedy (temperature 0): keep d_i while it equals argmax p_i; at the first mismatch emit argmax p_i
  instead; if all k match, emit argmax p(k+1) as a bonus. The output is the target's greedy output.
* sampling: keep d_i with probability min(1, p_i(d_i) / q_i(d_i)), where q_i is the draft's
  distribution it was sampled from; at the first rejection sample from the residual
  norm(max(0, p_i - q_i)); if all k are kept, sample the bonus from p(k+1). Each emitted token is
  then distributed exactly as the target's: P(x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(q(y), p(y)))
  * max(0, p(x) - q(x)) / sum_y max(0, p(y) - q(y)) = min(q, p)(x) + max(0, p - q)(x) = p(x).
  (Greedy is the same rule with one-hot p and q; it gets its own branch because it needs no
  probabilities at all.)

The KV caches make step 2 one forward over k+1 new tokens: both caches hold the confirmed tokens
except the last; after verification each is cut back to the confirmed length ("rollback" is just
setting the cache's length: the stale keys beyond it are overwritten by the next step).

    from tinyinfer.speculative import speculative_generate
    out, stats = speculative_generate(teacher, student, ids, 64, k=4, return_stats=True)
    stats["acceptance_rate"], stats["tokens_per_round"]
"""
from __future__ import annotations

import numpy as np

from .kv_cache import ContiguousKVCache
from .model import forward, inference_params
from .sampling import check_sampling_args, token_probs  # token_probs: what sample_token draws from

# --------------------------------------------------------------------------------------------
# distributions and the verification rule (pure functions: the tests enumerate them exactly)


def acceptance_probability(p, q, token) -> float:
    """min(1, p(token) / q(token)): the chance of keeping a draft token sampled from q."""
    if p[token] >= q[token]:  # the target likes it at least as much as the draft: always keep
        return 1.0
    return float(p[token] / q[token])  # here 0 <= p < q, so no division by zero or overflow


def residual_distribution(p, q):
    """norm(max(0, p - q)): where to sample after a rejection. (V,) -> (V,)

    It sums to zero only when p == q, and then nothing is ever rejected; p is returned for safety.
    """
    r = np.maximum(p - q, 0.0)
    total = r.sum()
    return r / total if total > 0 else np.asarray(p, dtype=np.float64)


def verify_sampled(p_rows, q_rows, drafts, rng):
    """Rejection sampling over one round. p_rows (k+1, V), q_rows (k, V), drafts (k,).

    Returns (n, token): the first n drafts are kept, then `token` (a resample or the bonus).
    Every emitted token is distributed as the target's p at its position (module docstring).
    """
    for i, d in enumerate(drafts):
        if rng.random() < acceptance_probability(p_rows[i], q_rows[i], d):
            continue
        r = residual_distribution(p_rows[i], q_rows[i])
        return i, int(rng.choice(r.size, p=r))
    last = p_rows[len(drafts)]
    return len(drafts), int(rng.choice(last.size, p=last))


def verify_greedy(target_logits, drafts):
    """Greedy verification. target_logits (k+1, V), drafts (k,) -> (n kept, the target's next token)."""
    choices = np.argmax(target_logits, axis=-1)  # (k+1,) the target's greedy token at each position
    for i, d in enumerate(drafts):
        if choices[i] != d:
            return i, int(choices[i])
    return len(drafts), int(choices[len(drafts)])


# --------------------------------------------------------------------------------------------
# the loop


def _check_pair(target, draft, k):
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"draft has vocab_size {draft.config.vocab_size} but target has "
                         f"{target.config.vocab_size}: the two models must share one tokenizer")
    tt, dt = getattr(target, "tokenizer", None), getattr(draft, "tokenizer", None)
    if tt is not None and dt is not None and tt is not dt:
        if [tt.id_to_token(i) for i in range(tt.vocab_size)] != [dt.id_to_token(i) for i in range(dt.vocab_size)]:
            raise ValueError("draft and target have different tokenizers (same size, different tokens); "
                             "a draft token must mean the same text to the target")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (draft tokens per round) must be an int >= 1, got {k!r}")


def speculative_generate(target, draft, ids, max_new_tokens, k=4, temperature=0.0, top_k=None, top_p=None,
                         seed=None, stop_token=None, return_stats=False):
    """Extend ids (T,) by up to max_new_tokens tokens from `target`, drafted by `draft`.

    Returns prompt + new tokens (int64), as Model.generate does for a 1-D prompt; with
    return_stats=True, (tokens, stats). Greedy (temperature 0): the target's greedy tokens.
    Sampling: tokens distributed exactly as the target's under the same temperature / top_k / top_p
    (not the same tokens as target.generate with the same seed: the random numbers are used
    differently). stats: rounds (= target forward passes), drafted, accepted, acceptance_rate,
    tokens_per_round, draft_forwards.
    """
    _check_pair(target, draft, k)
    check_sampling_args(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    arr, was_1d = target.check_ids(ids)
    if not was_1d and arr.shape[0] != 1:
        raise ValueError(f"speculative decoding runs one sequence at a time: ids must have shape (T,), got {arr.shape}")
    T = arr.shape[1]
    for name, model in (("target", target), ("draft", draft)):
        if T + max_new_tokens > model.config.n_ctx:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the {name}'s "
                             f"context length n_ctx = {model.config.n_ctx}")
    greedy = temperature == 0.0
    rng = np.random.default_rng(seed)
    seq = arr[0].tolist()
    stats = dict(rounds=0, drafted=0, accepted=0, draft_forwards=0)

    max_len = T + max_new_tokens
    # the target's weights transposed once: a verification pass has kr + 1 rows, where
    # x @ w.T is slow in OpenBLAS and x @ wt is not (tinyinfer/model.py: TransposedWeight)
    target_params = inference_params(target.params, target.config)
    tcache = ContiguousKVCache(target.config, 1, target.dtype, max_len=max_len)
    dcache = ContiguousKVCache(draft.config, 1, draft.dtype, max_len=max_len)
    if T > 1:  # the target's cache holds every confirmed token but the last (the last is fed each round)
        forward(target_params, target.config, arr[:, :-1], 0, tcache)

    while len(seq) - T < max_new_tokens:
        remaining = max_new_tokens - (len(seq) - T)
        kr = min(k, remaining - 1)  # a round emits up to kr + 1 tokens: never more than asked for
        drafts, q_rows = _draft(draft, dcache, seq, kr, greedy, temperature, top_k, top_p, rng, stats)

        # one target pass over [last confirmed token, d1..dkr] at positions len(seq)-1 ...
        block = np.array([[seq[-1]] + drafts])  # (1, kr + 1)
        logits = forward(target_params, target.config, block, len(seq) - 1, tcache)[0]  # (kr + 1, V)
        if greedy:
            n, nxt = verify_greedy(logits, drafts)
        else:
            p_rows = [token_probs(row, temperature, top_k, top_p) for row in logits]
            n, nxt = verify_sampled(p_rows, q_rows, drafts, rng)
        new = drafts[:n] + [nxt]
        stats["rounds"] += 1
        stats["drafted"] += kr
        stats["accepted"] += n
        if stop_token is not None and stop_token in new:
            seq += new[: new.index(stop_token) + 1]
            break
        seq += new
        # rollback: both caches keep exactly the confirmed tokens but the last
        tcache.length = len(seq) - 1
        dcache.length = min(dcache.length, len(seq) - 1)

    out = np.array(seq, dtype=np.int64)
    if not return_stats:
        return out
    stats["acceptance_rate"] = stats["accepted"] / stats["drafted"] if stats["drafted"] else float("nan")
    stats["tokens_per_round"] = (len(seq) - T) / stats["rounds"] if stats["rounds"] else float("nan")
    return out, stats


def _draft(draft, dcache, seq, kr, greedy, temperature, top_k, top_p, rng, stats):
    """The draft proposes kr tokens. Returns (drafts [kr ints], q_rows [kr distributions] or [])."""
    if kr == 0:
        return [], []
    # feed what the draft's cache lacks: the last confirmed token, or two after a full acceptance
    pending = np.array([seq[dcache.length:]])  # (1, 1 or 2; the whole prompt on the first round)
    logits = forward(draft.params, draft.config, pending, dcache.length, dcache)[0, -1]  # (V,)
    stats["draft_forwards"] += 1
    drafts, q_rows = [], []
    for i in range(kr):
        if greedy:
            d = int(np.argmax(logits))
        else:
            q = token_probs(logits, temperature, top_k, top_p)
            d = int(rng.choice(q.size, p=q))
            q_rows.append(q)
        drafts.append(d)
        if i + 1 < kr:  # the last draft is never fed: the target checks it, and it may be rejected
            logits = forward(draft.params, draft.config, np.array([[d]]), dcache.length, dcache)[0, -1]
            stats["draft_forwards"] += 1
    return drafts, q_rows
