"""LLMEngine and LLM: requests in, tokens out; step() = schedule -> run the model -> postprocess.

Lesson: lessons/08-serving.py

    from tinyinfer.engine import LLM, SamplingParams
    llm = LLM(model, block_size=16, max_num_seqs=16, max_num_batched_tokens=512)
    outs = llm.generate(["def f(x):", "class A:"], SamplingParams(max_tokens=32))
    outs[0].text, outs[0].token_ids, outs[0].finish_reason, outs[0].metrics["ttft"]

Streaming (what a server drives): add_request() any time, then step() until
has_unfinished_requests() is False; every step returns a StepOutput per request that got a token.

The pieces, each readable on its own:
    sequence.py        Sequence: one request's tokens, block table, sampling state
    block_manager.py   BlockManager: free list, ref counts, prefix cache (bookkeeping only)
    paged_attention.py PagedKVCache: the block arrays and attention over a packed step
    scheduler.py       Scheduler: continuous batching, chunked prefill, preemption
    model_runner.py    ModelRunner: packs a batch into one forward pass and samples
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from .block_manager import BlockManager, cdiv
from .model_runner import ModelRunner
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerOutput
from .sequence import Sequence


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    text: str                 # generated text (no stop token, cut before a stop string)
    token_ids: list[int]      # generated ids (a stop token or the one completing a stop string included)
    finish_reason: str | None  # "stop" | "length" | "abort"
    metrics: dict = field(default_factory=dict)


@dataclass
class StepOutput:
    """What one step did for one request: for streaming."""
    request_id: str
    new_token_ids: list[int]  # this step's tokens (one per step today)
    new_text: str             # text that became final this step (stop strings held back until sure)
    finished: bool
    finish_reason: str | None = None
    output: RequestOutput | None = None  # the complete result, once finished


def request_metrics(seq: Sequence) -> dict:
    """Serving metrics as vLLM's benchmark defines them; times in seconds (time.perf_counter)."""
    m = dict(seq.metrics)
    n_out = seq.num_output_tokens
    first, finish, arrival = m["first_token_time"], m["finish_time"], m["arrival"]
    m["ttft"] = None if first is None else first - arrival  # time to first token
    m["e2e"] = None if finish is None else finish - arrival
    # time per output token after the first; undefined for a single token
    m["tpot"] = (m["e2e"] - m["ttft"]) / (n_out - 1) if n_out > 1 and m["e2e"] is not None else None
    m["num_prompt_tokens"] = seq.num_prompt_tokens
    m["num_output_tokens"] = n_out
    m["num_cached_prompt_tokens"] = seq.num_cached_prompt_tokens or 0
    m["num_preemptions"] = seq.num_preemptions
    return m


