"""Speculative decoding: a cheap draft guesses k tokens, the target checks them all in one pass.

Lesson: lessons/09-putting-it-together.py (and lessons/08-serving.py for why the check is exact)

At batch 1 a decode step is mostly fixed cost (reading every weight once, Python, NumPy calls), and
that cost grows slowly when the step feeds a few tokens instead of one. So:

    1. the draft proposes d1..dk (one token at a time for a draft model; at once for a drafter);
    2. the target runs ONE forward pass over [last token, d1..dk] and so gets its own
       distributions p1..p(k+1) at every one of those positions;
    3. a verification rule keeps a prefix d1..dn of the guesses and adds one token of its own, so
       every round yields between 1 and k+1 tokens for one target pass.

Drafts (all share the target's tokenizer, which a draft must: its tokens are checked as the target's):

* a smaller model (the distilled student for the teacher): speculative_generate(target, student, ...);
* PromptLookup(): no model at all. The answer of a chat or code model often repeats its prompt (a
  function it was asked to edit, names from a question, a quoted passage). The drafter finds the
  sequence's last few tokens earlier in the sequence and proposes what followed them there
  ("prompt lookup decoding", Saxena 2023; vLLM's "ngram" speculator). It costs a search, not a
  forward pass, so a wrong guess costs only the extra rows of the verification pass; it helps
  only where the text really repeats (tinyinfer/bench/engine.py measures where it does and does not);
* layer_skip_draft(model, keep): the target itself with some layers left out (self-speculation);
  its weights are the target's, so it costs no memory, but every draft token costs a forward of
  the kept layers and the head.

Verification (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling"):

* greedy (temperature 0): keep d_i while it equals argmax p_i; at the first mismatch emit argmax p_i
  instead; if all k match, emit argmax p(k+1) as a bonus. The output is the target's greedy output
  *if* the target's logits for a row are the same whether the row is verified among k+1 or decoded
  alone. For a float32 model that is true up to rounding; for a quantized one (SmolLM2, whose
  products round activations to 8 bits) rounding noise flips near-tied argmaxes, so the target
  runs through tinyinfer/inference.py with the batch-invariant attention of the contiguous KV
  cache (tinyinfer/invariant_attention.py): a verified row is then the same bits as a decoded one.
* sampling: keep d_i with probability min(1, p_i(d_i) / q_i(d_i)), where q_i is the draft's
  distribution it was sampled from; at the first rejection sample from the residual
  norm(max(0, p_i - q_i)); if all k are kept, sample the bonus from p(k+1). Each emitted token is
  then distributed exactly as the target's: P(x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(q(y), p(y)))
  * max(0, p(x) - q(x)) / sum_y max(0, p(y) - q(y)) = min(q, p)(x) + max(0, p - q)(x) = p(x).
  (Greedy is the same rule with one-hot p and q; it gets its own branch because it needs no
  probabilities at all. A drafter's guesses are deterministic: its q is one-hot on the guess.)

The KV caches make step 2 one forward over k+1 new tokens: the target's cache holds the confirmed
tokens except the last; after verification it is cut back to the confirmed length ("rollback" is
just setting the cache's length: the stale keys beyond it are overwritten by the next step).

    from tinyinfer.speculative import PromptLookup, speculative_generate
    out, stats = speculative_generate(model, PromptLookup(), ids, 64, k=4, return_stats=True)
    stats["acceptance_rate"], stats["tokens_per_round"]
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .inference import InferenceModel
from .kv_cache import ContiguousKVCache
from .model import Model, layer_names
from .sampling import check_int, check_sampling_args, token_probs  # token_probs: what sample_token draws from

__all__ = ["speculative_generate", "PromptLookup", "layer_skip_draft", "verify_greedy", "verify_sampled",
           "acceptance_probability", "residual_distribution"]

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
# drafts without a model of their own


class PromptLookup:
    """Propose the tokens that followed the sequence's last n tokens where they last occurred before.

    n runs from max_ngram down to min_ngram: a longer match is stronger evidence that the text is
    repeating. Nothing found: no proposal, and the round is an ordinary decode step.

    The default asks for a whole 3-token match. A 1- or 2-token match is often chance: on SmolLM2's
    open questions (tinyinfer/bench/speculative.py's chats, greedy, 96 tokens, 2-core Zen 5) drafts
    from min_ngram=1 were accepted 10-14% of the time and made decoding slower (0.85-0.98x batch-1
    decoding at k = 3 and 5), while min_ngram=3 was accepted 37-39% and gained 1.05-1.07x; on chats
    that repeat their prompt the two were level (1.56-1.62x vs 1.59-1.67x; acceptance 38-50% vs
    72-82%), since a verification that fails costs ~1.2 decode steps and one that is not tried
    costs nothing.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 3):
        self.max_ngram = check_int("max_ngram", max_ngram, low=1)
        self.min_ngram = check_int("min_ngram", min_ngram, low=1)
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram ({min_ngram}) must be at most max_ngram ({max_ngram})")

    def propose(self, tokens, k: int) -> list[int]:
        """Up to k guesses for the tokens after `tokens` (prompt + output so far)."""
        seq = np.asarray(tokens, dtype=np.int64)  # (L,)
        L = len(seq)
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            # windows seq[i:i+n] for i = 0 .. L-n-1: every earlier place the last n tokens could be
            windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)  # (L-n, n)
            hits = np.flatnonzero((windows == seq[L - n:]).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n  # the most recent earlier occurrence; what followed it
                return seq[start:start + k].tolist()
        return []

    def __repr__(self):
        return f"PromptLookup(max_ngram={self.max_ngram}, min_ngram={self.min_ngram})"


def layer_skip_draft(model, keep) -> Model:
    """The model with only the layers in `keep` (indices, in order): a draft that shares every
    weight with the model (no copy) and its tokenizer. LLaMA-family models."""
    config = model.config
    keep = [check_int("keep[]", i, low=0) for i in keep]
    if not keep or max(keep) >= config.n_layer or sorted(set(keep)) != keep:
        raise ValueError(f"keep must be increasing layer indices in 0..{config.n_layer - 1}, got {keep}")
    if config.family != "llama":
        raise ValueError("layer_skip_draft builds LLaMA-family drafts")
    layer_prefix = "model.layers."
    params = {name: w for name, w in model.params.items() if not name.startswith(layer_prefix)}
    for new, old in enumerate(keep):
        old_names, new_names = layer_names(config, old), layer_names(config, new)
        for role, old_name in old_names.items():
            for suffix in (".weight", ".bias"):
                if old_name + suffix in model.params:
                    params[new_names[role] + suffix] = model.params[old_name + suffix]
    return Model(replace(config, n_layer=len(keep)), params, model.tokenizer)


# --------------------------------------------------------------------------------------------
# the loop


def _check_pair(target, draft, k):
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (draft tokens per round) must be an int >= 1, got {k!r}")
    if hasattr(draft, "propose"):
        return  # a drafter reads the target's own tokens: nothing to match
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"draft has vocab_size {draft.config.vocab_size} but target has "
                         f"{target.config.vocab_size}: the two models must share one tokenizer")
    tt, dt = getattr(target, "tokenizer", None), getattr(draft, "tokenizer", None)
    if tt is not None and dt is not None and tt is not dt:
        if [tt.id_to_token(i) for i in range(tt.vocab_size)] != [dt.id_to_token(i) for i in range(dt.vocab_size)]:
            raise ValueError("draft and target have different tokenizers (same size, different tokens); "
                             "a draft token must mean the same text to the target")


