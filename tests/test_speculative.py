"""Speculative decoding (tinyinfer/speculative.py): greedy output is the target's, sampling is exact,
with a draft model, a prompt-lookup drafter or the target with layers skipped."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import small_model
from tinyinfer import speculative
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available
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


# ------------------------------------------------------------------------------------------------
# drafts without a model: prompt lookup; self-speculation by skipping layers


def lookup_twin(tokens, k, max_ngram, min_ngram):
    """PromptLookup spelled out with Python lists: the latest earlier occurrence of the longest suffix."""
    for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        suffix = tokens[-n:]
        for i in range(len(tokens) - n - 1, -1, -1):  # starts whose window ends before the last token
            if tokens[i:i + n] == suffix:
                return tokens[i + n:i + n + k]
    return []


@given(tokens=st.lists(st.integers(0, 4), min_size=1, max_size=30), k=st.integers(1, 6),
       ngrams=st.tuples(st.integers(1, 4), st.integers(1, 4)))
def test_prompt_lookup_equals_its_twin(tokens, k, ngrams):
    lo, hi = min(ngrams), max(ngrams)
    guess = speculative.PromptLookup(max_ngram=hi, min_ngram=lo).propose(tokens, k)
    assert guess == lookup_twin(tokens, k, hi, lo)
    assert len(guess) <= k


def test_prompt_lookup_copies_a_repeated_passage():
    text = [5, 6, 7, 8, 9, 10, 1, 2, 5, 6, 7]
    assert speculative.PromptLookup().propose(text, 3) == [8, 9, 10]  # "5 6 7" was followed by 8 9 10
    assert speculative.PromptLookup().propose([1, 2, 3], 3) == []  # nothing repeats
    with pytest.raises(ValueError, match="min_ngram"):
        speculative.PromptLookup(max_ngram=1, min_ngram=2)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_prompt_lookup_draft_keeps_the_target_output(temperature):
    """Greedy: the target's tokens exactly; a prompt that repeats gets some drafts accepted."""
    prompt = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4]
    out, stats = speculative_generate(TARGET, speculative.PromptLookup(), prompt, 12, k=3, return_stats=True,
                                      temperature=temperature, seed=1)
    assert len(out) == len(prompt) + 12
    if temperature == 0.0:
        np.testing.assert_array_equal(out, TARGET.generate(prompt, 12))
        assert stats["drafted"] > 0


def test_prompt_lookup_sampling_follows_the_target_distribution():
    """A drafter's guess is deterministic (q one-hot), and the rule still gives the target's p."""
    probs = exact_target_distribution(TINY_TARGET, PROMPT, NEW, 1.0)
    samples = [tuple(speculative_generate(TINY_TARGET, speculative.PromptLookup(min_ngram=1), PROMPT, NEW, k=2,
                                          temperature=1.0, seed=s)[len(PROMPT):].tolist()) for s in range(SAMPLES)]
    assert chi_square_pvalue(samples, probs) > 1e-3


def test_stop_ids_end_generation_at_the_first():
    full = TARGET.generate([4], 12)[1:].tolist()
    stops = {full[5], full[2]}
    out = speculative_generate(TARGET, speculative.PromptLookup(), [4], 12, k=3, stop_ids=stops)[1:].tolist()
    first = min(full.index(t) for t in stops)
    assert out == full[:first + 1]


def test_layer_skip_draft_shares_weights_and_drafts():
    target = sharp_model(5, n_ctx=24)
    assert target.config.n_layer >= 2
    draft = speculative.layer_skip_draft(target, [0])
    assert draft.config.n_layer == 1 and draft.tokenizer is target.tokenizer
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert draft.params[q_proj] is target.params[q_proj]
    out = speculative_generate(target, draft, [1, 2, 3], 10, k=3)
    np.testing.assert_array_equal(out, target.generate([1, 2, 3], 10))
    with pytest.raises(ValueError, match="increasing layer indices"):
        speculative.layer_skip_draft(target, [1, 0])


@pytest.mark.parametrize("fmt", ["q8_0", "q4_1"])
def test_verifying_k_tokens_gives_the_bits_of_decoding_them_one_at_a_time(fmt):
    """Why greedy speculative decoding of a quantized model is exact: the target's logits for a row
    are the same bits in a verification pass of several rows as in a decode step of one. The model
    is quantized as SmolLM2's file is, the tied embedding / head included (a float head would be a
    BLAS product, whose rounding depends on the number of rows; harmless there, as nothing rounds
    its output to 8 bits afterwards, but not bit for bit)."""
    import tinyinfer
    from conftest import ROOT
    from tinyinfer.inference import InferenceModel
    from tinyinfer.kv_cache import ContiguousKVCache
    from tinyinfer.model import Model
    from tinyinfer.quant import quantize
    from tinyinfer.quant.model import quantize_model

    layers = quantize_model(tinyinfer.load(f"{ROOT}/models/tiny"), fmt)
    params = dict(layers.params)
    params["model.embed_tokens.weight"] = quantize(params["model.embed_tokens.weight"], "q8_0")
    model = Model(layers.config, params, layers.tokenizer)
    fast = InferenceModel(model)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, 24)
    one, block = (ContiguousKVCache(model.config, 1, np.float32, max_len=24) for _ in range(2))
    fast.forward(ids[None, :10], np.arange(10), one)
    fast.forward(ids[None, :10], np.arange(10), block)
    singles = np.concatenate([fast.forward(ids[None, t:t + 1], np.array([t]), one)[0] for t in range(10, 24)])
    together = np.concatenate([fast.forward(ids[None, a:b], np.arange(a, b), block)[0]
                               for a, b in ((10, 15), (15, 16), (16, 24))])  # verification blocks of 5, 1, 8
    assert np.array_equal(singles, together)


@pytest.mark.skipif(not smollm2_available(), reason=f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
def test_smollm2_prompt_lookup_gives_its_greedy_tokens():
    """On the real quantized model: speculative greedy output = stream_tokens', drafts accepted."""
    import tinyinfer
    from tinyinfer.generate import chat_prompt_ids, stream_tokens
    from tinyinfer.inference import InferenceModel

    fast = InferenceModel(tinyinfer.load("smollm2"))
    code = "def add(a, b):\n    return a + b\n"
    ids = chat_prompt_ids(fast.model.tokenizer, [{"role": "user", "content": f"Repeat this code:\n{code}"}])
    expected = list(stream_tokens(fast, ids, 24))
    out, stats = speculative_generate(fast, speculative.PromptLookup(), ids, 24, k=4, return_stats=True)
    assert out[len(ids):].tolist() == expected
    assert stats["accepted"] > 0
