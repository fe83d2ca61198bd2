"""SamplingParams: how one request chooses its tokens and when it stops.

Lesson: lessons/08-serving.py

Every request carries its own parameters (and its own seeded random generator, see
tinyinfer/engine/sequence.py), so one batch can mix greedy, creative and stopped-early requests.
The sampler itself is tinyinfer/sampling.py: sample_token(logits, rng, temperature, top_k, top_p).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..sampling import check_sampling_args


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

    def __post_init__(self):
        check_sampling_args(self.temperature, self.top_k, self.top_p)
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if isinstance(self.stop, str):  # one stop string is a list of one, as in vLLM
            self.stop = [self.stop]
        if self.stop is not None and any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError(f"stop must be a string or a list of non-empty strings, got {self.stop!r}")
        self.stop_token_ids = [int(t) for t in (self.stop_token_ids or [])]
