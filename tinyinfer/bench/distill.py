"""Distillation study: the same student trained on labels alone and on the teacher's soft targets.

    python -m tinyinfer.bench.distill [--steps 400] [--sweep-steps 150] [--pool 2400] [--seeds 0 1]
        [--json benchmarks/distill.json] [--md benchmarks/distill.md]

Lesson: lessons/06-distillation.py

What it runs, in this order (each run lives in --runs/NAME and is skipped when already finished,
so an interrupted study resumes where it stopped):

1. the teacher's top-k cache (tinyinfer.distill.build_teacher_cache) over a fixed random pool of
   --pool windows of the training stream, built once; every study run samples from that pool and
   a distilled run is charged the whole build time where wall time is compared;
2. throughput: one training step of each of labels only / KD from the cache / KD with the teacher
   on the fly, interleaved round by round in this process (medians), so the teacher's cost is a ratio;
3. a sweep over T x alpha, short runs (--sweep-steps), one seed, plus labels only at that length;
4. equal optimizer steps: labels only vs KD (the sweep's best T, alpha) at --steps, for every seed;
5. equal wall time: labels only given as many steps as the distilled run's time buys, the teacher's
   cost counted in full (the pool's whole cache build charged to this one run);
6. full-vocabulary KD with the teacher on the fly at the sweep's length, to measure what the top-k
   approximation costs.

All runs see the same windows in the same order for a given seed (tinyinfer.train.sample_rows)
and are evaluated on the same fixed held-out subset (the first --eval-windows windows of the
validation split) against the shipped teacher: perplexity, top-1, top-1 agreement, KL(teacher||student).
Batch-1 decode speed is student vs teacher generate(), interleaved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from . import interleaved, machine

SEQ_LEN, BATCH = 256, 8


def load_or_build_cache(teacher, train_stream, path, first, count, k=32, temperatures=(1.0, 2.0, 4.0),
                        progress=True):
    from ..distill import load_or_build_cache as build

    return build(teacher, train_stream, SEQ_LEN, path, first, count, k, temperatures, progress)


def student_setup(steps, seed, warmup=50):
    from ..presets import get_preset

    config, tc = get_preset("student")
    tc.max_steps, tc.seed, tc.warmup_steps = steps, seed, min(warmup, max(1, steps // 5))
    tc.eval_every, tc.seq_len, tc.batch_size = max(1, steps // 6), SEQ_LEN, BATCH
    return config, tc


def make_loss(mode, teacher, cache, temperature, alpha):
    """mode: labels | topk (KD from the cache) | full (KD, teacher on the fly) -> loss_fn for train_on_windows."""
    from ..distill import cached_distillation_loss_fn, distillation_loss_fn

    if mode == "labels":
        return None
    if mode == "topk":
        return cached_distillation_loss_fn(cache, temperature, alpha)
    if mode == "full":
        fly = distillation_loss_fn(teacher, temperature, alpha)
        return lambda params, config, inputs, targets, rows: fly(params, config, inputs, targets)
    raise ValueError(f"mode must be labels, topk or full, got {mode!r}")


def measure_throughput(teacher, cache, rounds=5, temperature=2.0, alpha=0.5):
    """Seconds per training step (B=8, T=256) of the three ways, interleaved; medians and ratios."""
    from ..model import init_params
    from ..train import AdamW, clip_grad_norm

    config, tc = student_setup(100, 0)
    params = init_params(config, 0)
    opt = AdamW(params, tc)
    modes = {m: make_loss(m, teacher, cache, temperature, alpha) for m in ("labels", "topk", "full")}
    times = {m: [] for m in modes}
    for r in range(rounds + 1):
        rows = np.arange(r * BATCH, (r + 1) * BATCH) % len(cache.windows)
        batch = cache.windows[rows].astype(np.int64)
        for mode, fn in modes.items():
            t0 = time.perf_counter()
            from ..model import loss_and_grads

            loss, grads = (fn(params, config, batch[:, :-1], batch[:, 1:], rows) if fn else
                           loss_and_grads(params, config, batch[:, :-1], batch[:, 1:]))
            clip_grad_norm(grads, 1.0)
            opt.step(params, grads, 1e-4)
            if r:  # round 0 warms up
                times[mode].append(time.perf_counter() - t0)
    step_s = {m: statistics.median(t) for m, t in times.items()}
    per_round = lambda m: statistics.median(a / b for a, b in zip(times[m], times["labels"]))  # noqa: E731
    tokens = BATCH * SEQ_LEN
    return {"step_seconds": step_s, "tokens_per_s": {m: tokens / s for m, s in step_s.items()},
            "slowdown_vs_labels": {m: per_round(m) for m in step_s}, "rounds": rounds,
            "cache_build_tokens_per_s": cache.windows.shape[0] * SEQ_LEN / cache.seconds}


def final_eval(run_dir, teacher, val_stream, eval_windows):
    """Held-out figures of a finished run against the teacher, stored beside it as final.json."""
    from .. import load
    from ..evaluate import evaluate

    path = Path(run_dir) / "final.json"
    if path.exists():
        return json.loads(path.read_text())
    model = load(run_dir)
    out = evaluate(model, val_stream, SEQ_LEN, eval_windows, reference=teacher)
    history = json.loads((Path(run_dir) / "history.json").read_text())
    out["train_seconds"] = history.get("step_seconds", history["train_seconds"])  # training steps only
    out["steps"] = history["val"][-1]["step"]
    out["curve"] = [{"step": v["step"], "tokens": v["tokens"], "loss": v["loss"], "top1": v["top1"]}
                    for v in history["val"]]
    out["train_curve"] = [{"step": r["step"], "loss": r["loss"]} for r in history["train"]]
    path.write_text(json.dumps(out, indent=1))
    return out


def run_one(runs_dir, name, mode, steps, seed, teacher, cache, val_stream, eval_windows,
            temperature=None, alpha=None, progress=True):
    from ..distill import train_on_windows

    run_dir = Path(runs_dir) / name
    if not (run_dir / "final.json").exists():
        config, tc = student_setup(steps, seed)
        tc.eval_windows = eval_windows
        loss_fn = make_loss(mode, teacher, cache, temperature, alpha)
        train_on_windows(config, tc, cache.windows, val_stream, run_dir, loss_fn=loss_fn,
                         tokenizer=teacher.tokenizer, progress=progress, log=lambda *_: None)
    result = final_eval(run_dir, teacher, val_stream, eval_windows)
    return {"name": name, "mode": mode, "steps": steps, "seed": seed, "temperature": temperature,
            "alpha": alpha, **result}


def decode_speed(student, teacher, new_tokens=64, rounds=7):
    """Batch-1 greedy decode, student vs teacher generate(), interleaved: tokens/s and the ratio."""
    prompt = np.arange(16) % teacher.config.vocab_size
    r = interleaved(lambda: student.generate(prompt, new_tokens), lambda: teacher.generate(prompt, new_tokens),
                    rounds=rounds)
    return {"student_tokens_per_s": new_tokens / r["fast_s"], "teacher_tokens_per_s": new_tokens / r["baseline_s"],
            "ratio": r["ratio"], "rounds": rounds, "new_tokens": new_tokens, "prompt_tokens": 16}


def summarize(runs):
    """Mean and seed-to-seed spread (max - min) of the headline figures over a group of runs."""
    out = {}
    for key in ("perplexity", "top1", "top1_agreement", "kl_divergence", "train_seconds", "steps"):
        values = [r[key] for r in runs]
        out[key] = {"mean": float(np.mean(values)), "spread": float(np.max(values) - np.min(values)),
                    "values": values}
    return out


def study(args):
    from .. import load
    from ..corpus import token_stream

    teacher = load("models/teacher")
    train_stream = token_stream(teacher.tokenizer, "train", progress=False)
    val_stream = token_stream(teacher.tokenizer, "val", progress=False)
    runs_dir = Path(args.runs)
    cache = load_or_build_cache(teacher, train_stream, runs_dir / f"teacher_top{args.k}_pool{args.pool}.safetensors",
                                0, args.pool, args.k, progress=not args.quiet)
    progress = not args.quiet
    kw = dict(teacher=teacher, cache=cache, val_stream=val_stream, eval_windows=args.eval_windows, progress=progress)
    result = {"machine": machine(), "settings": vars(args).copy(), "pool_windows": args.pool,
              "pool_tokens": args.pool * SEQ_LEN, "cache_seconds_pool": cache.seconds, "k": cache.k}
    # measured once and kept: the equal-wall-time step counts derive from it, so a resumed study
    # must not re-measure (the machine's load would give other counts and orphan finished runs)
    throughput_path = runs_dir / "throughput.json"
    if throughput_path.exists():
        result["throughput"] = json.loads(throughput_path.read_text())
    else:
        print("throughput (interleaved) ...", flush=True)
        result["throughput"] = measure_throughput(teacher, cache)
        throughput_path.write_text(json.dumps(result["throughput"], indent=1))
    print(json.dumps(result["throughput"], indent=1), flush=True)

    teacher_eval = final_eval_teacher(runs_dir, teacher, val_stream, args.eval_windows)
    result["teacher"] = teacher_eval

    # the sweep, one seed, short
    sweep = [run_one(runs_dir, f"sweep_labels_s{args.sweep_steps}", "labels", args.sweep_steps, 0, **kw)]
    grid = [(t, a) for t in args.temperatures for a in args.alphas]
    for t, a in grid:
        print(f"sweep T={t} alpha={a}", flush=True)
        sweep.append(run_one(runs_dir, f"sweep_T{t}_a{a}_s{args.sweep_steps}", "topk", args.sweep_steps, 0,
                             temperature=t, alpha=a, **kw))
    result["sweep"] = sweep
    best = min(sweep[1:], key=lambda r: r["perplexity"])
    T, alpha = best["temperature"], best["alpha"]
    result["chosen"] = {"temperature": T, "alpha": alpha,
                        "why": "the lowest held-out perplexity in the sweep, on the same val subset as every figure"}

    # equal steps
    labels = [run_one(runs_dir, f"labels_s{args.steps}_seed{s}", "labels", args.steps, s, **kw) for s in args.seeds]
    kd = [run_one(runs_dir, f"topk_T{T}_a{alpha}_s{args.steps}_seed{s}", "topk", args.steps, s,
                  temperature=T, alpha=alpha, **kw) for s in args.seeds]
    # equal wall time: the distilled run's training seconds plus the whole teacher cost of its
    # pool, converted into labels-only steps with the interleaved throughput (robust to the
    # machine's load drifting between runs)
    tp = result["throughput"]["step_seconds"]
    kd_wall = args.steps * tp["topk"] + cache.seconds
    wall_steps = int(round(kd_wall / tp["labels"]))
    fly_steps = int(round(args.steps * tp["full"] / tp["labels"]))
    result["equal_wall"] = {"distilled_seconds_estimate": kd_wall, "labels_steps": wall_steps,
                            "labels_steps_if_teacher_on_the_fly": fly_steps,
                            "rule": "labels steps = (steps x topk step seconds + pool cache seconds) / "
                                    "labels step seconds"}
    labels_wall = [run_one(runs_dir, f"labels_s{wall_steps}_seed{s}", "labels", wall_steps, s, **kw)
                   for s in args.seeds]
    # the cache is built once and every distilled run of this study reads it (the sweep's and the
    # equal-steps runs): shared between them, each is charged only its part
    sharing = len(grid) + len(args.seeds)
    amortized_steps = int(round((args.steps * tp["topk"] + cache.seconds / sharing) / tp["labels"]))
    result["equal_wall"].update(labels_steps_cache_amortized=amortized_steps, cache_shared_by_runs=sharing)
    labels_amortized = [run_one(runs_dir, f"labels_s{amortized_steps}_seed{s}", "labels", amortized_steps, s, **kw)
                        for s in args.seeds]
    result["equal_wall_amortized_runs"] = {"labels": labels_amortized, "distilled": kd,
                                           "summary": {"labels": summarize(labels_amortized),
                                                       "distilled": summarize(kd)}}
    result["equal_steps"] = {"labels": labels, "distilled": kd,
                             "summary": {"labels": summarize(labels), "distilled": summarize(kd)}}
    result["equal_wall_runs"] = {"labels": labels_wall, "distilled": kd,
                                 "summary": {"labels": summarize(labels_wall), "distilled": summarize(kd)}}
    # what the top-k approximation costs: full KD, teacher on the fly, at the sweep's length
    # (at the chosen T, and at one other: the higher T is, the more of the softened teacher lies
    # outside its top-k, so the approximation is checked where it should bite too)
    other_T = next(t for t in sorted(args.temperatures, key=lambda t: abs(t - 2.0)) if t != T)
    result["full_vs_topk"] = [
        {"temperature": t, "alpha": alpha,
         "full": run_one(runs_dir, f"full_T{t}_a{alpha}_s{args.sweep_steps}", "full", args.sweep_steps, 0,
                         temperature=t, alpha=alpha, **kw),
         "topk": next(r for r in sweep if r["temperature"] == t and r["alpha"] == alpha)} for t in (T, other_T)]
    student = load(runs_dir / kd[0]["name"])
    result["params"] = {"student": student.num_params(), "teacher": teacher.num_params(),
                        "ratio": student.num_params() / teacher.num_params()}
    result["decode"] = decode_speed(student, teacher)
    return result


def final_eval_teacher(runs_dir, teacher, val_stream, eval_windows):
    from ..evaluate import evaluate

    path = Path(runs_dir) / f"teacher_eval_{eval_windows}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = evaluate(teacher, val_stream, SEQ_LEN, eval_windows)
    path.write_text(json.dumps(out))
    return out


# --------------------------------------------------------------------------------------------
# the report


def _row(label, s):
    def f(key, scale=1.0, fmt="{:.2f}"):  # mean ± half the seed-to-seed range
        return f"{fmt.format(s[key]['mean'] * scale)} ± {fmt.format(s[key]['spread'] * scale / 2)}"

    return (f"| {label} | {s['steps']['mean']:.0f} | {f('perplexity')} | {f('top1', 100)}% | "
            f"{f('top1_agreement', 100)}% | {f('kl_divergence', 1, '{:.3f}')} | {s['train_seconds']['mean']:.0f} |")


def write_markdown(r, path):
    tp = r["throughput"]
    te = r["teacher"]
    lines = [
        "# Distillation study", "",
        f"Generated by `python -m tinyinfer.bench.distill` ({time.strftime('%Y-%m-%d')}). Machine: "
        f"{r['machine']['cores']} cores ({r['machine']['cpu']}), NumPy {r['machine']['numpy']}, one BLAS "
        "thread, shared with other jobs (timings drift; throughput is interleaved, medians). The \"train s\" "
        "columns are each run's own step time under whatever load it met, so they do not compare across runs; "
        "the equal-wall-time step counts come from the interleaved throughput table instead.", "",
        f"Student: {r['params']['student']:,} parameters = {100 * r['params']['ratio']:.2f}% of the teacher's "
        f"{r['params']['teacher']:,}. Every run: B={BATCH} windows of T={SEQ_LEN} drawn from a fixed pool of "
        f"{r['pool_windows']:,} windows ({r['pool_tokens']:,} tokens) of the training split; evaluated on the first "
        f"{r['settings']['eval_windows']} windows of the validation split ({te['tokens']:,} predicted tokens), where "
        f"the teacher has perplexity {te['perplexity']:.2f} and top-1 {100 * te['top1']:.2f}%. "
        "± is half the seed-to-seed range.", "",
        "## What the teacher costs (one training step, interleaved medians)", "",
        "| way | s / step | tokens/s | slowdown vs labels only |", "|---|---|---|---|"]
    names = {"labels": "labels only", "topk": f"KD from the cached top-{r['k']}", "full": "KD, teacher on the fly"}
    for m in ("labels", "topk", "full"):
        lines.append(f"| {names[m]} | {tp['step_seconds'][m]:.3f} | {tp['tokens_per_s'][m]:,.0f} | "
                     f"{tp['slowdown_vs_labels'][m]:.2f}x |")
    lines += ["", f"Building the cache ran the teacher at {tp['cache_build_tokens_per_s']:,.0f} tokens/s; the "
              f"pool's share is {r['cache_seconds_pool']:.0f} s.", "",
              f"## Equal optimizer steps ({r['settings']['steps']} steps, seeds {r['settings']['seeds']})", "",
              f"Distilled with T = {r['chosen']['temperature']}, alpha = {r['chosen']['alpha']} "
              f"({r['chosen']['why']}).", "",
              "| run | steps | perplexity | top-1 | agreement with teacher | KL(teacher‖student) | train s |",
              "|---|---|---|---|---|---|---|"]
    es = r["equal_steps"]["summary"]
    lines += [_row("labels only", es["labels"]), _row("distilled (top-k cache)", es["distilled"])]
    ew = r["equal_wall"]
    lines += ["", "## Equal wall time (the teacher's whole cost charged to the distilled run)", "",
              f"The distilled run costs {r['settings']['steps']} x {tp['step_seconds']['topk']:.3f} s + "
              f"{r['cache_seconds_pool']:.0f} s of cache = {ew['distilled_seconds_estimate']:.0f} s, which buys "
              f"labels only {ew['labels_steps']} steps. (With the teacher on the fly instead of a cache it would "
              f"buy {ew['labels_steps_if_teacher_on_the_fly']}.)", "",
              "| run | steps | perplexity | top-1 | agreement with teacher | KL(teacher‖student) | train s |",
              "|---|---|---|---|---|---|---|",
              _row("labels only", r["equal_wall_runs"]["summary"]["labels"]),
              _row("distilled (top-k cache)", r["equal_wall_runs"]["summary"]["distilled"])]
    if "equal_wall_amortized_runs" in r:
        lines += ["", "## Equal wall time, the cache shared by the study's runs", "",
                  f"The same cache serves all {ew['cache_shared_by_runs']} distilled runs that read it (the sweep's "
                  f"and these), so each is charged 1/{ew['cache_shared_by_runs']} of its build: "
                  f"{r['cache_seconds_pool'] / ew['cache_shared_by_runs']:.0f} s, which with the steps buys labels only "
                  f"{ew['labels_steps_cache_amortized']} steps.", "",
                  "| run | steps | perplexity | top-1 | agreement with teacher | KL(teacher‖student) | train s |",
                  "|---|---|---|---|---|---|---|",
                  _row("labels only", r["equal_wall_amortized_runs"]["summary"]["labels"]),
                  _row("distilled (top-k cache)", r["equal_wall_amortized_runs"]["summary"]["distilled"])]
    lines += ["", f"## Sweep over T and alpha ({r['settings']['sweep_steps']} steps, seed 0)", "",
              "| T | alpha | perplexity | top-1 | agreement | KL |", "|---|---|---|---|---|---|"]
    for s in r["sweep"]:
        t = "labels only" if s["mode"] == "labels" else s["temperature"]
        lines.append(f"| {t} | {'' if s['alpha'] is None else s['alpha']} | {s['perplexity']:.2f} | "
                     f"{100 * s['top1']:.2f}% | {100 * s['top1_agreement']:.2f}% | {s['kl_divergence']:.3f} |")
    lines += ["", f"## What the top-k approximation costs (same alpha, steps, seed; {r['settings']['sweep_steps']} "
              "steps)", "", "| T | soft targets | perplexity | top-1 | agreement | KL | train s |",
              "|---|---|---|---|---|---|---|"]
    for fv in r["full_vs_topk"]:
        for label, s in (("full vocabulary, teacher on the fly", fv["full"]),
                         (f"top-{r['k']} + tail bucket, cached", fv["topk"])):
            lines.append(f"| {fv['temperature']} | {label} | {s['perplexity']:.2f} | {100 * s['top1']:.2f}% | "
                         f"{100 * s['top1_agreement']:.2f}% | {s['kl_divergence']:.3f} | {s['train_seconds']:.0f} |")
    d = r["decode"]
    lines += ["", "## Size and speed", "",
              f"Parameters: {r['params']['student']:,} vs {r['params']['teacher']:,} "
              f"({100 * r['params']['ratio']:.2f}%). "
              f"Batch-1 greedy decode ({d['new_tokens']} tokens after {d['prompt_tokens']}), interleaved over "
              f"{d['rounds']} rounds: student {d['student_tokens_per_s']:.0f} tokens/s, teacher "
              f"{d['teacher_tokens_per_s']:.0f} tokens/s, median ratio **{d['ratio']:.2f}x**.", ""]
    Path(path).write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------
# shipping the student: the model card of tinyinfer.model_card, plus the teacher beside it


def ship_student(run_dir, out_dir, command, note="", teacher_dir="models/teacher", rounds=7, max_params=0.10,
                 min_top1_kept=0.95, min_speedup=5.0):
    """models/student (or student-25): float16 weights and card (tinyinfer.model_card.write_card), then a
    section measuring the shipped student beside the teacher on the whole held-out split.

    max_params, min_top1_kept, min_speedup: the targets the card checks (fraction of the teacher's
    parameters, fraction of its top-1, decode speed ratio). A run started with --init minitron is
    described as the teacher pruned and distilled, not as trained from scratch."""
    from .. import load
    from ..corpus import token_stream
    from ..evaluate import evaluate
    from ..model_card import write_card

    history = json.loads((Path(run_dir) / "history.json").read_text())
    settings = history.get("distill", {})
    cache_s = settings.get("cache_seconds", 0.0)
    note = (note + "\n\n" if note else "") + (
        f"Distilled with T = {settings.get('temperature')}, alpha = {settings.get('alpha')} from the teacher's top-"
        f"{settings.get('top_k')} logits cached over {settings.get('cache_windows')} fixed windows of 256 tokens of "
        f"the training split. The training time above counts optimizer steps only (not the periodic evaluations); "
        f"building the teacher cache took another {cache_s / 60:.1f} min, so the teacher's cost was "
        f"{cache_s / 3600:.2f} h and the whole run {(history.get('step_seconds', history['train_seconds']) + cache_s) / 3600:.2f} h. The machine "
        "was shared with other jobs throughout.")
    if settings.get("init") == "minitron":
        note += (" The student did not start from random weights: it started as the teacher pruned to its shape "
                 "(tinyinfer/sparse/minitron.py: blocks by calibration loss, heads, MLP neurons and channels by "
                 "activation), then was distilled; the training time above does not include that pruning "
                 "(seconds of one-shot work on 32 calibration windows).")
    write_card(run_dir, out_dir, "float16", command, SEQ_LEN, note)
    card_path = Path(out_dir) / "README.md"
    if settings.get("init") == "minitron":
        card_path.write_text(card_path.read_text().replace(
            "language model trained from scratch by tinyinfer", "language model pruned from models/teacher and "
            "distilled by tinyinfer", 1))
    teacher, student = load(teacher_dir), load(out_dir)
    val = token_stream(teacher.tokenizer, "val", progress=False)
    st = evaluate(student, val, SEQ_LEN, reference=teacher)
    te = evaluate(teacher, val, SEQ_LEN)
    speed = decode_speed(student, teacher, rounds=rounds)
    ratio = student.num_params() / teacher.num_params()
    keep = st["top1"] / te["top1"]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    section = f"""
