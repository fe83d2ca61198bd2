"""Pruning quality on the shipped teacher: one-shot methods, the article's loop, and dense controls.

Lesson: lessons/05-pruning.py

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python -m tinyinfer.sparse.experiment \
        --json benchmarks/prune_quality.json --md benchmarks/prune_quality.md \
        --save-pruned models/teacher-pruned50

What it measures, every row on the same held-out windows (the first --eval-windows windows of
--eval-seq-len tokens of the validation split), with top-1 agreement and KL against the teacher:

1. one-shot, no fine-tuning: per-layer magnitude, global magnitude, Wanda (one row per
   calibration sample, each drawn with its own seed from the training split) and 2:4, at 50%;
   magnitude and Wanda at 70% and 90%; structured heads and MLP neurons, with the shrunk sizes.
2. the article's loop: prune to 50% (per-layer magnitude), fine-tune S steps; 70% (pruning only
   the survivors), S more; 90%, S more. Perplexity before and after each fine-tune.
3. the dense control: the unpruned teacher fine-tuned for the same 3 stages (same batches, same
   learning-rate schedule, same steps), evaluated at the same points.
4. 2:4 then S steps, against the dense control's first stage (the same S steps).

Every fine-tune stage is resumable (train()'s state under --out), so an interrupted run continues.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .. import load, save
from ..corpus import token_stream
from ..evaluate import evaluate
from . import prune
from .finetune import FinetuneSettings, finetune, prune_to, sparsity_of, weights_of
from .model import sparsity_report

METRICS = ("perplexity", "top1", "top1_agreement", "kl_divergence")
ALL_PHASES = ("teacher", "one-shot", "structured", "fine-tuned")


def calibration_ids(stream, n_windows: int, seq_len: int, seed: int) -> np.ndarray:
    """(n_windows, seq_len) random windows of the training split: Wanda's calibration text."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - seq_len, size=n_windows)
    return np.asarray(stream, dtype=np.int64)[starts[:, None] + np.arange(seq_len)[None, :]]


def linear_sparsity(model) -> float:
    """Fraction of zeros over all block linear weights (dense or CSR)."""
    sizes = {name: int(np.prod(model.params[name].shape)) for name in prune.linear_weight_names(model.config)}
    zeros = sum(sparsity * sizes[name] for name, (sparsity, _kind) in sparsity_report(model).items())
    return zeros / sum(sizes.values())


class Evaluator:
    """The same held-out windows for every row, scored against the teacher."""

    def __init__(self, teacher, val_stream, seq_len: int, windows: int):
        self.teacher, self.val, self.seq_len, self.windows = teacher, val_stream, seq_len, windows

    def __call__(self, model, **row) -> dict:
        r = evaluate(model, self.val, self.seq_len, self.windows, reference=self.teacher)
        params = sum(int(np.prod(v.shape)) for v in model.params.values())
        return {**row, **{k: r[k] for k in METRICS}, "linear_sparsity": linear_sparsity(model),
                "params": params, "eval_tokens": r["tokens"]}


# --------------------------------------------------------------------------------------------
# the phases


def one_shot_rows(teacher, evaluate_row, calib, levels=(0.5, 0.7, 0.9)) -> list:
    """Magnitude / global / Wanda (each calibration sample) / 2:4, no fine-tuning."""
    weights = weights_of(teacher)
    norms = {seed: prune.collect_input_norms(teacher, ids, batch_size=8) for seed, ids in calib.items()}
    to_model = lambda masks: prune.apply_masks(teacher, prune.to_param_layout(masks, teacher.config))  # noqa: E731
    rows = []
    for level in levels:
        rows.append(evaluate_row(to_model(prune.magnitude_masks(weights, level)), method="magnitude", amount=level))
        if level == 0.5:
            rows.append(evaluate_row(to_model(prune.global_magnitude_masks(weights, level)), method="global",
                                     amount=level))
        for seed, n in norms.items():
            rows.append(evaluate_row(to_model(prune.wanda_masks(weights, n, level)), method="wanda",
                                     amount=level, calib_seed=seed))
    rows.append(evaluate_row(to_model(prune.nm_masks(weights, 2, 4)), method="2:4", amount=0.5))
    return rows


