"""Worked solutions to the exercises of lesson 08 (serving: batching, the scheduler, the server).

Run from the repository root: `python lessons/solutions/08-serving.py` (all exercises) or
`python lessons/solutions/08-serving.py 3` (some). TINYINFER_LESSON_SMALL=1 shortens the workloads.
"""
import functools
import json
import os
import socket
import threading
import time
import urllib.request
from dataclasses import replace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
from tinyinfer.bench.batching import profile_step
from tinyinfer.bench.engine import (Settings, bench_online, fast_model, make_workload, offline_work, params_for,
                                    run_continuous)
from tinyinfer.engine import LLM
from tinyinfer.engine.scheduler import Scheduler
from tinyinfer.engine.server import make_server
from tinyinfer.lesson_tools import compare, run_exercises
from tinyinfer.lessons import repo_root
from tinyinfer.quant.model import quantize_model

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"


@functools.lru_cache(maxsize=None)
def teacher():
    return tinyinfer.load(repo_root() / "models" / "teacher")


def settings():
    s = Settings.quick(rounds=1) if SMALL else Settings(num_requests=32, max_num_seqs=16)
    return s.fit(teacher().config.n_ctx)


# ---- exercise 1 -----------------------------------------------------------------------------------


def exercise_1():
    """Where a decode step's time goes, float and Q8_0, at batch 1 and 16."""
    s = replace(settings(), scaling_steps=3)
    gains = {}
    for name, model in (("float32", teacher()), ("q8_0", quantize_model(teacher(), "q8_0"))):
        fast = fast_model(model)
        parts = {B: profile_step(fast, s, B, 32, steps=3) for B in (1, 16)}
        for B, p in parts.items():
            print(f"{name:7s} batch {B:2d}: step {p['step_s'] * 1e3:6.2f} ms = products {p['products'] * 1e3:5.2f} + "
                  f"attention {p['attention'] * 1e3:5.2f} + norms/RoPE/SwiGLU {p['norms_rope_swiglu'] * 1e3:5.2f} + "
                  f"whole blocks in one compiled call {p['fused_blocks'] * 1e3:5.2f} + the rest {p['other'] * 1e3:5.2f} ms")
        grow = {k: parts[16][k] / max(parts[1][k], 1e-6)
                for k in ("products", "attention", "norms_rope_swiglu", "fused_blocks", "other")
                if max(parts[1][k], parts[16][k]) > 0}
        gains[name] = 16 * parts[1]["step_s"] / parts[16]["step_s"]
        most, least = max(grow, key=grow.get), min(grow, key=grow.get)
        print(f"        from batch 1 to 16: {most} grew the most ({grow[most]:.1f}x), {least} the least "
              f"({grow[least]:.1f}x); tokens/s {gains[name]:.1f}x")
    print(compare(gains["q8_0"], gains["float32"], what="Batching's gain with Q8_0 products", verb="is",
                  of="its gain with float32 ones", more="larger", less="smaller"))
    print("A part that grows 16x with 16 sequences is per-sequence work, which batching cannot share; a part "
          "that barely grows is fixed cost, which it shares. (Under the profiler every Python call costs more, "
          "and a busy machine adds noise: rerun on a quiet one before reading the digits.)")


# ---- exercise 2 -----------------------------------------------------------------------------------


class SkipAheadScheduler(Scheduler):
    """FCFS, except that when the head of the queue cannot be admitted, the first waiting request
    that can is moved to the front (it starts now, the head keeps its place behind it)."""

    def schedule(self):
        bm = self.block_manager
        if self.waiting and len(self.running) < self.max_num_seqs:
            head = self.waiting[0]
            n = min(head.num_tokens, self.max_num_batched_tokens)
            if not bm.can_admit(head, bm.find_cached_prefix(head), n):
                for i, seq in enumerate(self.waiting):
                    if bm.can_admit(seq, bm.find_cached_prefix(seq), min(seq.num_tokens, self.max_num_batched_tokens)):
                        del self.waiting[i]
                        self.waiting.appendleft(seq)
                        break
        return super().schedule()


