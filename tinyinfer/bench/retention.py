"""Students that retain more: the retention curve, Minitron vs random init, and equal CPU time.

    OPENBLAS_NUM_THREADS=1 python -m tinyinfer.bench.retention [--steps 600] [--seeds 0 1] \\
        --json benchmarks/retention.json --md benchmarks/retention.md

Lesson: lessons/06-distillation.py

What it runs (each run in --runs/NAME, skipped when finished, so an interrupted study resumes):

1. the retention curve: students of about 5, 10, 25 and 50% of the teacher's parameters (SHAPES),
   each trained for the same --steps (so the same training tokens) on labels only and distilled
   from the teacher's cached top-32 (T, alpha: the earlier study's best), two seeds each, from
   random weights; held-out perplexity, top-1 and top-1 / the teacher's top-1 (retention).
2. Minitron-style students of the same shapes (tinyinfer/sparse/minitron.py: the teacher pruned in
   depth and width on calibration text, then trained the same two ways), against the random init.
3. equal CPU time (process CPU time, time.process_time: the machine is shared, and wall time would
   measure the neighbours): at --equal-time-sizes, labels only gets as many steps as the distilled
   run's CPU time *plus the whole CPU time of building the teacher cache* buys at its own measured
   CPU time a step. The step counts are computed once and stored (equal_time.json), so a resumed
   study does not re-derive them from other timings.

All runs draw their batches from the same fixed pool of training windows (tinyinfer.train.sample_rows),
so for a seed every run sees the same windows in the same order; all are evaluated on the same
held-out windows (the first --eval-windows windows of 256 tokens of the validation split).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import machine

SEQ_LEN, BATCH = 256, 8
INITS = ("random", "minitron")
# head_dim 32 and two KV heads as in the teacher, so each shape is also a pruned teacher (Minitron)
SHAPES = {
    "5%": {"n_layer": 1, "n_embd": 64, "n_head": 2, "ffn_hidden": 160},
    "10%": {"n_layer": 1, "n_embd": 96, "n_head": 4, "ffn_hidden": 256},
    "25%": {"n_layer": 2, "n_embd": 128, "n_head": 4, "ffn_hidden": 384},
    "50%": {"n_layer": 3, "n_embd": 192, "n_head": 6, "ffn_hidden": 352},
}


def shape_config(teacher_config, size: str):
    from ..config import ModelConfig

    if size not in SHAPES:
        raise ValueError(f"size must be one of {list(SHAPES)}, got {size!r}")
    return ModelConfig.from_dict({**teacher_config.to_dict(), **SHAPES[size], "head_dim": teacher_config.head_dim})


def train_config(steps, seed, lr, eval_windows):
    from ..train import TrainConfig

    return TrainConfig(seq_len=SEQ_LEN, batch_size=BATCH, max_steps=steps, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(50, max(1, steps // 10)), seed=seed, eval_every=max(1, steps // 6),
                       eval_windows=eval_windows)


class Study:
    """The teacher, the data, the cache and the evaluation every run shares."""

    def __init__(self, args):
        from .. import load
        from ..corpus import token_stream
        from ..distill import load_or_build_cache
        from ..sparse.experiment import Evaluator, calibration_ids

        self.args = args
        self.teacher = load(args.teacher)
        self.train_stream = token_stream(self.teacher.tokenizer, "train", progress=False)
        self.val = token_stream(self.teacher.tokenizer, "val", progress=False)
        self.runs = Path(args.runs)
        self.runs.mkdir(parents=True, exist_ok=True)
        self.cache = load_or_build_cache(self.teacher, self.train_stream, SEQ_LEN,
                                         args.cache or self.runs / f"teacher_top32_pool{args.pool}.safetensors",
                                         0, args.pool, progress=args.progress)
        self.cache_cpu = self.cache.cpu_seconds if self.cache.cpu_seconds is not None else self.cache.seconds
        self.evaluate_row = Evaluator(self.teacher, self.val, SEQ_LEN, args.eval_windows)
        self.calib = calibration_ids(self.train_stream, args.calib_windows, SEQ_LEN + 1, 0)  # (W, T + 1)
        self._minitron = {}

    def minitron(self, size):
        """The teacher pruned to the size's shape (computed once, stored as a model folder)."""
        from .. import load, save
        from ..sparse.minitron import minitron_prune

        folder = self.runs / f"minitron_{size.replace('%', 'pc')}"
        if size not in self._minitron:
            if not (folder / "model.safetensors").exists():
                t0 = time.process_time()
                model, info = minitron_prune(self.teacher, self.calib, **SHAPES[size])
                save(model, folder)
                (folder / "pruning.json").write_text(json.dumps({"layers": info["layers"],
                                                                 "cpu_seconds": time.process_time() - t0}))
            self._minitron[size] = load(folder)
        return self._minitron[size]

    def run(self, size, init, mode, steps, seed) -> dict:
        """Train (or read back) one student; its held-out row against the teacher, stored as final.json."""
        from .. import load
        from ..distill import cached_distillation_loss_fn
        from ..sparse.finetune import float32_params
        from ..train import train

        a = self.args
        name = f"{size.replace('%', 'pc')}_{init}_{mode}_s{steps}_seed{seed}"
        run_dir = self.runs / name
        final = run_dir / "final.json"
        if final.exists():
            return json.loads(final.read_text())
        config = shape_config(self.teacher.config, size)
        init_from = float32_params(self.minitron(size)) if init == "minitron" else None
        loss_fn = cached_distillation_loss_fn(self.cache, a.temperature, a.alpha) if mode == "distilled" else None
        train(config, train_config(steps, seed, a.lr, a.check_windows), None, self.val, run_dir,
              tokenizer=self.teacher.tokenizer, progress=a.progress, log=lambda *_: None, init_from=init_from,
              loss_fn=loss_fn, windows=self.cache.windows)
        history = json.loads((run_dir / "history.json").read_text())
        row = self.evaluate_row(load(run_dir), size=size, init=init, mode=mode, steps=steps, seed=seed, name=name)
        row.update(cpu_seconds=history["step_cpu_seconds"], wall_seconds=history["step_seconds"],
                   curve=[{"step": v["step"], "loss": v["loss"], "top1": v["top1"]} for v in history["val"]])
        final.write_text(json.dumps(row, indent=1))
        return row


