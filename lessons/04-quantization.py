# Lesson 04: quantization, fewer bits per weight.
# Source of notebooks/04-quantization.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/04-quantization.py` from the repository root.

# %% [markdown]
# # Lesson 04 — Quantization: fewer bits per weight
#
# A trained model stores every weight as a 32-bit float. Quantization stores it in 8 or 4 bits
# instead, plus a little bookkeeping (a scale for every few dozen weights), and multiplies with
# those small integers directly. A typical article on the subject promises:
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
#
# Where the code is:
#
# | piece | where |
# |---|---|
# | ggml's Q8_0 / Q4_0 blocks, quantize, dequantize, bytes | `tinyinfer/quant/formats.py: quantize`, `QTensor` |
# | the NumPy twin of the multiply | `tinyinfer/quant/formats.py: quantized_matmul_reference` |
# | the fast kernels (Numba) | `tinyinfer/quant/kernels.py: quantized_matmul` |
# | a whole quantized model | `tinyinfer/quant/model.py: quantize_model`, `weight_bytes` |
# | GPTQ (better 4-bit rounding from calibration text) | `tinyinfer/quant/gptq.py: gptq_quantize_model`, `calibration_windows` |
# | ternary weights, an extreme experiment | `tinyinfer/quant/lowbit.py: ternary_model` |
# | the benchmark helpers | `tinyinfer/bench/__init__.py: interleaved`, `machine`; `tinyinfer/bench/quant.py` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes the timed matrix and the evaluation small.

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores (on a busy machine, extra threads can make them many times slower).
# This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinyinfer
from tinyinfer import corpus
from tinyinfer.bench import interleaved, machine
from tinyinfer.evaluate import evaluate
from tinyinfer.model import layer_names
from tinyinfer.quant import quantize
from tinyinfer.quant.formats import quantize_activations, quantized_matmul_reference
from tinyinfer.quant.gptq import calibration_windows, gptq_quantize_model
from tinyinfer.quant.lowbit import ternary_model
from tinyinfer.quant.model import linear_weight_names, quantize_model, weight_bytes

from tinyinfer.lessons import repo_root

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
# | Q4_0 | 2 + 16 = 18 | 4.5 | 7.1x | 3.56x |
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
# each bit halves the step, so the error grows 2^4 = 16 times going from 8 to 4 bits.
#
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
for ax, values, title in ((axes[1], block, "the outlier's block"), (axes[2], other, "a neighbouring block")):
    ax.plot(values, np.zeros_like(values), "|", ms=30, color="k", label="the 32 weights")
    d_sym = np.abs(values).max() / 7
    ax.plot(np.arange(-7, 8) * d_sym, np.full(15, 0.5), "o", color="C0", ms=4, label="int4 symmetric grid")
    lo, hi = values.min(), values.max()
    ax.plot(lo + np.arange(16) * (hi - lo) / 15, np.full(16, -0.5), "s", color="C2", ms=4,
            label="int4 min/max grid")
    ax.set_ylim(-1.5, 1.5)
    ax.set_yticks([])
    ax.set_title(f"row {row}: {title}")
    ax.set_xlabel("w")
axes[2].legend(fontsize=8, loc="lower right")
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
# blocks, and why methods like GPTQ and AWQ (section 5) look at the *activations* too.
#
# ## 3. ggml's formats, byte for byte
#
# `tinyinfer/quant/formats.py` reproduces ggml's two simplest formats exactly, down to the float32
# arithmetic and the rounding rule, so `QTensor.to_bytes()` is what a GGUF file stores.
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
# ## 4. The kernels: multiplying without converting back to floats
#
# One way to use quantized weights is to dequantize them to float32 and call the BLAS. That saves
# memory on disk, but every product still reads 32-bit floats. llama.cpp does something better
# for the CPU, and `tinyinfer/quant/kernels.py` copies it:
#
# 1. quantize the **activations** x to Q8_0 blocks on the fly (`quantize_activations`: int8 plus
#    one scale per 32 numbers; cheap, x is one vector);
# 2. for each block, the dot product of the two int8 (or int4) vectors is a sum of small-integer
#    products, **exact** in int32 (at most 32 x 127 x 127): the CPU does 16 or 32 of them per
#    instruction;
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
for fmt in ("q8_0", "q4_0"):
    qt = quantize(W, fmt)
    numba_out = qt.matmul(x)  # (B, N) the Numba kernel (compiled on first use, then cached on disk)
    twin_out = quantized_matmul_reference(fmt, qt.scales.astype(np.float32), qt.quants, x)  # (B, N)
    scale = np.abs(x @ W.T).max()
    print(f"{fmt}: |kernel - twin| {np.abs(numba_out - twin_out).max() / scale:.1e},  "
          f"|kernel - x @ dequantized.T| {np.abs(numba_out - x @ qt.dequantize().T).max() / scale:.1e},  "
          f"|kernel - x @ W.T| {np.abs(numba_out - x @ W.T).max() / scale:.1e}   (relative to max |x @ W.T|)")
    assert np.allclose(numba_out, twin_out, rtol=1e-4, atol=1e-5 * scale)
