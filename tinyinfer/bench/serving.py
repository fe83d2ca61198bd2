"""Serving, measured from the outside: `tinyinfer serve` and concurrent streaming clients of the official
`openai` package.

Lesson: lessons/08-serving.py (section 7)

    python -m tinyinfer.bench.serving --model smollm2 --clients 32 --requests 64 [--json PATH]

What a user of the server sees, the way vLLM's serving benchmark measures it: the server runs in
its own process (`tinyinfer serve --port 0`), and `clients` threads each send chat requests one
after another (a closed loop: a client sends its next request when its answer is complete), all
streamed, greedy, each with a max_tokens drawn from the heavy-tailed workload
(tinyinfer/bench/workloads.py) and a user message of held-out text of a drawn length. Per request:

    TTFT  time from sending the request to its first streamed piece of text
    TPOT  (end-to-end - TTFT) / (output tokens - 1), output tokens from the final usage chunk

reported as median and p99, with throughput (output tokens / wall time of the whole run). Then
the checks a deployment needs: every request answered (HTTP 200, a finish_reason, its usage), and
nothing leaked: the server's GET /health reports every KV-cache block free and no request running
or waiting once the clients are done.

Needs the `openai` package (pip install openai); the test suite runs it at small scale on a
shipped model (tests/test_bench_serving.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import machine, save_results
from .timing import pct

__all__ = ["start_server", "chat_jobs", "stream_chat", "run_clients", "bench_serving", "format_serving"]


def start_server(model: str, max_num_seqs: int, max_model_len: int | None = None, extra_args=(),
                 timeout: float = 300.0):
    """`python -m tinyinfer serve --model ... --port 0` in a subprocess -> (process, base URL, model id)."""
    cmd = [sys.executable, "-m", "tinyinfer", "serve", "--model", str(model), "--port", "0",
           "--max-num-seqs", str(max_num_seqs), *(["--max-model-len", str(max_model_len)] if max_model_len else []),
           *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"as '([^']+)' on (http://[^\s]+/v1)", line)
        if found:
            # keep draining the server's output so it never blocks on a full pipe
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, found.group(2), found.group(1)
    proc.kill()
    raise RuntimeError(f"`{' '.join(cmd)}` did not start serving within {timeout:.0f} s; it said:\n{''.join(lines)}")


def health(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=30) as response:
        return json.load(response)


def chat_jobs(tokenizer, n: int, seed: int = 0, scale: float = 0.25, max_tokens: int = 256,
              max_prompt: int | None = None) -> list[tuple[list, int]]:
    """n chats [(messages, max_tokens)]: a held-out passage of a ShareGPT-shaped length to summarize."""
    from .workloads import corpus_prompts, sample_lengths

    prompt_lens, output_lens = sample_lengths(n, seed, scale, max_tokens, max_prompt=max_prompt)
    jobs = []
    for ids, out in zip(corpus_prompts(tokenizer, prompt_lens, seed + 1), output_lens):
        text = tokenizer.decode(ids)
        jobs.append(([{"role": "user", "content": f"Summarize this text:\n\n{text}"}], int(out)))
    return jobs


def stream_chat(client, model_id: str, messages: list, max_tokens: int) -> dict:
    """One streamed, greedy chat completion -> {ttft_s, e2e_s, output_tokens, finish_reason, text}."""
    t0 = time.perf_counter()
    first = None
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                if first is None:
                    first = time.perf_counter()
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    end = time.perf_counter()
    n = usage.completion_tokens if usage is not None else None
    ttft = (first if first is not None else end) - t0
    return {"ttft_s": ttft, "e2e_s": end - t0, "output_tokens": n, "finish_reason": finish,
            "tpot_s": (end - t0 - ttft) / (n - 1) if n and n > 1 else None, "text": "".join(pieces)}


def run_clients(base_url: str, model_id: str, jobs: list, clients: int, progress: bool = False):
    """`clients` threads, each sending its share of jobs one after another -> (records, seconds)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=1800)
    queues = [jobs[i::clients] for i in range(clients)]
    records = [None] * len(jobs)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc=f"{clients} streaming clients", unit="req", leave=False)

    def client_loop(c):
        for j, (messages, max_tokens) in enumerate(queues[c]):
            index = c + j * clients
            try:
                records[index] = stream_chat(client, model_id, messages, max_tokens)
            except Exception as err:  # noqa: BLE001 - a failed request is a result, reported as such
                records[index] = {"error": f"{type(err).__name__}: {err}"}
            if bar is not None:
                bar.update(1)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client_loop, range(clients)))
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return records, seconds