def equal_time_steps(study: Study, size, init, seed, kd_row, per_step) -> int:
    """Labels-only steps whose CPU time equals the distilled run's plus the whole cache build's.

    Both steps' costs come from probe(): measured side by side, round by round, in one process, so
    they are comparable; the runs' own CPU seconds are not, when neighbours load the machine
    unevenly over the hours of a study (a run's CPU time grows when another process shares its
    core's caches: the same labels-only step measured 0.10 s in the probe and 0.165 s a step over
    a run made beside other work). Labels-only gets (steps x distilled step + cache) / labels step."""
    path = study.runs / "equal_time.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    key = f"{size}_{init}_seed{seed}_s{kd_row['steps']}"
    if key not in table:
        cost = per_step[size]
        table[key] = {"steps": round((kd_row["steps"] * cost["distilled"] + study.cache_cpu) / cost["labels"]),
                      "distilled_cpu": kd_row["steps"] * cost["distilled"], "cache_cpu": study.cache_cpu,
                      "labels_cpu_per_step": cost["labels"], "distilled_cpu_per_step": cost["distilled"],
                      "basis": "probe"}
        path.write_text(json.dumps(table, indent=1))
    return table[key]["steps"]


def summarize(rows, teacher_top1):
    out = {}
    for key in ("perplexity", "top1", "top1_agreement", "kl_divergence", "cpu_seconds", "steps"):
        values = [float(r[key]) for r in rows]
        out[key] = {"mean": float(np.mean(values)), "spread": float(np.max(values) - np.min(values)),
                    "values": values}
    kept = [r["top1"] / teacher_top1 for r in rows]
    out["retention"] = {"mean": float(np.mean(kept)), "spread": float(np.max(kept) - np.min(kept)), "values": kept}
    return out