xq, xd = quantize_activations(x)
print(f"x as Q8_0 blocks: quants {xq.shape} {xq.dtype}, scales {xd.shape} {xd.dtype}")

# %% [markdown]
# **Is it faster?** Every speed claim in tinyinfer is a ratio measured in one process,
# alternating the two calls round after round (`tinyinfer/bench/__init__.py: interleaved`), with
# the machine printed next to it. We time one matrix-vector product (decode: B = 1, what
# generating a token does for every weight) and a batch of 32 rows (prefill), against NumPy's
# float32 `W @ x`, on a random matrix (4096 x 4096 normally, the size of one LLaMA-7B projection;
# 1024 x 1024 on small settings). The Numba time includes quantizing x.
#
# Both sides run on **one thread**: the first cell pinned the BLAS to one thread, so we pin Numba
# too (it would otherwise split a large batch over both cores). The full benchmark, with the
# parallel kernels as well, is `python -m tinyinfer.bench.quant`.

# %%
import numba

print(json.dumps(machine(), indent=1))
size = 1024 if SMALL else 4096
rounds = 15 if SMALL else 7
big = (rng.standard_normal((size, size)) * 0.02).astype(np.float32)  # (N, K): speed does not depend on values
x1 = rng.standard_normal(size).astype(np.float32)  # (K,)
xb = rng.standard_normal((32, size)).astype(np.float32)  # (32, K)
threads = numba.get_num_threads()
numba.set_num_threads(1)
timings = {}  # (fmt, case) -> interleaved's result
for fmt in ("q8_0", "q4_0"):
    qbig = quantize(big, fmt)
    timings[fmt, "B=1"] = interleaved(lambda: qbig.matmul(x1), lambda: big @ x1, rounds=rounds)
    timings[fmt, "B=32"] = interleaved(lambda: qbig.matmul(xb), lambda: xb @ big.T, rounds=rounds)
numba.set_num_threads(threads)
for (fmt, case), r in timings.items():
    print(f"{size}x{size} {fmt} {case:>4}: quantized {r['fast_s'] * 1e3:7.3f} ms, numpy float32 "
          f"{r['baseline_s'] * 1e3:7.3f} ms, ratio {r['ratio']:.2f}x")

# %%
bits_axis = [32, 8.5, 4.5]
plt.figure(figsize=(6.5, 3.8))
plt.plot(bits_axis, [1, 32 / 8.5, 32 / 4.5], "k:", marker="o", label="bytes read (fp32 / format): the ideal")
plt.plot(bits_axis, [1, 4, 8], "--", color="gray", marker="x", label="the article's claim (4x, 8x)")
for case, color in (("B=1", "C0"), ("B=32", "C1")):
    plt.plot(bits_axis, [1] + [timings[fmt, case]["ratio"] for fmt in ("q8_0", "q4_0")], "o-", color=color,
             label=f"measured, {case}")