class LLMEngine:
    """The engine. Arguments:

    model                   a tinyinfer Model (any weight type its forward accepts)
    block_size              positions per KV-cache block
    num_blocks              blocks in the cache; default max_num_seqs * ceil(n_ctx / block_size),
                            so max_num_seqs full-length requests never need preemption
    max_num_seqs            at most this many sequences in the running batch
    max_num_batched_tokens  at most this many tokens fed to the model per step (prefill chunks
                            plus one per generating sequence)
    enable_prefix_caching   reuse the keys/values of full blocks whose prefix was seen before
    """

    def __init__(self, model, block_size: int = 16, num_blocks: int | None = None, max_num_seqs: int = 16,
                 max_num_batched_tokens: int = 512, enable_prefix_caching: bool = True):
        for name, value in dict(block_size=block_size, max_num_seqs=max_num_seqs,
                                max_num_batched_tokens=max_num_batched_tokens).items():
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        n_ctx = model.config.n_ctx
        if num_blocks is None:  # default: every one of max_num_seqs sequences can reach n_ctx at once
            num_blocks = max_num_seqs * cdiv(n_ctx, block_size)
        if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an int >= 1, got {num_blocks!r}")
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self.eos_id = self.tokenizer.eos_id if self.tokenizer is not None else None
        self.block_size, self.num_blocks = int(block_size), int(num_blocks)
        self.block_manager = BlockManager(self.num_blocks, self.block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens,
                                   self.eos_id, self.tokenizer)
        self.model_runner = ModelRunner(model, self.num_blocks, self.block_size)
        self.sequences: dict[str, Sequence] = {}  # live requests by id
        self._ids = itertools.count()
        self.last_schedule: SchedulerOutput | None = None  # for tests and curious readers

    # ---- requests ----------------------------------------------------------------------

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt is a string but the model has no tokenizer: pass token ids")
            ids = self.tokenizer.encode(prompt)
            if not ids:
                raise ValueError("prompt is empty: give at least one token")
            return ids
        arr, _ = self.model.check_ids(prompt, name="prompt")  # errors name the bad token
        if arr.shape[0] != 1:
            raise ValueError(f"prompt must be one sequence of token ids, got shape {arr.shape}")
        return arr[0].tolist()

    def make_sequence(self, prompt, params: SamplingParams | None = None, request_id=None) -> Sequence:
        """Check a request and build its Sequence (not queued yet). Raises if it can never fit."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        ids = self._prompt_ids(prompt)
        total = len(ids) + params.max_tokens
        n_ctx = self.model.config.n_ctx
        if total > n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) = {total} "
                             f"exceeds the context length n_ctx = {n_ctx}")
        # The last sampled token is never fed back, so the cache holds at most total - 1 positions.
        # Checking here is what lets the scheduler promise that nothing deadlocks: alone, any
        # admitted request fits in the whole cache.
        blocks = cdiv(total - 1, self.block_size)
        if blocks > self.num_blocks:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) needs "
                             f"{blocks} KV-cache blocks of {self.block_size} positions, but the cache has "
                             f"only num_blocks = {self.num_blocks}; raise num_blocks or lower max_tokens")
        request_id = str(next(self._ids)) if request_id is None else request_id
        if request_id in self.sequences:
            raise ValueError(f"request_id {request_id!r} is already in use by a live request")
        return Sequence(request_id, ids, params, self.block_size, time.perf_counter())

    def add_request(self, prompt, params: SamplingParams | None = None, request_id=None) -> str:
        """Queue a request (a string or token ids); returns its id. Raises if it can never fit."""
        return self._enqueue(self.make_sequence(prompt, params, request_id))

    def _enqueue(self, seq: Sequence) -> str:
        seq.metrics["arrival"] = time.perf_counter()
        self.sequences[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq.request_id

    def abort(self, request_id) -> bool:
        """Stop a request and free its blocks; False if it is not live (unknown or finished)."""
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq, "abort")
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def output(self, seq: Sequence) -> RequestOutput:
        return RequestOutput(seq.request_id, seq.token_ids[:seq.num_prompt_tokens],
                             seq.output_text(self.tokenizer, self.eos_id), seq.output_token_ids,
                             seq.finish_reason, request_metrics(seq))

    # ---- the loop ----------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        """schedule -> run the model on the packed batch -> postprocess (append, stop, free)."""
        batch = self.scheduler.schedule()
        self.last_schedule = batch
        if not batch.seqs:
            return []
        tokens = self.model_runner.run(batch.seqs, batch.num_new_tokens)
        grown = self.scheduler.postprocess(batch, tokens)
        outputs = []
        for seq in grown:
            text = seq.visible_text(self.tokenizer, self.eos_id)
            new_text = text[seq.num_streamed_chars:]  # visible text only ever grows
            seq.num_streamed_chars += len(new_text)
            out = StepOutput(seq.request_id, [seq.token_ids[-1]], new_text, seq.is_finished,
                             seq.finish_reason)
            if seq.is_finished:
                out.output = self.output(seq)
                del self.sequences[seq.request_id]
            outputs.append(out)
        return outputs

    def generate(self, prompts, params=None, use_tqdm: bool = False) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order.

        prompts: a str, a list of str, one list of token ids, or a list of them.
        params: one SamplingParams for all, or a list with one per prompt.
        """
        if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        if isinstance(prompts, np.ndarray):
            prompts = list(prompts) if prompts.ndim == 2 else [prompts]
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        params = SamplingParams() if params is None else params
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} SamplingParams")
        # Check every request before queueing any, so a bad prompt leaves no half-added batch.
        seqs = [self.make_sequence(p, sp) for p, sp in zip(prompts, params)]
        ids = [self._enqueue(seq) for seq in seqs]
        results = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(ids), desc="generating", unit="req")
        while len(results) < len(ids) and self.has_unfinished_requests():
            for out in self.step():
                if out.finished:
                    results[out.request_id] = out.output
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [results[i] for i in ids]


class LLM(LLMEngine):
    """The offline entry point (as in vLLM and nano-vllm): LLM(model).generate(prompts, params)."""