def structured_rows(teacher, evaluate_row) -> list:
    """Whole heads and MLP neurons: smaller dense models, their shapes reported."""
    rows = []
    for amount in (1 / 3, 2 / 3):
        small = prune.prune_heads(teacher, amount)
        rows.append(evaluate_row(small, method="heads", amount=amount, n_head=small.config.n_head,
                                 n_kv_head=small.config.n_kv_head))
    for amount in (0.25, 0.5, 0.75):
        small = prune.prune_mlp_neurons(teacher, amount)
        rows.append(evaluate_row(small, method="neurons", amount=amount, ffn_hidden=small.config.ffn_hidden))
    return rows


def finetuned_rows(teacher, evaluate_row, streams, settings, levels, out: Path, log, progress=True) -> dict:
    """The iterative loop, the dense control (same stages) and 2:4 + S steps."""
    train_stream, val_stream = streams
    run = lambda model, masks, stage, name: finetune(model, masks, train_stream, val_stream, settings, stage,  # noqa: E731
                                                      out / name / f"stage{stage}", progress=progress, log=log)
    param_masks = lambda masks: prune.to_param_layout(masks, teacher.config)  # noqa: E731
    result = {"iterative": [], "dense_control": [], "nm": None}
    dense, masks, model = teacher, None, teacher
    for stage, level in enumerate(levels):
        log(f"stage {stage}: dense control, {settings.steps} steps")
        dense = run(dense, None, stage, "dense")
        result["dense_control"].append(evaluate_row(dense, method="dense control", stage=stage,
                                                    steps=(stage + 1) * settings.steps))
        masks = prune_to(weights_of(model), level, previous=masks)
        pruned = prune.apply_masks(model, param_masks(masks))
        before = evaluate_row(pruned, method="magnitude, iterative", stage=stage, amount=level,
                              steps=stage * settings.steps)
        log(f"stage {stage}: {sparsity_of(masks):.0%} sparse, ppl {before['perplexity']:.3f} before fine-tuning")
        model = run(pruned, param_masks(masks), stage, "iterative")
        after = evaluate_row(model, method="magnitude, iterative", stage=stage, amount=level,
                             steps=(stage + 1) * settings.steps)
        result["iterative"].append({"before": before, "after": after, "masks_sparsity": sparsity_of(masks)})
        log(f"stage {stage}: after fine-tuning ppl {after['perplexity']:.3f}, "
            f"dense control {result['dense_control'][-1]['perplexity']:.3f}")
    nm = prune.nm_masks(weights_of(teacher), 2, 4)
    pruned = prune.apply_masks(teacher, param_masks(nm))
    before = evaluate_row(pruned, method="2:4", stage=0, amount=0.5, steps=0)
    tuned = run(pruned, param_masks(nm), 0, "nm24")
    result["nm"] = {"before": before, "after": evaluate_row(tuned, method="2:4", stage=0, amount=0.5,
                                                            steps=settings.steps)}
    result["models"] = {"50%": (result["iterative"][0]["after"], out / "iterative" / "stage0"),
                        "2:4": (result["nm"]["after"], out / "nm24" / "stage0")}
    return result


def budget_rows(teacher, evaluate_row, streams, settings, steps: int, out: Path, log, progress=True) -> dict:
    """Is the gap a matter of fine-tuning budget? 50% magnitude + `steps` steps vs the dense model + `steps`.

    One stage of `steps` steps (same seed as stage 0, the schedule stretched to the new length).
    """
    longer = FinetuneSettings(**{**settings.to_dict(), "steps": steps})
    masks = prune_to(weights_of(teacher), 0.5)
    param_masks = prune.to_param_layout(masks, teacher.config)
    folder = out / f"budget{steps}"
    log(f"budget: dense and 50% magnitude, {steps} steps each")
    dense = finetune(teacher, None, *streams, longer, 0, folder / "dense", progress=progress, log=log)
    pruned = finetune(prune.apply_masks(teacher, param_masks), param_masks, *streams, longer, 0,
                      folder / "magnitude50", progress=progress, log=log)
    return {"steps": steps, "dense_control": evaluate_row(dense, method="dense control", steps=steps),
            "pruned": evaluate_row(pruned, method="magnitude, one stage", amount=0.5, steps=steps)}


# --------------------------------------------------------------------------------------------
# targets, tables, the shipped model


def relative(a: dict, b: dict) -> float:
    """Relative perplexity change of row a over row b (0.02 = +2%)."""
    return a["perplexity"] / b["perplexity"] - 1.0