## Beside the teacher (whole validation split, {st['tokens']:,} predicted tokens, windows of {SEQ_LEN})

| | teacher | student | student / teacher | target |
|---|---|---|---|---|
| parameters | {teacher.num_params():,} | {student.num_params():,} | {100 * ratio:.2f}% | <= {max_params:.0%}: {verdict(ratio <= max_params)} |
| perplexity | {te['perplexity']:.2f} | {st['perplexity']:.2f} | {st['perplexity'] / te['perplexity']:.2f}x | |
| top-1 next-token accuracy | {100 * te['top1']:.2f}% | {100 * st['top1']:.2f}% | {100 * keep:.1f}% | >= {min_top1_kept:.0%}: {verdict(keep >= min_top1_kept)} |
| agreement with the teacher's top-1 | | {100 * st['top1_agreement']:.2f}% | | |
| KL(teacher ‖ student), nats/token | | {st['kl_divergence']:.3f} | | |
| batch-1 greedy decode, tokens/s | {speed['teacher_tokens_per_s']:.0f} | {speed['student_tokens_per_s']:.0f} | {speed['ratio']:.2f}x | {f">= {min_speedup:g}x: " + verdict(speed['ratio'] >= min_speedup) if min_speedup else "reported"} |

Decode: {speed['new_tokens']} tokens after a {speed['prompt_tokens']}-token prompt, student and teacher
`generate()` interleaved over {rounds} rounds in one process, median ratio; one BLAS thread, on a
machine shared with other jobs. The same student trained on labels alone is compared in
`benchmarks/distill.md` (`python -m tinyinfer.bench.distill`).

