"""Worked solutions to the exercises of lesson 05 (pruning).

Run from the repository root: `python lessons/solutions/05-pruning.py` (all exercises; at full
settings they fine-tune for hundreds of steps, which takes tens of minutes on 2 cores) or
`python lessons/solutions/05-pruning.py 4 7` (some).
TINYINFER_LESSON_SMALL=1 shortens everything (under a minute on a quiet 2-core machine): fewer
held-out windows, less calibration text, fewer seeds, a few fine-tuning steps instead of hundreds
and a smaller timed matrix. The numbers then move, and with a few steps of fine-tuning the comparisons in exercises
4, 6 and 8 say little; every sentence about a direction is printed from the values of the run.
"""
import functools
import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
from tinyinfer.corpus import token_stream
from tinyinfer.evaluate import evaluate
from tinyinfer.lesson_tools import check, compare, run_exercises, spread
from tinyinfer.lessons import repo_root
from tinyinfer.sparse import prune
from tinyinfer.sparse.experiment import calibration_ids
from tinyinfer.sparse.finetune import (
    FinetuneSettings,
    cubic_levels,
    finetune,
    prune_to,
    sparsity_of,
    weights_of,
)
from tinyinfer.sparse.sparsegpt import DAMP, sparsegpt_prune_model

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
EVAL_SEQ_LEN = 128 if SMALL else 256
EVAL_WINDOWS = 4 if SMALL else 32
CALIB_SEQ_LEN = 128  # the lesson's calibration windows
# fine-tuning in exercises 4, 6 and 8: a few steps on small settings, a real stage otherwise
TUNE = {"batch_size": 2, "seq_len": 64, "check_windows": 1} if SMALL else {"batch_size": 4, "seq_len": 256, "check_windows": 4}


def quiet(*_):
    pass


@functools.cache
def teacher():
    return tinyinfer.load(repo_root() / "models" / "teacher")  # float32 (the file is float16)


@functools.cache
def streams():
    tok = teacher().tokenizer
    return token_stream(tok, "train", progress=False), token_stream(tok, "val", progress=False)


def ppl(model, windows=EVAL_WINDOWS) -> float:
    """Held-out perplexity on the first `windows` windows of the validation split."""
    return evaluate(model, streams()[1], EVAL_SEQ_LEN, windows)["perplexity"]


@functools.cache
def dense_ppl() -> float:
    return ppl(teacher())


def masked(masks):
    """The teacher with (N, K) masks applied."""
    return prune.apply_masks(teacher(), prune.to_param_layout(masks, teacher().config))


def calib(n_windows, seq_len=CALIB_SEQ_LEN, seed=0):
    return calibration_ids(streams()[0], n_windows, seq_len, seed=seed)


def tune(model, masks, settings, stage, out):
    """Fine-tune (masks: (N, K) or None for a dense run); stage picks the batches."""
    param_masks = None if masks is None else prune.to_param_layout(masks, teacher().config)
    return finetune(model, param_masks, streams()[0], streams()[1], settings, stage, out, progress=False, log=quiet)


def eval_note(windows=EVAL_WINDOWS):
    return (f"perplexity on {windows} held-out windows of {EVAL_SEQ_LEN} tokens; dense "
            f"{ppl(teacher(), windows) if windows != EVAL_WINDOWS else dense_ppl():.3f}")


# ---- exercise 1 -----------------------------------------------------------------------------------


def magnitude_by_hand(w, amount, previous=None):
    """0/1 mask dropping round(amount * alive) of the smallest |w| among the alive entries, ties: first."""
    alive = np.ones(w.size, bool) if previous is None else previous.reshape(-1) != 0
    candidates = np.flatnonzero(alive)  # ascending positions: a stable sort keeps them in order on ties
    k = round(amount * candidates.size)  # Python's round (halves to even), as torch
    order = np.argsort(np.abs(w.reshape(-1)[candidates]), kind="stable")
    mask = alive.astype(np.float32)
    mask[candidates[order[:k]]] = 0.0
    return mask.reshape(w.shape)


