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
import inspect
import pstats
import statistics
import time

import numpy as np

from .timing import alternate, ratio_iqr, rounds_progress


def tqdm_list(items, desc):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)

__all__ = ["DecodeBatch", "bench_designs", "weight_variants", "format_designs", "decode_step_seconds",
           "bench_attention_kinds", "bench_decode_scaling", "profile_step", "bench_llamacpp", "format_scaling",
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


class DecodeBatch:
    """An engine holding B sequences of `context` held-out tokens each, prefilled once, whose pure
    decode steps (every sequence feeding one token) are timed as often as asked, so a benchmark can
    alternate batch sizes round after round without prefilling again."""

    def __init__(self, fast, s, B: int, context: int, total_steps: int, attention: str = "rows"):
        from ..engine import LLM
        from .engine import params_for
        from .workloads import corpus_prompts

        m = fast.model
        positions = context + total_steps + 8
        self.B = B
        self.llm = LLM(fast, block_size=s.block_size, max_num_seqs=B, max_num_batched_tokens=B * context,
                       num_blocks=B * -(-positions // s.block_size), max_model_len=positions,
                       enable_prefix_caching=False, attention=attention)
        for prompt in corpus_prompts(m.tokenizer, [context] * B, s.seed + B, m.config.vocab_size):
            self.llm.add_request(prompt, params_for(total_steps + 4))
        self.llm.step()  # the prefill of all B
        self.llm.step()  # two untimed decode steps
        self.llm.step()

    def time_steps(self, steps: int) -> list:
        """Seconds of each of the next `steps` engine steps (each a pure decode step of B sequences)."""
        seconds = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.llm.step()
            seconds.append(time.perf_counter() - t0)
            if self.llm.last_schedule.num_new_tokens != [1] * self.B:
                raise RuntimeError(f"a timed step was not a pure decode step of {self.B} sequences")
        return seconds


def decode_step_seconds(fast, s, B: int, context: int, steps: int, attention: str = "rows") -> list:
    """Seconds of each of `steps` engine steps that decode exactly B sequences (one token each)."""
    return DecodeBatch(fast, s, B, context, steps, attention).time_steps(steps)


def profile_step(fast, s, B: int, context: int, steps: int = 3) -> dict:
    """Where the time of a decode step of B sequences goes (cProfile over `steps` steps): seconds a
    step in the quantized / dense products, attention, norms and activations, whole LLaMA blocks run
    as one compiled call (fused_decode.layer_step: their products, attention and norms together,
    which a profiler cannot split), the rest."""
    batch = DecodeBatch(fast, s, B, context, steps)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    batch.time_steps(steps)
    profiler.disable()
    wall = (time.perf_counter() - t0) / steps
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, ncalls, tottime, cumtime, callers)}
    parts = {"products": 0.0, "attention": 0.0, "norms_rope_swiglu": 0.0, "fused_blocks": 0.0}
    from .. import model as model_module

    products = (inspect.getsourcefile(model_module.matmul), inspect.getsourcelines(model_module.matmul)[1])
    for (file, line, name), (_, _, _, cumtime, _) in stats.items():
        if (file, line) == products:  # model.matmul: every product of the forward goes through it once
            parts["products"] += cumtime
        elif name == "attention_rows" or name == "attend_numpy":
            parts["attention"] += cumtime
        elif name in ("rmsnorm_forward", "rope_forward", "swiglu_forward"):
            parts["norms_rope_swiglu"] += cumtime
        elif "fused_decode.layer_step" in name:  # a compiled function: "<built-in method ...layer_step>"
            parts["fused_blocks"] += cumtime
    out = {k: v / steps for k, v in parts.items()}
    out["step_s"] = wall
    out["other"] = max(0.0, wall - sum(out[k] for k in parts))
    out["batch"] = B
    return out