def small_ones_ttft(scheduler_class) -> float:
    """Median TTFT of 6 short requests queued behind a long prompt that must wait for memory."""
    model = teacher()
    llm = LLM(model, block_size=16, num_blocks=24, max_num_seqs=8, enable_prefix_caching=False)
    llm.scheduler = scheduler_class(llm.block_manager, llm.scheduler.max_num_seqs, llm.scheduler.max_num_batched_tokens,
                                    llm.scheduler.stop_ids, llm.tokenizer)
    running = make_workload(1, model.config.vocab_size, (150, 150), (100, 100), seed=1)[0]
    huge = make_workload(1, model.config.vocab_size, (300, 300), (8, 8), seed=2)[0]
    small = make_workload(6, model.config.vocab_size, (16, 24), (8, 8), seed=3)
    llm.add_request(running[0], params_for(running[1]), request_id="running")
    llm.step()  # it holds 10 of the 24 blocks and grows
    llm.add_request(huge[0], params_for(huge[1]), request_id="huge")  # 20 blocks: waits for "running"
    for i, (p, n) in enumerate(small):
        llm.add_request(p, params_for(n), request_id=f"small{i}")
    ttft = {}
    while llm.has_unfinished_requests():
        for out in llm.step():
            if out.finished:
                ttft[out.request_id] = out.output.metrics["ttft"]
    return float(np.median([ttft[f"small{i}"] for i in range(6)])), ttft["huge"]


def exercise_2():
    """Head-of-line blocking, and a scheduler that lets small requests pass."""
    fcfs, fcfs_huge = small_ones_ttft(Scheduler)
    skip, skip_huge = small_ones_ttft(SkipAheadScheduler)
    print(f"median TTFT of the small requests: FCFS {fcfs * 1e3:.0f} ms, skip-ahead {skip * 1e3:.0f} ms; "
          f"the huge prompt's TTFT: {fcfs_huge * 1e3:.0f} ms vs {skip_huge * 1e3:.0f} ms")
    print(compare(fcfs, skip, what="Under FCFS the small requests' TTFT", verb="is", of="skip-ahead's",
                  more="longer", less="shorter"))
    print("The risk: if small requests keep arriving, the huge one may never find enough free memory at once "
          "(starvation). A fix: let requests pass only while the head has waited less than some time, or "
          "reserve blocks for the head as they free up.")


# ---- exercise 3 -----------------------------------------------------------------------------------


def exercise_3():
    """The token budget: TTFT p99 against TPOT p99 near capacity."""
    base = settings()
    work = offline_work(teacher(), base)
    _, seconds = run_continuous(teacher(), work, base)
    rate = 0.9 * len(work) / seconds  # requests/s: just under what the engine finishes with all queued at once
    print(f"capacity {len(work) / seconds:.1f} requests/s; arrivals at {rate:.1f} requests/s")
    for budget in (32, 128, 512):
        r = bench_online(teacher(), replace(base, max_num_batched_tokens=budget), rate=rate)
        print(f"max_num_batched_tokens {budget:3d}: TTFT p99 {r['ttft_p99_s'] * 1e3:7.1f} ms, TPOT p99 "
              f"{r['tpot_p99_s'] * 1e3:6.2f} ms, {r['throughput_tok_s']:.0f} tokens/s")
    print("A small budget chops prompts into many chunks: every step stays short (TPOT p99 down) but a new "
          "request waits more steps for its first token (TTFT up). A chat product cares about TPOT (the text "
          "should flow); a batch job about throughput, which a large budget gives.")


# ---- exercise 4 -----------------------------------------------------------------------------------


class FewestComputedVictim(Scheduler):
    """Preempt the running sequence with the fewest computed tokens (the cheapest to recompute)."""

    def choose_victim(self, candidates):
        return min(candidates[::-1], key=lambda seq: seq.num_computed_tokens)  # ties: the newest


def recomputed_tokens(scheduler_class):
    model = teacher()
    tight = make_workload(6, model.config.vocab_size, (8, 72), (40, 90), seed=9)  # unequal: victims differ
    fed, order = {}, {}
    for label, num_blocks in (("roomy", None), ("tight", 14)):
        llm = LLM(model, block_size=16, num_blocks=num_blocks, max_num_seqs=6, enable_prefix_caching=False)
        llm.scheduler = scheduler_class(llm.block_manager, 6, llm.scheduler.max_num_batched_tokens,
                                        llm.scheduler.stop_ids, llm.tokenizer)
        for i, (prompt, n) in enumerate(tight):
            llm.add_request(prompt, params_for(n), request_id=str(i))
        fed[label], order[label] = 0, []
        while llm.has_unfinished_requests():
            for out in llm.step():
                if out.finished:
                    order[label].append(int(out.request_id))
            fed[label] += llm.last_schedule.num_batched_tokens
    return fed["tight"] - fed["roomy"], fed["tight"], order["tight"]


def exercise_4():
    """The cost of preemption, and another choice of victim."""
    runs = {}
    for cls in (Scheduler, FewestComputedVictim):
        extra, total, order = recomputed_tokens(cls)
        runs[cls.__name__] = extra
        print(f"{cls.__name__:22s}: {extra} of {total} tokens fed were recomputed ({extra / total:.0%}); "
              f"requests finished in the order {order}")
    print(compare(runs["FewestComputedVictim"], runs["Scheduler"], what="Preempting the fewest-computed request "
                  "recomputes", verb="", of="the tokens that preempting the newest does", more="more", less="fewer"))
    print("Why it need not win: a victim with little done is cheap to recompute now, but it is often a request "
          "that was just resumed, and preempting it again and again repeats that cost; the newest, under FCFS, "
          "has waited least. And arrival order no longer decides who finishes first, as the orders above show.")


