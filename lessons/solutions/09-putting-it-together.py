"""Worked solutions to the exercises of lesson 09 (putting it together: the table, speculative decoding).

Run from the repository root: `python lessons/solutions/09-putting-it-together.py` (all exercises) or
`python lessons/solutions/09-putting-it-together.py 3` (some). TINYINFER_LESSON_SMALL=1 shortens the
workloads and the timings.
"""
import functools
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
import tinyinfer.speculative as speculative_module
from tinyinfer import threads
from tinyinfer.corpus import token_stream
from tinyinfer.evaluate import evaluate
from tinyinfer.inference import InferenceModel
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.lesson_tools import (
    compare,
    direction,
    ratio_spread,
    run_exercises,
    spread,
    time_calls,
    workload,
)
from tinyinfer.lessons import repo_root
from tinyinfer.quant.model import quantize_model
from tinyinfer.sparse.model import prune_model
from tinyinfer.speculative import speculative_generate, token_probs
from tinyinfer.tour import decode, rotating_rounds, timed

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
ROUNDS = 3 if SMALL else 5
threads.set_kernel_threads(1)  # a shared 2-core machine: see the lesson's first cell


@functools.cache
def setting():
    """(teacher, student, held-out token stream, workload): the models as prepared for decoding."""
    teacher = tinyinfer.load(repo_root() / "models" / "teacher")
    student = tinyinfer.load(repo_root() / "models" / "student")
    val = token_stream(teacher.tokenizer, "val", progress=False)
    work = decode.make_workload(val, 2 if SMALL else 4, 32 if SMALL else 128, 12 if SMALL else 48, seed=0)
    return teacher, student, val, work


def top1_relative(model, teacher, val):
    windows = 2 if SMALL else 16
    return evaluate(model, val, 64, windows)["top1"] / evaluate(teacher, val, 64, windows)["top1"]


def pass_time(fast, prompt, n, reps=30 if SMALL else 100):
    """Seconds for one forward over n new tokens after the prompt, the KV cache rolled back each call."""
    cache = ContiguousKVCache(fast.model.config, 1, fast.model.dtype)
    fast.forward(np.array([prompt]), np.arange(len(prompt)), cache, logits_rows=[-1])
    base = cache.length
    block, positions = np.array([prompt[:n]]), np.arange(base, base + n)

    def call():
        cache.length = base
        fast.forward(block, positions, cache)
    return time_calls(call, rounds=reps, warmup=3)


# ---- exercise 1 -----------------------------------------------------------------------------------


def exercise_1():
    """Another workload: which ratios move with the prompt length."""
    teacher, _, val, _ = setting()
    fast = InferenceModel(teacher)
    lengths = (32, 256) if SMALL else (128, 384)
    new = 8 if SMALL else 32
    print(workload("this exercise", requests=2 if SMALL else 4, prompt_tokens=list(lengths), new_tokens=new,
                   naive_requests=1, rounds=ROUNDS))
    found = {}
    for L in lengths:
        work = decode.make_workload(val, 2 if SMALL else 4, L, new, seed=2)
        naive_work = work[:1]
        fns = {"naive": timed(lambda w=naive_work: decode.run_naive(teacher, w), {}, "naive"),
               "cached": timed(lambda w=work: decode.run_cached(fast, w), {}, "cached"),
               "engine": timed(lambda w=work: decode.run_engine(fast, w), {}, "engine")}
        decode.run_engine(fast, work[:1])  # warm-up
        times = rotating_rounds(fns, ROUNDS, f"prompt {L}", progress=False)
        per_token = {k: [t / sum(n for _, n in (naive_work if k == "naive" else work)) for t in ts]
                     for k, ts in times.items()}
        found[L] = {"cached vs naive": ratio_spread(per_token["naive"], per_token["cached"]),
                    "engine vs cached": ratio_spread(per_token["cached"], per_token["engine"])}
        for name, r in found[L].items():
            print(f"prompt {L}: {name} {r.median:.2f}x (IQR {r.q1:.2f}-{r.q3:.2f}x)")
    change = {}
    for name in ("cached vs naive", "engine vs cached"):
        a, b = found[lengths[0]][name].median, found[lengths[-1]][name].median
        change[name] = b / a
        print(f"{name}: {a:.2f}x at {lengths[0]} tokens, {b:.2f}x at {lengths[-1]}: "
              f"{direction(b / a, 'larger', 'smaller', 'about the same', band=0.15)} at the longer prompt")
    moved = abs(np.log(change["cached vs naive"])) > abs(np.log(change["engine vs cached"]))
    print(f"In this run the ratio against the naive baseline moved {'more' if moved else 'less'} than the ratio "
          f"between two cached modes. Expected: each naive step runs the whole prefix again, so its cost per token "
          f"grows with the prompt, while a cached step reads the stored keys (attention grows with the length "
          f"too, but it is a small part of a step of this model). Ratios between two cached rows (the x previous "
          f"column: quantization, the student, the engine) compare steps that grew alike. On short prompts the "
          f"fixed cost per step can hide the prefix, so the naive ratio needs long prompts to show its growth.")