def bench_decode_scaling(fast, s, progress: bool = False, profile: bool = True, attention_kinds: bool = True) -> dict:
    """Decode tokens/s for each batch size in s.batch_sizes, their fit and the crossover batch, the
    machine's ceilings; with profile, a profile of the largest batch's step (profile_step); with
    attention_kinds, what the batch-invariant attention costs against BLAS (bench_attention_kinds)."""
    from . import roofline

    m = fast.model
    sizes = list(s.batch_sizes)
    context = s.scaling_context
    decode_step_seconds(fast, s, sizes[0], 8, 2)  # warm-up
    batches = {}
    for B in (tqdm_list(sizes, "prefilling a batch of each size") if progress else sizes):
        batches[B] = DecodeBatch(fast, s, B, context, s.scaling_steps * s.scaling_rounds)
    times = {B: [] for B in sizes}
    for r in rounds_progress(s.scaling_rounds, "decode steps by batch size", progress):
        k = r % len(sizes)
        for B in sizes[k:] + sizes[:k]:
            times[B] += batches[B].time_steps(s.scaling_steps)
    del batches
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
    profile = profile_step(fast, s, max(sizes), context) if profile and m.num_params() > 1_000_000 else None
    kinds = (bench_attention_kinds(fast, s, min(32, max(sizes)), context, min(256, s.max_model_len or 256), progress)
             if attention_kinds else None)
    return {"context": context, "rows": rows, "rounds": s.scaling_rounds, "steps": s.scaling_steps,
            "weight_bytes": wbytes, "flops_per_token": flops,
            "fit": {"fixed_ms": fixed * 1e3, "per_token_ms": per_token * 1e3, "fitted_on": big},
            "compute_bound_tokens_per_s": 1.0 / per_token if per_token > 0 else None,
            "crossover_batch": crossover,
            "stream_weights_ms": stream_s * 1e3,
            "memory_bound_tokens_per_s_at_1": 1.0 / stream_s,
            "ceilings": ceilings, "profile": profile, "attention_kinds": kinds,
            "seconds": {str(B): v for B, v in times.items()}}


def bench_attention_kinds(fast, s, B: int = 32, context: int | None = None, prefill: int = 256,
                          progress: bool = False) -> dict:
    """What batch invariance costs: engine decode steps of B sequences with the batch-invariant
    kernel ("rows") and with the BLAS way ("numpy"), alternated; and a prefill of `prefill` tokens
    through the contiguous cache either way."""
    from ..kv_cache import ContiguousKVCache
    from .workloads import corpus_prompts

    m = fast.model
    context = context or s.scaling_context
    steps, rounds = s.scaling_steps, s.scaling_rounds
    batches = {kind: DecodeBatch(fast, s, B, context, steps * (rounds + 1), kind) for kind in ("rows", "numpy")}
    ids = np.array([corpus_prompts(m.tokenizer, [prefill], s.seed + 9, m.config.vocab_size)[0]])

    def prefill_seconds(kind):
        cache = ContiguousKVCache(m.config, 1, m.dtype, max_len=prefill, attention=kind)
        t0 = time.perf_counter()
        fast.forward(ids, np.arange(prefill), cache, logits_rows=[-1])
        return time.perf_counter() - t0

    fns = {"decode rows": lambda: sum(batches["rows"].time_steps(steps)) / steps,
           "decode numpy": lambda: sum(batches["numpy"].time_steps(steps)) / steps,
           "prefill rows": lambda: prefill_seconds("rows"), "prefill numpy": lambda: prefill_seconds("numpy")}
    times = alternate(fns, rounds, warmup=1, progress=progress, desc="attention: invariant kernel vs BLAS")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": B, "context": context, "prefill_tokens": prefill, "rounds": rounds,
            "decode_step_ms": {"rows": med["decode rows"] * 1e3, "numpy": med["decode numpy"] * 1e3},
            "prefill_ms": {"rows": med["prefill rows"] * 1e3, "numpy": med["prefill numpy"] * 1e3},
            "decode_rows_over_numpy": statistics.median(
                [a / b for a, b in zip(times["decode rows"], times["decode numpy"])]),
            "prefill_rows_over_numpy": statistics.median(
                [a / b for a, b in zip(times["prefill rows"], times["prefill numpy"])]),
            "decode_rows_over_numpy_iqr": ratio_iqr(times["decode rows"], times["decode numpy"]),
            "prefill_rows_over_numpy_iqr": ratio_iqr(times["prefill rows"], times["prefill numpy"]),
            "seconds": times}


