"""Sequence: one request's state as it moves through the engine.

Lesson: lessons/08-serving.py (and lessons/07-kv-cache.py for the block table)

A request is a growing list of token ids: the prompt, then every token sampled so far. The
engine tracks how much of that list already has keys and values in the paged cache
(num_computed_tokens) and where they live (block_table: the i-th entry holds positions
i*block_size .. (i+1)*block_size - 1). Everything the scheduler decides is a statement about
these two numbers: "feed tokens [num_computed_tokens, num_computed_tokens + n) this step".

One uniform rule replaces the "prefill" and "decode" phases (vLLM v1 does the same):
  * a fresh prompt has num_computed_tokens = 0 (or the prefix-cache hit) and many tokens to feed;
    a long one is fed over several steps (chunked prefill);
  * a generating sequence has exactly one token without keys/values: the one just sampled.
A step samples a new token for a sequence only when its chunk reaches the end of its tokens.
"""
from __future__ import annotations

import enum
import itertools

import numpy as np

from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"    # in the scheduler's waiting queue; holds no blocks
    RUNNING = "running"    # in the running batch; holds blocks for its computed tokens
    FINISHED = "finished"  # done (stop, length or abort); its blocks are released


_arrival_counter = itertools.count()


class Sequence:
    def __init__(self, request_id, prompt_token_ids, params: SamplingParams, block_size: int,
                 arrival_time: float):
        self.request_id = request_id
        self.token_ids = [int(t) for t in prompt_token_ids]  # prompt, then sampled tokens
        self.num_prompt_tokens = len(self.token_ids)
        self.params = params
        self.block_size = block_size
        self.status = SequenceStatus.WAITING
        # arrival_order breaks ties between equal clock readings, so FCFS is a total order
        self.arrival_order = next(_arrival_counter)
        self.block_table: list[int] = []    # physical block ids, one per block_size positions
        self.num_computed_tokens = 0        # positions 0 .. this-1 have keys/values in the cache
        self.num_cached_tokens = 0          # of those, how many came from the prefix cache (last admission)
        self.num_cached_prompt_tokens = None  # the prefix-cache hit at first admission (a metric)
        self.num_preemptions = 0
        self._block_hashes: list[int] = []  # chained hashes of this sequence's full blocks
        # The request's own generator: its samples depend only on its seed and its logits,
        # never on which other requests share the batch or in which order they are sampled.
        self.rng = np.random.default_rng(params.seed)
        self.finish_reason: str | None = None  # "stop" | "length" | "abort"
        self.stop_text_cut: int | None = None  # where a stop string begins in the output text
        self.num_streamed_chars = 0  # output text already handed out by step() (streaming)
        self._output_bytes: list[bytes] = []  # each output token's bytes, decoded once (see _text)
        self.metrics = dict(arrival=arrival_time, first_scheduled_time=None, first_token_time=None,
                            finish_time=None)

    # ---- sizes -------------------------------------------------------------------------

    def __len__(self):
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to be fed to the model before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def block_tokens(self, i: int) -> tuple:
        """The block_size token ids at positions of block i (the block must be full)."""
        return tuple(self.token_ids[i * self.block_size:(i + 1) * self.block_size])

    # ---- prefix-cache hashes -----------------------------------------------------------

    def block_hash(self, i: int) -> int:
        """Hash of full block i, chained with block i-1's: it names the whole prefix 0..end of i.

        Chaining matters: two blocks with the same 16 tokens after different prefixes have
        different keys and values (attention saw different pasts), so they must not match.
        Tokens only ever get appended, so a full block's hash never changes: computed once.
        """
        while len(self._block_hashes) <= i:
            j = len(self._block_hashes)
            parent = self._block_hashes[j - 1] if j > 0 else -1  # -1: the root of every chain
            self._block_hashes.append(hash((parent, self.block_tokens(j))))
        return self._block_hashes[i]

    # ---- generating --------------------------------------------------------------------

    def append_token(self, token_id: int, now: float):
        self.token_ids.append(int(token_id))
        if self.metrics["first_token_time"] is None:
            self.metrics["first_token_time"] = now

    def check_stop(self, eos_id, tokenizer) -> str | None:
        """After a token was appended: "stop", "length" or None (keep going)."""
        p = self.params
        last = self.token_ids[-1]
        if last in p.stop_token_ids or (last == eos_id and not p.ignore_eos):
            return "stop"
        if p.stop and tokenizer is not None:
            text = self._text(tokenizer, self.num_output_tokens)
            found = [i for i in (text.find(s) for s in p.stop) if i >= 0]
            if found:
                self.stop_text_cut = min(found)  # the text ends before the earliest stop string
                return "stop"
        if self.num_output_tokens >= p.max_tokens:
            return "length"
        return None

    def output_text(self, tokenizer, eos_id=None) -> str:
        """The generated text: without a final stop token, cut before a stop string."""
        if tokenizer is None:
            return ""
        ids = self.output_token_ids
        if self.finish_reason == "stop" and ids and (
                ids[-1] in self.params.stop_token_ids or (ids[-1] == eos_id and not self.params.ignore_eos)):
            ids = ids[:-1]
        text = self._text(tokenizer, len(ids))
        return text if self.stop_text_cut is None else text[:self.stop_text_cut]

    def _text(self, tokenizer, n: int) -> str:
        """The text of the first n output tokens. A token's bytes never change, so each is looked
        up once, when it first appears: streaming asks for the text after every step, and decoding
        the whole output each time made a long generation quadratic in its length."""
        out = self.output_token_ids
        while len(self._output_bytes) < len(out):
            self._output_bytes.append(tokenizer.decode_bytes([out[len(self._output_bytes)]]))
        return b"".join(self._output_bytes[:n]).decode("utf-8", errors="replace")

    def visible_text(self, tokenizer, eos_id=None) -> str:
        """The part of the text that can be streamed now and will not change later."""
        text = self.output_text(tokenizer, eos_id)
        if self.is_finished:
            return text
        if self.params.stop:  # a stop string may be starting at the end: hold back its length - 1
            text = text[:max(0, len(text) - (max(map(len, self.params.stop)) - 1))]
        return text.rstrip("\ufffd")  # half a UTF-8 character: wait for its other bytes

    def __repr__(self):
        return (f"Sequence(id={self.request_id!r}, {self.status.value}, tokens={self.num_tokens} "
                f"(prompt {self.num_prompt_tokens}), computed={self.num_computed_tokens}, "
                f"blocks={self.block_table})")