# ---- exercise 2 -----------------------------------------------------------------------------------


def exercise_2():
    """Structured pruning in the combinations: speed against the teacher, and top-1."""
    teacher, _, val, work = setting()
    _, student, _, _ = setting()
    pruned = prune_model(teacher, "neurons", 0.5)
    fast = {"teacher": InferenceModel(teacher), "pruned": InferenceModel(pruned), "student": InferenceModel(student)}
    fns = {name: timed(lambda f=f: decode.run_cached(f, work), {}, name) for name, f in fast.items()}
    times = rotating_rounds(fns, ROUNDS * 2, "pruned", progress=False)  # short runs: more rounds are cheap
    quality = {"pruned": top1_relative(pruned, teacher, val), "student": top1_relative(student, teacher, val)}
    for name, what in (("pruned", "the structured-pruned teacher (50% of the MLP neurons, one-shot)"),
                       ("student", "the student")):
        r = ratio_spread(times["teacher"], times[name])
        print(compare(r.median, what=what, of="the teacher's speed", measured=r)
              + f", at {quality[name]:.0%} of the teacher's top-1")
    print("On section 3's scatter the pruned teacher lands at these two coordinates. Why the speed gain is "
          "bounded: half the MLP neurons is less than half the arithmetic of a step (attention, the head and "
          "the per-call overhead stay). Why the quality drops: a one-shot cut with no fine-tuning. Compare it "
          "with the student, which was trained rather than cut.")


# ---- exercise 3 -----------------------------------------------------------------------------------


def exercise_3():
    """The teacher as its own draft: everything accepted, and still not faster."""
    teacher, _, _, work = setting()
    fast = InferenceModel(teacher)
    ks = (2, 4)
    stats = {k: {} for k in ks}
    fns = {"teacher": timed(lambda: decode.run_cached(fast, work), {}, "teacher")}
    fns.update({f"k={k}": timed(lambda k=k: decode.run_speculative(fast, fast, work, k, stats[k]), {}, f"k={k}")
                for k in ks})
    decode.run_speculative(fast, fast, work[:1], 2)  # warm-up
    times = rotating_rounds(fns, ROUNDS, "self-draft", progress=False)
    prompt = work[0][0]
    t = {n: pass_time(fast, prompt, n) for n in (1,) + tuple(k + 1 for k in ks)}
    for k in ks:
        r = ratio_spread(times["teacher"], times[f"k={k}"])
        predicted = (k + 1) * t[1].median / (k * t[1].median + t[k + 1].median)
        print(f"k={k}: acceptance {stats[k]['acceptance_rate']:.0%}; pass over {k + 1} tokens {t[k + 1]}, one "
              f"token {t[1]}; predicted {predicted:.2f}x; " + compare(r.median, what="measured", of="the teacher "
                                                                       "alone", measured=r))
    print("Every round yields k+1 tokens (α = 1) but costs k draft steps, each a full teacher step, plus a "
          "pass over k+1 tokens. That beats k+1 plain steps only if the pass costs less than one step, "
          "t(k+1) < t(1), which a pass over more tokens never does. A draft must be much cheaper than the target.")


# ---- exercise 4 -----------------------------------------------------------------------------------


def accept_everything(p_rows, q_rows, drafts, rng):
    """A broken verify_sampled: keep every draft, then sample the bonus token from the target."""
    last = p_rows[len(drafts)]
    return len(drafts), int(rng.choice(last.size, p=last))


def exercise_4():
    """Always accepting: the first token follows the draft's distribution, not the teacher's."""
    teacher, student, _, work = setting()
    fast_t, fast_s = InferenceModel(teacher), InferenceModel(student)
    prompt = work[0][0]
    n = 200 if SMALL else 1000
    p = token_probs(teacher.logits(prompt)[-1], 1.0)
    q = token_probs(student.logits(prompt)[-1], 1.0)
    original = speculative_module.verify_sampled
    speculative_module.verify_sampled = accept_everything
    try:
        firsts = [int(speculative_generate(fast_t, fast_s, prompt, 2, k=2, temperature=1.0, seed=i)[len(prompt)])
                  for i in range(n)]
    finally:
        speculative_module.verify_sampled = original
    observed = np.bincount(firsts, minlength=p.size) / n
    tv_p, tv_q = 0.5 * np.abs(observed - p).sum(), 0.5 * np.abs(observed - q).sum()
    print(f"{n} first tokens with every draft accepted: total variation distance {tv_p:.3f} to the teacher's p, "
          f"{tv_q:.3f} to the draft's q (p and q themselves differ by {0.5 * np.abs(p - q).sum():.3f})")
    print(f"So the samples follow {'the draft q' if tv_q < tv_p else 'the teacher p (p and q are too close here to tell)'}: "
          "the first emitted token is the draft's own sample x1 ~ q. The acceptance test min(1, p/q) and the "
          "residual max(0, p - q) are what turn q into p.")