plt.xscale("log", base=2)
plt.xticks(bits_axis, ["fp32", "Q8_0\n8.5", "Q4_0\n4.5"])
plt.xlabel("bits per weight")
plt.ylabel("speed relative to NumPy float32")
plt.title(f"{size} x {size}, one thread")
plt.legend(fontsize=8)
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the measured lines with care; they belong to *this* machine:
#
# * **Decode (B = 1)** is where the memory argument applies, and only if the matrix does not fit
#   in the CPU's caches: a 4096 x 4096 float32 matrix is 64 MB and streams from RAM, a 1024 x 1024
#   one is 4 MB and may sit in cache, where arithmetic, not memory, sets the pace. The ideal line
#   is an upper bound: the kernels also unpack nibbles and quantize x.
# * **Batches (B = 32)** reuse each weight 32 times, so they are limited by arithmetic, and the
#   BLAS float32 kernels are very well tuned. Our batch kernel (`tinyinfer/quant/kernels.py`)
#   keeps a 4 x 4 tile of outputs in registers so each loaded weight block serves four rows of x;
#   that brings it level with BLAS, not past it.
# * **Threads and neighbours matter**: a second BLAS thread, a busy core (this lesson was written
#   next to a training job), or another CPU changes every ratio. That is why `machine()` is
#   printed with them, and why a claim such as "4x faster" means nothing without its machine.
#
# For reference, on a quiet 2-core AMD EPYC VM, `python -m tinyinfer.bench.quant` measured at
# 4096 x 4096 (NumPy with its default threads): decode Q8_0 1.8-2.6x and Q4_0 1.3-1.8x the
# speed of float32; batch-32 1.0-1.4x and 0.9x; a batch of 2 to 5 rows 2.4-5x, because there
# OpenBLAS spends most of its time repacking the float matrix. In the benchmark NumPy's 64 MB
# matrix evicts ours every round, so both stream from memory, and one core of this VM reads far
# less per second than OpenBLAS's two threads together. Far from 4x and 8x: llama.cpp's
# hand-written SIMD kernels, on a machine with many cores sharing a wide memory bus, get much
# closer to the ideal line (`benchmarks/RESULTS.md` has the whole table).
#
# ## 5. Quality: what the model loses
#
# Now the whole model. `tinyinfer/quant/model.py: quantize_model(model, fmt)` returns the same
# `Model` with every linear weight of the blocks replaced by a `QTensor`; the token embedding
# (and therefore the tied output head), norms and biases stay float32, as llama.cpp keeps the
# sensitive output head at higher precision. Since `tinyinfer/model.py` calls `matmul(w, x)` for
# every linear layer, nothing else changes.
#
# Four variants against float32:
#
# * **Q8_0** and **Q4_0**: round to nearest, ggml's rules (section 3);
# * **GPTQ Q4_0** (`tinyinfer/quant/gptq.py: gptq_quantize_model`): the same Q4_0 bytes, but
#   rounded column by column, and after each column the not-yet-rounded weights are nudged to
#   cancel the error *on real inputs*; those inputs come from a few windows of **training** text
#   (`calibration_windows`), so the held-out text stays held out;
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
print(f"held-out: {eval_windows} windows of {seq_len} tokens; GPTQ calibration: {calib.shape} from "
      f"{len(calib_docs)} training documents")

variants = {"fp32": model, "Q8_0": quantize_model(model, "q8_0"), "Q4_0": quantize_model(model, "q4_0"),
            "GPTQ Q4_0": gptq_quantize_model(model, calib, progress=False), "ternary": ternary_model(model)}
linear_bits = {"fp32": 32, "Q8_0": 8.5, "Q4_0": 4.5, "GPTQ Q4_0": 4.5, "ternary": 2.1}  # bits a linear weight

n_linear = sum(int(np.prod(np.shape(model.params[n]))) for n in names)  # weights in the linear layers
float_rest = weight_bytes(model) - 4 * n_linear  # embedding (= tied head), norms: stay float32
sizes = {label: float_rest + n_linear * bits / 8 for label, bits in linear_bits.items()}
for label in ("Q8_0", "Q4_0", "GPTQ Q4_0"):  # the real QTensors take exactly what the formula says
    assert weight_bytes(variants[label]) == sizes[label]

results = {}
for label, m in variants.items():
    r = evaluate(m, val_stream, seq_len, max_windows=eval_windows, reference=None if m is model else model)
    results[label] = r
base = results["fp32"]["perplexity"]
print(f"{'':>10} {'bits/weight':>11} {'MB':>7} {'perplexity':>10} {'change':>8} {'top-1 agree':>11} {'KL':>8}")
for label, r in results.items():
    print(f"{label:>10} {linear_bits[label]:>11} {sizes[label] / 1e6:>7.3f} {r['perplexity']:>10.3f} "
          f"{r['perplexity'] / base - 1:>+8.2%} {r.get('top1_agreement', 1.0):>11.1%} {r.get('kl_divergence', 0.0):>8.4f}")

# %%
quantized = [label for label in results if label != "fp32"]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
ax = axes[0]
for label in quantized:
    change = 100 * (results[label]["perplexity"] / base - 1)  # percent over fp32
    ax.plot(linear_bits[label], change, "o", ms=8, label=label)
    ax.annotate(f"{change:+.2f}%", (linear_bits[label], change), textcoords="offset points", xytext=(6, 4),
                fontsize=8)