The "last training loss" above and the training curve in loss_curves.png are the distillation
loss (alpha T² KL + (1 - alpha) CE), not cross-entropy, so they sit below the held-out
cross-entropy by construction; the held-out points are plain cross-entropy on the labels.
"""
    card_path.write_text(card_path.read_text() + section)
    return {"student": st, "teacher": te, "decode": speed, "param_ratio": ratio, "top1_kept": keep}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="optimizer steps of the equal-steps runs")
    p.add_argument("--sweep-steps", type=int, default=150, help="optimizer steps of each sweep run")
    p.add_argument("--pool", type=int, default=2400, help="training windows the study draws from")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    p.add_argument("--k", type=int, default=32, help="teacher logits kept per position in the cache")
    p.add_argument("--eval-windows", type=int, default=48, help="held-out windows of 256 tokens (fixed subset)")
    p.add_argument("--runs", default="runs/distill", help="where the cache and the runs live (resumable)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--md", help="write the tables to this markdown file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ship", metavar="RUN_DIR", help="instead of the study: ship a finished `tinyinfer distill` "
                   "run as --to (float16, model card with the teacher beside it)")
    p.add_argument("--to", default="models/student", help="with --ship: the model folder to write")
    p.add_argument("--command", default="", help="with --ship: the command that trained the run (for the card)")
    p.add_argument("--note", default="", help="with --ship: a paragraph on how the run went")
    p.add_argument("--max-params", type=float, default=0.10, help="with --ship: the parameter budget the card checks")
    p.add_argument("--min-top1-kept", type=float, default=0.95,
                   help="with --ship: the share of the teacher's top-1 the card checks")
    p.add_argument("--min-speedup", type=float, default=5.0, help="with --ship: the decode ratio the card checks "
                   "(0: report only)")
    args = p.parse_args(argv)
    if args.ship:
        print(json.dumps(ship_student(args.ship, args.to, args.command, args.note, max_params=args.max_params,
                                      min_top1_kept=args.min_top1_kept, min_speedup=args.min_speedup), indent=1))
        return
    if len(args.seeds) < 2:
        raise SystemExit(f"error: --seeds needs at least 2 seeds to measure the spread, got {args.seeds}")
    result = study(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.md:
        write_markdown(result, args.md)
    print(json.dumps({k: result[k] for k in ("throughput", "chosen", "equal_wall", "params", "decode")}, indent=1))


if __name__ == "__main__":
    main()
