"""tinyinfer/bench/spec_ceiling.py: the speedup formula, the acceptance it asks for, the linear draft."""
import numpy as np
import pytest

import tinyinfer
from tinyinfer.bench.spec_ceiling import (LinearFeatureDraft, draft_acceptance, required_acceptance, round_speedup,
                                          verification_cost)
from tinyinfer.inference import InferenceModel


@pytest.fixture(scope="module")
def fast():
    return InferenceModel(tinyinfer.load("tiny"))


def test_round_speedup_is_the_formula():
    assert round_speedup(0.5, 1, 1.2) == pytest.approx(1.5 / 1.2)
    assert round_speedup(0.5, 3, 1.25, 0.1) == pytest.approx((1 + 0.5 + 0.25 + 0.125) / (1.25 + 0.3))
    assert round_speedup(0.0, 4, 1.0) == 1.0  # nothing accepted, a free draft, a free check: no gain


def test_required_acceptance_solves_it():
    # k = 1: (1 + a) / v = s  ->  a = s v - 1
    assert required_acceptance(1.2, 1) == pytest.approx(0.8, abs=1e-9)
    a = required_acceptance(1.28, 3, 0.1)
    assert round_speedup(a, 3, 1.28, 0.1) == pytest.approx(1.5, abs=1e-9)
    assert required_acceptance(1.28, 3, 0.2) > a  # a dearer draft must be right more often
    assert required_acceptance(1.5, 1) is None  # 2 tokens for 1.5 steps: 1.33x at best


@pytest.mark.parametrize("args,words", [((1.5, 2, 1.2), "a must be an acceptance probability"),
                                        ((0.5, 0, 1.2), "need k >= 1"),
                                        ((0.5, 2, 0.0), "verify > 0")])
def test_bad_arguments_are_named(args, words):
    with pytest.raises(ValueError, match=words):
        round_speedup(*args)


def test_fit_is_the_least_squares_solution(fast):
    rng = np.random.default_rng(0)
    windows = rng.integers(0, fast.config.vocab_size, size=(3, 24))
    draft = LinearFeatureDraft.fit(fast, windows, lam=0.0)
    X = np.concatenate([LinearFeatureDraft.inputs(fast, LinearFeatureDraft.features(fast, w)[:-1], w[1:])
                        for w in windows]).astype(np.float64)
    Y = np.concatenate([LinearFeatureDraft.features(fast, w)[1:] for w in windows]).astype(np.float64)
    expected = np.linalg.lstsq(X, Y, rcond=None)[0]
    assert draft.W.shape == (2 * fast.config.n_embd + 1, fast.config.n_embd)
    np.testing.assert_allclose(X @ draft.W, X @ expected, atol=1e-3)


def test_acceptance_counts_positions(fast):
    class Oracle(LinearFeatureDraft):
        """Always proposes the token that follows in `truth` (right) or token 0 (wrong)."""
        def __init__(self, fast, truth, right):
            super().__init__(fast, np.zeros((2 * fast.config.n_embd + 1, fast.config.n_embd), np.float32))
            self.truth, self.right = truth, right

        def step(self, h, token):
            nxt = self.truth[self.truth.index(token) + 1] if self.right else 0
            return nxt, h

    prompt, answer = [1, 2, 3], [4, 5, 6, 7, 8]  # distinct tokens: the oracle can look them up
    right = draft_acceptance(Oracle(fast, prompt + answer, True), [(prompt, answer)])
    wrong = draft_acceptance(Oracle(fast, prompt + answer, False), [(prompt, answer)])
    # positions t = 2 .. 5: the first draft guesses seq[t + 2] for t + 2 <= 7
    assert right["positions"] == wrong["positions"] == 4
    assert right["first"] == 1.0 and wrong["first"] == 0.0
    assert right["second_positions"] == 3 and right["second_given_first"] == 1.0


def test_verification_cost_is_relative_to_one_token(fast):
    r = verification_cost(fast, lengths=(1, 3), context=8, rounds=2)
    assert r["ratio"][1] == 1.0 and set(r["seconds"]) == {1, 3}
    with pytest.raises(ValueError, match="lengths must include 1"):
        verification_cost(fast, lengths=(2, 3))