def plan(args, per_step_cpu: dict, cache_cpu: float) -> dict:
    """The study's CPU budget from measured CPU seconds a step (printed before it starts).

    Curve and Minitron runs: sizes x inits x seeds x steps x (labels + distilled). Each equal-time
    labels run costs, by construction, its distilled twin's CPU time plus the cache's.
    """
    seeds, steps = len(args.seeds), args.steps
    inits = len(args.inits)
    curve = {size: inits * seeds * steps * (per_step_cpu[size]["labels"] + per_step_cpu[size]["distilled"])
             for size in args.sizes}
    equal = {size: inits * seeds * (steps * per_step_cpu[size]["distilled"] + cache_cpu) for size in args.equal_time_sizes}
    return {"curve_cpu_s": curve, "equal_time_cpu_s": equal,
            "total_cpu_h": (sum(curve.values()) + sum(equal.values())) / 3600}


def probe(study: Study, rounds=7) -> dict:
    """CPU seconds of one training step of each shape, labels only and distilled (medians)."""
    from ..distill import cached_distillation_loss_fn
    from ..model import init_params, loss_and_grads

    fn = cached_distillation_loss_fn(study.cache, study.args.temperature, study.args.alpha)
    rows = np.arange(BATCH)
    batch = study.cache.windows[rows].astype(np.int64)
    out = {}
    for size in study.args.sizes:
        config = shape_config(study.teacher.config, size)
        params = init_params(config, 0)
        times = {"labels": [], "distilled": []}
        for _ in range(rounds):
            for mode in times:
                t0 = time.process_time()
                if mode == "labels":
                    loss_and_grads(params, config, batch[:, :-1], batch[:, 1:])
                else:
                    fn(params, config, batch[:, :-1], batch[:, 1:], rows)
                times[mode].append(time.process_time() - t0)
        out[size] = {mode: float(np.median(v)) for mode, v in times.items()}
    return out


_WORKER_STUDY = None


def _worker_run(args, job):
    """One run in a worker process (its own Study: the teacher, the cache, the evaluator)."""
    global _WORKER_STUDY
    if _WORKER_STUDY is None:
        _WORKER_STUDY = Study(args)
    return _WORKER_STUDY.run(*job)


