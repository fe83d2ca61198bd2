"""A stateful test of the engine: hypothesis adds, steps and aborts requests in random orders on a
tiny cache (so preemption and LRU eviction happen often) and checks the invariants after every
move. See tinyinfer/engine/scheduler.py for why these should hold. A third machine also poisons
random live requests (their packed forward or their sampling raises): each must fail alone, with
no block leaked and every other request's greedy tokens unchanged."""
from collections import Counter
from functools import lru_cache

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import small_model
from tinyinfer.engine import LLM, SamplingParams
from tinyinfer.engine.model_runner import ModelRunner

MODEL = small_model("llama", dtype=np.float64, seed=5, n_ctx=24)  # vocab 37
BLOCK_SIZE, NUM_BLOCKS = 2, 8  # 16 positions: two or three requests already crowd it
MAX_NUM_SEQS, MAX_NUM_BATCHED_TOKENS = 3, 6
SHARED = [5, 9, 2, 30, 11, 7, 7, 21]  # prompts often start with a piece of this: prefix hits
MAX_TOKENS = 6


@lru_cache(maxsize=None)
def greedy_alone(prompt: tuple) -> list:
    """Greedy continuation through the model's own contiguous-cache generate (no engine)."""
    return MODEL.generate(list(prompt), MAX_TOKENS)[len(prompt):].tolist()


class EngineMachine(RuleBasedStateMachine):
    block_size, num_blocks, prefix_caching = BLOCK_SIZE, NUM_BLOCKS, True

    def __init__(self):
        super().__init__()
        self.llm = LLM(MODEL, block_size=self.block_size, num_blocks=self.num_blocks, max_num_seqs=MAX_NUM_SEQS,
                       max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS, enable_prefix_caching=self.prefix_caching)
        self.requests = {}   # request_id -> (prompt, max_tokens)
        self.finished = {}   # request_id -> RequestOutput
        self.aborted = set()

    @property
    def scheduler(self):
        return self.llm.scheduler

    @property
    def bm(self):
        return self.llm.block_manager

    # ---- moves -------------------------------------------------------------------------

    @rule(shared=st.integers(0, len(SHARED)), own=st.lists(st.integers(0, 36), min_size=1, max_size=6),
          max_tokens=st.integers(1, MAX_TOKENS))
    def add(self, shared, own, max_tokens):
        prompt = SHARED[:shared] + own
        params = SamplingParams(max_tokens=max_tokens)
        if len(prompt) + max_tokens - 1 > self.num_blocks * self.block_size:  # could never fit: refused
            waiting = len(self.scheduler.waiting)
            try:
                self.llm.add_request(prompt, params)
            except ValueError as e:
                assert "num_blocks" in str(e)
            else:
                raise AssertionError("a request larger than the whole cache was accepted")
            assert len(self.scheduler.waiting) == waiting
            return
        request_id = self.llm.add_request(prompt, params)
        self.requests[request_id] = (prompt, max_tokens)

    @rule()
    def step(self):
        had_work = self.llm.has_unfinished_requests()
        outputs = self.llm.step()
        batch = self.llm.last_schedule
        assert batch.num_batched_tokens <= MAX_NUM_BATCHED_TOKENS
        assert len(self.scheduler.running) <= MAX_NUM_SEQS
        assert all(n >= 1 for n in batch.num_new_tokens)
        if had_work:
            assert batch.seqs, "unfinished requests but nothing scheduled: a deadlock"
        for out in outputs:
            if out.finished:
                self.record(out)

    def record(self, out):
        assert out.request_id not in self.finished and out.finish_reason != "error"
        self.finished[out.request_id] = out.output

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def abort(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.requests)))
        live = request_id in self.llm.sequences
        assert self.llm.abort(request_id) == live
        if live:
            self.aborted.add(request_id)

    # ---- invariants --------------------------------------------------------------------

    @invariant()
    def blocks_partitioned(self):
        free, cached, used = set(self.bm.free_block_ids), set(self.bm.cached_block_ids), self.bm.used_block_ids
        assert len(free) == len(self.bm.free_block_ids)  # no block twice in the free list
        assert free | cached | used == set(range(self.num_blocks))
        assert not (free & cached) and not (free & used) and not (cached & used)

    @invariant()
    def ref_counts_match_block_tables(self):
        holders = Counter(b for seq in self.scheduler.running for b in seq.block_table)
        for seq in self.scheduler.running:
            assert len(set(seq.block_table)) == len(seq.block_table)
            assert len(seq.block_table) * self.block_size >= seq.num_computed_tokens
        assert all(not seq.block_table for seq in self.scheduler.waiting)  # waiting holds nothing
        for block in self.bm.blocks:
            assert block.ref_count == holders[block.block_id], block
            assert (block.ref_count > 0) == (block.block_id in self.bm.used_block_ids)

    @invariant()
    def prefix_cache_consistent(self):
        for h, block_id in self.bm.hash_to_block_id.items():
            assert self.bm.blocks[block_id].hash == h
        for block in self.bm.blocks:
            if block.hash is not None:
                assert self.bm.hash_to_block_id[block.hash] == block.block_id
        assert all(self.bm.blocks[b].hash is None for b in self.bm.free_block_ids)
        assert all(self.bm.blocks[b].hash is not None for b in self.bm.cached_block_ids)

    @invariant()
    def first_come_first_served(self):
        # everyone running arrived before everyone waiting (and each queue keeps arrival order)
        running = [s.arrival_order for s in self.scheduler.running]
        waiting = [s.arrival_order for s in self.scheduler.waiting]
        assert running == sorted(running) and waiting == sorted(waiting)
        if running and waiting:
            assert max(running) < min(waiting)
        assert len(self.scheduler.running) <= MAX_NUM_SEQS

    def teardown(self):
        for _ in range(500):  # every request fits alone, so this always ends
            if not self.llm.has_unfinished_requests():
                break
            self.step()
        assert not self.llm.has_unfinished_requests(), "requests left unfinished: starvation"
        # no leaks: every block is free or in the prefix cache's LRU pool
        assert not self.bm.used_block_ids
        assert self.bm.num_free_blocks == self.num_blocks
        assert set(self.finished) | self.aborted | getattr(self, "failed", set()) == set(self.requests)
        for request_id, out in self.finished.items():
            prompt, max_tokens = self.requests[request_id]
            assert out.finish_reason == "length"
            assert out.token_ids == greedy_alone(tuple(prompt))[:max_tokens], request_id


