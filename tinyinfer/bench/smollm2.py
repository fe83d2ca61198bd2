"""A real model, measured: SmolLM2-135M-Instruct in tinyinfer beside llama.cpp on the same GGUF file.

Lesson: lessons/11-real-model.py

    tinyinfer bench smollm2 [--threads 2] [--tokens 64] [--rounds 5] [--windows 8] [--json out.json]
    (python -m tinyinfer.bench.smollm2 ...)

Everything in one run, on one machine:

  load      seconds of tinyinfer.load("smollm2") and the resident memory it adds, in a fresh
            process (nothing cached), against the file's size
  quality   held-out perplexity and top-1 next-token accuracy on the embedded corpus. The corpus is
            Python's standard library, which is very likely in SmolLM2's training data: these
            figures compare formats and methods with each other, they do not claim generalization
  decode    batch-1 tokens/s, tinyinfer (the file's Q4_1 blocks as shipped) against llama.cpp
            (same file, same number of threads), interleaved round by round, median ratio
  prefill   tokens/s of a 256-token prompt, the same way
  products  the time of one token's weight products called one at a time from Python (fixed
            inputs), beside the decode's, which runs each block as one compiled call
            (tinyinfer/fused_decode.py): their difference is what the calls cost
  formats   tinyinfer's own decode of the same model in float32 (the blocks expanded; NumPy's BLAS on
            every thread, its best setting), Q8_0, Q4_0 and Q4_1, with the time of one token split into streaming the weights (their bytes / the
            machine's measured read bandwidth, tinyinfer/bench/roofline.py) and everything else
            (norms, attention, RoPE, Python, the kernels' own overheads)

llama.cpp is optional (llama-cpp-python; tinyinfer/bench/llamacpp.py); without it the llama.cpp
columns are left out and say why. transformers likewise, when it is installed with torch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from . import machine, save_results

PROMPT = ("<|im_start|>user\nWrite a Python function that returns the n-th Fibonacci number, and explain "
          "how it works.<|im_end|>\n<|im_start|>assistant\n")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024


def load_cost() -> dict:
    """tinyinfer.load("smollm2") in a fresh process: seconds, and resident MB it adds (after import)."""
    code = ("import time, tinyinfer, json\n"
            "from tinyinfer.bench.smollm2 import _rss_mb\n"
            "from tinyinfer.model_names import smollm2_path\n"
            "import os\n"
            "r0 = _rss_mb(); t0 = time.perf_counter(); m = tinyinfer.load('smollm2'); dt = time.perf_counter() - t0\n"
            "print(json.dumps({'seconds': dt, 'rss_added_mb': _rss_mb() - r0,"
            " 'file_mb': os.path.getsize(smollm2_path()) / 2**20}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rss_over_file"] = result["rss_added_mb"] / result["file_mb"]
    return result


def quality(model, windows: int = 8, seq_len: int = 256) -> dict:
    """Held-out perplexity and top-1 on the corpus's val split (SmolLM2's tokens)."""
    from ..corpus import token_stream
    from ..evaluate import eval_windows
    from ..inference import InferenceModel
    from ..kv_cache import ContiguousKVCache

    fast = InferenceModel(model)
    data = eval_windows(token_stream(model.tokenizer, "val", progress=False), seq_len, windows)  # (W, T+1)
    nll, correct, count = 0.0, 0, 0
    for row in data:
        ids, targets = row[:-1], row[1:]
        cache = ContiguousKVCache(model.config, 1, np.float32, max_len=len(ids))
        logits = fast.forward(ids[None], np.arange(len(ids)), cache)[0].astype(np.float64)  # (T, V)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(targets)), targets].sum()
        correct += int((logits.argmax(-1) == targets).sum())
        count += len(targets)
    return {"perplexity": float(np.exp(nll / count)), "top1": correct / count, "positions": count}


# ---- timing one engine ------------------------------------------------------------------------


def tinyinfer_decode_seconds(fast, ids, n: int) -> float:
    """Seconds of n greedy decode steps after a prefill of ids (the prefill not counted)."""
    from ..kv_cache import ContiguousKVCache

    cache = ContiguousKVCache(fast.config, 1, np.float32, max_len=len(ids) + n + 1)
    logits = fast.forward(np.asarray(ids)[None], np.arange(len(ids)), cache, logits_rows=[-1])[0, -1]
    t0 = time.perf_counter()
    for step in range(n):
        token = int(logits.argmax())
        logits = fast.forward(np.array([[token]]), np.array([len(ids) + step]), cache)[0, -1]
    return time.perf_counter() - t0


def products_seconds(fast, repeats: int = 20) -> float:
    """Seconds of one token's weight products (every layer's fused qkv, o, gate_up and down, and the
    head) called one at a time from Python (QTensor.matmul) on fixed inputs, the median of
    `repeats`. A decode step of a quantized model runs the same kernels inside one compiled call per
    block (tinyinfer/fused_decode.py), so a step can take less than this: the difference is what
    121 calls from Python cost (each rounds x, checks its arguments, allocates its output)."""
    from ..model import matmul

    weights = [w for layer in fast.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)] + [fast.head]
    rng = np.random.default_rng(0)
    inputs = {K: rng.standard_normal((1, K)).astype(np.float32) for K in {w.shape[1] for w in weights}}
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for w in weights:
            matmul(w, inputs[w.shape[1]])
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def tinyinfer_prefill_seconds(fast, ids) -> float:
    from ..kv_cache import ContiguousKVCache

    cache = ContiguousKVCache(fast.config, 1, np.float32, max_len=len(ids))
    t0 = time.perf_counter()
    fast.forward(np.asarray(ids)[None], np.arange(len(ids)), cache, logits_rows=[-1])
    return time.perf_counter() - t0


def _rounds(fns: dict, rounds: int) -> dict:
    """Run every fn once per round, the order rotated each round (round 0 a warm-up); seconds lists."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(rounds + 1):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            seconds = fns[name]()
            if r > 0:
                times[name].append(seconds)
    return times


