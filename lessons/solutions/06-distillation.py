"""Worked solutions to the exercises of lesson 06 (distillation).

Run from the repository root: `python lessons/solutions/06-distillation.py` (all exercises) or
`python lessons/solutions/06-distillation.py 2 6` (some). Every exercise trains students, so
TINYINFER_LESSON_SMALL=1 (what the tests set) runs each for a few steps only: enough to run the
code, far too few to answer the question. Without it, each runs for STEPS (400) steps: minutes to
an hour on two cores. The printed sentences are computed from whatever ran.
"""
import functools
import json
import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
from tinyinfer.bench import interleaved
from tinyinfer.config import ModelConfig
from tinyinfer.corpus import token_stream
from tinyinfer.distill import (build_teacher_cache, cached_distillation_loss_fn, distillation_loss_fn,
                               stream_windows, train_on_windows)
from tinyinfer.evaluate import evaluate
from tinyinfer.lesson_tools import compare, run_exercises
from tinyinfer.lessons import repo_root
from tinyinfer.presets import get_preset

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
STEPS = 6 if SMALL else 400  # optimizer steps per training run
BATCH, WINDOW = (2, 64) if SMALL else (8, 256)
EVAL_WINDOWS = 4 if SMALL else 48


@functools.lru_cache(maxsize=None)
def setting():
    """The teacher, the held-out stream, training windows, and the study's chosen T and alpha."""
    root = repo_root()
    teacher = tinyinfer.load(root / "models" / "teacher")
    val = token_stream(teacher.tokenizer, "val", progress=False)
    windows = stream_windows(token_stream(teacher.tokenizer, "train", max_docs=40 if SMALL else 400,
                                          progress=False), WINDOW)
    study = root / "benchmarks" / "distill.json"
    chosen = json.loads(study.read_text())["chosen"] if study.is_file() else {"temperature": 1.0, "alpha": 0.9}
    return teacher, val, windows, float(chosen["temperature"]), float(chosen["alpha"])