def bench_serving(model: str = "smollm2", clients: int = 32, requests: int = 64, max_tokens: int = 256,
                  scale: float = 0.25, max_num_seqs: int | None = None, max_model_len: int = 1024, seed: int = 0,
                  progress: bool = False) -> dict:
    """Start the server, run the clients, check the answers and the block pool -> the results dict."""
    from .. import load
    from ..model_names import resolve

    tokenizer = load(resolve(model)).tokenizer
    jobs = chat_jobs(tokenizer, requests, seed, scale, max_tokens, max_prompt=max_model_len // 4)
    proc, base_url, model_id = start_server(model, max_num_seqs or clients, max_model_len)
    try:
        before = health(base_url)
        run_clients(base_url, model_id, jobs[:1], 1)  # warm-up: first-call costs out of the way
        records, seconds = run_clients(base_url, model_id, jobs, clients, progress)
        time.sleep(0.2)  # the engine thread frees a finished request's blocks right after its last step
        after = health(base_url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = [r for r in records if "error" not in r and r["finish_reason"] in ("stop", "length")
          and r["output_tokens"] is not None]
    n_tokens = sum(r["output_tokens"] for r in ok)
    blocks = after["kv_cache_blocks"]
    return {"machine": machine(), "model": model, "model_id": model_id, "clients": clients, "requests": len(jobs),
            "answered": len(ok), "errors": [r["error"] for r in records if "error" in r][:5],
            "finish_reasons": {k: sum(r.get("finish_reason") == k for r in records) for k in ("stop", "length")},
            "output_tokens": n_tokens, "seconds": seconds,
            "throughput_tok_s": n_tokens / seconds, "throughput_req_s": len(ok) / seconds,
            "ttft_median_s": pct([r["ttft_s"] for r in ok], 50), "ttft_p99_s": pct([r["ttft_s"] for r in ok], 99),
            "tpot_median_s": pct([r["tpot_s"] for r in ok], 50), "tpot_p99_s": pct([r["tpot_s"] for r in ok], 99),
            "e2e_median_s": pct([r["e2e_s"] for r in ok], 50), "e2e_p99_s": pct([r["e2e_s"] for r in ok], 99),
            "max_tokens_mean": float(np.mean([m for _, m in jobs])),
            "health_before": before, "health_after": after,
            "leaked_blocks": blocks["in_use"], "all_answered": len(ok) == len(jobs),
            "nothing_leaked": blocks["free"] == blocks["total"] and after["requests"] == {"running": 0, "waiting": 0}}


def format_serving(r: dict) -> str:
    return "\n".join([
        f"tinyinfer serve --model {r['model']}: {r['clients']} streaming chat clients (openai), "
        f"{r['requests']} requests, "
        f"load average {r['machine']['load_average']}",
        f"  answered {r['answered']}/{r['requests']} (stop {r['finish_reasons']['stop']}, length "
        f"{r['finish_reasons']['length']}){'; errors: ' + '; '.join(r['errors']) if r['errors'] else ''}",
        f"  {r['output_tokens']} output tokens in {r['seconds']:.1f} s: {r['throughput_tok_s']:.1f} tokens/s, "
        f"{r['throughput_req_s']:.2f} requests/s",
        f"  TTFT median {r['ttft_median_s'] * 1e3:.0f} ms, p99 {r['ttft_p99_s'] * 1e3:.0f} ms; TPOT median "
        f"{r['tpot_median_s'] * 1e3:.1f} ms, p99 {r['tpot_p99_s'] * 1e3:.1f} ms",
        f"  afterwards: {r['health_after']['kv_cache_blocks']['free']} of "
        f"{r['health_after']['kv_cache_blocks']['total']} "
        f"KV-cache blocks free, requests {r['health_after']['requests']}: "
        f"{'nothing leaked' if r['nothing_leaked'] else 'LEAKED'}"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="model name, folder or .gguf file (default smollm2)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default 32)")
    ap.add_argument("--requests", type=int, default=64, help="requests in all (default 64)")
    ap.add_argument("--max-tokens", type=int, default=256, help="cap of each request's max_tokens (default 256)")
    ap.add_argument("--scale", type=float, default=0.25, help="ShareGPT's mean lengths times this (default 0.25)")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    r = bench_serving(args.model, args.clients, args.requests, args.max_tokens, args.scale,
                      max_model_len=args.max_model_len, seed=args.seed, progress=True)
    print(format_serving(r))
    save_results(r, args.json)
    return r


if __name__ == "__main__":
    main()
