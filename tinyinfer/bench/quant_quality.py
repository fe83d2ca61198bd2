"""What quantization costs in quality: the teacher in fp32, Q8_0, Q4_0 and better 4-bit, evaluated.

    python -m tinyinfer.bench.quant_quality [--model teacher] [--windows 64] [--json PATH] [--md PATH]

Lesson: lessons/04-quantization.py (this is its section 5, at full size).

For each variant, on the same held-out windows (the first `windows` windows of `seq_len` tokens of
the validation split), as llama.cpp's perplexity tool reports them:
  * held-out perplexity and top-1 next-token accuracy;
  * top-1 agreement with the fp32 model and mean KL(fp32 || variant) per position;
  * bytes of all weights as stored, bits per quantized weight, model size;
  * greedy generations: how many of `gen_tokens` greedy tokens match fp32's from the same prompts
    (the first mismatch ends the count for that prompt: after it the contexts differ).

Variants: fp32; round-to-nearest Q8_0 and Q4_0 (ggml's own rounding, tinyinfer/quant/formats.py);
GPTQ Q4_0 (tinyinfer/quant/gptq.py: the same Q4_0 bytes per weight, errors compensated with a
Hessian from calibration text); AWQ scaling followed by RTN or by GPTQ Q4_0; ternary weights {-1, 0, +1} x a
scale per 32 (tinyinfer/quant/lowbit.py, simulated in float: the extreme low-bit experiment).
Calibration text comes from the *train* split, evaluation from the *val* split.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from . import machine

TARGETS = {  # the article's int8/int4 claims as limits: relative perplexity increase over fp32, top-1 agreement
    "RTN Q8_0": {"ppl_increase_max": 0.002, "agreement_min": 0.99},
    "RTN Q4_0": {"ppl_increase_max": 0.02, "agreement_min": 0.93},
}


def greedy_agreement(model, reference, prompts, gen_tokens):
    """Mean over prompts of the number of leading greedy tokens equal to reference's / gen_tokens."""
    matched = []
    for ids in prompts:
        a = reference.generate(ids, gen_tokens)[len(ids):]
        b = model.generate(ids, gen_tokens)[len(ids):]
        same = np.flatnonzero(a != b)
        matched.append(gen_tokens if same.size == 0 else int(same[0]))
    return float(np.mean(matched)) / gen_tokens


def variants(model, calib, progress=True):
    """[(name, model, bits per quantized weight, seconds to make)] — made lazily, one at a time."""
    from ..quant.gptq import awq_scale_model, gptq_quantize_model
    from ..quant.lowbit import ternary_model
    from ..quant.model import quantize_model

    awq = {}

    def awq_scaled():  # the AWQ-rescaled float model, searched once, used twice
        if "model" not in awq:
            awq["model"] = awq_scale_model(model, calib, progress=progress)
        return awq["model"]

    yield "fp32", model, 32.0, 0.0
    for name, bits, make in [
        ("RTN Q8_0", 8.5, lambda: quantize_model(model, "q8_0")),
        ("RTN Q4_0", 4.5, lambda: quantize_model(model, "q4_0")),
        ("GPTQ Q4_0", 4.5, lambda: gptq_quantize_model(model, calib, progress=progress)),
        ("AWQ + RTN Q4_0", 4.5, lambda: quantize_model(awq_scaled(), "q4_0")),
        ("AWQ + GPTQ Q4_0", 4.5, lambda: gptq_quantize_model(awq_scaled(), calib, progress=progress)),
        ("ternary (simulated)", 1.58 + 16 / 32, lambda: ternary_model(model)),
    ]:
        start = time.perf_counter()
        made = make()
        yield name, made, bits, time.perf_counter() - start