def weight_variants(model) -> dict:
    """The same model with its products done other ways, for bench_designs: {name: Model}.

    "as loaded": the file's blocks (Q4_1 layers, Q8_0 head), integer kernels, batch-invariant;
    "float32 BLAS": every quantized weight expanded to float32 once, products by NumPy's BLAS
      (sgemm for a batch): the fastest float products this machine has, but neither the file's
      arithmetic (activations are not rounded to 8 bits) nor batch-invariant, and 5x the memory;
    "Q8_0": the weights rounded again to Q8_0 (8-bit blocks: simpler to unpack than 4-bit ones)."""
    from ..model import Model
    from ..quant import QTensor, quantize

    def convert(fn):
        return Model(model.config, {name: fn(w) if isinstance(w, QTensor) else w for name, w in model.params.items()},
                     model.tokenizer)

    return {"as loaded": model,
            "float32 BLAS": convert(lambda w: w.dequantize().astype(np.float32)),
            "Q8_0": convert(lambda w: w if w.fmt == "q8_0" else quantize(w.dequantize(), "q8_0"))}


def bench_designs(fast, s, batches=(1, 32), progress: bool = False) -> dict:
    """Decode tokens/s of each weight_variants design at each batch size, alternated round by round,
    and the GFLOP/s their products reach at these shapes (a layer's products alone, best of rounds)."""
    from ..inference import InferenceModel
    from ..model import matmul

    variants = {name: InferenceModel(m) for name, m in weight_variants(fast.model).items()}
    context, steps, rounds = s.scaling_context, s.scaling_steps, s.scaling_rounds
    runs = {(name, B): DecodeBatch(v, s, B, context, steps * (rounds + 1))
            for name, v in variants.items() for B in batches}
    fns = {f"{name} @ {B}": (lambda run=run: statistics.median(run.time_steps(steps)))
           for (name, B), run in runs.items()}
    times = alternate(fns, rounds, warmup=1, progress=progress, desc="designs of the products")
    del runs
    rows = []
    rng = np.random.default_rng(0)
    for name, v in variants.items():
        layer = v.layers[0]
        weights = [w for w in (layer.qkv, layer.o, layer.gate_up, layer.down) if w is not None]
        for B in batches:
            xs = [rng.standard_normal((B, w.shape[1])).astype(np.float32) for w in weights]  # w: (N, K)
            best = []
            for _ in range(max(3, rounds)):
                t0 = time.perf_counter()
                for w, x in zip(weights, xs):
                    matmul(w, x)
                best.append(time.perf_counter() - t0)
            flops = sum(2 * B * w.shape[0] * w.shape[1] for w in weights)
            step = statistics.median(times[f"{name} @ {B}"])
            rows.append({"design": name, "batch": B, "step_ms": step * 1e3, "tokens_per_s": B / step,
                         "step_iqr_ms": [float(np.percentile(times[f"{name} @ {B}"], q)) * 1e3 for q in (25, 75)],
                         "layer_products_gflops": flops / min(best) / 1e9})
    return {"batches": list(batches), "context": context, "rounds": rounds, "rows": rows, "seconds": times}