class EngineMachineNoPrefixCache(EngineMachine):
    """Odd block size (blocks straddle prompt and output unevenly), no prefix cache: all frees go
    straight to the free list."""
    block_size, num_blocks, prefix_caching = 3, 5, False


class FailingRunner(ModelRunner):
    """A ModelRunner in which poisoned requests fail: "forward" raises in the packed forward of any
    batch that holds them (the engine cannot tell who is to blame), "sample" gives them NaN logits."""

    def __init__(self, *args):
        super().__init__(*args)
        self.poison: dict = {}  # request_id -> "forward" | "sample"

    def forward(self, seqs, num_new_tokens, all_columns=False):
        if any(self.poison.get(s.request_id) == "forward" for s in seqs):
            raise FloatingPointError("poisoned forward")
        return super().forward(seqs, num_new_tokens, all_columns)

    def sample(self, seq, n, row):
        if self.poison.get(seq.request_id) == "sample":
            row = np.full_like(row, np.nan)
        return super().sample(seq, n, row)


class EngineMachineWithFailures(EngineMachine):
    def __init__(self):
        super().__init__()
        self.llm.model_runner = FailingRunner(MODEL, self.num_blocks, self.block_size)
        self.poisoned, self.failed = set(), set()

    @precondition(lambda self: self.llm.sequences)
    @rule(data=st.data(), where=st.sampled_from(["forward", "sample"]))
    def poison(self, data, where):
        request_id = data.draw(st.sampled_from(sorted(self.llm.sequences)))
        self.llm.model_runner.poison[request_id] = where
        self.poisoned.add(request_id)

    def record(self, out):
        if out.finish_reason == "error":
            assert out.request_id in self.poisoned and out.output.error is not None
            self.failed.add(out.request_id)
        else:
            super().record(out)

    def teardown(self):
        super().teardown()
        # a live request always needs one more forward and one more sample: a poisoned one cannot
        # finish normally, it fails (or was aborted first)
        assert self.poisoned <= self.failed | self.aborted
        assert not (set(self.finished) & self.failed)


EngineMachine.TestCase.settings = settings(stateful_step_count=30)
EngineMachineWithFailures.TestCase.settings = settings(stateful_step_count=30)
EngineMachineNoPrefixCache.TestCase.settings = settings(stateful_step_count=30)
TestEngineStateMachine = EngineMachine.TestCase
TestEngineStateMachineNoPrefixCache = EngineMachineNoPrefixCache.TestCase
TestEngineStateMachineWithFailures = EngineMachineWithFailures.TestCase
