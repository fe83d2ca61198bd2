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
        self.finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
        self.error: Exception | None = None    # what failed, when finish_reason is "error"
        # The output's bytes, each token's looked up once as it is appended (a list lookup, no
        # decoding): stop strings are matched on them and the text is decoded from them once.
        self.output_bytes = bytearray()
        self.last_token_num_bytes = 0          # the newest token's share of output_bytes
        self.stop_byte_cut: int | None = None  # where a stop string begins in output_bytes
        self.text_stream = None                # the offline engine's streaming state (detokenizer.TextStream)
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

    def append_token(self, token_id: int, now: float, token_bytes: bytes = b""):
        self.token_ids.append(int(token_id))
        self.output_bytes += token_bytes
        self.last_token_num_bytes = len(token_bytes)
        if self.metrics["first_token_time"] is None:
            self.metrics["first_token_time"] = now

    def check_stop(self, end_ids=frozenset()) -> str | None:
        """After a token was appended: "stop", "length" or None (keep going). end_ids: the
        tokenizer's end-of-generation ids (for SmolLM2 <|endoftext|>, <|im_end|> and <reponame>),
        which stop a request unless its params say ignore_eos."""
        p = self.params
        last = self.token_ids[-1]
        if last in p.stop_token_ids or (last in end_ids and not p.ignore_eos):
            return "stop"
        if p.stop_matcher is not None:
            # only matches that end in the new token's bytes are new: the rest was searched before
            cut = p.stop_matcher.find(self.output_bytes, len(self.output_bytes) - self.last_token_num_bytes)
            if cut is not None:
                self.stop_byte_cut = cut  # the text ends before the earliest stop string
                return "stop"
        if self.num_output_tokens >= p.max_tokens:
            return "length"
        return None

    def ended_on_stop_token(self, end_ids=frozenset()) -> bool:
        ids = self.output_token_ids
        return self.finish_reason == "stop" and self.stop_byte_cut is None and bool(ids) and (
            ids[-1] in self.params.stop_token_ids or (ids[-1] in end_ids and not self.params.ignore_eos))

    def output_text(self, end_ids=frozenset()) -> str:
        """The generated text: without a final stop token, cut before a stop string."""
        end = len(self.output_bytes)
        if self.stop_byte_cut is not None:
            end = self.stop_byte_cut
        elif self.ended_on_stop_token(end_ids):
            end -= self.last_token_num_bytes
        return self.output_bytes[:end].decode("utf-8", errors="replace")

    def __repr__(self):
        return (f"Sequence(id={self.request_id!r}, {self.status.value}, tokens={self.num_tokens} "
                f"(prompt {self.num_prompt_tokens}), computed={self.num_computed_tokens}, "
                f"blocks={self.block_table})")