def train_student(config, loss_fn=None, steps=STEPS, windows=None, seed=0):
    """Train a student on the fixed windows -> (model, held-out evaluation against the teacher)."""
    teacher, val, all_windows, _, _ = setting()
    tc = get_preset("student")[1]
    tc.max_steps, tc.seq_len, tc.batch_size, tc.seed = steps, WINDOW, BATCH, seed
    tc.warmup_steps, tc.eval_every, tc.eval_windows = max(1, steps // 10), steps, EVAL_WINDOWS
    with tempfile.TemporaryDirectory() as out:
        model, _ = train_on_windows(config, tc, all_windows if windows is None else windows, val, out,
                                    loss_fn=loss_fn, progress=False, log=lambda *_: None)
    return model, evaluate(model, val, WINDOW, EVAL_WINDOWS, reference=teacher)


def on_the_fly(teacher, temperature, alpha):
    """The lesson's adapter: train_on_windows passes the window rows, the on-the-fly loss needs none."""
    fly = distillation_loss_fn(teacher, temperature, alpha)
    return lambda p, c, x, y, rows: fly(p, c, x, y)


def describe(label, result):
    return (f"{label:<36} perplexity {result['perplexity']:8.2f}, top-1 {result['top1']:.1%}, "
            f"agrees with the teacher's top-1 at {result['top1_agreement']:.1%}")


def exercise_1():
    """Two layers: speed and top-1 of a 2-layer, C = 64 student against the 1-layer preset."""
    teacher, _, _, T, alpha = setting()
    one = get_preset("student")[0]
    two = ModelConfig.from_dict(dict(one.to_dict(), n_layer=2, n_embd=64, ffn_hidden=192))
    print(f"2 layers, C = 64: {two.num_params():,} parameters ({two.num_params() / teacher.num_params():.1%} "
          f"of the teacher); the preset: {one.num_params():,}")
    results, models = {}, {}
    for label, config in (("1 layer, C = 96 (the preset)", one), ("2 layers, C = 64", two)):
        models[label], results[label] = train_student(config, on_the_fly(teacher, T, alpha))
        print(describe(label, results[label]))
    prompt = np.asarray(setting()[1][:16], dtype=np.int64)
    new = 16 if SMALL else 64
    for label, model in models.items():
        speed = interleaved(lambda: model.generate(prompt, new), lambda: teacher.generate(prompt, new),
                            rounds=3 if SMALL else 7)
        print(f"{label}: decodes {speed['ratio']:.1f}x as fast as the teacher (median of per-round ratios)")
    a, b = (results[k]["top1"] for k in results)
    print(compare(b, a, what=f"After {STEPS} steps the 2-layer student's top-1", verb="is",
                  of="the 1-layer one's", more="higher", less="lower"))
    print("Whether that is worth it: the 5x speed claim holds only while the student decodes >= 5x as "
          "fast as the teacher; compare the two speed lines with the two top-1 figures.")


def exercise_2():
    """k: distill from caches of the teacher's top-4, 8, 32 and 128, and the bytes per position."""
    teacher, _, windows, T, alpha = setting()
    config = get_preset("student")[0]
    pool = windows[: max(BATCH * STEPS, 8)]
    results = {}
    for k in (4, 8, 32, 128):
        cache = build_teacher_cache(teacher, pool, k=k, temperatures=(T,), progress=False)
        _, results[k] = train_student(config, cached_distillation_loss_fn(cache, T, alpha), windows=pool)
        print(describe(f"top-{k} cache ({k * 4 + 4} bytes a position)", results[k]))
    _, full = train_student(config, on_the_fly(teacher, T, alpha), windows=pool)
    print(describe(f"full vocabulary, on the fly ({4 * teacher.config.vocab_size:,} B)", full))
    worst = max(results, key=lambda k: results[k]["perplexity"])
    print(compare(results[worst]["perplexity"], full["perplexity"], what=f"The worst cache (top-{worst})",
                  verb="ends at", of="the perplexity of full KD", more="worse", less="better"))
    print("The approximation starts to cost where the perplexity leaves the full-KD figure by more than "
          "the spread between seeds (rerun with seed=1 to see that spread).")


def exercise_3():
    """The weak teacher's crossing: labels vs KD from models/tiny at growing lengths."""
    teacher, val, _, T, alpha = setting()
    weak = tinyinfer.load(repo_root() / "models" / "tiny")
    weak_top1 = evaluate(weak, val, WINDOW, EVAL_WINDOWS)["top1"]
    config = get_preset("student")[0]
    lengths = (3, 6) if SMALL else (50, 150, 400, 1000)
    print(f"the weak teacher's own top-1: {weak_top1:.1%}")
    for steps in lengths:
        _, labels = train_student(config, None, steps=steps)
        _, kd = train_student(config, on_the_fly(weak, T, alpha), steps=steps)
        ahead = "KD from the weak teacher" if kd["perplexity"] < labels["perplexity"] else "labels only"
        print(f"{steps:5d} steps: labels {labels['perplexity']:8.2f} (top-1 {labels['top1']:.1%}), KD from tiny "
              f"{kd['perplexity']:8.2f} (top-1 {kd['top1']:.1%}); ahead: {ahead}; labels-only student "
              f"{'past' if labels['top1'] > weak_top1 else 'below'} the weak teacher's top-1")
    print("The crossing is the first length where labels only is ahead; the lesson's claim is that it comes "
          "about when the labels-only student's top-1 passes the weak teacher's.")


def exercise_4():
    """Only the teacher: alpha = 1 against alpha = 0.9."""
    teacher, _, _, T, _ = setting()
    config = get_preset("student")[0]
    results = {}
    for alpha in (0.9, 1.0):
        _, results[alpha] = train_student(config, on_the_fly(teacher, T, alpha))
        print(describe(f"alpha = {alpha}", results[alpha]))
    print(compare(results[1.0]["perplexity"], results[0.9]["perplexity"], what="Without any labels the student",
                  verb="ends at", of="the perplexity with 10% labels", more="worse: the labels add signal",
                  less="better: the teacher's distribution alone carries what the labels say",
                  same="about the same: the labels add little once the teacher speaks"))


def exercise_5():
    """Sequence-level distillation: train on text the teacher wrote, with plain cross-entropy."""
    teacher, val, windows, T, alpha = setting()
    config = get_preset("student")[0]
    n_texts = BATCH * STEPS
    rng = np.random.default_rng(0)
    written = []
    for i in range(n_texts):  # each text: a real prompt of 16 tokens, then the teacher's own sampled continuation
        prompt = windows[rng.integers(len(windows)), :16].astype(np.int64)
        written.append(teacher.generate(prompt, WINDOW + 1 - 16, temperature=1.0, seed=i))
    written = np.array(written)  # (N, WINDOW + 1)
    _, seq_kd = train_student(config, None, windows=written)
    _, word_kd = train_student(config, on_the_fly(teacher, T, alpha), windows=written[:, :])
    print(f"{n_texts} texts of {WINDOW + 1} tokens written by the teacher (the teacher's compute: one generation "
          f"each, as much as word-level KD's forward passes over the same tokens, roughly)")
    print(describe("sequence-level (CE on teacher text)", seq_kd))
    print(describe("word-level KD on the same windows", word_kd))
    print(compare(seq_kd["perplexity"], word_kd["perplexity"], what="Sequence-level distillation", verb="ends at",
                  of="word-level KD's perplexity", more="worse", less="better"))


def exercise_6():
    """Where they disagree: the shipped student's top-1 against the teacher's."""
    teacher, val, _, _, _ = setting()
    student = tinyinfer.load(repo_root() / "models" / "student")
    windows = stream_windows(val, WINDOW)[: EVAL_WINDOWS]
    kinds = {"induction": [0, 0], "other": [0, 0], "whitespace": [0, 0]}  # kind -> [disagreements, positions]
    for window in windows:
        inputs = window[:-1].astype(np.int64)
        t_top = teacher.logits(inputs).argmax(-1)
        s_top = student.logits(inputs).argmax(-1)
        last_seen = {}  # token -> its latest earlier position
        for pos, (t, s) in enumerate(zip(t_top, s_top)):
            token = int(inputs[pos])
            # induction: this token occurred before, and the teacher predicts what followed it then
            earlier = last_seen.get(token)
            kind = "induction" if earlier is not None and int(inputs[earlier + 1]) == int(t) else "other"
            if not teacher.tokenizer.decode([int(t)]).strip():
                kind = "whitespace"
            kinds[kind][0] += int(t != s)
            kinds[kind][1] += 1
            last_seen[token] = pos
    for kind, (disagree, total) in kinds.items():
        print(f"{kind:>10} positions: {total:6d}, the student picks another token at {disagree / max(total, 1):.1%}")
    rate = {kind: d / max(n, 1) for kind, (d, n) in kinds.items()}
    print("induction positions: the token occurred earlier in the window and the teacher predicts the token that "
          "followed it then (copying a name or a pattern); whitespace: the teacher predicts indentation or newlines")
    print(compare(rate["induction"], rate["other"], what="At induction positions the student's disagreement", verb="is",
                  of="its disagreement elsewhere", more="higher: consistent with one layer that cannot form an induction head",
                  less="lower: copying is not where the one-layer student loses most", same="about the same"))


if __name__ == "__main__":
    run_exercises(globals())