def exercise_1():
    """Exact-k by hand, ties included, and repeated pruning."""
    name = "model.layers.0.mlp.down_proj.weight"
    W = np.round(weights_of(teacher())[name], 2)  # (N, K), rounded: many equal |w|
    values, counts = np.unique(np.abs(W), return_counts=True)
    print(f"{name} rounded to 2 decimals: {W.size:,} weights, only {values.size} distinct |w| "
          f"(the most common is shared by {counts.max():,} weights): ties decide much of the mask")
    mine = magnitude_by_hand(W, 0.5)
    theirs = prune.magnitude_masks({name: W}, 0.5)[name]
    check(bool(np.array_equal(mine, theirs)), True, name="my mask equals magnitude_masks'")
    cut = np.abs(W)[mine == 1].min()
    split = (np.abs(W) == cut)
    print(f"the cut falls inside a tie: of the {int(split.sum()):,} weights with |w| = {cut:.2f}, "
          f"{int((mine[split] == 0).sum()):,} are pruned (the first ones in row-major order) and "
          f"{int((mine[split] == 1).sum()):,} kept")

    masks_mine, masks_lib = None, None
    for step in range(3):
        masks_mine = magnitude_by_hand(W, 0.5, masks_mine)
        masks_lib = prune.magnitude_masks({name: W}, 0.5, previous=masks_lib)
        print(f"after {step + 1} x 0.5: {int((masks_mine == 0).sum()):,} zeros of {W.size:,} "
              f"= {1 - masks_mine.mean():.2%} sparse")
    check(bool(np.array_equal(masks_mine, masks_lib[name])), True, name="three rounds, mine equals the library's")
    predicted = 1 - 0.5 ** 3  # each round keeps half of the survivors
    check(predicted, 0.875, tol=1e-12, name="predicted final sparsity")
    check(1 - masks_mine.mean(), predicted, tol=1e-4, name="measured final sparsity")


# ---- exercise 2 -----------------------------------------------------------------------------------


def ranks(values):
    order = np.argsort(values, kind="stable")
    r = np.empty(len(values))
    r[order] = np.arange(len(values))
    return r


def exercise_2():
    """Which layers are fragile: one matrix at a time at 70%, against global magnitude pruning."""
    weights = weights_of(teacher())
    windows = 2 if SMALL else EVAL_WINDOWS  # 37 evaluations: the fewest windows of any exercise on small settings
    base = ppl(teacher(), windows)
    cost = {}  # name -> perplexity increase when only that matrix is 70% pruned
    for name, w in weights.items():
        cost[name] = ppl(masked({name: prune.magnitude_masks({name: w}, 0.7)[name]}), windows) / base - 1
    print(eval_note(windows))
    ranked = sorted(cost, key=cost.get, reverse=True)
    print("most fragile (perplexity change with only that matrix 70% pruned): "
          + ", ".join(f"{n.removeprefix('model.layers.').removesuffix('.weight')} {cost[n]:+.2%}" for n in ranked[:5]))
    print("least fragile: " + ", ".join(f"{n.removeprefix('model.layers.').removesuffix('.weight')} {cost[n]:+.2%}"
                                        for n in ranked[-3:]))
    by_role, by_layer = {}, {}
    for name, c in cost.items():
        role, layer = name.split(".")[-2].removesuffix("_proj"), int(name.split(".")[2])
        by_role.setdefault(role, []).append(c)
        by_layer.setdefault(layer, []).append(c)
    print("mean by role:  " + ", ".join(f"{r} {np.mean(v):+.2%}" for r, v in
                                         sorted(by_role.items(), key=lambda kv: -np.mean(kv[1]))))
    print("mean by layer: " + ", ".join(f"{layer} {np.mean(v):+.2%}" for layer, v in sorted(by_layer.items())))

    glob = prune.global_magnitude_masks(weights, 0.7)
    share = {name: 1 - float(m.mean()) for name, m in glob.items()}  # the sparsity global ranking gives each matrix
    names = list(weights)
    rho = float(np.corrcoef(ranks([share[n] for n in names]), ranks([cost[n] for n in names]))[0, 1])
    most, least = max(share, key=share.get), min(share, key=share.get)
    print(f"global 70%: per-matrix sparsity from {share[least]:.0%} ({least.removeprefix('model.layers.')}) to "
          f"{share[most]:.0%} ({most.removeprefix('model.layers.')})")
    if rho < -0.2:
        verdict = "global pruning tends to put more sparsity on the matrices that tolerate it (what we want)"
    elif rho > 0.2:
        verdict = "global pruning tends to put more sparsity on the matrices that are MOST fragile"
    else:
        verdict = "the sparsity global pruning chooses has little relation to how fragile a matrix is"
    print(f"rank correlation between a matrix's global sparsity and its fragility: {rho:+.2f}: {verdict}")
    uniform_ppl, global_ppl = ppl(masked(prune.magnitude_masks(weights, 0.7)), windows), ppl(masked(glob), windows)
    print(f"whole model at 70%: per-matrix magnitude {uniform_ppl:.2f}, global magnitude {global_ppl:.2f}: "
          + compare(global_ppl, uniform_ppl, what="global", verb="ends at", of="the perplexity of per-matrix pruning",
                    more="worse", less="better"))
    print("Global ranking compares |w| across matrices whose weights have different scales, not what each matrix "
          "costs the loss; the single-matrix costs above are the measurement it does not make.")


