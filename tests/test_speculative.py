"""Speculative decoding (tinyinfer/speculative.py): greedy output is the target's, sampling is exact."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import small_model
from tinyinfer import speculative
from tinyinfer.speculative import (acceptance_probability, residual_distribution, speculative_generate,
                                   token_probs, verify_greedy)


def sharp_model(seed, vocab_size=37, n_ctx=24, scale=4.0):
    """A random model whose logits are far from uniform (so draft and target really differ)."""
    m = small_model(seed=seed, vocab_size=vocab_size, n_ctx=n_ctx)
    m.params["lm_head.weight"] *= scale
    return m


TARGET = sharp_model(0)
DRAFT = sharp_model(7)  # a different random model: it disagrees with the target often


# ------------------------------------------------------------------------------------------------
# greedy: identical to the target's own greedy decoding


@given(k=st.integers(1, 6), prompt=st.lists(st.integers(0, 36), min_size=1, max_size=8),
       new=st.integers(0, 14))
def test_greedy_equals_target_greedy(k, prompt, new):
    expected = TARGET.generate(prompt, new)
    out, stats = speculative_generate(TARGET, DRAFT, prompt, new, k=k, return_stats=True)
    np.testing.assert_array_equal(out, expected)
    assert stats["accepted"] <= stats["drafted"]
    # a round emits 1..k+1 tokens: one target pass per round
    assert -(-new // (k + 1)) <= stats["rounds"] <= new


def test_self_draft_accepts_everything():
    """With the target as its own draft every guess is right: k + 1 tokens per target pass."""
    out, stats = speculative_generate(TARGET, TARGET, [1, 2, 3], 15, k=4, return_stats=True)
    np.testing.assert_array_equal(out, TARGET.generate([1, 2, 3], 15))
    assert stats["acceptance_rate"] == 1.0
    assert stats["rounds"] == 3  # 15 tokens in rounds of 5


def test_disagreeing_draft_still_gives_target_output():
    """A draft that is wrong all the time costs speed, never correctness."""
    out, stats = speculative_generate(TARGET, DRAFT, [5, 9], 12, k=3, return_stats=True)
    np.testing.assert_array_equal(out, TARGET.generate([5, 9], 12))
    assert stats["acceptance_rate"] < 1.0  # the draft really did disagree somewhere


def test_verify_greedy_rule():
    logits = np.eye(5)[[2, 4, 1, 0]]  # target's argmax per position: 2, 4, 1, 0
    assert verify_greedy(logits, [2, 4, 1]) == (3, 0)  # all kept + bonus
    assert verify_greedy(logits, [2, 3, 1]) == (1, 4)  # second rejected, target's token instead
    assert verify_greedy(logits[:1], []) == (0, 2)


def test_stop_token_ends_generation():
    full = TARGET.generate([4], 12)
    stop = int(full[3])  # a token the target will emit at step 3 (or earlier)
    out = speculative_generate(TARGET, DRAFT, [4], 12, k=3, stop_token=stop)
    first = 1 + next(i for i, t in enumerate(full[1:].tolist()) if t == stop)
    np.testing.assert_array_equal(out, full[: first + 1])


# ------------------------------------------------------------------------------------------------
# sampling: the output distribution is exactly the target's


distributions = st.integers(2, 6).flatmap(lambda v: st.tuples(
    st.lists(st.floats(0, 1), min_size=v, max_size=v), st.lists(st.floats(0, 1), min_size=v, max_size=v)))


@given(pq=distributions)
def test_one_position_enumerated_equals_target(pq):
    """P(emit x) = sum over drafts d of q(d) [accept d and d = x, or reject d and resample x] = p(x)."""
    p, q = (np.asarray(v, dtype=np.float64) for v in pq)
    if p.sum() == 0 or q.sum() == 0:
        return
    p, q = p / p.sum(), q / q.sum()
    emitted = np.zeros_like(p)
    for d in range(len(q)):
        if q[d] == 0:
            continue  # the draft never proposes it
        a = acceptance_probability(p, q, d)
        emitted[d] += q[d] * a
        emitted += q[d] * (1 - a) * residual_distribution(p, q)
    np.testing.assert_allclose(emitted, p, atol=1e-12)


def test_token_probs_matches_sample_token():
    """token_probs is the distribution sample_token draws from (same filtering), checked by sampling."""
    from tinyinfer.sampling import sample_token

    logits = np.random.default_rng(0).standard_normal(6) * 2
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 3, None), (1.3, None, 0.8)]:
        probs = token_probs(logits, temperature, top_k, top_p)
        rng = np.random.default_rng(1)
        counts = np.bincount([sample_token(logits, rng, temperature, top_k, top_p) for _ in range(6000)],
                             minlength=6)
        np.testing.assert_allclose(counts / 6000, probs, atol=0.025)
        assert (probs[counts == 0] < 1e-3).all()
    assert token_probs(logits, 0.0).argmax() == logits.argmax() and token_probs(logits, 0.0).sum() == 1.0


V_SMALL = 4
TINY_TARGET = sharp_model(3, vocab_size=V_SMALL, n_ctx=12, scale=6.0)
TINY_DRAFT = sharp_model(11, vocab_size=V_SMALL, n_ctx=12, scale=6.0)
PROMPT = [1, 2]
NEW = 3  # with k = 2 the first round can keep both drafts and add a bonus: every branch of the rule
SAMPLES = 1000  # ~16 a cell on average; a fixed seed per sample, so the p-value is fixed too


def exact_target_distribution(model, prompt, new, temperature):
    """P(sequence of `new` tokens) under the target, by enumerating all V**new continuations."""
    probs = {}
    for cont in itertools.product(range(V_SMALL), repeat=new):
        ids = np.array(prompt + list(cont))
        logits = model.logits(ids[:-1])[len(prompt) - 1:]  # (new, V): the rows predicting cont
        probs[cont] = float(np.prod([token_probs(row, temperature)[t] for row, t in zip(logits, cont)]))
    return probs


def chi_square_pvalue(samples, probs):
    from scipy.stats import chisquare

    keys = sorted(probs)
    observed = np.array([samples.count(key) for key in keys], dtype=float)
    expected = np.array([probs[key] for key in keys]) * len(samples)
    # pool the rare cells (expected < 5) so the chi-square approximation holds
    rare = expected < 5
    observed = np.append(observed[~rare], observed[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    keep = expected > 0
    return chisquare(observed[keep], expected[keep]).pvalue


def draw(n, temperature=1.0, k=2):
    return [tuple(speculative_generate(TINY_TARGET, TINY_DRAFT, PROMPT, NEW, k=k, temperature=temperature,
                                       seed=s)[len(PROMPT):].tolist()) for s in range(n)]


def test_sampled_sequences_follow_the_target_distribution():
    probs = exact_target_distribution(TINY_TARGET, PROMPT, NEW, 1.0)
    draft_probs = exact_target_distribution(TINY_DRAFT, PROMPT, NEW, 1.0)
    # the test is only informative if the draft's distribution is far from the target's
    assert sum(abs(probs[key] - draft_probs[key]) for key in probs) > 0.5
    assert chi_square_pvalue(draw(SAMPLES), probs) > 1e-3


def test_chi_square_catches_a_wrong_rule(monkeypatch):
    """The same check fails for a broken rule (every draft kept): the test above can fail."""
    monkeypatch.setattr(speculative, "acceptance_probability", lambda p, q, token: 1.0)
    probs = exact_target_distribution(TINY_TARGET, PROMPT, NEW, 1.0)
    assert chi_square_pvalue(draw(SAMPLES // 3), probs) < 1e-6  # it is far off: fewer samples suffice


# ------------------------------------------------------------------------------------------------
# bad input


def test_errors_name_the_argument():
    other_vocab = small_model(seed=1, vocab_size=40)
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_generate(TARGET, other_vocab, [1], 4)
    with pytest.raises(ValueError, match="k "):
        speculative_generate(TARGET, DRAFT, [1], 4, k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(TARGET, DRAFT, [1], -1)
    with pytest.raises(ValueError, match="n_ctx"):
        speculative_generate(TARGET, DRAFT, [1] * 20, 10)
    with pytest.raises(ValueError, match="one sequence"):
        speculative_generate(TARGET, DRAFT, [[1, 2], [3, 4]], 4)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(TARGET, DRAFT, [1], 4, temperature=-1)