def targets(r: dict) -> dict:
    """Every quality target (pruned vs the dense control at each sparsity) with its measured figure."""
    t = {}
    dense = r["dense_control"]
    limits = {0.5: 0.02, 0.7: 0.05, 0.9: None}
    for stage, entry in enumerate(r["iterative"]):
        level = entry["after"]["amount"]
        change = relative(entry["after"], dense[stage])
        limit = limits.get(level)
        t[f"{level:.0%} unstructured + fine-tune vs dense control"] = {
            "measured": change, "target": limit, "met": None if limit is None else change <= limit}
    change = relative(r["nm"]["after"], dense[0])
    t["2:4 + fine-tune vs dense control"] = {"measured": change, "target": 0.03, "met": change <= 0.03}
    mag = next(row for row in r["one_shot"] if row["method"] == "magnitude" and row["amount"] == 0.5)
    wanda = [row for row in r["one_shot"] if row["method"] == "wanda" and row["amount"] == 0.5]
    t["Wanda ahead of magnitude at 50%, no fine-tuning"] = {
        "measured": {f"seed {w['calib_seed']}": w["perplexity"] for w in wanda} | {"magnitude": mag["perplexity"]},
        "target": "every calibration sample below magnitude",
        "met": len(wanda) >= 2 and all(w["perplexity"] < mag["perplexity"] for w in wanda)}
    return t


def _row_md(row, ref=None, extra=""):
    vs = f"{relative(row, ref):+.2%}" if ref is not None else ""
    return (f"| {row['method']} | {extra} | {row['linear_sparsity']:.1%} | {row['params']:,} | "
            f"{row['perplexity']:.3f} | {vs} | {row['top1']:.2%} | {row['top1_agreement']:.2%} | "
            f"{row['kl_divergence']:.4f} |")