def format_designs(r: dict) -> str:
    lines = [f"designs of the products ({r['context']}-token contexts, {r['rounds']} rounds):"]
    for row in r["rows"]:
        lines.append(f"  {row['design']:13s} batch {row['batch']:3d}: step {row['step_ms']:8.1f} ms, "
                     f"{row['tokens_per_s']:7.1f} tokens/s; one layer's products at this batch "
                     f"{row['layer_products_gflops']:6.1f} GFLOP/s")
    return "\n".join(lines)


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
    few = max(2, n // 4)  # batch-B steps timed a round (each makes B tokens), scaled to n steps
    one = DecodeBatch(fast, s, 1, context, n * (s.scaling_rounds + 1))
    many = DecodeBatch(fast, s, B, context, few * (s.scaling_rounds + 1))
    fns["tinyinfer batch 1"] = lambda: sum(one.time_steps(n))
    fns[f"tinyinfer batch {B}"] = lambda: sum(many.time_steps(few)) * n / few
    times = alternate(fns, s.scaling_rounds, warmup=1, progress=progress, desc="llama.cpp vs tinyinfer decode")
    tok_s = {name: n * (B if name == f"tinyinfer batch {B}" else 1) / statistics.median(v) for name, v in times.items()}
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
    if r["compute_bound_tokens_per_s"]:
        ceiling = (f"compute-bound ceiling {r['compute_bound_tokens_per_s']:.0f} tokens/s; the step turns "
                   f"compute-bound from batch ~{r['crossover_batch']:.1f}")
    else:  # the step did not grow with the batch over these sizes (a fixed cost dominates, or noise)
        ceiling = "no compute-bound ceiling within these batch sizes: the step did not grow with the batch"
    lines.append(f"  fit over batches {f['fitted_on']}: step = {f['fixed_ms']:.1f} ms + batch x "
                 f"{f['per_token_ms']:.2f} ms; {ceiling}")
    lines.append(f"  machine: read {c['read_gbs_all_threads']:.1f} GB/s (streaming the weights once: "
                 f"{r['stream_weights_ms']:.1f} ms), sgemm {c['sgemm_gflops']:.0f} GFLOP/s, int8 dots "
                 f"{c['int8_gmacs']:.0f} Gmac/s")
    a = r.get("attention_kinds")
    if a:
        lines.append(f"  attention, batch-invariant kernel / BLAS: decode step of batch {a['batch']} "
                     f"{a['decode_step_ms']['rows']:.1f} / {a['decode_step_ms']['numpy']:.1f} ms "
                     f"({a['decode_rows_over_numpy']:.2f}x the time), prefill of {a['prefill_tokens']} tokens "
                     f"{a['prefill_ms']['rows']:.0f} / {a['prefill_ms']['numpy']:.0f} ms "
                     f"({a['prefill_rows_over_numpy']:.2f}x)")
    p = r.get("profile")
    if p:
        lines.append(f"  one step of batch {p['batch']} ({p['step_s'] * 1e3:.0f} ms under the profiler): products "
                     f"{p['products'] * 1e3:.0f} ms, attention {p['attention'] * 1e3:.0f} ms, norms/RoPE/SwiGLU "
                     f"{p['norms_rope_swiglu'] * 1e3:.0f} ms, whole blocks in one compiled call (their products, "
                     f"attention and norms) {p.get('fused_blocks', 0.0) * 1e3:.0f} ms, the rest {p['other'] * 1e3:.0f} ms")
    return "\n".join(lines)


def format_llamacpp(r: dict) -> str:
    if "skipped" in r:
        return f"llama.cpp: skipped ({r['skipped']})"
    lines = [f"llama.cpp {r['version']} on the same file, batch 1 ({r['tokens']} decode steps after a "
             f"{r['context']}-token "
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
    ax.set_xticks(B, [str(b) for b in B])
    ax.set_xlabel("sequences decoding together (batch size)")
    ax.set_ylabel("decode tokens/s (all sequences)")
    ax.set_title(f"decode throughput against batch size ({r['context']}-token contexts)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