def _summary(seconds: list, per: int) -> dict:
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return {"tokens_per_s": per / med, "iqr_tokens_per_s": [per / q3, per / q1], "median_s": med}


def _ratio(a: list, b: list) -> dict:
    """b's time over a's, per round: > 1 means a is faster."""
    ratios = [tb / ta for ta, tb in zip(a, b)]
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(med), "iqr": [float(q1), float(q3)], "rounds": len(ratios)}


# ---- transformers, where it is installed -------------------------------------------------------


def transformers_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def transformers_model(threads: int):
    """Hugging Face transformers' LlamaForCausalLM from the same GGUF file, in float32 (transformers
    expands every block to float32 when it reads a GGUF: that is how it runs such a file)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..model_names import smollm2_path

    torch.set_num_threads(threads)
    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    return model.eval()


def transformers_decode_seconds(hf, ids, n: int) -> float:
    """n greedy steps with transformers' KV cache (past_key_values), the prefill not counted: the loop
    model.generate runs, without its sampling machinery."""
    import torch

    with torch.inference_mode():
        out = hf(torch.tensor([list(ids)]), use_cache=True)
        past, token = out.past_key_values, out.logits[0, -1].argmax()
        t0 = time.perf_counter()
        for _ in range(n):
            out = hf(token.view(1, 1), past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[0, -1].argmax()
        return time.perf_counter() - t0


def transformers_prefill_seconds(hf, ids) -> float:
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        hf(torch.tensor([list(ids)]), use_cache=True)
        return time.perf_counter() - t0


# ---- the formats table ------------------------------------------------------------------------


def format_variants(model) -> dict:
    """The same network in float32 (the file's blocks expanded), Q8_0, Q4_0 and Q4_1 (as shipped).

    Q8_0 and Q4_0 re-quantize the expanded float32 weights (the file's Q4_1 values are the reference);
    the embedding and tied head stay the file's Q8_0 blocks in every quantized variant, as llama.cpp
    keeps token_embd.
    """
    from ..export import dense_model
    from ..quant.model import quantize_model

    dense = dense_model(model)
    variants = {"fp32": dense}
    for fmt in ("q8_0", "q4_0"):
        q = quantize_model(dense, fmt)
        q.params.update({k: model.params[k] for k in model.params if "embed_tokens" in k})
        variants[fmt] = q
    variants["q4_1"] = model
    return variants


def weight_bytes_per_token(model) -> int:
    """Bytes a decode step must read: every linear weight and the head (the embedding lookup reads
    one row, which is nothing next to them)."""
    from ..model import head_name
    from ..quant.model import linear_weight_names

    names = linear_weight_names(model.config) + [head_name(model.config)]
    return int(sum(model.params[n].nbytes for n in names))


def run(threads: int = 2, tokens: int = 64, rounds: int = 5, windows: int = 8, quick: bool = False,
        progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from .. import load
    from .. import threads as thread_policy
    from ..inference import InferenceModel
    from ..model_names import smollm2_path
    from . import llamacpp, roofline

    thread_policy.set_kernel_threads(threads)
    results = {"machine": machine(), "threads": threads, "tokens": tokens, "rounds": rounds}
    steps = tqdm(total=5, desc="smollm2: load", disable=not progress)
    results["load"] = load_cost()
    model = load("smollm2")
    steps.update(1)
    steps.set_description("smollm2: quality")
    results["quality"] = quality(model, windows=2 if quick else windows)
    steps.update(1)

    ids = model.tokenizer.encode(PROMPT, special=True)  # a chat prompt, ~40 tokens
    prefill_ids = ids * (256 // len(ids) + 1)
    prefill_ids = prefill_ids[:256]
    fast = InferenceModel(model)
    llm = None
    if llamacpp.available():
        llm = llamacpp.open_llama(smollm2_path(), threads=threads, n_ctx=512, logits_all=False, n_batch=256)
        results["llama_cpp"] = llamacpp.version()
    else:
        results["llama_cpp"] = "not installed (pip install llama-cpp-python)"

    steps.set_description("smollm2: decode and prefill vs llama.cpp")
    fns = {"tinyinfer": lambda: tinyinfer_decode_seconds(fast, ids, tokens)}
    pre = {"tinyinfer": lambda: tinyinfer_prefill_seconds(fast, prefill_ids)}
    if llm is not None:
        fns["llama.cpp"] = lambda: llamacpp.llama_decode_seconds(llm, ids, tokens)
        pre["llama.cpp"] = lambda: llamacpp.llama_prefill_seconds(llm, prefill_ids)
    hf = None
    if transformers_available() and not quick:
        hf = transformers_model(threads)
        fns["transformers"] = lambda: transformers_decode_seconds(hf, ids, tokens)
        pre["transformers"] = lambda: transformers_prefill_seconds(hf, prefill_ids)
        import transformers

        results["transformers"] = transformers.__version__
    else:
        results["transformers"] = "not installed (pip install torch transformers accelerate gguf)" \
            if not transformers_available() else "skipped (--quick)"
    decode = _rounds(fns, rounds)
    prefill = _rounds(pre, rounds)
    results["decode"] = {name: _summary(t, tokens) for name, t in decode.items()}
    results["prefill"] = {name: _summary(t, len(prefill_ids)) for name, t in prefill.items()}
    for other, key in (("llama.cpp", "ratio_vs_llama_cpp"), ("transformers", "ratio_vs_transformers")):
        if other in decode:
            results["decode"][key] = _ratio(decode["tinyinfer"], decode[other])
            results["prefill"][key] = _ratio(prefill["tinyinfer"], prefill[other])
    results["products_ms_per_token"] = products_seconds(fast) * 1e3  # beside the decode's ms per token
    llm = hf = None  # let the other engines go before the formats table
    steps.update(1)

    steps.set_description("smollm2: formats")
    roof = roofline.read_bandwidth(mb=256 if quick else 512, all_threads=threads > 1)
    results["read_bandwidth_gb_s"] = roof
    variants = format_variants(model)
    fasts = {name: InferenceModel(m) for name, m in variants.items()}
    def timed(name, f):
        if name == "fp32":  # the float32 baseline at its best: BLAS on every thread (tinyinfer/threads.py)
            def run_fp32():
                with thread_policy.blas_threads(threads):
                    return tinyinfer_decode_seconds(f, ids, tokens)
            return run_fp32
        return lambda: tinyinfer_decode_seconds(f, ids, tokens)

    times = _rounds({name: timed(name, f) for name, f in fasts.items()}, max(2, rounds // 2) if quick else rounds)
    table = {}
    for name, m in variants.items():
        per_token = statistics.median(times[name]) / tokens
        nbytes = weight_bytes_per_token(m)
        streaming = nbytes / (roof * 1e9)
        table[name] = {"tokens_per_s": 1 / per_token, "ms_per_token": per_token * 1e3,
                       "weight_mb_per_token": nbytes / 1e6, "streaming_ms": streaming * 1e3,
                       "everything_else_ms": (per_token - streaming) * 1e3,
                       "ratio_vs_fp32": _ratio(times[name], times["fp32"])}
    results["formats"] = table
    steps.update(2)
    steps.close()
    return results


def format_results(r: dict) -> str:
    lines = [f"SmolLM2-135M-Instruct, {r['threads']} threads, decode of {r['tokens']} tokens, {r['rounds']} rounds "
             f"(load average {r['machine']['load_average']})"]
    ld = r["load"]
    lines.append(f"load: {ld['seconds']:.2f} s; resident memory added {ld['rss_added_mb']:.0f} MB = "
                 f"{ld['rss_over_file']:.2f}x the {ld['file_mb']:.0f} MB file")
    q = r["quality"]
    lines.append(f"held-out (the corpus is very likely in SmolLM2's training data): perplexity {q['perplexity']:.2f}, "
                 f"top-1 {q['top1']:.2%} over {q['positions']:,} positions")
    for what in ("decode", "prefill"):
        d = r[what]
        row = ", ".join(f"{name} {v['tokens_per_s']:.0f} tokens/s" for name, v in d.items()
                        if not name.startswith("ratio_"))
        for key, other in (("ratio_vs_llama_cpp", "llama.cpp"), ("ratio_vs_transformers", "transformers")):
            if key in d:
                ratio = d[key]
                row += (f"; tinyinfer / {other} = {ratio['median']:.2f}x "
                        f"(IQR {ratio['iqr'][0]:.2f}-{ratio['iqr'][1]:.2f})")
        lines.append(f"{what}: {row}")
    if "products_ms_per_token" in r:
        token_ms = 1e3 / r["decode"]["tinyinfer"]["tokens_per_s"]
        lines.append(f"tinyinfer's token takes {token_ms:.1f} ms; its weight products called one at a time from "
                     f"Python take {r['products_ms_per_token']:.1f} ms (fixed inputs)")
    if "ratio_vs_llama_cpp" not in r["decode"]:
        lines.append(f"llama.cpp: {r['llama_cpp']}")
    if "ratio_vs_transformers" not in r["decode"]:
        lines.append(f"transformers: {r['transformers']}")
    lines.append(f"read bandwidth (all threads): {r['read_bandwidth_gb_s']:.1f} GB/s")
    lines.append(f"{'format':8} {'tokens/s':>9} {'x fp32':>7} {'ms/token':>9} {'MB/token':>9} {'streaming':>10} "
                 f"{'everything else':>16}")
    for name, v in r["formats"].items():
        lines.append(f"{name:8} {v['tokens_per_s']:9.1f} {v['ratio_vs_fp32']['median']:7.2f} {v['ms_per_token']:9.2f} "
                     f"{v['weight_mb_per_token']:9.1f} {v['streaming_ms']:8.2f}ms {v['everything_else_ms']:14.2f}ms")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both engines")
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--windows", type=int, default=8, help="held-out windows of 256 tokens for perplexity")
    p.add_argument("--quick", action="store_true", help="fewer windows and rounds")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    r = run(args.threads, args.tokens, args.rounds, args.windows, args.quick)
    print(format_results(r))
    save_results(r, args.json)
    return r


if __name__ == "__main__":
    main()
