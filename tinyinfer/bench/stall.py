"""How long one client's long prompt pauses everyone else's stream.

Lesson: lessons/08-serving.py (chunked prefill)

    python -m tinyinfer.bench.stall --model smollm2 [--prompt-tokens 400] [--json PATH]

A server computes every running request in one step, so a step that prefills a long prompt is a
pause for each stream that is generating. The benchmark starts `tinyinfer serve` in its own
process, opens `streams` streaming completions that generate steadily, and after `settle`
seconds sends one long prompt. For each stream it records when every piece arrives and reports the
longest gap between two pieces before the long prompt came and after: the difference is the pause
the long prompt caused. It does this twice in the same run, alternating:

    budget   `serve` as shipped: while others generate, a step's prompt tokens are held to what the
             model computes in about --max-prefill-ms (scheduler.py)
    chunks   --max-prefill-ms 0: the prompt goes in whole --max-num-batched-tokens chunks (512)

and reports the long prompt's own time to first token for both (what the budget costs it).
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import threading
import time
from urllib.parse import urlparse

from . import machine, save_results
from .serving import start_server

__all__ = ["bench_stall", "format_stall", "stream_arrivals"]


def stream_arrivals(base_url: str, model_id: str, prompt: str, max_tokens: int, times: list, timeout: float = 600):
    """POST a streamed, greedy /v1/completions; append the arrival time of every event to `times`."""
    url = urlparse(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    body = {"model": model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {response.read()[:200]!r}")
    while True:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            times.append(time.perf_counter())
            if b"[DONE]" in line:
                break
    conn.close()


def _longest_gap(times, lo, hi):
    gaps = [b - a for a, b in itertools.pairwise(times) if lo <= b <= hi]
    return max(gaps) if gaps else float("nan")


def one_trial(base_url, model_id, long_prompt, streams: int, stream_tokens: int, settle: float,
              check: bool = True) -> dict:
    """`streams` generating clients, then the long prompt after `settle` s -> gaps and its TTFT (seconds)."""
    arrivals = [[] for _ in range(streams)]
    workers = [threading.Thread(target=stream_arrivals, args=(base_url, model_id, f"def f{i}(x):", stream_tokens,
                                                              arrivals[i])) for i in range(streams)]
    for w in workers:
        w.start()
    time.sleep(settle)
    sent = time.perf_counter()
    long_times = []
    stream_arrivals(base_url, model_id, long_prompt, 2, long_times)
    done = time.perf_counter()
    for w in workers:
        w.join()
    if check and any(times[-1] < done for times in arrivals):
        raise RuntimeError("a stream finished before the long prompt was answered: raise --stream-tokens")
    return {"gap_before_s": max(_longest_gap(t, sent - settle / 2, sent) for t in arrivals),
            "gap_during_s": max(_longest_gap(t, sent, done) for t in arrivals),
            "long_prompt_ttft_s": long_times[0] - sent if long_times else float("nan")}


def bench_stall(model: str = "smollm2", prompt_tokens: int = 400, streams: int = 3, stream_tokens: int = 400,
                trials: int = 2, settle: float = 3.0, max_num_batched_tokens: int = 512) -> dict:
    """Both settings on `model`, alternating, `trials` times each (module docstring); the worst trial's
    gaps in seconds, per setting."""
    import tinyinfer

    from ..model_names import resolve as resolve_model_path

    tokenizer = tinyinfer.load(resolve_model_path(model)).tokenizer
    with open(tinyinfer.__file__.replace("__init__.py", "model.py"), encoding="utf-8") as f:
        text = f.read()  # source code: a long prompt any install has
    ids = tokenizer.encode(text)[:prompt_tokens]
    long_prompt = tokenizer.decode(ids)
    max_model_len = prompt_tokens + stream_tokens + 64
    settings = {"budget": (), "chunks": ("--max-prefill-ms", "0")}
    servers = {}
    try:
        for name, extra in settings.items():
            servers[name] = start_server(model, max_num_seqs=8, max_model_len=max_model_len,
                                         extra_args=("--max-num-batched-tokens", str(max_num_batched_tokens), *extra))
        for name, (_, url, model_id) in servers.items():  # warm-up: JIT kernels, first touch of the weights
            one_trial(url, model_id, long_prompt[:200], streams, 16, 1.0, check=False)
        results = {name: [] for name in settings}
        for _ in range(trials):
            for name, (_, url, model_id) in servers.items():
                results[name].append(one_trial(url, model_id, long_prompt, streams, stream_tokens, settle))
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    summary = {}
    for name, rows in results.items():
        summary[name] = {key: max(r[key] for r in rows) for key in rows[0]}  # the worst trial
        summary[name]["caused_s"] = summary[name]["gap_during_s"] - summary[name]["gap_before_s"]
    return {"model": model, "machine": machine(), "prompt_tokens": len(ids), "streams": streams,
            "trials": trials, "max_num_batched_tokens": max_num_batched_tokens, "settings": summary}


def format_stall(r: dict) -> str:
    lines = [(f"tinyinfer serve --model {r['model']}: {r['streams']} streams generating, then one {r['prompt_tokens']}-"
              f"token prompt; the worst of {r['trials']} trials; load average {r['machine']['load_average']}")]
    for name, s in r["settings"].items():
        what = ("--max-prefill-ms 50 (default)" if name == "budget"
                else f"--max-prefill-ms 0 (chunks of {r['max_num_batched_tokens']})")
        lines.append(f"  {what:38}: longest gap before {s['gap_before_s'] * 1e3:5.0f} ms, after the prompt "
                     f"{s['gap_during_s'] * 1e3:6.0f} ms (+{s['caused_s'] * 1e3:.0f} ms); the long prompt's "
                     f"TTFT {s['long_prompt_ttft_s']:.2f} s")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="model name, folder or .gguf file (default smollm2)")
    ap.add_argument("--prompt-tokens", type=int, default=400, help="tokens of the long prompt (default 400)")
    ap.add_argument("--streams", type=int, default=3, help="streams generating meanwhile (default 3)")
    ap.add_argument("--stream-tokens", type=int, default=400, help="tokens each stream asks for (default 400)")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    r = bench_stall(args.model, args.prompt_tokens, args.streams, args.stream_tokens, args.trials)
    print(format_stall(r))
    save_results(r, args.json)
    return r


if __name__ == "__main__":
    main()