def speculative_generate(target, draft, ids, max_new_tokens, k=4, temperature=0.0, top_k=None, top_p=None,
                         seed=None, stop_token=None, return_stats=False, stop_ids=None):
    """Extend ids (T,) by up to max_new_tokens tokens from `target`, drafted by `draft`: a Model
    sharing the target's tokenizer, or a drafter with propose(tokens, k) (PromptLookup).

    Returns prompt + new tokens (int64), as Model.generate does for a 1-D prompt; with
    return_stats=True, (tokens, stats). Greedy (temperature 0): the target's greedy tokens, the
    same as tinyinfer.generate.stream_tokens and Model.generate give. Sampling: tokens distributed
    exactly as the target's under the same temperature / top_k / top_p (not the same tokens as
    target.generate with the same seed: the random numbers are used differently). stop_token (one
    id) or stop_ids (several): the output ends with the first one generated. stats: rounds (=
    target forward passes), drafted, accepted, acceptance_rate, tokens_per_round, draft_forwards.
    target may be an InferenceModel (kept by the caller, to prepare the weights once).
    """
    fast = target if isinstance(target, InferenceModel) else InferenceModel(target)
    target = fast.model
    dfast = None
    if not hasattr(draft, "propose"):  # a draft model, run through its own InferenceModel
        dfast = draft if isinstance(draft, InferenceModel) else InferenceModel(draft)
        draft = dfast.model
    _check_pair(target, draft, k)
    check_sampling_args(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    arr, was_1d = target.check_ids(ids)
    if not was_1d and arr.shape[0] != 1:
        raise ValueError(f"speculative decoding runs one sequence at a time: ids must have shape (T,), got {arr.shape}")
    T = arr.shape[1]
    models = [("target", target)] + ([] if hasattr(draft, "propose") else [("draft", draft)])
    for name, model in models:
        if T + max_new_tokens > model.config.n_ctx:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the {name}'s "
                             f"context length n_ctx = {model.config.n_ctx}")
    stops = set() if stop_ids is None else {int(i) for i in stop_ids}
    if stop_token is not None:
        stops.add(int(stop_token))
    greedy = temperature == 0.0
    rng = np.random.default_rng(seed)
    seq = arr[0].tolist()
    stats = dict(rounds=0, drafted=0, accepted=0, draft_forwards=0)

    max_len = T + max_new_tokens
    tcache = ContiguousKVCache(target.config, 1, target.dtype, max_len=max_len)
    dcache = None if hasattr(draft, "propose") else ContiguousKVCache(draft.config, 1, draft.dtype, max_len=max_len)
    if T > 1:  # the target's cache holds every confirmed token but the last (the last is fed each round)
        fast.forward(arr[:, :-1], np.arange(T - 1), tcache, logits_rows=[-1])

    while len(seq) - T < max_new_tokens:
        remaining = max_new_tokens - (len(seq) - T)
        kr = min(k, remaining - 1)  # a round emits up to kr + 1 tokens: never more than asked for
        if dcache is None:
            drafts = draft.propose(seq, kr) if kr > 0 else []
            q_rows = [] if greedy else [_one_hot(d, target.config.vocab_size) for d in drafts]
        else:
            drafts, q_rows = _draft(dfast, dcache, seq, kr, greedy, temperature, top_k, top_p, rng, stats)

        # one target pass over [last confirmed token, d1..dn] at positions len(seq)-1 ...
        block = np.array([[seq[-1]] + drafts])  # (1, n + 1)
        positions = np.arange(len(seq) - 1, len(seq) + len(drafts))
        logits = fast.forward(block, positions, tcache)[0]  # (n + 1, V)
        if greedy:
            n, nxt = verify_greedy(logits, drafts)
        else:
            p_rows = [token_probs(row, temperature, top_k, top_p) for row in logits]
            n, nxt = verify_sampled(p_rows, q_rows, drafts, rng)
        new = drafts[:n] + [nxt]
        stats["rounds"] += 1
        stats["drafted"] += len(drafts)
        stats["accepted"] += n
        stopped = [i for i, t in enumerate(new) if t in stops]
        if stopped:
            seq += new[:stopped[0] + 1]
            break
        seq += new
        # rollback: both caches keep exactly the confirmed tokens but the last
        tcache.length = len(seq) - 1
        if dcache is not None:
            dcache.length = min(dcache.length, len(seq) - 1)

    out = np.array(seq, dtype=np.int64)
    if not return_stats:
        return out
    stats["acceptance_rate"] = stats["accepted"] / stats["drafted"] if stats["drafted"] else float("nan")
    stats["tokens_per_round"] = (len(seq) - T) / stats["rounds"] if stats["rounds"] else float("nan")
    return out, stats


def _one_hot(token: int, vocab_size: int) -> np.ndarray:
    q = np.zeros(vocab_size)
    q[token] = 1.0
    return q


def _draft(dfast, dcache, seq, kr, greedy, temperature, top_k, top_p, rng, stats):
    """The draft model proposes kr tokens. Returns (drafts [kr ints], q_rows [kr distributions] or [])."""
    if kr == 0:
        return [], []
    # feed what the draft's cache lacks: the last confirmed token, or two after a full acceptance
    pending = np.array([seq[dcache.length:]])  # (1, 1 or 2; the whole prompt on the first round)
    start = dcache.length
    logits = dfast.forward(pending, np.arange(start, start + pending.shape[1]), dcache, logits_rows=[-1])[0, -1]
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
            logits = dfast.forward(np.array([[d]]), np.array([dcache.length]), dcache)[0, -1]  # (V,)
            stats["draft_forwards"] += 1
    return drafts, q_rows
