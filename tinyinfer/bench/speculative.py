"""Speculative decoding on the real model: prompt lookup against batch-1 decoding, by draft length.

Lesson: lessons/08-serving.py (the exactness), lessons/09-putting-it-together.py (the speedup)

Which draft, and why. SmolLM2-135M is already the small model of its family, so there is no
smaller sibling sharing its tokenizer to draft with, and distilling one on two cores would cost
hours for a draft whose every token still costs a forward pass (tinyinfer/bench/spec_ceiling.py
measures the acceptance a draft would need, and what the cheapest distilled draft, a linear map
between the model's own hidden states, reaches). Two drafts cost nothing to make:

* prompt lookup (tinyinfer/speculative.py: PromptLookup): no forward pass at all; it guesses only
  where the sequence repeats itself, and there its guesses are often right;
* the model with half its layers skipped (layer_skip_draft): guesses everywhere, but every guess
  costs about half a token (the head is not skipped) and a 135M model with half its layers
  disagrees with itself often.

This benchmark measures both, on two workloads, so the choice rests on numbers:

* "repeat": requests whose answer repeats the prompt: edit this function (add a docstring, add
  type hints, rename it) for functions of the held-out corpus (Python's standard library,
  tinyinfer/corpus.py). Chat and coding assistants get many such requests.
* "open": open questions whose answers share little with the question. Prompt lookup finds few
  matches here: the honest case where it does not help.

For each workload and draft length k, the same prompts are decoded greedily (stopping at the end
of the turn) by stream_tokens (batch 1, the baseline) and by speculative_generate, alternated
round by round; the speedup is the median of the per-round time ratios, and every speculative
output is checked to be the baseline's tokens exactly.
"""
from __future__ import annotations

import ast
import statistics
import time

import numpy as np

from .timing import alternate, median_ratio, ratio_iqr

__all__ = ["repeat_messages", "open_messages", "bench_speculative", "format_speculative", "plot_speculative"]

EDITS = ["Add a docstring to this function and return the whole function.",
         "Add type hints to this function and return the whole function.",
         "Rename this function to new_name and return the whole function.",
         "Add a comment above each line of this function and return the whole function."]

QUESTIONS = ["What are the benefits of regular exercise?", "Write a short story about a robot who learns to paint.",
             "Give me three tips for learning a new language.", "Why is the sky blue?",
             "What should I pack for a weekend trip to the mountains?", "Explain how a bicycle works.",
             "Suggest a name for a bakery and explain why.", "What is the difference between weather and climate?"]


def corpus_functions(min_lines: int = 5, max_lines: int = 14, limit: int = 64) -> list[str]:
    """Source of short functions from the held-out split of the corpus (deterministic order)."""
    from ..corpus import split_documents

    out = []
    for doc in split_documents()["val"]:
        if not doc.name.endswith(".py"):
            continue
        try:
            tree = ast.parse(doc.text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and min_lines <= node.end_lineno - node.lineno + 1 <= max_lines:
                source = ast.get_source_segment(doc.text, node)
                if source and source.isascii():
                    out.append(source)
                    if len(out) >= limit:
                        return out
    return out


def repeat_messages(n: int, seed: int = 0) -> list[list[dict]]:
    """n chats asking to edit a held-out function: answers that repeat their prompt."""
    functions = corpus_functions()
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(functions), size=n, replace=len(functions) < n)
    return [[{"role": "user", "content": f"{EDITS[i % len(EDITS)]}\n\n```python\n{functions[j]}\n```"}]
            for i, j in enumerate(picks)]


def open_messages(n: int, seed: int = 0) -> list[list[dict]]:
    """n open questions: answers that share little with their prompt."""
    order = np.random.default_rng(seed).permutation(len(QUESTIONS))
    return [[{"role": "user", "content": QUESTIONS[order[i % len(order)]]}] for i in range(n)]


