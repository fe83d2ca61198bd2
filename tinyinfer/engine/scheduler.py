"""Scheduler: which sequences run in the next step, and how many tokens each feeds.

Lesson: lessons/08-serving.py

Continuous (iteration-level) batching, as in Orca and vLLM: the batch is rebuilt at every step,
so a request joins as soon as there is room and leaves the moment it finishes, instead of the
whole batch waiting for its slowest member.

One step, within two budgets (max_num_batched_tokens tokens fed, max_num_seqs sequences running):

1. Running sequences, oldest first. Each feeds min(its uncomputed tokens, budget left): one token
   for a generating sequence, the next chunk for a long prompt (chunked prefill). If the cache has
   no room for its new blocks, preempt the *newest* running sequence (free its blocks, put it back
   at the front of the waiting queue; it is recomputed later, vLLM's "preemption by recompute")
   until there is room; if it is the newest itself, it yields.
2. Waiting sequences, first come first served. The front one takes its prefix-cache hits and a
   first chunk if blocks and budget allow; otherwise admission stops: a later request never
   starts before an earlier one (strict FCFS; the price is head-of-line blocking). No one is
   admitted in a step that had to preempt: memory is short, admitting would only thrash.

A long prompt's chunk makes the whole step slower, and every generating sequence waits for the
step: on a 2-core CPU, SmolLM2-135M prefills ~120 tokens a second, so a 512-token chunk pauses
the other streams for ~4 s. With max_prefill_seconds set (the server sets it), while any
sequence is generating the prompt tokens of one step are held to what the model computes in
about that time, from the seconds per token measured over the last steps (observe()); a step
with no one generating still takes whole max_num_batched_tokens chunks.

After the model ran, postprocess() appends each sequence's token and checks its stop conditions.
A sequence whose forward or sampling failed (model_runner.py hands over the exception in place
of its token) finishes there with finish_reason "error": its blocks are freed, its unfinished
keys/values are never registered in the prefix cache, and the others carry on.

Why nothing starves or deadlocks: the add-time check (tinyinfer/engine/llm.py) guarantees every
request fits in the whole cache alone. The oldest running sequence can preempt all others, so it
always makes progress and finishes; then the next oldest is the oldest. Preemption keeps
arrival order: running sequences all arrived before waiting ones, and a victim (the newest
running) goes to the front of the waiting queue.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)  # in the order their tokens are packed
    num_new_tokens: list[int] = field(default_factory=list)  # tokens each one feeds this step
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 stop_ids=frozenset(), tokenizer=None, max_prefill_seconds: float | None = None):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_prefill_seconds = max_prefill_seconds  # None: prompt chunks limited by tokens only
        self.seconds_per_token: float | None = None  # a step's time over its tokens, averaged (observe)
        self.stop_ids = frozenset(stop_ids)  # the tokenizer's end-of-generation ids
        self.tokenizer = tokenizer  # only for each new token's bytes (stop strings, the text)
        self.waiting: deque[Sequence] = deque()  # arrival order
        self.running: list[Sequence] = []        # arrival order too (oldest first)

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def observe(self, num_tokens: int, seconds: float):
        """A model step fed num_tokens in `seconds`: update seconds_per_token (a moving average, so
        the chunk follows the machine's speed). Time over tokens counts the step's fixed cost per
        token too, so it overstates what one more token costs: the chunks err on the short side."""
        if num_tokens <= 0 or not seconds > 0:
            return
        rate = seconds / num_tokens
        self.seconds_per_token = rate if self.seconds_per_token is None else 0.7 * self.seconds_per_token + 0.3 * rate

    def prefill_allowance(self) -> int:
        """Prompt tokens this step may feed: max_num_batched_tokens, or, while a sequence is
        generating and max_prefill_seconds is set, what fits in max_prefill_seconds (at least 1)."""
        budget = self.max_num_batched_tokens
        if self.max_prefill_seconds is None or self.seconds_per_token is None:
            return budget
        if not any(seq.num_uncomputed_tokens == 1 and seq.num_computed_tokens >= seq.num_prompt_tokens
                   for seq in self.running):
            return budget  # nobody is waiting for a token: a long chunk pauses no one
        return max(1, min(budget, int(self.max_prefill_seconds / self.seconds_per_token)))

    # ---- one step ----------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        prefill = self.prefill_allowance()  # prompt tokens (not generated ones) this step may feed
        bm = self.block_manager

        # 1. running sequences, oldest first
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if n > 1:  # a prompt chunk
                n = min(n, prefill)
                if n == 0:
                    i += 1
                    continue
            while not bm.can_append(seq, n):
                victim = self.choose_victim(self.running[i:])  # among those not scheduled this step
                self.preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status != SequenceStatus.RUNNING:
                break  # seq yielded, and everyone newer was preempted before it
            bm.append(seq, n)
            out.seqs.append(seq)
            out.num_new_tokens.append(n)
            budget -= n
            if n > 1 or seq.num_computed_tokens < seq.num_prompt_tokens:
                prefill -= n
            i += 1

        # 2. waiting sequences, strictly first come first served
        while self.waiting and budget > 0 and prefill > 0 and len(self.running) < self.max_num_seqs and not out.preempted:
            seq = self.waiting[0]
            cached = bm.find_cached_prefix(seq)  # block ids whose keys/values we can reuse
            n = min(seq.num_tokens - len(cached) * bm.block_size, budget, prefill)
            if not bm.can_admit(seq, cached, n):
                break  # wait for memory; later arrivals wait behind it
            bm.admit(seq, cached, n)
            if seq.num_cached_prompt_tokens is None:  # the metric counts the first admission
                seq.num_cached_prompt_tokens = seq.num_cached_tokens
                seq.metrics["first_scheduled_time"] = time.perf_counter()
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.seqs.append(seq)
            out.num_new_tokens.append(n)
            budget -= n
            prefill -= n
        return out

    def choose_victim(self, candidates: list[Sequence]) -> Sequence:
        """Which running sequence to preempt when memory runs out: the newest. candidates are the
        running sequences not yet scheduled in this step, oldest first (candidates[0] is the one
        that needs the memory). A subclass may choose otherwise (lesson 08, exercise 4)."""
        return candidates[-1]

    def preempt(self, seq: Sequence):
        """Free seq's blocks and send it to the front of the waiting queue, to be recomputed."""
        self.running.remove(seq)
        self.block_manager.free(seq)  # its blocks go to the LRU pool: the re-run may hit them
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)

    def postprocess(self, out: SchedulerOutput, results: list) -> list[Sequence]:
        """Account for a finished model step; returns the sequences with news: a new token, or a
        failure. results[i] is seqs[i]'s token id, None (a prefill chunk short of the prompt's
        end) or the exception that failed it (tinyinfer/engine/model_runner.py)."""
        now = time.perf_counter()
        news = []
        for seq, n, result in zip(out.seqs, out.num_new_tokens, results):
            try:
                if isinstance(result, Exception):
                    raise result
                if self.accept(seq, n, result, now):
                    news.append(seq)
            except Exception as err:  # this request alone fails; its blocks go back, the batch goes on
                self.fail(seq, err, now)
                news.append(seq)
        return news

    def accept(self, seq: Sequence, n: int, token: int | None, now: float) -> bool:
        """seq's n fed tokens now have keys and values; append its new token. -> whether it got one."""
        seq.num_computed_tokens += n
        self.block_manager.register_full_blocks(seq)  # full blocks now hold computed k/v
        if token is None:
            return False  # a prefill chunk short of the prompt's end
        token_bytes = self.tokenizer.decode_bytes([token]) if self.tokenizer is not None else b""
        seq.append_token(token, now, token_bytes)
        reason = seq.check_stop(self.stop_ids)
        if reason is not None:
            self.finish(seq, reason, now)
        return True

    def fail(self, seq: Sequence, err: Exception, now: float | None = None):
        seq.error = err
        self.finish(seq, "error", now)

    def finish(self, seq: Sequence, reason: str, now: float | None = None):
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.block_manager.free(seq)
        elif seq.status == SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.metrics["finish_time"] = time.perf_counter() if now is None else now