def run(model_name="teacher", windows=64, seq_len=256, calib_windows=128, calib_len=128, prompts=8,
        gen_tokens=32, progress=True, log=print):
    import tinyinfer
    from ..model_names import resolve as resolve_model_path
    from ..corpus import token_stream
    from ..evaluate import evaluate
    from ..quant.gptq import calibration_windows
    from ..quant.model import weight_bytes

    model = tinyinfer.load(resolve_model_path(model_name))
    model = tinyinfer.Model(model.config, {k: v.astype(np.float32) for k, v in model.params.items()},
                            model.tokenizer)  # the shipped float16 weights, computed in float32
    train = token_stream(model.tokenizer, "train", progress=False)
    val = token_stream(model.tokenizer, "val", progress=False)
    calib = calibration_windows(train, calib_windows, calib_len, seed=0)
    starts = np.linspace(0, len(val) - 65, prompts).astype(int)
    gen_prompts = [val[s:s + 64] for s in starts]  # 64-token held-out contexts
    rows = []
    for name, m, bits, seconds in variants(model, calib, progress):
        r = evaluate(m, val, seq_len, windows, reference=model)
        row = {"variant": name, "weight_bytes": weight_bytes(m), "bits_per_quantized_weight": bits,
               "make_seconds": round(seconds, 2), "perplexity": r["perplexity"], "top1": r["top1"],
               "top1_agreement": r["top1_agreement"], "kl_divergence": r["kl_divergence"],
               "greedy_agreement": greedy_agreement(m, model, gen_prompts, gen_tokens), "eval_tokens": r["tokens"]}
        rows.append(row)
        log(f"{name:22s} ppl {row['perplexity']:.3f}  top-1 {row['top1']:.4f}  agree {row['top1_agreement']:.4f}  "
            f"KL {row['kl_divergence']:.5f}  greedy {row['greedy_agreement']:.3f}  {row['weight_bytes']:,} bytes")
    base = rows[0]
    for row in rows:
        row["perplexity_increase"] = row["perplexity"] / base["perplexity"] - 1
    return {"machine": machine(), "model": model_name, "windows": windows, "seq_len": seq_len,
            "calibration": f"{calib_windows} windows x {calib_len} train tokens, seed 0",
            "greedy": f"{prompts} held-out 64-token prompts x {gen_tokens} greedy tokens", "rows": rows,
            "targets": targets(rows)}


def targets(rows):
    by = {r["variant"]: r for r in rows}
    out = {}
    for name, t in TARGETS.items():
        r = by[name]
        out[name] = {**t, "ppl_increase": r["perplexity_increase"], "agreement": r["top1_agreement"],
                     "met": r["perplexity_increase"] <= t["ppl_increase_max"] and r["top1_agreement"] >= t["agreement_min"]}
    rtn, gptq = by["RTN Q4_0"], by["GPTQ Q4_0"]
    out["GPTQ Q4_0 vs RTN Q4_0"] = {
        "ppl_increase_ratio": gptq["perplexity_increase"] / rtn["perplexity_increase"],
        "kl_ratio": gptq["kl_divergence"] / rtn["kl_divergence"],
        "met": gptq["perplexity_increase"] <= 0.5 * rtn["perplexity_increase"]
        and gptq["kl_divergence"] <= 0.5 * rtn["kl_divergence"]}
    return out


def markdown(result) -> str:
    lines = [f"Model `{result['model']}`; {result['windows']} held-out windows of {result['seq_len']} tokens "
             f"({result['rows'][0]['eval_tokens']:,} positions); calibration {result['calibration']}; "
             f"greedy: {result['greedy']}.", "",
             "| variant | bits/weight | weight bytes | perplexity | vs fp32 | top-1 | top-1 agreement | KL vs fp32 | greedy tokens agreeing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['bits_per_quantized_weight']:.2f} | {r['weight_bytes']:,} | "
                     f"{r['perplexity']:.3f} | {100 * r['perplexity_increase']:+.2f}% | {100 * r['top1']:.2f}% | "
                     f"{100 * r['top1_agreement']:.2f}% | {r['kl_divergence']:.5f} | {100 * r['greedy_agreement']:.1f}% |")
    lines += ["", "Targets:", ""]
    for name, t in result["targets"].items():
        detail = ", ".join(f"{k} {v:.4g}" for k, v in t.items() if k != "met" and isinstance(v, float))
        lines.append(f"- {name}: {detail} — **{'met' if t['met'] else 'NOT met'}**")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--windows", type=int, default=64, help="held-out windows to evaluate (default 64)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write a markdown table here")
    args = ap.parse_args(argv)
    result = run(args.model, args.windows, args.seq_len)
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