def bench_speculative(fast, s, progress: bool = False) -> dict:
    """Prompt lookup (and a layer-skip draft) vs batch-1 decoding -> rows per workload and k, "best"."""
    from ..generate import chat_prompt_ids, stream_tokens
    from ..speculative import PromptLookup, layer_skip_draft, speculative_generate

    m = fast.model
    tok = m.tokenizer
    if tok is None or getattr(tok, "chat_template", None) is None:
        return {"skipped": "the model has no chat template: the workloads are chats"}
    stops = tok.stop_ids
    n_new = s.spec_new_tokens
    workloads = {"repeat": repeat_messages(s.spec_requests, s.seed), "open": open_messages(s.spec_requests, s.seed)}
    skip = None
    if m.config.family == "llama" and m.config.n_layer >= 4:
        keep = list(range(0, m.config.n_layer - 1, 2)) + [m.config.n_layer - 1]  # every other layer and the last
        from ..inference import InferenceModel

        skip = (keep, InferenceModel(layer_skip_draft(m, keep)))
    out = {"new_tokens": n_new, "requests": s.spec_requests, "rounds": s.spec_rounds, "ks": list(s.spec_ks),
           "drafter": repr(PromptLookup()), "workloads": {}}
    for name, chats in workloads.items():
        prompts = [chat_prompt_ids(tok, chat) for chat in chats]
        tokens, stats = {}, {}

        def baseline():
            t0 = time.perf_counter()
            tokens["batch 1"] = [list(stream_tokens(fast, p, n_new, stop_ids=stops)) for p in prompts]
            return time.perf_counter() - t0

        def spec(label, draft, k):
            def run():
                totals = dict(rounds=0, drafted=0, accepted=0)
                outs = []
                t0 = time.perf_counter()
                for p in prompts:
                    ids, st = speculative_generate(fast, draft, p, n_new, k=k, stop_ids=stops, return_stats=True)
                    outs.append(ids[len(p):].tolist())
                    for key in totals:
                        totals[key] += st[key]
                seconds = time.perf_counter() - t0
                tokens[label], stats[label] = outs, totals
                return seconds
            return run

        fns = {"batch 1": baseline}
        for k in s.spec_ks:
            fns[f"k={k}"] = spec(f"k={k}", PromptLookup(), k)
        if skip is not None:
            fns["layer skip k=2"] = spec("layer skip k=2", skip[1], 2)
        speculative_generate(fast, PromptLookup(), prompts[0][:16], 4, k=2)  # warm-up
        times = alternate(fns, s.spec_rounds, progress=progress, desc=f"speculative decoding, {name} workload")
        n_tokens = sum(len(t) for t in tokens["batch 1"])
        rows = []
        for label in fns:
            if label == "batch 1":
                continue
            st = stats[label]
            rows.append({"draft": "layer skip" if label.startswith("layer") else "prompt lookup",
                         "k": 2 if label.startswith("layer") else int(label[2:]), "label": label,
                         "speedup": median_ratio(times["batch 1"], times[label]),
                         "speedup_iqr": ratio_iqr(times["batch 1"], times[label]),
                         "tokens_per_s": n_tokens / statistics.median(times[label]),
                         "acceptance_rate": st["accepted"] / st["drafted"] if st["drafted"] else 0.0,
                         "drafted_per_round": st["drafted"] / st["rounds"],
                         "tokens_per_round": n_tokens / st["rounds"] if st["rounds"] else None,
                         "same_tokens": tokens[label] == tokens["batch 1"]})
        out["workloads"][name] = {"batch1_tok_s": n_tokens / statistics.median(times["batch 1"]),
                                  "output_tokens": n_tokens, "rows": rows, "seconds": times}
    if skip is not None:
        out["layer_skip_keep"] = skip[0]
    lookup = [r for r in out["workloads"]["repeat"]["rows"] if r["draft"] == "prompt lookup"]
    best = max(lookup, key=lambda r: r["speedup"])
    out["best"] = {**best, "workload": "repeat"}
    open_rows = [r for r in out["workloads"]["open"]["rows"] if r["draft"] == "prompt lookup"]
    out["best_open"] = {**max(open_rows, key=lambda r: r["speedup"]), "workload": "open"}
    return out


def format_speculative(r: dict) -> str:
    if "skipped" in r:
        return f"speculative decoding: skipped ({r['skipped']})"
    lines = [f"speculative decoding, {r['drafter']} (and the model with layers {r.get('layer_skip_keep', 'n/a')} as a "
             f"draft), {r['requests']} chats x up to {r['new_tokens']} tokens, {r['rounds']} rounds"]
    for name, w in r["workloads"].items():
        lines.append(f"  {name}: batch 1 {w['batch1_tok_s']:.1f} tokens/s ({w['output_tokens']} tokens)")
        for row in w["rows"]:
            lines.append(f"    {row['label']:15s} {row['speedup']:5.2f}x (IQR {row['speedup_iqr'][0]:.2f}-"
                         f"{row['speedup_iqr'][1]:.2f})  {row['tokens_per_s']:7.1f} tokens/s  accepted "
                         f"{row['acceptance_rate']:5.1%} of {row['drafted_per_round']:.1f} drafted a round, "
                         f"{row['tokens_per_round']:.2f} tokens a round, same tokens: {row['same_tokens']}")
    b = r["best"]
    lines.append(f"  best: {b['label']} on the {b['workload']} workload, {b['speedup']:.2f}x batch-1 decoding; on the "
                 f"open workload the best is {r['best_open']['speedup']:.2f}x ({r['best_open']['label']})")
    return "\n".join(lines)


def plot_speculative(r: dict, axes):
    """Two panels: acceptance rate and speedup against the draft length k, one line per workload."""
    ax_acc, ax_speed = axes
    for i, (name, w) in enumerate(r["workloads"].items()):
        rows = [row for row in w["rows"] if row["draft"] == "prompt lookup"]
        ks = [row["k"] for row in rows]
        ax_acc.plot(ks, [row["acceptance_rate"] * 100 for row in rows], "o-", color=f"C{i}",
                    label=f"{name} (prompt lookup)")
        ax_speed.plot(ks, [row["speedup"] for row in rows], "o-", color=f"C{i}", label=f"{name} (prompt lookup)")
        lo = [row["speedup_iqr"][0] for row in rows]
        hi = [row["speedup_iqr"][1] for row in rows]
        ax_speed.fill_between(ks, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
        skip = [row for row in w["rows"] if row["draft"] == "layer skip"]
        for row in skip:
            ax_acc.plot(row["k"], row["acceptance_rate"] * 100, "x", ms=9, color=f"C{i}", label=f"{name} (layer skip)")
            ax_speed.plot(row["k"], row["speedup"], "x", ms=9, color=f"C{i}", label=f"{name} (layer skip)")
    ax_speed.axhline(1.0, color="0.4", lw=1, ls=":")
    ax_acc.set_xlabel("draft length k (tokens proposed a round)")
    ax_acc.set_ylabel("drafted tokens accepted (%)")
    ax_acc.set_title("acceptance rate", fontsize=10)
    ax_speed.set_xlabel("draft length k (tokens proposed a round)")
    ax_speed.set_ylabel("speedup over batch-1 decoding (x)")
    ax_speed.set_title("speed (median of rounds; band: IQR)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