def markdown(r: dict) -> str:
    s = r["settings"]
    head = ("| method | detail | linear sparsity | params | perplexity | vs reference | top-1 | "
            "agreement w/ teacher | KL(teacher‖model) |\n|---|---|---|---|---|---|---|---|---|")
    lines = ["# Pruning quality on the teacher", "",
             f"Measured by `python -m tinyinfer.sparse.experiment` on {r['machine'].get('cpu', '?')} "
             f"({r['machine'].get('cores')} cores, shared with other jobs): {r['elapsed_s'] / 60:.1f} min for the "
             f"invocation that wrote this (finished fine-tuning stages are read back, not rerun); the "
             f"{len(r['finetune_seconds'])} fine-tuning runs took {sum(r['finetune_seconds'].values()) / 60:.1f} min "
             f"of wall time in all (the machine was shared with other jobs).",
             f"Held-out: the first {s['eval_windows']} windows of {s['eval_seq_len']} tokens of the validation "
             f"split ({r['teacher']['eval_tokens']:,} predicted tokens), the same for every row. Fine-tuning: "
             f"{s['finetune']['steps']} steps a stage, B={s['finetune']['batch_size']}, "
             f"T={s['finetune']['seq_len']}, lr {s['finetune']['lr']} (warmup {s['finetune']['warmup_steps']}, "
             f"cosine to {s['finetune']['min_lr']:g}), AdamW with masks.", "",
             "## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    for name, t in r["targets"].items():
        m = t["measured"]
        shown = ", ".join(f"{k} {v:.3f}" for k, v in m.items()) if isinstance(m, dict) else f"{m:+.2%}"
        limit = t["target"] if isinstance(t["target"], str) or t["target"] is None else f"+{t['target']:.0%}"
        lines.append(f"| {name} | {shown} | {limit or 'reported'} | "
                     f"{'—' if t['met'] is None else ('yes' if t['met'] else 'NO')} |")
    teacher = r["teacher"]
    lines += ["", "## Fine-tuned, against the dense control at the same step", "", head,
              _row_md(teacher, extra="no fine-tuning")]
    for stage, entry in enumerate(r["iterative"]):
        dense = r["dense_control"][stage]
        lines.append(_row_md(dense, extra=f"{dense['steps']} steps"))
        lines.append(_row_md(entry["before"], dense, f"{entry['after']['amount']:.0%}, before fine-tuning"))
        lines.append(_row_md(entry["after"], dense, f"{entry['after']['amount']:.0%}, {entry['after']['steps']} steps"))
    lines.append(_row_md(r["nm"]["before"], r["dense_control"][0], "before fine-tuning"))
    lines.append(_row_md(r["nm"]["after"], r["dense_control"][0], f"{r['nm']['after']['steps']} steps"))
    if r.get("budget"):
        b = r["budget"]
        lines.append(_row_md(b["dense_control"], extra=f"{b['steps']} steps, one stage"))
        lines.append(_row_md(b["pruned"], b["dense_control"], f"50%, {b['steps']} steps, one stage"))
    lines += ["", "(vs reference: against the dense control of the same stage and steps.)", "",
              "## One-shot, no fine-tuning (vs reference: the teacher)", "", head]
    for row in r["one_shot"]:
        detail = f"{row['amount']:.0%}" + (f", calibration seed {row['calib_seed']}" if "calib_seed" in row else "")
        lines.append(_row_md(row, teacher, detail))
    for row in r["structured"]:
        shape = f"n_head {row['n_head']}" if row["method"] == "heads" else f"ffn_hidden {row['ffn_hidden']}"
        lines.append(_row_md(row, teacher, f"{row['amount']:.0%} removed → {shape}"))
    return "\n".join(lines) + "\n"


def ship(r: dict, out_dir: Path, command: str, teacher_dir: Path, log=print) -> dict:
    """The better of 50% + fine-tune and 2:4 + fine-tune, stored as CSR (float16 dense rest)."""
    from .model import sparsify_model, weight_stats

    name, (row, run_dir) = min(r["models"].items(), key=lambda kv: kv[1][0]["perplexity"])
    tuned = load(run_dir)
    sparse = sparsify_model(tuned, None, min_sparsity=0.5)
    save(sparse, out_dir, dtype="float16")
    shipped = load(out_dir)
    stats = weight_stats(shipped)
    size = (out_dir / "model.safetensors").stat().st_size
    log(f"shipped {name} to {out_dir}: {size / 1e6:.2f} MB, {stats['nonzeros']:,} nonzeros")
    return {"variant": name, "run_dir": str(run_dir), **stats, "file_bytes": size, "command": command,
            "teacher_bytes": (teacher_dir / "model.safetensors").stat().st_size}


def model_card(r: dict, shipped_row: dict) -> str:
    sh, s, teacher = r["shipped"], r["settings"], r["teacher"]
    dense = r["dense_control"][0]
    fmt = lambda row: f"{row['perplexity']:.3f} | {row['top1']:.2%}"  # noqa: E731
    return f"""# teacher-pruned50

The shipped teacher (models/teacher) pruned to {sh['variant']} sparsity in its block linear layers and
fine-tuned {s['finetune']['steps']} steps with the masks held (pruned weights and their Adam state
stay zero). Chosen as the better of 50% unstructured and 2:4 after fine-tuning.

| | |
|---|---|
| block linear weights | {shipped_row['linear_sparsity']:.1%} zeros, stored as CSR (float32 values, int32 columns) |
| other weights | embedding (tied head) and norms, float16 |
| nonzero parameters | {sh['nonzeros']:,} of {sh['params']:,} ({sh['bytes'] / 1e6:.2f} MB in memory) |
| file | {sh['file_bytes'] / 1e6:.2f} MB model.safetensors (the dense teacher's file: {sh['teacher_bytes'] / 1e6:.2f} MB) |

CSR needs 8 bytes a nonzero, so at 50% density the file is *larger* than the dense float16
teacher, and the CSR product is slower than dense BLAS at this density (see lessons/05-pruning.py):
this model shows what pruning costs in quality, not a speedup.

Made by (fine-tuning stages are resumable):

    {sh['command']}

## Held-out results ({teacher['eval_tokens']:,} predicted tokens: the first {s['eval_windows']} windows of {s['eval_seq_len']} of the validation split)

| model | perplexity | top-1 |
|---|---|---|
| teacher | {fmt(teacher)} |
| dense control (teacher fine-tuned the same {dense['steps']} steps, same batches and schedule) | {fmt(dense)} |
| this model | {fmt(shipped_row)} |

Against the dense control: {relative(shipped_row, dense):+.2%} perplexity; against the teacher:
{relative(shipped_row, teacher):+.2%}. Full table: benchmarks/prune_quality.md.
"""


# --------------------------------------------------------------------------------------------


def run(args, log=print) -> dict:
    from tqdm import tqdm

    from ..bench import machine

    started = time.time()
    settings = FinetuneSettings(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                                min_lr=args.lr / 10, warmup_steps=args.warmup)
    teacher = load(args.model)  # float32 (the file is float16)
    train_stream = token_stream(teacher.tokenizer, "train", progress=False)
    val_stream = token_stream(teacher.tokenizer, "val", progress=False)
    evaluate_row = Evaluator(teacher, val_stream, args.eval_seq_len, args.eval_windows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_doc = {"finetune": settings.to_dict(), "eval_windows": args.eval_windows,
                    "eval_seq_len": args.eval_seq_len, "levels": args.levels, "calib_seeds": args.calib_seeds,
                    "calib_windows": args.calib_windows, "calib_seq_len": args.calib_seq_len, "model": args.model}
    stamp = out / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text()) != settings_doc:
        raise ValueError(f"{out} holds a run with other settings ({stamp}); pass another --out")
    stamp.write_text(json.dumps(settings_doc, indent=1))
    r = {"machine": machine(), "settings": settings_doc}

    phases = args.phases + (["budget"] if args.budget_steps and "budget" not in args.phases else [])
    bar = tqdm(phases, desc="prune quality", unit="phase", disable=not args.progress)
    for phase in bar:
        bar.set_postfix(phase=phase)
        t0 = time.time()
        if phase == "teacher":
            r["teacher"] = evaluate_row(teacher, method="teacher")
        elif phase == "one-shot":
            calib = {seed: calibration_ids(train_stream, args.calib_windows, args.calib_seq_len, seed)
                     for seed in args.calib_seeds}
            r["one_shot"] = one_shot_rows(teacher, evaluate_row, calib, tuple(args.levels))
        elif phase == "structured":
            r["structured"] = structured_rows(teacher, evaluate_row)
        elif phase == "budget":
            r["budget"] = budget_rows(teacher, evaluate_row, (train_stream, val_stream), settings, args.budget_steps,
                                      out, log=lambda m: tqdm.write(m), progress=args.progress)
        else:
            r.update(finetuned_rows(teacher, evaluate_row, (train_stream, val_stream), settings,
                                    tuple(args.levels), out, log=lambda m: tqdm.write(m), progress=args.progress))
        r.setdefault("phase_seconds", {})[phase] = time.time() - t0
        log(f"{phase}: {time.time() - t0:.0f} s")
    if set(ALL_PHASES) - set(phases):  # a partial run (e.g. to fill the resumable runs in parallel): rows only
        r["elapsed_s"] = time.time() - started
        r.pop("models", None)
        return r
    r["targets"] = targets(r)
    r["finetune_seconds"] = {str(h.parent.relative_to(out)): json.loads(h.read_text()).get("train_seconds", 0.0)
                             for h in sorted(out.glob("*/stage*/history.json")) + sorted(out.glob("budget*/*/history.json"))}
    if args.save_pruned:
        r["shipped"] = ship(r, Path(args.save_pruned), args.command, Path(args.model), log)
    r["elapsed_s"] = time.time() - started
    models = r.pop("models")
    r["finetuned_runs"] = {k: str(v[1]) for k, v in models.items()}
    if args.save_pruned:
        shipped_row = evaluate_row(load(args.save_pruned), method="shipped " + r["shipped"]["variant"])
        r["shipped"]["eval"] = shipped_row
        (Path(args.save_pruned) / "README.md").write_text(model_card(r, shipped_row))
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/teacher")
    p.add_argument("--out", default="runs/prune_quality", help="fine-tuning runs (resumable)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps a stage (S)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--eval-seq-len", type=int, default=256)
    p.add_argument("--calib-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=128)
    p.add_argument("--save-pruned", default=None, help="folder for the better fine-tuned 50%% / 2:4 model")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--budget-steps", type=int, default=0,
                   help="also fine-tune 50%% magnitude and the dense model this many steps in one stage")
    p.add_argument("--phases", nargs="+", default=list(ALL_PHASES), choices=list(ALL_PHASES) + ["budget"],
                   help="run only these (the tables and targets need all four)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.command = "python -m tinyinfer.sparse.experiment " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    r = run(args)
    if "targets" not in r:
        print(json.dumps(r, indent=1, default=float))
        return r
    text = markdown(r)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=float))
    if args.md:
        Path(args.md).write_text(text)
    return r


if __name__ == "__main__":
    main()