# ---- exercise 3 -----------------------------------------------------------------------------------


def exercise_3():
    """Calibration size: Wanda at 50% from 1 .. 64 windows, several seeds each."""
    weights = weights_of(teacher())
    mag = ppl(masked(prune.magnitude_masks(weights, 0.5)))
    sizes, seeds = ((1, 4, 16), (0, 1, 2)) if SMALL else ((1, 4, 16, 64), (0, 1, 2))
    print(f"{eval_note()}; magnitude 50%: {mag:.3f}")
    beats = {}
    for n in sizes:
        values = []
        for seed in seeds:
            norms = prune.collect_input_norms(teacher(), calib(n, seed=seed), batch_size=8)
            values.append(ppl(masked(prune.wanda_masks(weights, norms, 0.5))))
        beats[n] = all(v < mag for v in values)
        s = spread(values)
        print(f"  Wanda from {n:>2} window(s) ({n * CALIB_SEQ_LEN:>5} tokens): median {s.median:.3f} over "
              f"{len(seeds)} seeds (from {min(values):.3f} to {max(values):.3f}); "
              f"{sum(v < mag for v in values)} of {len(seeds)} below magnitude")
    reliable = [n for n in sizes if all(beats[m] for m in sizes if m >= n)]
    if reliable:
        print(f"From {reliable[0]} window(s) ({reliable[0] * CALIB_SEQ_LEN} tokens) on, every seed beat magnitude "
              "in this run.")
    else:
        print("At no calibration size did every seed beat magnitude in this run.")
    print("Wanda needs only one number per input feature, ||X[:, k]||, a mean over tokens that settles quickly; "
          "the seeds show how much one sample of text moves it.")


# ---- exercise 4 -----------------------------------------------------------------------------------