def run_all(st: Study, jobs, desc) -> list:
    """st.run(*job) for every job, in order; with --workers N > 1, N at a time in fresh processes.

    The runs are independent (each its own seed, folder and final.json) and each trains on one
    thread, so two workers on two cores finish a study in about half the wall time; CPU seconds, what
    the study compares, are each process's own."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm import tqdm

    a = st.args
    if a.workers <= 1:
        return [st.run(*job) for job in tqdm(jobs, desc=desc, unit="run", disable=not a.progress)]
    quiet = argparse.Namespace(**{**vars(a), "progress": False})
    with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as pool:  # spawn: no forked OpenMP state
        futures = [pool.submit(_worker_run, quiet, job) for job in jobs]
        for f in tqdm(futures, desc=desc, unit="run", disable=not a.progress):
            f.result()
    return [f.result() for f in futures]


def study(args) -> dict:

    st = Study(args)
    per_step = probe(st)
    budget = plan(args, per_step, st.cache_cpu)
    print(f"CPU seconds a step (B={BATCH}, T={SEQ_LEN}): " + ", ".join(
        f"{s}: labels {v['labels']:.2f}, distilled {v['distilled']:.2f}" for s, v in per_step.items()))
    print(f"planned: about {budget['total_cpu_h']:.1f} CPU hours (training steps only; evaluations add ~10%)",
          flush=True)
    teacher_row = st.evaluate_row(st.teacher, method="teacher")
    result = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "progress"},
              "shapes": SHAPES, "teacher": teacher_row, "teacher_params": st.teacher.num_params(),
              "cache_cpu_seconds": st.cache_cpu, "pool_windows": len(st.cache.windows), "probe": per_step,
              "plan": budget, "params": {s: shape_config(st.teacher.config, s).num_params() for s in args.sizes}}
    jobs = [(size, init, mode, seed) for init in args.inits for size in args.sizes
            for mode in ("labels", "distilled") for seed in args.seeds]
    for size in args.sizes:  # made once, before any worker needs them
        if "minitron" in args.inits:
            st.minitron(size)
    rows = dict(zip(jobs, run_all(st, [(size, init, mode, args.steps, seed) for size, init, mode, seed in jobs],
                                  "students")))
    pairs = [(s, i, seed) for i in args.inits for s in args.equal_time_sizes for seed in args.seeds]
    steps = [equal_time_steps(st, size, init, seed, rows[size, init, "distilled", seed], per_step)
             for size, init, seed in pairs]
    labels = run_all(st, [(size, init, "labels", n, seed) for (size, init, seed), n in zip(pairs, steps)],
                     "equal CPU time")
    equal = [{"size": size, "init": init, "seed": seed, "labels_steps": n, "labels": row,
              "distilled": rows[size, init, "distilled", seed], "cpu_per_step": per_step[size]}
             for (size, init, seed), n, row in zip(pairs, steps, labels)]
    t1 = teacher_row["top1"]
    result["runs"] = [dict(r) for r in rows.values()]
    result["summary"] = {f"{size} {init} {mode}": summarize([rows[size, init, mode, s] for s in args.seeds], t1)
                         for size in args.sizes for init in args.inits for mode in ("labels", "distilled")}
    result["equal_time"] = equal
    result["minitron_layers"] = {s: json.loads((st.runs / f"minitron_{s.replace('%', 'pc')}" / "pruning.json")
                                               .read_text()) for s in args.sizes}
    result["targets"] = targets(result, args)
    return result


def targets(r, args) -> dict:
    t1 = r["teacher"]["top1"]
    best = None
    for key, s in r["summary"].items():
        size = key.split()[0]
        if r["params"][size] <= 0.25 * r["teacher_params"] and (best is None or s["retention"]["mean"] > best[1]):
            best = (key, s["retention"]["mean"])
    wins = {}
    for e in r["equal_time"]:
        wins.setdefault((e["size"], e["init"]), []).append(e["distilled"]["perplexity"] < e["labels"]["perplexity"])
    won = [f"{size} {init}" for (size, init), w in wins.items() if all(w)]
    return {"student at <= 25% of the parameters keeping >= 85% of the teacher's top-1 (study runs)": {
                "measured": {"best": best[0], "retention": best[1], "teacher_top1": t1},
                "target": 0.85, "met": best[1] >= 0.85},
            "distillation ahead of labels-only at equal CPU time (cache charged), every seed, >= 2 sizes": {
                "measured": {f"{k[0]} {k[1]}": v for k, v in wins.items()}, "target": ">= 2 sizes",
                "met": len({w.split()[0] for w in won}) >= 2}}


# --------------------------------------------------------------------------------------------
# the report


def write_markdown(r, path):
    s, m, te = r["settings"], r["machine"], r["teacher"]
    lines = [
        "# Students that retain more", "",
        f"Generated by `python -m tinyinfer.bench.retention` ({time.strftime('%Y-%m-%d')}). Machine: "
        f"{m['cores']} cores ({m['cpu']}), NumPy {m['numpy']}, one BLAS thread, shared with other jobs. Times are "
        "process CPU time (time.process_time) of the training steps, so the neighbours' load does not count.", "",
        f"Every run: {s['steps']} steps of B={BATCH} windows of T={SEQ_LEN} ({s['steps'] * BATCH * SEQ_LEN:,} tokens), "
        f"lr {s['lr']:g} cosine to {s['lr'] / 10:g}, drawn from a fixed pool of {r['pool_windows']:,} training windows over "
        f"which the teacher's top-32 logits were cached once ({r['cache_cpu_seconds'] / 60:.1f} CPU min). Distilled: "
        f"T = {s['temperature']}, alpha = {s['alpha']}. Held-out: the first {s['eval_windows']} windows of 256 tokens of the "
        f"validation split ({te['eval_tokens']:,} positions), where the teacher has perplexity {te['perplexity']:.2f} and "
        f"top-1 {100 * te['top1']:.2f}%. Retention = student top-1 / teacher top-1. ± is half the range over seeds "
        f"{s['seeds']}.", "",
        "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, t in r["targets"].items():
        lines.append(f"| {name} | {json.dumps(t['measured'], default=str)} | {'yes' if t['met'] else 'NO'} |")
    lines += ["", "## The retention curve (equal training tokens)", "",
              "| size | params | init | trained on | perplexity | top-1 | retention | agreement | KL | CPU s |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def pm(sm, key, scale=1.0, fmt="{:.2f}"):
        return f"{fmt.format(sm[key]['mean'] * scale)} ± {fmt.format(sm[key]['spread'] * scale / 2)}"

    for key, sm in r["summary"].items():
        size, init, mode = key.split()
        lines.append(f"| {size} | {r['params'][size]:,} ({r['params'][size] / r['teacher_params']:.1%}) | {init} | "
                     f"{mode} | {pm(sm, 'perplexity')} | {pm(sm, 'top1', 100)}% | {pm(sm, 'retention', 100, '{:.1f}')}% | "
                     f"{pm(sm, 'top1_agreement', 100)}% | {pm(sm, 'kl_divergence', 1, '{:.3f}')} | "
                     f"{sm['cpu_seconds']['mean']:.0f} |")
    lines += ["", "## Equal CPU time (the whole cache build charged to each distilled run)", "",
              ("CPU seconds a step, measured side by side before the runs (B=8, T=256, median of 7 alternating "
               "rounds): " + ", ".join(f"{size}: labels only {v['labels']:.3f}, distilled {v['distilled']:.3f}"
                                       for size, v in r["probe"].items()) + ". Labels only gets (distilled steps x "
               "a distilled step + the cache) / a labels-only step. The runs' own CPU seconds are in the curve "
               "table; they move with the machine's load over the hours of a study."), "",
              "| size | init | seed | distilled: steps, CPU s + cache | perplexity | top-1 | labels only: steps | "
              "perplexity | top-1 | distilled ahead |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["equal_time"]:
        d, lab = e["distilled"], e["labels"]
        cost = e.get("cpu_per_step", {"distilled": d["cpu_seconds"] / d["steps"]})
        lines.append(f"| {e['size']} | {e['init']} | {e['seed']} | {d['steps']}, {d['steps'] * cost['distilled']:.0f} + "
                     f"{r['cache_cpu_seconds']:.0f} | {d['perplexity']:.2f} | {100 * d['top1']:.2f}% | {e['labels_steps']} "
                     f"| {lab['perplexity']:.2f} | {100 * lab['top1']:.2f}% | "
                     f"{'yes' if d['perplexity'] < lab['perplexity'] else 'no'} |")
    lines += ["", "Minitron blocks kept (of the teacher's 5): " + ", ".join(
        f"{s}: {v['layers']}" for s, v in r["minitron_layers"].items()), ""]
    Path(path).write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="models/teacher")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps of every curve run (equal tokens)")
    p.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--equal-time-sizes", nargs="*", default=["10%", "25%"], choices=list(SHAPES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS),
                   help="random: a fresh student; minitron: the teacher pruned to the student's shape")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--pool", type=int, default=4000, help="fixed training windows every run draws from (cached)")
    p.add_argument("--cache", default=None, help="the teacher's top-k cache over the pool (built there if absent)")
    p.add_argument("--calib-windows", type=int, default=32, help="calibration windows for Minitron's importance")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--check-windows", type=int, default=16, help="held-out windows of the checks along a run")
    p.add_argument("--runs", default="runs/retention")
    p.add_argument("--json")
    p.add_argument("--md")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once, each in its own process on one thread (use the cores you have)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be >= 1, got {args.workers}")
    if len(args.seeds) < 2:
        raise SystemExit(f"error: --seeds needs at least 2 seeds to measure the spread, got {args.seeds}")
    if not set(args.equal_time_sizes) <= set(args.sizes):
        raise SystemExit(f"error: --equal-time-sizes {args.equal_time_sizes} must be among --sizes {args.sizes}")
    r = study(args)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    if args.md:
        write_markdown(r, args.md)
    print(json.dumps(r["targets"], indent=1))


if __name__ == "__main__":
    main()
