"""SamplingParams: how one request chooses its tokens and when it stops.

Lesson: lessons/08-serving.py

Every request carries its own parameters (and its own seeded random generator, see
tinyinfer/engine/sequence.py), so one batch can mix greedy, creative and stopped-early requests.
The sampler itself is tinyinfer/sampling.py: sample_token(logits, rng, temperature, top_k, top_p).

Everything is checked here, when the parameters are made, so that nothing the engine accepts can
fail later inside a step where it would be one request among many: a wrong type is a TypeError
naming the field (True is not a count, "0.5" is not a number), a value out of range a ValueError.
The stop strings' matcher is built here too: a server makes SamplingParams in the thread that
reads the request, so that work never runs on the engine's thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..sampling import check_bool, check_int, check_sampling_args, describe
from .detokenizer import StopMatcher


@dataclass
class SamplingParams:
    max_tokens: int = 16                 # generate at most this many tokens (finish_reason "length")
    temperature: float = 0.0             # 0 = greedy (argmax); > 0 samples from softmax(logits / T)
    top_k: int | None = None             # keep only the k most likely tokens before sampling
    top_p: float | None = None           # keep the smallest set of tokens whose mass reaches p
    seed: int | None = None              # seeds this request's own generator (None: fresh entropy)
    stop_token_ids: list[int] | None = None  # finish ("stop") when one of these ids is sampled
    stop: list[str] | str | None = None  # finish ("stop") when the text contains one; cut before it
    ignore_eos: bool = False             # keep going past the tokenizer's end-of-text token
    # built from stop when the params are made; change stop with dataclasses.replace, which rebuilds it
    stop_matcher: StopMatcher | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.seed)
        check_int("max_tokens", self.max_tokens, low=1)
        self.ignore_eos = check_bool("ignore_eos", self.ignore_eos)
        self.stop_token_ids = self._check_stop_token_ids(self.stop_token_ids)
        self.stop = self._check_stop(self.stop)
        self.stop_matcher = StopMatcher(self.stop) if self.stop else None

    @staticmethod
    def _check_stop_token_ids(ids) -> list[int]:
        if ids is None:
            return []
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"stop_token_ids must be a list of ints, got {describe(ids)}")
        # the upper bound (the vocabulary) is the engine's to check: it knows the model
        return [check_int(f"stop_token_ids[{i}]", t, low=0) for i, t in enumerate(ids)]

    @staticmethod
    def _check_stop(stop) -> list[str] | None:
        if stop is None:
            return None
        if isinstance(stop, str):  # one stop string is a list of one, as in vLLM
            stop = [stop]
        if not isinstance(stop, (list, tuple)):
            raise TypeError(f"stop must be a string or a list of strings, got {describe(stop)}")
        for i, s in enumerate(stop):
            if not isinstance(s, str):
                raise TypeError(f"stop[{i}] must be a string, got {describe(s)}")
            if s == "":
                raise ValueError(f"stop[{i}] is empty; a stop string needs at least one character")
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as err:  # a lone surrogate, e.g. from JSON's "\ud800"
                raise ValueError(f"stop[{i}] is not valid Unicode text: {err.reason} at index {err.start}") from None
        return list(stop) or None
