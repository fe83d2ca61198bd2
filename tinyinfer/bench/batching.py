"""Where batching stops paying: decode tokens/s against the batch size, and llama.cpp beside it.

Lesson: lessons/08-serving.py (section 3)

A decode step of B sequences reads every weight once and does B rows of arithmetic with it:

    step time(B) ~ max(weight bytes / read bandwidth, fixed costs) + B * (flops per token / compute rate)

For small B the first term rules (and on a GPU it rules up to a large B: that is why batching is
nearly free there). Once B rows of arithmetic take longer than the step's fixed part, every
extra sequence adds its own cost and tokens/s flattens at compute rate / flops per token. This
module measures step times of pure decode steps (every sequence feeds one token; the same engine
path a server runs) for several B, fits step = fixed + B * per_token over the large batches, and
reports where the two parts are equal: the batch size at which the step turns compute-bound.

Beside it, the machine's own ceilings (tinyinfer/bench/roofline.py: read bandwidth, float32 sgemm
and int8 dot-product rates) and the time to stream the weights once, so "compute-bound" is a
measured statement, and a profile of one step (where the time goes: the quantized products,
attention, everything else).

bench_llamacpp runs llama.cpp (llama-cpp-python) on the same GGUF file at batch 1, its best of
1 and 2 threads, interleaved round by round with tinyinfer's decode steps at batch 1 and at 32:
the aggregate of 32 concurrent requests against what one llama.cpp stream delivers.
"""
from __future__ import annotations

import cProfile
import pstats
import statistics
import time

import numpy as np

from .timing import alternate, ratio_iqr, rounds_progress

__all__ = ["decode_step_seconds", "bench_decode_scaling", "profile_step", "bench_llamacpp", "format_scaling",
           "format_llamacpp", "plot_scaling", "weight_bytes", "flops_per_token"]


def weight_bytes(model) -> int:
    """Bytes of the weights a decode step reads: every linear layer and the head (their storage)."""
    from ..model import head_name, layer_names

    cfg = model.config
    roles = ("q", "k", "v", "o", "gate", "up", "down") if cfg.family == "llama" else ("qkv", "o", "up", "down")
    names = [layer_names(cfg, i)[role] + ".weight" for i in range(cfg.n_layer) for role in roles]
    names.append(head_name(cfg))
    total = 0
    for name in names:
        w = model.params[name]
        total += w.nbytes if isinstance(w, np.ndarray) else len(np.asarray(w.to_bytes()).reshape(-1))
    return total


def flops_per_token(model, context: int = 0) -> float:
    """Multiply-adds x 2 of one token through the model: its linear layers and head, plus
    attention over `context` past positions (q.k and p.v)."""
    cfg = model.config
    C, H, G, D, F = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.ffn_hidden
    per_layer = C * (H * D + 2 * G * D) + H * D * C + 3 * C * F  # qkv, o, gate + up + down
    attention = 2 * H * D * context
    return 2.0 * (cfg.n_layer * (per_layer + attention) + C * cfg.vocab_size)


def _engine_with_batch(fast, s, B: int, context: int, steps: int):
    """An engine holding B sequences of `context` held-out tokens each, prefilled and decoding."""
    from .engine import make_engine, params_for
    from .workloads import corpus_prompts

    m = fast.model
    llm = make_engine(fast, s, max_num_seqs=B, max_num_batched_tokens=max(s.max_num_batched_tokens, B * context))
    for prompt in corpus_prompts(m.tokenizer, [context] * B, s.seed + B, m.config.vocab_size):
        llm.add_request(prompt, params_for(steps + 4))
    llm.step()  # the prefill of all B
    llm.step()  # two untimed decode steps
    llm.step()
    return llm


def decode_step_seconds(fast, s, B: int, context: int, steps: int) -> list:
    """Seconds of each of `steps` engine steps that decode exactly B sequences (one token each)."""
    llm = _engine_with_batch(fast, s, B, context, steps)
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        llm.step()
        seconds.append(time.perf_counter() - t0)
        if llm.last_schedule.num_new_tokens != [1] * B:
            raise RuntimeError(f"a timed step was not a pure decode step of {B} sequences")
    return seconds


def profile_step(fast, s, B: int, context: int, steps: int = 3) -> dict:
    """Where the time of a decode step of B sequences goes (cProfile over `steps` steps): seconds a
    step in the quantized / dense products, attention, norms and activations, the rest."""
    llm = _engine_with_batch(fast, s, B, context, steps)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(steps):
        llm.step()
    profiler.disable()
    wall = (time.perf_counter() - t0) / steps
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, ncalls, tottime, cumtime, callers)}
    parts = {"products": 0.0, "attention": 0.0, "norms_rope_swiglu": 0.0}
    for (file, _, name), (_, _, _, cumtime, _) in stats.items():
        if name == "matmul" and ("quant" in file or "model.py" in file or "csr" in file):
            parts["products"] += cumtime
        elif name == "attention_rows" or name == "attend_numpy":
            parts["attention"] += cumtime
        elif name in ("rmsnorm_forward", "rope_forward", "swiglu_forward"):
            parts["norms_rope_swiglu"] += cumtime
    out = {k: v / steps for k, v in parts.items()}
    out["step_s"] = wall
    out["other"] = max(0.0, wall - sum(out[k] for k in parts))
    out["batch"] = B
    return out