def exercise_4():
    """Gradual (cubic) pruning against three jumps to 70%, same steps, and the dense control."""
    chunk, chunks = (4, 4) if SMALL else (25, 12)  # a prune point every `chunk` steps
    prune_chunks = max(3, chunks * 2 // 3)  # prune during the first two thirds, then recover
    settings = FinetuneSettings(steps=chunk, warmup_steps=1 if SMALL else 5, **TUNE)
    gradual = dict(zip(range(prune_chunks), cubic_levels(0.7, prune_chunks)))
    at = [round(i * (prune_chunks - 1) / 2) for i in range(3)]
    jumps = dict(zip(at, (0.5, 0.6, 0.7)))
    print(f"{chunks} chunks of {chunk} steps (B={settings.batch_size}, T={settings.seq_len}), "
          f"{chunks * chunk} steps in all; every chunk restarts a short warmup and cosine, the same for all runs")
    print("gradual: " + ", ".join(f"step {c * chunk}: {s:.0%}" for c, s in gradual.items()))
    print("jumps:   " + ", ".join(f"step {c * chunk}: {s:.0%}" for c, s in jumps.items()))

    def run(levels, tmp, label):
        model, masks = teacher(), None
        for c in range(chunks):
            if c in levels:
                masks = prune_to(weights_of(model), levels[c], previous=masks)  # survivors only
                model = prune.apply_masks(model, prune.to_param_layout(masks, teacher().config))
            model = tune(model, masks, settings, c, f"{tmp}/{label}{c}")  # chunk c: the same batches in every run
        return model, masks

    with tempfile.TemporaryDirectory() as tmp:
        result = {label: run(levels, tmp, label) for label, levels in
                  (("gradual", gradual), ("jumps", jumps), ("dense control", {}))}
    values = {label: ppl(model) for label, (model, _) in result.items()}
    print(eval_note())
    for label, (_, masks) in result.items():
        sparsity = 0.0 if masks is None else sparsity_of(masks)
        gap = "" if label == "dense control" else f" ({values[label] / values['dense control'] - 1:+.2%} vs the control)"
        print(f"  {label:14s} {sparsity:4.0%} sparse: perplexity {values[label]:.3f}{gap}")
    print(compare(values["gradual"], values["jumps"], what="gradual", verb="ends at", of="the perplexity of the jumps",
                  more="worse", less="better", band=0.01))
    print("Zhu & Gupta's argument for the cubic curve: many small cuts, largest while many redundant weights remain, "
          "give the network time to adapt between them. The dense control, trained on the same batches, shows how "
          "much of either result is the extra training alone"
          + ("; on small settings both schedules prune within a few steps, too few for the argument to show." if SMALL
             else "."))


# ---- exercise 5 -----------------------------------------------------------------------------------


def exercise_5():
    """Where CSR crosses dense with a batch of 16 instead of one token."""
    from tinyinfer.bench import sparse as sparse_bench

    size = 1024 if SMALL else 4096
    densities = (0.5, 0.1, 0.02) if SMALL else (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
    batch = 16
    bench = sparse_bench.run(size, size, densities, batch=batch, rounds=3 if SMALL else 7,
                             working_set_mb=16 if SMALL else 128, roof_mb=16 if SMALL else 256, scipy_side=False,
                             log=quiet, progress=False)
    key = f"batch B={batch}"
    print(f"{size}x{size}, {bench['rounds']} rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          "CSR vs dense: median of the per-round ratios (lowest-highest round), > 1: CSR faster")
    for d in densities:
        r = bench["densities"][str(d)]
        one, many = r["ratios"]["decode csr vs dense"], r["ratios"][f"B={batch} csr vs dense"]
        grow_dense = r[key]["dense"]["s"] / r["decode"]["dense"]["s"]
        grow_csr = r[key]["csr"]["s"] / r["decode"]["csr"]["s"]
        print(f"  density {d:4.2f}: B=1 {one['median']:5.2f}x ({one['low']:.2f}-{one['high']:.2f}), B={batch} "
              f"{many['median']:5.2f}x ({many['low']:.2f}-{many['high']:.2f}); from B=1 to B={batch} the dense time "
              f"grows {grow_dense:4.1f}x, the CSR time {grow_csr:4.1f}x")
    one, many = bench["crossover decode csr vs dense"], bench[f"crossover B={batch} csr vs dense"]
    print(f"crossover: CSR faster at density <= {one} with B=1, <= {many} with B={batch} (None: at no density tried)")
    if one is not None and many is not None:
        moved = "toward sparser matrices" if many < one else ("not at all" if many == one else "toward denser ones")
        print(f"with a batch the crossover moved {moved} in this run")
    grew_less = sum(bench["densities"][str(d)][key]["dense"]["s"] / bench["densities"][str(d)]["decode"]["dense"]["s"]
                    < bench["densities"][str(d)][key]["csr"]["s"] / bench["densities"][str(d)]["decode"]["csr"]["s"]
                    for d in densities)
    print(f"the dense time grew less than the CSR time from B=1 to B={batch} at {grew_less} of {len(densities)} densities")
    print("Why it can move: with B tokens, dense BLAS reads each weight once and uses it B times from registers and "
          "cache (a matrix-matrix product), so its time can grow far less than B-fold; CSR also reads each nonzero "
          "once, but every use is a gather of x[b, column] at a scattered address. Whichever side's time grows less "
          "with B gains, and the crossover moves against the other.")
    saved = repo_root() / "benchmarks" / "sparse.json"
    if saved.is_file():
        import json

        ref = json.loads(saved.read_text())
        print(f"benchmarks/sparse.json ({ref['n']}x{ref['k']}, {ref['rounds']} rounds, `python -m tinyinfer.bench.sparse`): "
              f"crossover at density <= {ref['crossover decode csr vs dense']} with B=1, "
              f"<= {ref['crossover B=16 csr vs dense']} with B=16")


# ---- exercise 6 -----------------------------------------------------------------------------------


def exercise_6():
    """2:4 chosen by Wanda's score against 2:4 by magnitude, one-shot and fine-tuned."""
    weights = weights_of(teacher())
    norms = prune.collect_input_norms(teacher(), calib(8 if SMALL else 32), batch_size=8)
    masks = {"magnitude 2:4": prune.nm_masks(weights, 2, 4), "Wanda 2:4": prune.nm_masks(weights, 2, 4, input_norms=norms)}
    one_shot = {label: ppl(masked(m)) for label, m in masks.items()}
    print(eval_note())
    print("one-shot: " + ", ".join(f"{label} {v:.3f}" for label, v in one_shot.items()) + "; "
          + compare(one_shot["Wanda 2:4"], one_shot["magnitude 2:4"], what="Wanda's 2:4", verb="ends at",
                    of="magnitude's perplexity", more="worse", less="better", band=0.01))
    settings = FinetuneSettings(steps=8 if SMALL else 200, warmup_steps=2 if SMALL else 20, **TUNE)
    with tempfile.TemporaryDirectory() as tmp:
        tuned = {label: ppl(tune(masked(m), m, settings, 0, f"{tmp}/{i}")) for i, (label, m) in enumerate(masks.items())}
        control = ppl(tune(teacher(), None, settings, 0, f"{tmp}/dense"))
    print(f"after {settings.steps} steps (B={settings.batch_size}, T={settings.seq_len}): "
          + ", ".join(f"{label} {v:.3f} ({v / control - 1:+.2%} vs the dense control {control:.3f})"
                      for label, v in tuned.items()))
    print(compare(tuned["Wanda 2:4"], tuned["magnitude 2:4"], what="after fine-tuning Wanda's 2:4", verb="ends at",
                  of="magnitude's perplexity", more="worse", less="better", band=0.01))
    head_start = one_shot["magnitude 2:4"] / one_shot["Wanda 2:4"]
    left = tuned["magnitude 2:4"] / tuned["Wanda 2:4"]
    print(f"magnitude / Wanda perplexity (above 1: Wanda ahead): one-shot {head_start:.3f}, after fine-tuning "
          f"{left:.3f}. Fine-tuning moves the surviving weights, which can make up for a worse choice of which "
          "ones survive" + ("; with this few steps it has had little time to (small settings)." if SMALL else "."))


# ---- exercise 7 -----------------------------------------------------------------------------------


def exercise_7():
    """SparseGPT's appetite for calibration text, against Wanda on the same text."""
    weights = weights_of(teacher())
    seq_len = 128 if SMALL else 256
    sizes, seeds = ((2, 8, 32), (0,)) if SMALL else ((2, 8, 32, 128), (0, 1, 2))
    K = teacher().config.n_embd  # the inputs of q, k, v, gate, up; o_proj reads n_head * head_dim, down_proj ffn_hidden
    F = teacher().config.ffn_hidden
    print(f"{eval_note()}; SparseGPT and Wanda at 50% from the same windows of {seq_len} tokens")
    rows = {}
    for n in sizes:
        sg, wanda = [], []
        for seed in seeds:
            ids = calib(n, seq_len, seed)
            sg.append(ppl(sparsegpt_prune_model(teacher(), ids, sparsity=0.5, progress=False)[0]))
            norms = prune.collect_input_norms(teacher(), ids, batch_size=8)
            wanda.append(ppl(masked(prune.wanda_masks(weights, norms, 0.5))))
        rows[n] = (sg, wanda)
        tokens = n * seq_len
        shown = (f"median {np.median(sg):.3f} (from {min(sg):.3f} to {max(sg):.3f}), Wanda median {np.median(wanda):.3f}"
                 if len(seeds) > 1 else f"{sg[0]:.3f}, Wanda {wanda[0]:.3f}")
        print(f"  {n:>3} windows, {tokens:>6} tokens ({tokens / K:6.1f} per input of a {K}-input layer, "
              f"{tokens / F:5.1f} for down_proj's {F}): SparseGPT {shown}; "
              f"SparseGPT lower on {sum(s < w for s, w in zip(sg, wanda))} of {len(seeds)} seed(s)")
    losing = [n for n in sizes if any(s >= w for s, w in zip(*rows[n]))]
    if losing:
        worst = max(losing)
        print(f"SparseGPT lost to Wanda on some seed at {', '.join(str(n) for n in losing)} window(s); the largest of "
              f"these is {worst * seq_len / K:.1f} tokens per input feature of a {K}-input layer")
    else:
        print("SparseGPT beat Wanda on every seed at every size here, even the smallest")
    n = sizes[0]
    ids = calib(n, seq_len, 0)
    damped = {DAMP: rows[n][0][0]}  # seed 0 at the default damping, measured above
    damped |= {d: ppl(sparsegpt_prune_model(teacher(), ids, sparsity=0.5, damp=d, progress=False)[0]) for d in (0.1, 1.0)}
    print(f"with {n} windows, seed 0, damping lambda = d * mean(diag H): "
          + ", ".join(f"d = {d:g}: {v:.3f}" for d, v in damped.items()))
    print("   " + compare(damped[1.0], damped[DAMP], what="d = 1", verb="ends at", of=f"the perplexity with the default "
                          f"d = {DAMP:g}", more="worse", less="better", band=0.01))
    print("Why the repair can hurt: with M tokens and K inputs, X^T X has rank at most M. For M < K the Hessian is "
          "singular and only the damping makes it invertible; for M a few times K it is still a noisy estimate. The "
          "update then fits the few calibration tokens closely and moves the weights along directions those tokens "
          "barely visit, which held-out text does use. More damping pulls H toward a multiple of I, where "
          "SparseGPT's update vanishes and its choice becomes magnitude pruning.")


# ---- exercise 8 -----------------------------------------------------------------------------------


def exercise_8():
    """SparseGPT's mask with the original values, against the full repair, one-shot and fine-tuned."""
    weights = weights_of(teacher())
    ids = calib(8 if SMALL else 32)
    repaired, masks = sparsegpt_prune_model(teacher(), ids, sparsity=0.5, progress=False)
    mask_only = masked(masks)  # SparseGPT's choice of zeros, the teacher's values for the rest
    norms = prune.collect_input_norms(teacher(), ids, batch_size=8)
    one_shot = {"SparseGPT": ppl(repaired), "SparseGPT's mask, no repair": ppl(mask_only),
                "Wanda": ppl(masked(prune.wanda_masks(weights, norms, 0.5)))}
    print(f"{eval_note()}; 50%, calibrated on {ids.size:,} tokens")
    print("one-shot: " + ", ".join(f"{k} {v:.3f}" for k, v in one_shot.items()))
    print("   " + compare(one_shot["SparseGPT's mask, no repair"], one_shot["Wanda"], what="SparseGPT's mask alone",
                          verb="ends at", of="Wanda's perplexity", more="worse", less="better", band=0.01))
    print("   " + compare(one_shot["SparseGPT"], one_shot["SparseGPT's mask, no repair"], what="the repair",
                          verb="brings it to", of="the mask alone", more="worse", less="better", band=0.01))
    settings = FinetuneSettings(steps=8 if SMALL else 200, warmup_steps=2 if SMALL else 20, **TUNE)
    with tempfile.TemporaryDirectory() as tmp:
        tuned = {"SparseGPT": ppl(tune(repaired, masks, settings, 0, f"{tmp}/repaired")),
                 "SparseGPT's mask, no repair": ppl(tune(mask_only, masks, settings, 0, f"{tmp}/mask"))}
    print(f"after {settings.steps} steps (B={settings.batch_size}, T={settings.seq_len}, the same batches): "
          + ", ".join(f"{k} {v:.3f}" for k, v in tuned.items()))
    before = one_shot["SparseGPT's mask, no repair"] / one_shot["SparseGPT"] - 1
    after = tuned["SparseGPT's mask, no repair"] / tuned["SparseGPT"] - 1
    print(f"the repair's head start: {before:+.2%} before fine-tuning, {after:+.2%} after "
          f"({'it shrank' if abs(after) < abs(before) else 'it did not shrink'} in this run)")
    print("Fine-tuning updates the same surviving weights the repair adjusted, so it can find a similar correction "
          "by gradient descent: one expects the head start to shrink as fine-tuning goes on (the line above says by "
          "how much it did here), and to matter most when fine-tuning is short or absent.")


if __name__ == "__main__":
    run_exercises(globals())