# ---- exercise 5 -----------------------------------------------------------------------------------


def exercise_5():
    """Predict the speculative speedup from α and the measured step times; compare with a measurement."""
    teacher, student, _, work = setting()
    fast_t, fast_s = InferenceModel(teacher), InferenceModel(student)
    # α for greedy decoding: the chance that the draft's argmax equals the teacher's, given a prefix the
    # teacher wrote (every earlier draft accepted). One forward of each model over the teacher's own output:
    agree = []
    for prompt, n in work:
        seq = teacher.generate(prompt, n)
        draft_choice = np.argmax(student.logits(seq)[len(prompt) - 1:-1], axis=-1)
        agree += list(draft_choice == seq[len(prompt):])
    alpha = float(np.mean(agree))
    print(f"α = {alpha:.3f} from {len(agree)} positions of the teacher's greedy output (teacher-forced agreement)")
    prompt = work[0][0]
    ks = (1, 2, 4) if SMALL else (1, 2, 4, 6)
    t = {n: pass_time(fast_t, prompt, n) for n in (1,) + tuple(k + 1 for k in ks)}
    t_draft = pass_time(fast_s, prompt, 1)
    stats = {k: {} for k in ks}
    fns = {"teacher": timed(lambda: decode.run_cached(fast_t, work), {}, "teacher")}
    fns.update({f"k={k}": timed(lambda k=k: decode.run_speculative(fast_t, fast_s, work, k, stats[k]), {}, f"k={k}")
                for k in ks})
    decode.run_speculative(fast_t, fast_s, work[:1], 2)  # warm-up
    times = rotating_rounds(fns, ROUNDS, "sweep", progress=False)
    print(f"teacher step {t[1]}, draft step {t_draft}")
    for k in ks:
        tokens = (1 - alpha ** (k + 1)) / (1 - alpha) if alpha < 1 else k + 1
        predicted = tokens * t[1].median / (k * t_draft.median + t[k + 1].median)
        r = ratio_spread(times["teacher"], times[f"k={k}"])
        print(f"k={k}: tokens per round {tokens:.2f} predicted, {stats[k]['tokens_per_round']:.2f} measured; speed "
              f"vs the teacher {predicted:.2f}x predicted, {r.median:.2f}x measured (IQR {r.q1:.2f}-{r.q3:.2f}x)")
    print("Where prediction and measurement differ: the model counts forward passes only, while both loops "
          "also spend Python per step and per round (the argmax, the loop, verification, rolling the caches "
          "back); and the formula assumes the same α at every position, while acceptance comes in runs (easy "
          "stretches of text), which moves the measured tokens per round off the formula's.")


# ---- exercise 6 -----------------------------------------------------------------------------------


def exercise_6():
    """A teacher-quality stack and a speed stack, measured side by side."""
    teacher, student, val, work = setting()
    stacks = {"teacher + Q8_0 + engine": quantize_model(teacher, "q8_0"),
              "student + Q8_0 + engine": quantize_model(student, "q8_0")}
    fast = {name: InferenceModel(m) for name, m in stacks.items()}
    for f in fast.values():
        decode.run_engine(f, work[:1])  # warm-up
    fns = {name: timed(lambda f=f: decode.run_engine(f, work), {}, name) for name, f in fast.items()}
    times = rotating_rounds(fns, ROUNDS * 2, "stacks", progress=False)
    n_tokens = sum(n for _, n in work)
    quality = {name: top1_relative(m, teacher, val) for name, m in stacks.items()}
    for name in stacks:
        sp = spread(times[name])
        print(f"{name}: {n_tokens / sp.median:.0f} tokens/s (workload {sp}), {quality[name]:.0%} of the "
              f"teacher's top-1")
    names = list(stacks)
    r = ratio_spread(times[names[0]], times[names[1]])
    print(compare(r.median, what="the speed stack", of="the speed of the teacher-quality stack", measured=r))
    print(f"For a chat product, quality is what users notice first. The speed stack reaches {quality[names[1]]:.0%} "
          "of the teacher's top-1; well below 95%, users read visibly worse text, and no speedup buys that "
          "back. Deploy the teacher-quality stack unless "
          "the teacher is too slow for the latency you promise; the student stack fits where cost dominates "
          "(autocomplete, drafts for speculative decoding). Measure next: quality on the product's own tasks "
          "(not held-out top-1), latency under load (time to first token and between tokens, p50 and p99, "
          "lesson 08), and memory per concurrent user at the context lengths your chats reach.")


if __name__ == "__main__":
    run_exercises(globals())
