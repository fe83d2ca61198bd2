"""Pruning that recovers: SparseGPT, Wanda and magnitude one-shot; then fine-tuning with distillation
from the dense teacher against labels-only fine-tuning, both against the dense control.

Lesson: lessons/05-pruning.py

    OPENBLAS_NUM_THREADS=1 python -m tinyinfer.sparse.recovery \\
        --json benchmarks/prune_recovery.json --md benchmarks/prune_recovery.md

What it measures, every row on the same held-out windows (the first --eval-windows windows of 256
tokens of the validation split), with top-1 agreement and KL against the teacher:

1. one-shot at 50%, 2:4 and 70%: magnitude; Wanda and SparseGPT on each calibration sample (its own
   seed, --calib-windows random windows of the training split); and, at 50%, each method's
   per-layer output error ||(W - W') X^T||^2 / ||W X^T||^2 on the dense teacher's inputs.
2. fine-tuning for --steps steps (B=4, T=256, masks held), every run on the same batches drawn from
   the same fixed windows, over which the teacher's top-k logits are cached once:
   the dense control (the unpruned teacher fine-tuned on labels), and at each level the SparseGPT
   model (calibration sample 0) fine-tuned on labels only and with distillation from the dense
   teacher (tinyinfer.distill's cached top-k loss). Each run evaluates a subset of the held-out split
   --evals times along the way, so the gap to the dense control can be followed step by step.
3. variants (--variants): the same runs with other settings: more steps, another learning rate,
   another init (magnitude), gradual pruning (a cubic schedule of prune-then-distill stages).

Every fine-tuning run is resumable (train()'s state under --out); finished ones are read back.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .. import load
from ..corpus import token_stream
from ..hessian import calibrate_layers, layer_objective
from . import prune
from .experiment import Evaluator, calibration_ids, relative
from .finetune import FinetuneSettings, cubic_levels, finetune, weights_of
from .sparsegpt import sparsegpt_prune_model

LEVELS = {"50%": dict(sparsity=0.5), "2:4": dict(n=2, m=4), "70%": dict(sparsity=0.7)}
TARGETS = {"50%": 0.04, "2:4": 0.08, "70%": 0.15}  # perplexity vs the dense control, after distillation


# --------------------------------------------------------------------------------------------
# one-shot masks


def one_shot(teacher, level: str, method: str, calib=None, norms=None):
    """(pruned Model, (N, K) masks) by magnitude, Wanda (needs norms) or SparseGPT (needs calib)."""
    spec = LEVELS[level]
    weights = weights_of(teacher)
    if method == "sparsegpt":
        return sparsegpt_prune_model(teacher, calib, progress=False, **spec)
    if method == "magnitude":
        masks = (prune.nm_masks(weights, 2, 4) if "n" in spec else prune.magnitude_masks(weights, spec["sparsity"]))
    elif method == "wanda":
        masks = (prune.nm_masks(weights, 2, 4, input_norms=norms) if "n" in spec
                 else prune.wanda_masks(weights, norms, spec["sparsity"]))
    else:
        raise ValueError(f"method must be magnitude, wanda or sparsegpt, got {method!r}")
    return prune.apply_masks(teacher, prune.to_param_layout(masks, teacher.config)), masks


def layer_errors(teacher, pruned_models: dict, calib) -> dict:
    """method -> {layer: ||(W - W') X^T||^2 / ||W X^T||^2}, X the dense teacher's inputs on calib."""
    hessians = {}
    calibrate_layers(teacher, calib, lambda name, w, H: w, progress=False, hessians=hessians)  # dense H
    dense = weights_of(teacher)
    out = {}
    for method, model in pruned_models.items():
        pruned = weights_of(model)
        out[method] = {name: layer_objective(dense[name], pruned[name], hessians[name[: -len(".weight")]])
                       / layer_objective(dense[name], np.zeros_like(dense[name]), hessians[name[: -len(".weight")]])
                       for name in dense}
    return out


def one_shot_rows(teacher, evaluate_row, calibs: dict, levels, log=print) -> tuple:
    """Rows for every level, method and calibration sample; and the 50% per-layer errors (sample 0)."""
    norms = {seed: prune.collect_input_norms(teacher, ids, batch_size=8) for seed, ids in calibs.items()}
    rows, models50 = [], {}
    first = min(calibs)
    for level in levels:
        model, _ = one_shot(teacher, level, "magnitude")
        rows.append(evaluate_row(model, method="magnitude", level=level))
        if level == "50%":
            models50["magnitude"] = model
        for seed, ids in calibs.items():
            for method in ("wanda", "sparsegpt"):
                model, _ = one_shot(teacher, level, method, calib=ids, norms=norms[seed])
                rows.append(evaluate_row(model, method=method, level=level, calib_seed=seed))
                log(f"one-shot {level} {method} seed {seed}: ppl {rows[-1]['perplexity']:.3f}")
                if level == "50%" and seed == first:
                    models50[method] = model
    errors = layer_errors(teacher, models50, calibs[first]) if models50 else {}
    return rows, errors


# --------------------------------------------------------------------------------------------
# fine-tuning runs


def run_dir_name(kind: str, level: str | None, **extra) -> str:
    parts = [kind] + ([level.replace("%", "pc").replace(":", "of")] if level else [])
    parts += [f"{k}{v}" for k, v in sorted(extra.items()) if v is not None]
    return "_".join(parts)


def evaluated(run_dir: Path, model_fn, evaluate_row, **row) -> dict:
    """The run's held-out row, stored as final.json beside it (read back on a resumed study)."""
    path = run_dir / "final.json"
    if path.exists():
        return json.loads(path.read_text())
    model = model_fn()
    out = evaluate_row(model, **row)
    history = json.loads((run_dir / "history.json").read_text())
    out["cpu_seconds"] = history.get("step_cpu_seconds")
    out["curve"] = [{"step": v["step"], "loss": v["loss"], "perplexity": v["perplexity"], "top1": v["top1"]}
                    for v in history["val"]]
    path.write_text(json.dumps(out, indent=1))
    return out


def kd_loss(cache, temperature, alpha):
    from ..distill import cached_distillation_loss_fn

    return cached_distillation_loss_fn(cache, temperature, alpha)


def finetune_runs(teacher, evaluate_row, cache, calib, val_stream, settings, args, out: Path, log) -> dict:
    """The dense control and, per level, SparseGPT + labels and SparseGPT + distillation."""
    windows = cache.windows
    result = {"dense_control": None, "levels": {}}

    def tune(model, masks, name, loss_fn, s=settings):
        run_dir = out / name
        param_masks = None if masks is None else prune.to_param_layout(masks, teacher.config)
        if not (run_dir / "final.json").exists():
            finetune(model, param_masks, None, val_stream, s, 0, run_dir, progress=args.progress,
                     log=lambda m: None, windows=windows, loss_fn=loss_fn)
        return run_dir

    log(f"dense control, {settings.steps} steps")
    d = tune(teacher, None, run_dir_name("dense", None, steps=settings.steps), None)
    result["dense_control"] = evaluated(d, lambda: load(d), evaluate_row, method="dense control", steps=settings.steps)
    kd = kd_loss(cache, args.temperature, args.alpha)
    for level in args.levels:
        model, masks = one_shot(teacher, level, "sparsegpt", calib=calib)
        entry = {"one_shot": evaluate_row(model, method="sparsegpt", level=level)}
        for mode, loss_fn in (("labels", None), ("distilled", kd)):
            log(f"{level} SparseGPT + {mode}, {settings.steps} steps")
            r = tune(model, masks, run_dir_name(mode, level, steps=settings.steps), loss_fn)
            entry[mode] = evaluated(r, lambda r=r: load(r), evaluate_row, method=f"sparsegpt + {mode}", level=level,
                                    steps=settings.steps)
        result["levels"][level] = entry
    return result


def variant_runs(teacher, evaluate_row, cache, calib, val_stream, settings, args, out: Path, log) -> list:
    """Extra runs, each "level:key=value,key=value" with keys steps, lr, init (sparsegpt | magnitude),
    mode (distilled | labels), gradual (n prune-then-distill stages along a cubic schedule)."""
    rows = []
    for spec in args.variants:
        level, _, opts = spec.partition(":")
        if level not in LEVELS:
            raise ValueError(f"--variants: level must be one of {list(LEVELS)}, got {level!r} in {spec!r}")
        kv = dict(item.split("=", 1) for item in opts.split(",") if item)
        unknown = set(kv) - {"steps", "lr", "init", "mode", "gradual"}
        if unknown:
            raise ValueError(f"--variants: unknown keys {sorted(unknown)} in {spec!r}")
        steps = int(kv.get("steps", settings.steps))
        lr = float(kv.get("lr", settings.lr))
        s = FinetuneSettings(**{**settings.to_dict(), "steps": steps, "lr": lr, "min_lr": lr / 10})
        init, mode, stages = kv.get("init", "sparsegpt"), kv.get("mode", "distilled"), int(kv.get("gradual", 0))
        loss_fn = kd_loss(cache, args.temperature, args.alpha) if mode == "distilled" else None
        name = run_dir_name(f"variant-{mode}", level, steps=steps, lr=lr if "lr" in kv else None,
                            init=init if init != "sparsegpt" else None, gradual=stages or None)
        run_dir = out / name
        log(f"variant {spec}")
        if stages:
            final = gradual(teacher, level, calib, cache, val_stream, s, stages, loss_fn, run_dir, args)
        else:
            norms = prune.collect_input_norms(teacher, calib, batch_size=8) if init == "wanda" else None
            model, masks = one_shot(teacher, level, init, calib=calib, norms=norms)
            if not (run_dir / "final.json").exists():
                finetune(model, prune.to_param_layout(masks, teacher.config), None, val_stream, s, 0, run_dir,
                         progress=args.progress, log=lambda m: None, windows=cache.windows, loss_fn=loss_fn)
            final = run_dir
        row = evaluated(final, lambda f=final: load(f), evaluate_row, method=name, level=level, steps=steps)
        # its own dense control: the teacher fine-tuned on labels with the same steps and learning rate
        control_dir = out / run_dir_name("dense", None, steps=steps, lr=lr if "lr" in kv else None)
        if not (control_dir / "final.json").exists():
            finetune(teacher, None, None, val_stream, s, 0, control_dir, progress=args.progress,
                     log=lambda m: None, windows=cache.windows)
        control = evaluated(control_dir, lambda c=control_dir: load(c), evaluate_row, method="dense control",
                            steps=steps)
        rows.append({"spec": spec, **row, "dense_control": control})
    return rows


def gradual(teacher, level, calib, cache, val_stream, settings, stages, loss_fn, run_dir: Path, args) -> Path:
    """Prune in `stages` steps along the cubic schedule (finetune.cubic_levels), SparseGPT on the current
    model each time, fine-tuning settings.steps / stages steps after each. Returns the last stage's folder.

    A weight pruned once stays pruned: it is zero, so its saliency is the lowest, and SparseGPT's
    per-block counts only grow with the target, so the next mask contains it (the product below is a
    safeguard). Unstructured levels only: an n:m pattern has no in-between.
    """
    spec = LEVELS[level]
    if "sparsity" not in spec:
        raise ValueError(f"gradual pruning needs an unstructured level, got {level!r}")
    per_stage = FinetuneSettings(**{**settings.to_dict(), "steps": max(1, settings.steps // stages)})
    model, masks = teacher, None
    for stage, target in enumerate(cubic_levels(spec["sparsity"], stages)):
        # deterministic, so a resumed study recomputes the same masks; finetune() resumes or reads back
        pruned, new_masks = sparsegpt_prune_model(model, calib, progress=False, sparsity=target)
        masks = new_masks if masks is None else {k: new_masks[k] * masks[k] for k in new_masks}
        pruned = prune.apply_masks(pruned, prune.to_param_layout(masks, teacher.config))
        model = finetune(pruned, prune.to_param_layout(masks, teacher.config), None, val_stream, per_stage,
                         stage, run_dir / f"stage{stage}", progress=args.progress, log=lambda m: None,
                         windows=cache.windows, loss_fn=loss_fn)
    return run_dir / f"stage{stages - 1}"


# --------------------------------------------------------------------------------------------
# targets and the report


def targets(r: dict) -> dict:
    t = {}
    dense = r["finetune"]["dense_control"]
    for level, entry in r["finetune"]["levels"].items():
        change = relative(entry["distilled"], dense)
        t[f"{level} SparseGPT + distillation vs dense control"] = {
            "measured": change, "target": TARGETS[level], "met": change <= TARGETS[level]}
    for row in r.get("variants", []):
        change = relative(row, row["dense_control"])  # its own control: same steps and learning rate
        t[f"variant {row['spec']} vs its dense control"] = {
            "measured": change, "target": TARGETS[row["level"]], "met": change <= TARGETS[row["level"]]}
    at50 = [row for row in r["one_shot"] if row["level"] == "50%"]
    mag = next(row["perplexity"] for row in at50 if row["method"] == "magnitude")
    seeds = sorted({row["calib_seed"] for row in at50 if "calib_seed" in row})
    by = {(row["method"], row.get("calib_seed")): row["perplexity"] for row in at50}
    t["SparseGPT one-shot ahead of Wanda and magnitude at 50%, every calibration sample"] = {
        "measured": {f"seed {s}": {"sparsegpt": by[("sparsegpt", s)], "wanda": by[("wanda", s)]} for s in seeds}
        | {"magnitude": mag},
        "target": "SparseGPT below both on every sample",
        "met": len(seeds) >= 3 and all(by[("sparsegpt", s)] < min(by[("wanda", s)], mag) for s in seeds)}
    return t


def _row_md(row, ref=None, extra=""):
    vs = f"{relative(row, ref):+.2%}" if ref is not None else ""
    cpu = f"{row['cpu_seconds'] / 60:.1f}" if row.get("cpu_seconds") else ""
    return (f"| {row['method']} | {extra} | {row['linear_sparsity']:.1%} | {row['perplexity']:.3f} | {vs} | "
            f"{row['top1']:.2%} | {row['top1_agreement']:.2%} | {row['kl_divergence']:.4f} | {cpu} |")


HEAD = ("| method | detail | linear sparsity | perplexity | vs reference | top-1 | agreement w/ teacher | "
        "KL(teacher‖model) | CPU min |\n|---|---|---|---|---|---|---|---|---|")


def markdown(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    fs = s["finetune"]
    lines = ["# Pruning that recovers: SparseGPT and distillation", "",
             f"Measured by `{s['command']}` on {m.get('cpu', '?')} ({m.get('cores')} cores, NumPy "
             f"{m.get('numpy')}, one BLAS thread, shared with other jobs). CPU min: the run's training steps in "
             "process CPU time (time.process_time), which the neighbours do not inflate.",
             f"Held-out: the first {s['eval_windows']} windows of 256 tokens of the validation split "
             f"({r['teacher']['eval_tokens']:,} predicted tokens), the same for every row. Calibration: "
             f"{s['calib_windows']} random windows of {s['calib_seq_len']} tokens of the training split per sample "
             f"(seeds {s['calib_seeds']}). Fine-tuning: {fs['steps']} steps, B={fs['batch_size']}, T={fs['seq_len']}, "
             f"lr {fs['lr']:g} (warmup {fs['warmup_steps']}, cosine to {fs['min_lr']:g}), AdamW with the masks held, "
             f"batches drawn from {r['pool_windows']:,} fixed windows of the training split over which the "
             f"teacher's top-{r['k']} logits were cached once ({r['cache_cpu_seconds'] / 60:.1f} CPU min). "
             f"Distillation: T = {s['temperature']}, alpha = {s['alpha']} (alpha T² KL + (1 - alpha) CE).", "",
             "## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    for name, t in r["targets"].items():
        meas = t["measured"]
        if isinstance(meas, dict):
            shown = "; ".join(f"{k}: " + (", ".join(f"{a} {b:.3f}" for a, b in v.items()) if isinstance(v, dict)
                                          else f"{v:.3f}") for k, v in meas.items())
            limit = t["target"]
        else:
            shown, limit = f"{meas:+.2%}", f"+{t['target']:.0%}"
        lines.append(f"| {name} | {shown} | {limit} | {'yes' if t['met'] else 'NO'} |")
    teacher, ft = r["teacher"], r["finetune"]
    dense = ft["dense_control"]
    lines += ["", f"## Fine-tuned {fs['steps']} steps (vs reference: the dense control, same batches and steps)", "",
              HEAD, _row_md(teacher, extra="no fine-tuning"), _row_md(dense, extra=f"{dense['steps']} steps")]
    for level, entry in ft["levels"].items():
        lines.append(_row_md(entry["one_shot"], dense, f"{level}, one-shot"))
        lines.append(_row_md(entry["labels"], dense, f"{level}, labels only"))
        lines.append(_row_md(entry["distilled"], dense, f"{level}, distilled"))
    if r.get("variants"):
        lines += ["", "## Variants (vs reference: the dense control with the same steps and learning rate)", "", HEAD]
        for row in r["variants"]:
            lines += [_row_md(row["dense_control"], extra=f"{row['dense_control']['steps']} steps"),
                      _row_md(row, row["dense_control"], row["spec"])]
    lines += ["", "## One-shot, no fine-tuning (vs reference: the teacher)", "", HEAD]
    for row in r["one_shot"]:
        detail = row["level"] + (f", calibration seed {row['calib_seed']}" if "calib_seed" in row else "")
        lines.append(_row_md(row, teacher, detail))
    if r.get("layer_errors"):
        errs = r["layer_errors"]
        methods = list(errs)
        lines += ["", "## Per-layer output error at 50%, one-shot (||(W - W') X^T||² / ||W X^T||², X: the dense "
                  "teacher's inputs on calibration sample 0)", "",
                  "| layer | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for name in errs[methods[0]]:
            short = name.replace("model.layers.", "").replace(".weight", "")
            lines.append(f"| {short} | " + " | ".join(f"{errs[m][name]:.4f}" for m in methods) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def run(args, log=print) -> dict:
    from tqdm import tqdm

    from ..bench import machine
    from ..distill import load_or_build_cache

    started, cpu_started = time.time(), time.process_time()
    teacher = load(args.model)
    train_stream = token_stream(teacher.tokenizer, "train", progress=False)
    val_stream = token_stream(teacher.tokenizer, "val", progress=False)
    evaluate_row = Evaluator(teacher, val_stream, 256, args.eval_windows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = FinetuneSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
                                warmup_steps=args.warmup, evals=args.evals, check_windows=args.check_windows)
    doc = {"finetune": settings.to_dict(), "eval_windows": args.eval_windows, "calib_seeds": args.calib_seeds,
           "calib_windows": args.calib_windows, "calib_seq_len": args.calib_seq_len, "model": args.model,
           "temperature": args.temperature, "alpha": args.alpha, "pool": args.pool, "command": args.command}
    stamp = out / "settings.json"
    if stamp.exists():
        before = json.loads(stamp.read_text())
        changed = [k for k in doc if k != "command" and before.get(k) != doc[k]]
        if changed:
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); pass another --out")
    stamp.write_text(json.dumps(doc, indent=1))
    cache_path = args.cache or out / f"teacher_top32_pool{args.pool}.safetensors"
    cache = load_or_build_cache(teacher, train_stream, 256, cache_path, 0, args.pool, progress=args.progress)
    calibs = {seed: calibration_ids(train_stream, args.calib_windows, args.calib_seq_len, seed)
              for seed in args.calib_seeds}
    r = {"machine": machine(), "settings": doc, "pool_windows": len(cache.windows), "k": cache.k,
         "cache_cpu_seconds": cache.cpu_seconds or cache.seconds}
    phases = ["teacher", "one-shot", "finetune"] + (["variants"] if args.variants else [])
    bar = tqdm(phases, desc="prune recovery", unit="phase", disable=not args.progress)
    say = (lambda m: tqdm.write(m)) if args.progress else log
    for phase in bar:
        bar.set_postfix(phase=phase)
        if phase == "teacher":
            r["teacher"] = evaluate_row(teacher, method="teacher")
        elif phase == "one-shot":
            cached = out / "one_shot.json"
            if cached.exists():
                r["one_shot"], r["layer_errors"] = json.loads(cached.read_text()).values()
            else:
                r["one_shot"], r["layer_errors"] = one_shot_rows(teacher, evaluate_row, calibs, args.levels, say)
                cached.write_text(json.dumps({"rows": r["one_shot"], "layer_errors": r["layer_errors"]}, indent=1))
        elif phase == "finetune":
            r["finetune"] = finetune_runs(teacher, evaluate_row, cache, calibs[args.calib_seeds[0]], val_stream,
                                          settings, args, out, say)
        else:
            r["variants"] = variant_runs(teacher, evaluate_row, cache, calibs[args.calib_seeds[0]], val_stream,
                                         settings, args, out, say)
    r["targets"] = targets(r)
    r["elapsed_s"], r["invocation_cpu_s"] = time.time() - started, time.process_time() - cpu_started
    r["finetune_cpu_seconds"] = sum(json.loads(h.read_text()).get("step_cpu_seconds", 0.0)
                                    for h in out.glob("**/history.json"))
    return r


def main(argv=None):
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/teacher")
    p.add_argument("--out", default="runs/prune_recovery", help="fine-tuning runs (resumable)")
    p.add_argument("--cache", default=None, help="the teacher's top-k cache (built there if absent)")
    p.add_argument("--pool", type=int, default=4000, help="fixed training windows the runs draw from (cached)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--evals", type=int, default=8, help="held-out checks along each run (the gap curve)")
    p.add_argument("--check-windows", type=int, default=16, help="held-out windows of each check")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--calib-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calib-windows", type=int, default=64)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--variants", nargs="*", default=[], help='e.g. "70%%:steps=1600" "50%%:lr=1e-4" '
                   '"70%%:gradual=4" "50%%:init=magnitude"')
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.command = "python -m tinyinfer.sparse.recovery " + " ".join(argv if argv is not None else sys.argv[1:])
    r = run(args)
    text = markdown(r)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=float))
    if args.md:
        Path(args.md).write_text(text)
    return r


if __name__ == "__main__":
    main()
