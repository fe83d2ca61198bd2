"""LLMEngine and LLM: requests in, tokens out; step() = schedule -> run the model -> postprocess.

Lesson: lessons/08-serving.py

    from tinyinfer.engine import LLM, SamplingParams
    llm = LLM(model, block_size=16, max_num_seqs=16, max_num_batched_tokens=512)
    outs = llm.generate(["def f(x):", "class A:"], SamplingParams(max_tokens=32))
    outs[0].text, outs[0].token_ids, outs[0].finish_reason, outs[0].metrics["ttft"]

Streaming (what a server drives): add_request() any time, then step() until
has_unfinished_requests() is False; every step returns a StepOutput per request that got a token.

One request's failure is its own: if its forward or its sampling raises (NaN logits, say), it
finishes with finish_reason "error" and its blocks are freed, and the step goes on for the rest
(model_runner.py says how a failed packed forward finds the culprit). generate() then raises
RequestError with every output attached; a server answers that client alone with an error.

The pieces, each readable on its own:
    sequence.py        Sequence: one request's tokens, block table, sampling state
    detokenizer.py     StopMatcher, TextStream: stop strings on bytes, text safe to stream
    block_manager.py   BlockManager: free list, ref counts, prefix cache (bookkeeping only)
    paged_attention.py PagedKVCache: the block arrays and attention over a packed step
    scheduler.py       Scheduler: continuous batching, chunked prefill, preemption
    model_runner.py    ModelRunner: packs a batch into one forward pass and samples
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..inference import InferenceModel
from ..sampling import check_int
from .block_manager import BlockManager, cdiv
from .detokenizer import TextStream
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
    finish_reason: str | None  # "stop" | "length" | "abort" | "error"
    metrics: dict = field(default_factory=dict)
    error: Exception | None = None  # what failed this request alone, when finish_reason is "error"


@dataclass
class StepOutput:
    """What one step did for one request: for streaming."""
    request_id: str
    new_token_ids: list[int]  # this step's tokens (one per step today; none when the request failed)
    new_text: str             # text that became final this step (stop strings held back until sure);
                              # always "" from step(detokenize=False): the caller decodes
    finished: bool
    finish_reason: str | None = None
    output: RequestOutput | None = None  # the complete result, once finished


class RequestError(RuntimeError):
    """LLM.generate raises this when some requests failed while running (a NaN in their logits,
    say). The others ran to the end and the engine is clean: .outputs holds every request's
    RequestOutput in prompt order, the failed ones with finish_reason "error" and .error."""

    def __init__(self, outputs: list, failed: list):
        self.outputs, self.failed = outputs, failed
        why = "; ".join(f"request {o.request_id}: {type(o.error).__name__}: {o.error}" for o in failed[:3])
        super().__init__(f"{len(failed)} of {len(outputs)} requests failed while generating ({why}"
                         f"{'; ...' if len(failed) > 3 else ''}); the others finished, and every output is "
                         f"in this error's .outputs")


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


DEFAULT_KV_CACHE_BYTES = 1 << 30  # 1 GiB, or half the memory available if that is less


def available_memory_bytes() -> int | None:
    """Memory the system could give us now without swapping (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def end_of_generation_ids(tokenizer) -> frozenset:
    """The ids that end a generation: the tokenizer's stop_ids when it has them, else its eos_id."""
    if tokenizer is None:
        return frozenset()
    ids = getattr(tokenizer, "stop_ids", None)
    if ids is not None:
        return frozenset(int(i) for i in ids)
    eos = getattr(tokenizer, "eos_id", None)
    return frozenset() if eos is None else frozenset([int(eos)])


def kv_block_bytes(config, block_size: int, itemsize: int) -> int:
    """Bytes of one KV-cache block: keys and values, every layer, G heads, P positions, D dims."""
    return 2 * config.n_layer * config.n_kv_head * block_size * config.head_dim * itemsize


class LLMEngine:
    """The engine. Arguments:

    model                   a tinyinfer Model (any weight type its forward accepts), or an
                            InferenceModel of one (its weights laid out once, for several engines)
    block_size              positions per KV-cache block
    max_num_seqs            at most this many sequences in the running batch
    max_num_batched_tokens  at most this many tokens fed to the model per step (prefill chunks
                            plus one per generating sequence)
    max_prefill_seconds     while a sequence is generating, a step's prompt tokens are held to what
                            the model computes in about this time (measured as it runs), so a long
                            prompt does not pause the others' streams (scheduler.py); None (the
                            default): whole max_num_batched_tokens chunks. The server sets 0.05.
    enable_prefix_caching   reuse the keys/values of full blocks whose prefix was seen before
    max_model_len           the longest request (prompt + max_tokens) served; default the model's
                            context n_ctx, or what the cache holds if that is less
    num_blocks              blocks in the cache; default max_num_seqs * ceil(max_model_len / block_size)
                            (max_num_seqs full-length requests never need preemption) if that
                            fits in kv_cache_bytes, else as many as fit
    kv_cache_bytes          the most memory the cache may take; default 1 GiB or half the memory
                            available, whichever is less. A num_blocks beyond it is refused.
    attention               "rows" (default): the batch-invariant kernel, so a request's tokens are
                            the same bits alone or in any batch (tinyinfer/invariant_attention.py);
                            "numpy": gathers and BLAS products, equal only up to rounding
                            (paged_attention.py explains both)

    A request stops at its max_tokens, its stop strings and stop_token_ids, and, unless
    ignore_eos, at any of the tokenizer's end-of-generation ids (Tokenizer.stop_ids: for SmolLM2
    <|endoftext|>, <|im_end|> and <reponame>, as llama.cpp stops), not only at its eos_id.

    The cache is sized for what the engine is asked to serve, not for the context the model
    declares: a real model's n_ctx of 8192 with 16 sequences would be 131,072 positions, gigabytes
    of keys and values allocated for requests that never come.
    """

    def __init__(self, model, block_size: int = 16, num_blocks: int | None = None, max_num_seqs: int = 16,
                 max_num_batched_tokens: int = 512, enable_prefix_caching: bool = True,
                 max_model_len: int | None = None, kv_cache_bytes: int | None = None, attention: str = "rows",
                 max_prefill_seconds: float | None = None):
        fast = None
        if isinstance(model, InferenceModel):  # prepared once by the caller, shared by several engines
            fast, model = model, model.model
        block_size = check_int("block_size", block_size, low=1)
        max_num_seqs = check_int("max_num_seqs", max_num_seqs, low=1)
        max_num_batched_tokens = check_int("max_num_batched_tokens", max_num_batched_tokens, low=1)
        if max_prefill_seconds is not None:
            if isinstance(max_prefill_seconds, bool) or not isinstance(max_prefill_seconds, (int, float)) \
                    or not 0 < max_prefill_seconds < float("inf"):
                raise ValueError(f"max_prefill_seconds must be a positive number of seconds or None, "
                                 f"got {max_prefill_seconds!r}")
            max_prefill_seconds = float(max_prefill_seconds)
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self.eos_id = self.tokenizer.eos_id if self.tokenizer is not None else None
        self.stop_ids = end_of_generation_ids(self.tokenizer)
        self.block_size = block_size
        self.num_blocks, self.max_model_len, self.kv_cache_bytes = self.size_cache(
            model, block_size, max_num_seqs, num_blocks, max_model_len, kv_cache_bytes)
        self.block_manager = BlockManager(self.num_blocks, self.block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens,
                                   self.stop_ids, self.tokenizer, max_prefill_seconds)
        self.model_runner = ModelRunner(model, self.num_blocks, self.block_size, attention, fast)
        self.sequences: dict[str, Sequence] = {}  # live requests by id
        self._ids = itertools.count()
        self.last_schedule: SchedulerOutput | None = None  # for tests and curious readers

    @staticmethod
    def size_cache(model, block_size, max_num_seqs, num_blocks, max_model_len, kv_cache_bytes):
        """-> (num_blocks, max_model_len, kv_cache_bytes), checked before a byte is allocated."""
        n_ctx = model.config.n_ctx
        block_bytes = kv_block_bytes(model.config, block_size, np.dtype(model.dtype).itemsize)
        available = available_memory_bytes()
        if kv_cache_bytes is None:
            kv_cache_bytes = DEFAULT_KV_CACHE_BYTES if available is None else min(DEFAULT_KV_CACHE_BYTES,
                                                                                   available // 2)
        else:
            kv_cache_bytes = check_int("kv_cache_bytes", kv_cache_bytes, low=1)
            if available is not None and kv_cache_bytes > available:
                raise ValueError(f"kv_cache_bytes = {kv_cache_bytes:,} is more than the {available:,} bytes of "
                                 f"memory this machine has available")
        budget_blocks = kv_cache_bytes // block_bytes
        if budget_blocks < 1:
            raise ValueError(f"one KV-cache block of block_size {block_size} needs {block_bytes:,} bytes for this "
                             f"model, more than kv_cache_bytes = {kv_cache_bytes:,}; lower block_size")
        if max_model_len is not None:
            max_model_len = check_int("max_model_len", max_model_len, low=1)
            if max_model_len > n_ctx:
                raise ValueError(f"max_model_len = {max_model_len} is more than the model's context n_ctx = {n_ctx}")
        if num_blocks is None:
            longest = n_ctx if max_model_len is None else max_model_len
            num_blocks = min(max_num_seqs * cdiv(longest, block_size), budget_blocks)
        else:
            num_blocks = check_int("num_blocks", num_blocks, low=1)
            if num_blocks > budget_blocks:
                raise ValueError(f"num_blocks = {num_blocks:,} needs {num_blocks * block_bytes:,} bytes of KV cache "
                                 f"({block_bytes:,} a block), more than kv_cache_bytes = {kv_cache_bytes:,} allows "
                                 f"({budget_blocks:,} blocks); lower num_blocks or raise kv_cache_bytes")
        # The last sampled token is never fed back, so a request of L tokens stores L - 1 positions.
        holds = num_blocks * block_size + 1
        if max_model_len is None:
            max_model_len = min(n_ctx, holds)
        elif max_model_len > holds:
            raise ValueError(f"max_model_len = {max_model_len} does not fit in the cache: num_blocks = {num_blocks} "
                             f"blocks of block_size {block_size} hold requests of at most {holds} tokens")
        return num_blocks, max_model_len, kv_cache_bytes

    # ---- requests ----------------------------------------------------------------------

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt is a string but the model has no tokenizer: pass token ids")
            ids = self.tokenizer.encode(prompt)
            if not ids:
                raise ValueError("prompt is empty: give at least one token")
            return ids
        if isinstance(prompt, (list, tuple)) and len(prompt) > self.max_model_len:
            # before check_ids turns a huge list into an array
            raise ValueError(f"prompt is {len(prompt)} tokens, more than max_model_len = {self.max_model_len}, "
                             f"{self.max_model_len_why()}")
        arr, _ = self.model.check_ids(prompt, name="prompt")  # errors name the bad token
        if arr.shape[0] != 1:
            raise ValueError(f"prompt must be one sequence of token ids, got shape {arr.shape}")
        return arr[0].tolist()

    def max_model_len_why(self) -> str:
        n_ctx = self.model.config.n_ctx
        if self.max_model_len == n_ctx:
            return "the model's context n_ctx"
        return (f"the longest request this engine serves (the model's n_ctx is {n_ctx}; the cache holds "
                f"num_blocks = {self.num_blocks} blocks of {self.block_size} positions)")

    def make_sequence(self, prompt, params: SamplingParams | None = None, request_id=None) -> Sequence:
        """Check a request and build its Sequence (not queued yet). Raises if it can never fit."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        vocab_size = self.model.config.vocab_size
        for i, t in enumerate(params.stop_token_ids):
            if t >= vocab_size:
                raise ValueError(f"stop_token_ids[{i}] is {t} but vocab_size is {vocab_size}")
        ids = self._prompt_ids(prompt)
        total = len(ids) + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds "
                             f"max_model_len = {self.max_model_len}, {self.max_model_len_why()}")
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
                             seq.output_text(self.scheduler.stop_ids),
                             seq.output_token_ids, seq.finish_reason, request_metrics(seq), seq.error)

    # ---- the loop ----------------------------------------------------------------------

    def step(self, detokenize: bool = True) -> list[StepOutput]:
        """schedule -> run the model on the packed batch -> postprocess (append, stop, free).

        A request that fails in the step (its forward or its sampling raised) finishes alone with
        finish_reason "error"; its blocks are freed and every other request goes on unharmed.
        detokenize=False leaves new_text empty: a server decodes in its clients' threads instead.
        """
        batch = self.scheduler.schedule()
        self.last_schedule = batch
        if not batch.seqs:
            return []
        started = time.perf_counter()
        results = self.model_runner.run(batch.seqs, batch.num_new_tokens)
        self.scheduler.observe(batch.num_batched_tokens, time.perf_counter() - started)
        outputs = []
        for seq in self.scheduler.postprocess(batch, results):
            failed = seq.finish_reason == "error"
            out = StepOutput(seq.request_id, [] if failed else [seq.token_ids[-1]],
                             self.stream_text(seq) if detokenize and not failed else "",
                             seq.is_finished, seq.finish_reason)
            if seq.is_finished:
                out.output = self.output(seq)
                del self.sequences[seq.request_id]
            outputs.append(out)
        return outputs

    def stream_text(self, seq: Sequence) -> str:
        """The text of seq that became safe to show this step (see detokenizer.TextStream)."""
        if seq.text_stream is None:
            matcher = seq.params.stop_matcher
            seq.text_stream = TextStream(hold_bytes=matcher.max_len - 1 if matcher else 0)
        if seq.is_finished:
            return seq.text_stream.finish(seq.output_text(self.scheduler.stop_ids))
        return seq.text_stream.add(bytes(seq.output_bytes[len(seq.text_stream.data):]))

    def generate(self, prompts, params=None, use_tqdm: bool = False) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order.

        prompts: a str, a list of str, one list of token ids, or a list of them.
        params: one SamplingParams for all, or a list with one per prompt.
        Raises RequestError (with every output in .outputs) if some requests failed while running;
        whatever happens, none of these requests is left in the engine afterwards.
        """
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and len(prompts) > 0
                                        and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        if isinstance(prompts, np.ndarray):
            prompts = list(prompts) if prompts.ndim == 2 else [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(f"prompts must be a str, a list of token ids, or a list of them; got "
                            f"{type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        params = SamplingParams() if params is None else params
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} SamplingParams")
        # Check every request before queueing any, so a bad prompt leaves no half-added batch.
        seqs = [self.make_sequence(p, sp) for p, sp in zip(prompts, params)]
        ids = [self._enqueue(seq) for seq in seqs]
        wanted, results = set(ids), {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(ids), desc="generating", unit="req")
        try:
            while len(results) < len(ids) and self.has_unfinished_requests():
                for out in self.step():
                    if out.finished and out.request_id in wanted:
                        results[out.request_id] = out.output
                        if bar is not None:
                            bar.update(1)
        finally:  # an exception or Ctrl-C mid-way: leave no request of ours holding blocks
            for request_id in ids:
                if request_id not in results:
                    self.abort(request_id)
            if bar is not None:
                bar.close()
        outputs = [results[i] for i in ids]
        failed = [o for o in outputs if o.finish_reason == "error"]
        if failed:
            raise RequestError(outputs, failed) from failed[0].error
        return outputs


class LLM(LLMEngine):
    """The offline entry point (as in vLLM and nano-vllm): LLM(model).generate(prompts, params)."""