ax.axhline(0, color="k", ls="--", label=f"fp32 (perplexity {base:.2f})")
ax.set_xscale("log", base=2)
ax.set_yscale("symlog", linthresh=1)  # linear within +-1 %, logarithmic beyond: ternary is far off
ax.set_xticks([2.1, 4.5, 8.5, 32], ["2.1", "4.5", "8.5", "32"])
ax.set_xlabel("bits per linear weight")
ax.set_ylabel("held-out perplexity change (%)")
ax.set_title(f"perplexity vs bits ({MODEL_DIR.name}, {eval_windows} windows)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
ax = axes[1]
labels = list(results)
ax.bar(labels, [n_linear * linear_bits[label] / 8 / 1e6 for label in labels], label="linear weights")
ax.bar(labels, [float_rest / 1e6] * len(labels), bottom=[n_linear * linear_bits[label] / 8 / 1e6 for label in labels],
       label="embedding + norms (float32)")
for i, label in enumerate(labels):
    ax.text(i, sizes[label] / 1e6, f"{sizes['fp32'] / sizes[label]:.1f}x smaller" if i else "", ha="center",
            va="bottom", fontsize=8)
ax.set_ylabel("MB")
ax.set_title("model size (ternary: if packed)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Compare with real models.** llama.cpp's perplexity tool documents its formats on LLaMA-3 8B:
# Q8_0 costs about **+0.1%** perplexity, Q4_0 about **+7.8%**. Three differences make our numbers
# different from those, in both directions:
#
# * **Our model is tiny and small-vocabulary**; a wider model averages more rounding errors per
#   output, but real LLMs also have much larger activation outliers (section 2) that Q4_0's
#   round-to-nearest handles poorly. Newer LLaMA models, trained on far more tokens, are known to
#   lose *more* to quantization
#   (their weights are reported to use more of the fine detail).
# * **Our evaluation is short** (a few windows on small settings): differences under a percent are
#   within noise there; run without `TINYINFER_LESSON_SMALL` for 64 windows.
# * **Our model size counts the float32 embedding**, which dominates a small-vocabulary, thin
#   model: the "8x smaller" only applies to the linear layers. In LLaMA-3 8B the embedding and
#   head are about 13% of the weights (a 128K vocabulary), in LLaMA-2 7B about 4%, and llama.cpp
#   quantizes them too (the head at higher precision).
#
# GPTQ usually beats plain Q4_0 at the same 4.5 bits, by more on bigger models whose layer
# inputs are more correlated; on a small model with little calibration text the gain is small
# and not guaranteed. Ternary without retraining shows how much a trained float model depends on
# its fine weight values: BitNet's 1.58 bits work only because the model learns them.
#
# Finally, the article's sentence against what this notebook measured:

# %%
print(f"model: {MODEL_DIR.name}; machine: {machine()['cpu']}")
for fmt, label, claim_x in (("q8_0", "Q8_0", 4), ("q4_0", "Q4_0", 8)):
    print(f"{label}: claimed {claim_x}x smaller, {claim_x}x faster, <1% accuracy lost")
    print(f"   measured: linear weights {32 / linear_bits[label]:.2f}x smaller, whole model "
          f"{sizes['fp32'] / sizes[label]:.2f}x; decode {timings[fmt, 'B=1']['ratio']:.2f}x, "
          f"batch-32 {timings[fmt, 'B=32']['ratio']:.2f}x the speed of NumPy float32 ({size}x{size}, 1 thread); "
          f"perplexity {results[label]['perplexity'] / base - 1:+.2%}, top-1 agreement "
          f"{results[label]['top1_agreement']:.1%}")

# %% [markdown]
# ## Exercises
#
# 1. **Q4_1 for real.** ggml's Q4_1 block holds a float16 `d`, a float16 `m` and 16 bytes of
#    nibbles (20 bytes, 5 bits a weight), with `d = (max - min) / 15` and
#    `q = min(15, trunc((w - min) / d + 0.5))`. Write `quantize_q4_1(w)` in NumPy, laid out like
#    `formats.BLOCK_Q4_0`, and compare its RMS error on section 2's matrix with Q4_0's. Is the
#    extra half bit better spent on Q4_1 or on a finer Q4_0 grid?
# 2. **Block size.** Redo section 2's "int4 per block" with blocks of 8, 16, 64, 128 and 256
#    (one float16 scale per block) and plot RMS error against bits per weight. Where does a
#    smaller block stop paying for its scale? (ggml's K-quants answer this with blocks of 256
#    split into sub-blocks with 6-bit scales.)
# 3. **Where does the error go?** Quantize only one layer at a time to Q4_0 (build the params dict
#    by hand, as `quantize_model` does) and measure the perplexity change for each. Which roles
#    (q, k, v, o, gate, up, down) and which layers are the most sensitive?
# 4. **AWQ.** `tinyinfer/quant/gptq.py: awq_scale_model(model, calib)` returns a float model that
#    computes the same function with rescaled weights. Check that its logits equal the original's,
#    then feed it to `quantize_model(..., "q4_0")` and to `gptq_quantize_model`. How do the four
#    Q4_0 variants rank? Try 4 and 64 calibration windows.
# 5. **Threads.** Rerun section 4 with `numba.set_num_threads(2)` and, in a fresh kernel,
#    `OPENBLAS_NUM_THREADS=2`. Which side gains more from the second core, and what happens when
#    another program is busy on it? Compare with `python -m tinyinfer.bench.quant --variants`.
# 6. **The embedding.** Our model keeps its tied embedding in float32. Quantize it to Q8_0 with
#    `quantize`, compute the logits as `h @ E_dequantized.T` from the final hidden state by hand,
#    and measure the KL divergence it adds. How small would the model get, and is that worth it?