# ---- exercise 5 -----------------------------------------------------------------------------------


def exercise_5():
    """The raw bytes of a stream, and a client that leaves halfway."""
    model = teacher()
    server = make_server(model, model_id="teacher", port=0, quiet=True).start()
    try:
        body = json.dumps({"model": "teacher", "prompt": "def add(a, b):", "max_tokens": 6, "temperature": 0,
                           "stream": True}).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(head + body)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        headers, _, payload = raw.partition(b"\r\n\r\n")
        print("headers:", headers.decode().splitlines()[:4])
        print("first bytes of the body (chunk length in hex, CRLF, the event):", payload[:120])
        assert b"data: [DONE]" in payload and b"Transfer-Encoding: chunked" in headers
        # a client that leaves: read one event, close the socket
        body = json.dumps({"model": "teacher", "prompt": "class A:", "max_tokens": 400, "temperature": 0,
                           "stream": True, "ignore_eos": True}).encode()
        request = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        sock.sendall(request)
        first = b""
        while b"data: " not in first or b"\n" not in first.split(b"data: ", 1)[1]:
            first += sock.recv(4096)  # the headers may come in a read of their own
        request_id = json.loads(first.split(b"data: ", 1)[1].split(b"\n", 1)[0])["id"]
        sock.close()
        deadline = time.time() + 30
        while request_id not in server.engine_loop.aborted_ids and time.time() < deadline:
            time.sleep(0.05)
        print(f"request {request_id} aborted after the client left: {request_id in server.engine_loop.aborted_ids}")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=30) as response:
            print("/health:", json.load(response))
    finally:
        server.stop()


# ---- exercise 6 -----------------------------------------------------------------------------------


def exercise_6():
    """Seeded requests in a busy server give the same text."""
    model = teacher()
    server = make_server(model, model_id="teacher", port=0, quiet=True, max_num_seqs=8).start()
    try:
        def complete(body):
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/completions",
                                             data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)["choices"][0]["text"]

        seeded = {"model": "teacher", "prompt": "def parse(text):", "max_tokens": 24, "temperature": 0.9, "seed": 11}
        others = [{"model": "teacher", "prompt": p, "max_tokens": 30, "temperature": 1.0}
                  for p in ("import re\n", "class Node:", "x = [", "for i in")]
        results = [None] * 6
        threads = [threading.Thread(target=lambda i=i, b=b: results.__setitem__(i, complete(b)))
                   for i, b in enumerate([seeded, *others, seeded])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"the two seeded answers are identical: {results[0] == results[5]}: {results[0]!r}")
        print("Each request owns a generator seeded from its seed (Sequence.rng), so its draws depend only on its "
              "own logits. With one shared generator, the numbers a request draws would depend on how many draws "
              "the others made before it in each step: on timing, not on the seed.")
    finally:
        server.stop()


# ---- exercise 7 -----------------------------------------------------------------------------------


def shortest_changing_length(max_zeros: int = 16) -> int:
    """The shortest n for which appending 1..max_zeros zeros changes the float32 sum of arange(1, n+1) / 7."""
    for n in range(1, 1000):
        x = np.arange(1, n + 1, dtype=np.float32) / np.float32(7)
        if any(np.concatenate([x, np.zeros(z, np.float32)]).sum() != x.sum() for z in range(1, max_zeros + 1)):
            return n
    raise ValueError("no length below 1000 changes")


def exercise_7():
    """Where the bits change: pairwise summation and padding."""
    n = shortest_changing_length()
    x = np.arange(1, n + 1, dtype=np.float32) / np.float32(7)
    padded = [z for z in range(1, 17) if np.concatenate([x, np.zeros(z, np.float32)]).sum() != x.sum()]
    print(f"n = {n}: the sum {x.sum()!r} changes with {padded[0]} zeros appended, to "
          f"{np.concatenate([x, np.zeros(padded[0], np.float32)]).sum()!r}")
    print("NumPy adds a float32 row with 8 partial sums when it has at least 8 elements and adds the leftover "
          "elements one by one at the end. Zeros appended change how many elements fall into the 8 partial sums, "
          "so the same numbers are grouped differently and round differently. Padding a sequence's past to the "
          "batch's longest does exactly this to the softmax's denominator and to p @ v: the padded positions add "
          "zeros, and the grouping of the real terms moves.")


if __name__ == "__main__":
    run_exercises(globals())
