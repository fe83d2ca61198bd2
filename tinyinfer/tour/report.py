"""The tour's output: the table in the terminal, a report folder (Markdown + PNG plots), JSON.

Lesson: lessons/09-putting-it-together.py
"""
from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("#", "technique", "tokens/s", "x naive", "x previous", "weights MB", "ppl", "top-1 vs teacher")


def _fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def row_cells(i: int, r: dict, names: dict) -> list[str]:
    if r["status"] != "measured":
        return [str(i), r["technique"], "—", "—", "—", "—", "—", "—"]
    prev = f"{_fmt(r['ratio_vs_previous'], '.2f')}x vs {names[r['previous']]}" if r["previous"] else "—"
    return [str(i), r["technique"], _fmt(r["tokens_per_s"], ".0f"), f"{_fmt(r['ratio_vs_naive'], '.1f')}x", prev,
            _fmt(r["weight_bytes"] / 1e6, ".2f"), _fmt(r["perplexity"], ".2f"), _fmt(r["top1_relative"], ".1%")]


def format_table(results: dict) -> str:
    """The table as fixed-width text, then the claims and notes per row, targets, the machine."""
    rows = results["rows"]
    names = {r["key"]: f"#{i}" for i, r in enumerate(rows, 1)}
    cells = [list(COLUMNS)] + [row_cells(i, r, names) for i, r in enumerate(rows, 1)]
    widths = [max(len(c[j]) for c in cells) for j in range(len(COLUMNS))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if j == 1 else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths))))
        if n == 0:
            lines.append("-" * len(lines[0]))
    lines.append("")
    lines.append("the article's claim and what else was seen, per row:")
    for i, r in enumerate(rows, 1):
        lines.append(f"  #{i} claim: {r['claim']}")
        if r["note"]:
            lines.append(f"      {'MISSING: ' if r['status'] == 'missing' else ''}{r['note']}")
    if results["speculative_sweep"]:
        lines.append("")
        lines.append("speculative decoding vs draft length k (greedy; speedup over the teacher alone, interleaved):")
        for x in results["speculative_sweep"]:
            lines.append(f"  k={x['k']}: acceptance {x['acceptance_rate']:.0%}, {x['tokens_per_round']:.2f} tokens per "
                         f"target pass, {x['tokens_per_s']:.0f} tokens/s, {x['speedup_vs_teacher']:.2f}x, "
                         f"identical output: {x['identical_to_teacher']}")
    lines.append("")
    lines += real_model_lines(results.get("real_model", {}))
    lines.append("")
    lines.append("targets:")
    for t in results["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"  [{verdict}] {t['target']}: {t['measured']}")
    m = results["machine"]
    lines.append("")
    lines.append(f"machine: {m.get('cpu')}, {m.get('cores')} cores, NumPy {m.get('numpy')} ({m.get('blas')}), "
                 f"Numba {m.get('numba')} ({m.get('numba_threading_layer')}); wall time "
                 f"{results['wall_time_s']:.0f} s")
    lines.append("timings on a shared machine are noisy: every ratio is a median over rounds of the same "
                 "workload, all rows interleaved in one process")
    return "\n".join(lines)


REAL_COLUMNS = ("#", "technique", "tokens/s", "x naive", "x previous", "weights MB", "ppl", "top-1 agreement")


def real_model_cells(rows: list[dict]) -> list[list[str]]:
    names = {r["key"]: f"#{i}" for i, r in enumerate(rows, 1)}
    cells = []
    for i, r in enumerate(rows, 1):
        prev = f"{r['ratio_vs_previous']:.2f}x vs {names[r['previous']]}" if r["previous"] else "—"
        cells.append([str(i), r["technique"], f"{r['tokens_per_s']:.1f}", f"{r['ratio_vs_naive']:.1f}x", prev,
                      f"{r['weight_bytes'] / 1e6:.1f}", f"{r['perplexity']:.2f}", f"{r['top1_agreement']:.1%}"])
    return cells


def real_model_lines(real: dict) -> list[str]:
    """The SmolLM2-135M table as fixed-width text, or the reason it is not there."""
    if "rows" not in real:
        return [f"a real model (SmolLM2-135M-Instruct): {real.get('missing', 'not run')}"]
    w = real["workload"]
    lines = [f"a real model, SmolLM2-135M-Instruct (weights stream from memory): {w['requests']} chat requests of "
             f"{w['new_tokens']} tokens ({w['source']}); one-at-a-time rows decode {w['one_at_a_time']} of them, "
             f"naive the same {w['naive']} (estimated, see below). Quality: held-out perplexity, and top-1 agreement "
             f"with the file's own weights (its Q4_1 blocks expanded to float32: the reference)"]
    cells = [list(REAL_COLUMNS)] + real_model_cells(real["rows"])
    widths = [max(len(c[j]) for c in cells) for j in range(len(REAL_COLUMNS))]
    for n, c in enumerate(cells):
        lines.append("  ".join(v.ljust(wd) if j == 1 else v.rjust(wd) for j, (v, wd) in enumerate(zip(c, widths))))
        if n == 0:
            lines.append("-" * len(lines[-1]))
    for i, r in enumerate(real["rows"], 1):
        if r["note"]:
            lines.append(f"  #{i} {r['note']}")
    long = real["long"]
    naive = real.get("naive")
    if naive:
        fit, check = naive["fit"], naive["check"]
        steps = ", ".join(f"{n}: {t:.2f} s" for n, t in zip(fit["lengths"], fit["step_seconds"]))
        lines.append(f"naive: one forward pass timed at each length ({steps}), a quadratic in the length fitted "
                     f"and summed over every step; the real loop on {check['steps']} steps of a "
                     f"{check['prompt_tokens']}-token prompt took {check['measured_s']:.2f} s, the estimate says "
                     f"{check['estimated_s']:.2f} s ({check['measured_over_estimated']:.2f}x)")
    lines.append(f"{long['length']}-token sequences: full stack {long['full_stack_tokens_per_s']:.0f} tokens/s over "
                 f"{long['requests']} requests; naive {long['naive']['tokens_per_s']:.2f} tokens/s (estimated the "
                 f"same way): {long['ratio_vs_naive']:.0f}x")
    return lines


def markdown_table(results: dict) -> str:
    rows = results["rows"]
    names = {r["key"]: f"#{i}" for i, r in enumerate(rows, 1)}
    head = list(COLUMNS) + ["the article claims", "note"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        note = ("**missing**: " if r["status"] != "measured" else "") + r["note"]
        out.append("| " + " | ".join(row_cells(i, r, names) + [r["claim"], note]).replace("\n", " ") + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# plots


def plot_all(results: dict, out: Path) -> list[str]:
    """PNG files in out: speedup bars, speed vs quality, speculative sweep, the real model."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    files = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    measured = [r for r in results["rows"] if r["status"] == "measured"]

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(measured) + 1.5))
    labels = [r["technique"] for r in measured][::-1]
    ax.barh(labels, [r["ratio_vs_naive"] for r in measured][::-1], color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(1, color="gray", lw=1)
    ax.axvline(100, color="tab:red", ls="--", lw=1, label="target for the full stack: 100x")
    ax.set_xlabel("tokens/s relative to the naive baseline (log scale)")
    ax.legend(loc="lower right")
    ax.set_title("Each technique against the naive baseline (same run, interleaved)")
    save(fig, "speedup.png")

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, r in enumerate(results["rows"], 1):
        if r["status"] == "measured":
            ax.scatter(r["top1_relative"] * 100, r["ratio_vs_naive"], s=40)
            ax.annotate(f"#{i} {r['key']}", (r["top1_relative"] * 100, r["ratio_vs_naive"]), fontsize=8,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.axvline(95, color="tab:red", ls="--", lw=1)
    ax.axhline(100, color="tab:red", ls="--", lw=1)
    ax.set_xlabel("held-out top-1 accuracy, % of the teacher's")
    ax.set_ylabel("tokens/s relative to naive (log)")
    ax.set_title("Speed vs quality (target: upper right of the red lines)")
    save(fig, "speed_vs_quality.png")

    sweep = results["speculative_sweep"]
    if sweep:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        ks = [x["k"] for x in sweep]
        ax[0].plot(ks, [x["acceptance_rate"] for x in sweep], "o-", label="acceptance rate")
        ax[0].plot(ks, [x["tokens_per_round"] / (k + 1) for x, k in zip(sweep, ks)], "s--",
                   label="tokens per target pass / (k+1)")
        ax[0].set_xlabel("draft length k")
        ax[0].set_ylim(0, 1.05)
        ax[0].legend()
        ax[1].plot(ks, [x["speedup_vs_teacher"] for x in sweep], "o-")
        ax[1].axhline(1, color="gray", lw=1)
        ax[1].axhline(2, color="tab:red", ls="--", lw=1, label="target 2x")
        ax[1].set_xlabel("draft length k")
        ax[1].set_ylabel("tokens/s vs the teacher alone")
        ax[1].legend()
        fig.suptitle("Speculative decoding: student drafts, teacher verifies (greedy)")
        save(fig, "speculative.png")

    real = results.get("real_model", {})
    if "rows" in real:
        rows = real["rows"]
        fig, ax = plt.subplots(1, 2, figsize=(11, 0.42 * len(rows) + 1.8))
        labels = [f"#{i} {r['key']}" for i, r in enumerate(rows, 1)][::-1]
        ax[0].barh(labels, [r["ratio_vs_naive"] for r in rows][::-1], color="tab:blue")
        ax[0].set_xscale("log")
        ax[0].axvline(150, color="tab:red", ls="--", lw=1, label="150x (full stack's target)")
        ax[0].set_xlabel("tokens/s relative to the naive baseline (log scale)")
        ax[0].set_ylabel("row")
        ax[0].legend(loc="lower right", fontsize=8)
        ax[1].barh(labels, [r["top1_agreement"] * 100 for r in rows][::-1], color="tab:green")
        ax[1].axvline(97, color="tab:red", ls="--", lw=1, label="97%")
        ax[1].set_xlim(min(r["top1_agreement"] * 100 for r in rows) - 5, 100.5)
        ax[1].set_xlabel("top-1 agreement with the file's weights (%)")
        ax[1].set_ylabel("row")
        ax[1].legend(loc="lower left", fontsize=8)
        fig.suptitle("SmolLM2-135M-Instruct: speed and quality of each row")
        save(fig, "real_model.png")
    return files


def write_report(results: dict, out: Path) -> dict:
    """out/report.md, out/*.png, out/results.json. Returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(results, out)
    text = ["# The tour: the article's multiplication table, measured", "",
            f"Teacher: {results['teacher_params']:,} parameters. Workload: {results['workload']['requests']} "
            f"held-out prompts of {results['workload']['prompt_len']} tokens, {results['workload']['new_tokens']} "
            f"greedy tokens each. Wall time {results['wall_time_s']:.0f} s"
            f"{' (--quick: a smoke run, not the measurement)' if results['settings']['quick'] else ''}.", "",
            markdown_table(results), "",
            "`x naive`: median over rounds of (naive seconds / this row's seconds), every row decoding the same "
            "workload in the same process, the order rotating each round. `x previous`: the same against the "
            "stage this row adds to. Quality: held-out perplexity and top-1 next-token accuracy on the same "
            "windows, relative to the teacher's.", ""]
    real = results.get("real_model", {})
    if "rows" in real:
        cells = real_model_cells(real["rows"])
        text += ["## A real model: SmolLM2-135M-Instruct", "", "\n".join(real_model_lines(real)[:1]), "",
                 "| " + " | ".join(REAL_COLUMNS) + " | note |", "|" + "---|" * (len(REAL_COLUMNS) + 1)]
        text += ["| " + " | ".join(c + [r["note"]]) + " |" for c, r in zip(cells, real["rows"])] + [""]
    text += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    text += ["## Everything else printed", "", "```", format_table(results), "```", ""]
    (out / "report.md").write_text("\n".join(text))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return {"report": out / "report.md", "plots": [out / p for p in plots], "json": out / "results.json"}