def bench_decode_scaling(fast, s, progress: bool = False) -> dict:
    """Decode tokens/s for each batch size in s.batch_sizes, their fit and the crossover batch."""
    from . import roofline

    m = fast.model
    sizes = list(s.batch_sizes)
    context = s.scaling_context
    decode_step_seconds(fast, s, sizes[0], 8, 2)  # warm-up
    fns = {B: (lambda B=B: decode_step_seconds(fast, s, B, context, s.scaling_steps)) for B in sizes}
    times = {B: [] for B in sizes}
    for r in rounds_progress(s.scaling_rounds, "decode steps by batch size", progress):
        k = r % len(sizes)
        for B in sizes[k:] + sizes[:k]:
            times[B] += fns[B]()
    step = {B: statistics.median(v) for B, v in times.items()}  # seconds
    flops = flops_per_token(m, context)
    rows = [{"batch": B, "step_ms": step[B] * 1e3, "tokens_per_s": B / step[B],
             "step_iqr_ms": [float(np.percentile(times[B], 25)) * 1e3, float(np.percentile(times[B], 75)) * 1e3],
             "gflops": B * flops / step[B] / 1e9} for B in sizes]
    # step = fixed + B * per_token, fitted on the largest half of the batch sizes (the compute-bound end)
    big = sizes[len(sizes) // 2:]
    per_token, fixed = np.polyfit(big, [step[B] for B in big], 1) if len(big) > 1 else (step[big[0]] / big[0], 0.0)
    crossover = step[sizes[0]] / per_token if per_token > 0 else float("inf")
    wbytes = weight_bytes(m)
    ceilings = roofline.roofline(mb=256, quick=s.scaling_rounds <= 1)
    stream_s = wbytes / (ceilings["read_gbs_all_threads"] * 1e9)
    profile = profile_step(fast, s, max(sizes), context) if m.num_params() > 1_000_000 else None
    return {"context": context, "rows": rows, "rounds": s.scaling_rounds, "steps": s.scaling_steps,
            "weight_bytes": wbytes, "flops_per_token": flops,
            "fit": {"fixed_ms": fixed * 1e3, "per_token_ms": per_token * 1e3, "fitted_on": big},
            "compute_bound_tokens_per_s": 1.0 / per_token if per_token > 0 else None,
            "crossover_batch": crossover,
            "stream_weights_ms": stream_s * 1e3,
            "memory_bound_tokens_per_s_at_1": 1.0 / stream_s,
            "ceilings": ceilings, "profile": profile,
            "seconds": {str(B): v for B, v in times.items()}}


def bench_llamacpp(fast, s, model_path=None, progress: bool = False) -> dict:
    """llama.cpp's batch-1 decode tokens/s on the same file (its best thread count) against
    tinyinfer's decode at batch 1 and at 32 concurrent sequences, interleaved round by round."""
    from . import llamacpp

    if model_path is None or not str(model_path).endswith(".gguf"):
        return {"skipped": "the model is not a GGUF file, so llama.cpp has nothing to run"}
    if not llamacpp.available():
        return {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    from .workloads import corpus_prompts

    m = fast.model
    context = s.scaling_context
    ids = corpus_prompts(m.tokenizer, [context], s.seed + 7, m.config.vocab_size)[0]
    n = s.llama_tokens
    B = max(b for b in s.batch_sizes if b <= 32)
    llms = {t: llamacpp.open_llama(model_path, threads=t, n_ctx=context + n + 8, logits_all=False)
            for t in s.llama_threads}
    fns = {f"llama.cpp {t} thread{'s' * (t > 1)}": (lambda llm=llm: llamacpp.llama_decode_seconds(llm, ids, n))
           for t, llm in llms.items()}
    fns["tinyinfer batch 1"] = lambda: sum(decode_step_seconds(fast, s, 1, context, n))
    fns[f"tinyinfer batch {B}"] = lambda: sum(decode_step_seconds(fast, s, B, context, max(2, n // 4))) * n / max(2, n // 4)
    times = alternate(fns, s.scaling_rounds, warmup=1, progress=progress, desc="llama.cpp vs tinyinfer decode")
    tok_s = {name: n / statistics.median(v) for name, v in times.items()}
    llama_names = [k for k in times if k.startswith("llama.cpp")]
    best = max(llama_names, key=lambda k: tok_s[k])
    agg = [B * n / t for t in times[f"tinyinfer batch {B}"]]  # tokens/s per round, all B sequences
    llama = [n / t for t in times[best]]
    ratios = [a / b for a, b in zip(agg, llama)]
    return {"version": llamacpp.version(), "context": context, "tokens": n, "batch": B, "rounds": s.scaling_rounds,
            "tokens_per_s": tok_s, "llamacpp_best": best, "llamacpp_tok_s": tok_s[best],
            "tinyinfer_batch1_tok_s": tok_s["tinyinfer batch 1"],
            "tinyinfer_aggregate_tok_s": statistics.median(agg),
            "batch1_over_llamacpp": statistics.median(
                [t_l / t_1 for t_l, t_1 in zip(times[best], times["tinyinfer batch 1"])]),
            "aggregate_over_llamacpp": statistics.median(ratios),
            "aggregate_over_llamacpp_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
            "seconds": times}


def format_scaling(r: dict) -> str:
    lines = [f"decode steps by batch size ({r['context']}-token contexts, {r['steps']} steps x {r['rounds']} rounds a "
             f"size; weights {r['weight_bytes'] / 1e6:.1f} MB, {r['flops_per_token'] / 1e9:.3f} GFLOP a token)"]
    for row in r["rows"]:
        lines.append(f"  batch {row['batch']:3d}: step {row['step_ms']:8.1f} ms (IQR {row['step_iqr_ms'][0]:.1f}-"
                     f"{row['step_iqr_ms'][1]:.1f})  {row['tokens_per_s']:8.1f} tokens/s  {row['gflops']:6.1f} GFLOP/s")
    f = r["fit"]
    c = r["ceilings"]
    lines.append(f"  fit over batches {f['fitted_on']}: step = {f['fixed_ms']:.1f} ms + batch x {f['per_token_ms']:.2f} ms; "
                 f"compute-bound ceiling {r['compute_bound_tokens_per_s']:.0f} tokens/s; the step turns compute-bound "
                 f"from batch ~{r['crossover_batch']:.1f}")
    lines.append(f"  machine: read {c['read_gbs_all_threads']:.1f} GB/s (streaming the weights once: "
                 f"{r['stream_weights_ms']:.1f} ms), sgemm {c['sgemm_gflops']:.0f} GFLOP/s, int8 dots "
                 f"{c['int8_gmacs']:.0f} Gmac/s")
    p = r.get("profile")
    if p:
        lines.append(f"  one step of batch {p['batch']} ({p['step_s'] * 1e3:.0f} ms under the profiler): products "
                     f"{p['products'] * 1e3:.0f} ms, attention {p['attention'] * 1e3:.0f} ms, norms/RoPE/SwiGLU "
                     f"{p['norms_rope_swiglu'] * 1e3:.0f} ms, the rest {p['other'] * 1e3:.0f} ms")
    return "\n".join(lines)


def format_llamacpp(r: dict) -> str:
    if "skipped" in r:
        return f"llama.cpp: skipped ({r['skipped']})"
    lines = [f"llama.cpp {r['version']} on the same file, batch 1 ({r['tokens']} decode steps after a {r['context']}-token "
             f"prompt, {r['rounds']} rounds):"]
    for name, v in r["tokens_per_s"].items():
        lines.append(f"  {name:24s} {v:8.1f} tokens/s" + ("  (aggregate of all sequences)" if "batch" in name
                                                          and not name.endswith(" 1") else ""))
    q = r["aggregate_over_llamacpp_iqr"]
    lines.append(f"  tinyinfer at {r['batch']} concurrent / llama.cpp batch 1 ({r['llamacpp_best']}): "
                 f"{r['aggregate_over_llamacpp']:.2f}x (IQR {q[0]:.2f}-{q[1]:.2f}); tinyinfer batch 1 / llama.cpp: "
                 f"{r['batch1_over_llamacpp']:.2f}x")
    return "\n".join(lines)


def plot_scaling(r: dict, ax, llama: dict | None = None):
    """Tokens/s against batch size, with the two ceilings and the crossover marked."""
    B = np.array([row["batch"] for row in r["rows"]])
    tok = np.array([row["tokens_per_s"] for row in r["rows"]])
    ax.plot(B, tok, "o-", color="C0", label="measured: decode steps of the engine")
    grid = np.geomspace(B.min(), B.max(), 50)
    t1 = r["rows"][0]["step_ms"] / 1e3
    ax.plot(grid, grid / t1, ":", color="C1", label=f"if a step cost what batch {B.min()} costs ({t1 * 1e3:.0f} ms)")
    if r["compute_bound_tokens_per_s"]:
        ax.axhline(r["compute_bound_tokens_per_s"], ls="--", color="C2",
                   label=f"compute-bound: 1 / {r['fit']['per_token_ms']:.1f} ms a token")
    x = r["crossover_batch"]
    if np.isfinite(x) and B.min() <= x <= B.max() * 2:
        ax.axvline(x, color="0.5", lw=1)
        ax.annotate(f"compute-bound\nfrom ~{x:.0f}", (x, tok.min()), xytext=(5, 5), textcoords="offset points",
                    fontsize=8)
    if llama and "llamacpp_tok_s" in llama:
        ax.axhline(llama["llamacpp_tok_s"], color="C3", lw=1, label=f"llama.cpp, batch 1 ({llama['llamacpp_best']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequences decoding together (batch size)")
    ax.set_ylabel("decode tokens/s (all sequences)")
    ax.set_title(f"decode throughput against batch size ({r['context']}-token contexts)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
