"""Serving workloads (tinyinfer/bench/workloads.py): ShareGPT-shaped heavy-tailed lengths filtered as
vLLM's benchmark filters them, held-out text of exactly the drawn lengths, Poisson arrivals, a chat
sharing a system prompt."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyinfer
from conftest import ROOT
from tinyinfer.bench import workloads as W


@pytest.fixture(scope="module")
def teacher():
    return tinyinfer.load(f"{ROOT}/models/teacher")


def test_lognormal_has_the_published_means():
    """The model's means are the ones the vLLM paper reports for ShareGPT (161 / 338 tokens)."""
    rng = np.random.default_rng(0)
    for dist, mean in ((W.SHAREGPT_PROMPT, 161.0), (W.SHAREGPT_OUTPUT, 338.0)):
        assert dist.mean == mean and math.isclose(dist.median, mean / math.exp(0.5))
        draws = dist.sample(rng, 200_000)
        assert abs(draws.mean() / mean - 1) < 0.02 and abs(np.median(draws) / dist.median - 1) < 0.02
        assert np.percentile(draws, 99) > 8 * np.median(draws)  # heavy-tailed: the 99th is ~10x the median


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 200), seed=st.integers(0, 2**31), scale=st.sampled_from([0.05, 0.25, 1.0]),
       cap=st.one_of(st.none(), st.integers(4, 300)))
def test_lengths_are_filtered_as_vllm_filters(n, seed, scale, cap):
    p, o = W.sample_lengths(n, seed, scale, cap)
    max_prompt, max_total = max(4, int(1024 * scale)), max(8, int(2048 * scale))
    assert len(p) == len(o) == n
    assert (p >= 4).all() and (p <= max_prompt).all() and (o >= 4 if cap is None or cap >= 4 else o >= 1).all()
    assert (p + o <= max_total).all()
    if cap is not None:
        assert (o <= cap).all()
    again = W.sample_lengths(n, seed, scale, cap)
    assert (again[0] == p).all() and (again[1] == o).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n must be"):
        W.sample_lengths(0)
    with pytest.raises(ValueError, match="scale"):
        W.sample_lengths(4, scale=0)
    with pytest.raises(ValueError, match="rate"):
        W.poisson_arrivals(4, 0)
    with pytest.raises(ValueError, match="vocab_size"):
        W.corpus_prompts(None, [3])


def test_prompts_are_held_out_text_of_the_drawn_lengths(teacher):
    reqs = W.offline_requests(teacher.tokenizer, 12, seed=3, scale=0.1, max_tokens=50)
    assert [len(r.prompt_ids) for r in reqs] == W.sample_lengths(12, 3, 0.1, 50)[0].tolist()
    stream = W.heldout_ids(teacher.tokenizer)
    text = stream.tobytes()
    for r in reqs:  # each prompt is a window of the held-out token stream
        assert np.asarray(r.prompt_ids, dtype=stream.dtype).tobytes() in text
        assert all(0 <= t < teacher.config.vocab_size for t in r.prompt_ids)
    d = W.describe(reqs)
    assert d["num_requests"] == 12 and d["output_len"]["max"] <= 50


def test_poisson_arrivals_have_the_rate():
    t = W.poisson_arrivals(20_000, rate=4.0, seed=1)
    assert t[0] == 0 and (np.diff(t) >= 0).all()
    assert abs((len(t) - 1) / t[-1] / 4.0 - 1) < 0.03
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: standard deviation = mean
    reqs = W.online_requests(None, 8, rate=2.0, vocab_size=50)
    assert reqs[0].arrival == 0 and W.describe(reqs)["rate_req_s"] > 0


def test_chat_session_shares_a_long_system_prompt(teacher):
    c = W.chat_session(teacher.tokenizer, 200, turns=5, seed=2)
    assert len(c["users"]) == 5 and len(set(c["users"])) == 5
    assert len(teacher.tokenizer.encode(c["system"])) >= 150
