# Lesson 03: training, the backward pass and the loop around it.
# Source of notebooks/03-training.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/03-training.py` from the repository root.

# %% [markdown]
# # Lesson 03 — Training: gradients by hand, AdamW, and why the teacher must be good
#
# Inference only runs the model forward. To get weights worth running, training repeats one
# step thousands of times: run the model on a batch of text, measure how badly it predicted each
# next token (the *loss*), compute how the loss changes with every parameter (the *gradient*),
# and move every parameter a little downhill. tinyinfer writes the gradients by hand, without
# an autograd library, so every derivative can be read and checked:
#
# | piece | where |
# |---|---|
# | forward/backward pairs of each op | `tinyinfer/ops.py` (`rmsnorm_forward` / `rmsnorm_backward`, ...) |
# | the whole model's backward pass | `tinyinfer/model.py: backward`, `loss_and_grads` |
# | optimizer and learning-rate schedule | `tinyinfer/train.py: AdamW`, `lr_at`, `clip_grad_norm` |
# | the loop, checkpoints, resuming | `tinyinfer/train.py: train` |
# | held-out loss, perplexity, top-1 | `tinyinfer/evaluate.py: evaluate` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) makes the training run short.

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores (on a busy machine, extra threads can make them many times slower).
# This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tinyinfer import corpus, ops
from tinyinfer.config import ModelConfig
from tinyinfer.evaluate import evaluate
from tinyinfer.model import Model, init_params, loss_and_grads
from tinyinfer.presets import get_preset
from tinyinfer.tokenizer import Tokenizer
from tinyinfer.train import AdamW, TrainConfig, clip_grad_norm, lr_at, sample_batch

from tinyinfer.lesson_tools import compare
from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
print(f"small settings: {SMALL}")

# %% [markdown]
# ## 1. Forward/backward pairs
#
# Every op in `tinyinfer/ops.py` comes as a pair (the llm.c style):
#
# * `<op>_forward(inputs, params, sizes) -> (out, cache)`: the result, plus exactly what the
#   backward pass will need;
# * `<op>_backward(dout, cache) -> gradients`: given dL/dout, the gradient of the loss with
#   respect to the op's output, return dL/d(each input and parameter). This is the chain rule,
#   one op at a time.
#
# The model's `backward` (`tinyinfer/model.py`) calls the ops' backward functions in the reverse
# order of the forward pass.
#
# ### RMSNorm's backward, derived
#
# As llm.c's LayerNorm tutorial does for LayerNorm, we derive one backward on paper before reading
# its code. RMSNorm acts on each row (one position's vector) `x` of C numbers:
#
# $$ r = \sqrt{\tfrac{1}{C}\textstyle\sum_i x_i^2 + \varepsilon}, \qquad \hat x = \frac{x}{r},
# \qquad y = w \odot \hat x . $$
#
# We are given `g = dL/dy` (the `dout` of the rest of the network) and want `dL/dw` and `dL/dx`.
#
# **The gain.** `y_i = w_i x̂_i`, so `dL/dw_i = g_i x̂_i` for one row. The same w is used by every
# row (every position of every sequence), and a parameter used several times collects the sum of
# its gradients: `dL/dw = Σ_rows g ⊙ x̂`.
#
# **The input.** First through the gain: `dL/dx̂ = g ⊙ w`; call it `ĝ`. Then through the
# normalisation. Every `x̂_i = x_i / r` depends on every `x_j`, through r, with
# `∂r/∂x_j = x_j / (C r)`:
#
# $$ \frac{\partial \hat x_i}{\partial x_j} = \frac{\delta_{ij}}{r} - \frac{x_i}{r^2}\,\frac{x_j}{C r}
# = \frac{1}{r}\Big(\delta_{ij} - \frac{\hat x_i \hat x_j}{C}\Big) . $$
#
# The chain rule sums over i:
#
# $$ \frac{\partial L}{\partial x_j} = \sum_i \hat g_i \frac{\partial \hat x_i}{\partial x_j}
# = \frac{1}{r}\Big(\hat g_j - \hat x_j \cdot \tfrac{1}{C}\textstyle\sum_i \hat g_i \hat x_i\Big),
# \qquad\text{so}\qquad dx = \frac{1}{r}\big(\hat g - \hat x \cdot \mathrm{mean}(\hat g \odot \hat x)\big). $$
#
# The first term is what we would get if r were a constant; the second removes the part of `ĝ`
# that points along `x̂` itself, because moving x along its own direction only rescales it, and
# the normalisation undoes a rescaling. That is all `tinyinfer/ops.py: rmsnorm_backward` does,
# with `1/r` cached by the forward pass as `rstd`. Here is the derivation as code, next to the
# library's:

# %%
def rmsnorm_backward_derived(g, x, w, eps):
    """dL/dx and dL/dw of y = w * x / r, straight from the derivation above."""
    r = np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps)  # (T, 1)
    xhat = x / r  # (T, C)
    dw = (g * xhat).sum(axis=0)  # (C,) summed over the rows that share w
    ghat = g * w  # dL/dxhat (T, C)
    dx = (ghat - xhat * (ghat * xhat).mean(axis=-1, keepdims=True)) / r  # (T, C)
    return dx, dw


rng = np.random.default_rng(0)
x = rng.standard_normal((3, 8))  # (T, C) in float64
w = rng.standard_normal(8)  # (C,)
eps = 1e-5
out, cache = ops.rmsnorm_forward(x, w, eps)
dout = rng.standard_normal(out.shape)  # pretend the rest of the network sent back this dL/dout
dx, dw = ops.rmsnorm_backward(dout, cache)
print("out", out.shape, " dx", dx.shape, " dw", dw.shape)
derived_dx, derived_dw = rmsnorm_backward_derived(dout, x, w, eps)
print(f"derivation vs the library: dx differs by {np.abs(derived_dx - dx).max():.1e}, "
      f"dw by {np.abs(derived_dw - dw).max():.1e}")

# %% [markdown]
# ## 2. Checking a gradient with finite differences
#
# How do we know `rmsnorm_backward` (and our derivation) is right? The definition of a derivative gives an
# independent answer: nudge one input by a small h both ways and see how the loss moves,
# `dL/dx ≈ (L(x + h) - L(x - h)) / 2h` (the *central* difference, accurate to order h²).
# Using the loss `L = sum(out * dout)` makes dL/dout exactly `dout`, so the two must agree.
# `tinyinfer/gradcheck.py: numerical_grad` is that loop, eight lines long; `tests/test_ops.py`
# uses it for every op. Here it checks RMSNorm:

# %%
from tinyinfer.gradcheck import numerical_grad


def loss_of(x, w):
    return float((ops.rmsnorm_forward(x, w, eps)[0] * dout).sum())


num_dx = numerical_grad(lambda: loss_of(x, w), x)
num_dw = numerical_grad(lambda: loss_of(x, w), w)
print("dx: largest difference", np.abs(num_dx - dx).max())
print("dw: largest difference", np.abs(num_dw - dw).max())
assert np.allclose(num_dx, dx, atol=1e-7) and np.allclose(num_dw, dw, atol=1e-7)

# %% [markdown]
# Why float64, and why h = 1e-6? Two errors pull in opposite directions: a large h makes the
# straight-line approximation wrong (error ~ h²), a small h makes `L(x + h) - L(x - h)` the
# difference of two nearly equal numbers, so rounding error (~ machine epsilon / h) takes over.
# float32 has a machine epsilon of 1e-7, float64 of 1e-16, so only float64 leaves a wide valley
# where the check is sharp. (The flat float32 line on the left is where `x + h == x`: the nudge
# is lost to rounding and the estimate is 0.)

# %%
steps = np.logspace(-12, -1, 45)
plt.figure(figsize=(6, 3.5))
for dtype in (np.float64, np.float32):
    x_t, w_t, d_t = x.astype(dtype), w.astype(dtype), dout.astype(dtype)
    exact = ops.rmsnorm_backward(d_t.astype(np.float64), ops.rmsnorm_forward(x, w, eps)[1])[0][0, 0]
    errors = []
    for h in steps:
        nudged = x_t.copy()
        nudged[0, 0] += dtype(h)
        up = (ops.rmsnorm_forward(nudged, w_t, dtype(eps))[0] * d_t).sum()
        nudged[0, 0] = x_t[0, 0] - dtype(h)
        down = (ops.rmsnorm_forward(nudged, w_t, dtype(eps))[0] * d_t).sum()
        errors.append(abs(float(up - down) / (2 * h) - exact) + 1e-17)
    plt.loglog(steps, errors, "o-", ms=3, label=np.dtype(dtype).name)
plt.xlabel("step h")
plt.ylabel("|finite difference - backward|")
plt.title("gradient check error of one entry of dx")
plt.legend()
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Checking a whole model
#
# The same check works for the whole transformer. `tinyinfer/model.py: loss_and_grads(params,
# config, ids, targets)` runs the forward pass, the cross-entropy loss, and the backward pass
# through every block, returning `(loss, grads)` with one gradient per parameter name. We build
# tiny random models of both families in float64 and compare a few entries of every gradient
# with finite differences.

# %%
def check_model_gradients(family, entries_per_param=2, h=1e-5):
    extra = dict(n_kv_head=2, tie_word_embeddings=False) if family == "llama" else {}
    config = ModelConfig(family=family, vocab_size=37, n_layer=2, n_embd=16, n_head=4, n_ctx=16,
                         ffn_hidden=24, **extra)
    params = init_params(config, seed=0, dtype=np.float64)
    gen = np.random.default_rng(1)
    for value in params.values():  # perturb norm gains and biases too, so nothing is trivially 1 or 0
        value += gen.standard_normal(value.shape) * 0.1
    ids = gen.integers(0, config.vocab_size, size=(2, 8))  # (B, T)
    targets = gen.integers(0, config.vocab_size, size=(2, 8))  # (B, T)
    loss, grads = loss_and_grads(params, config, ids, targets)
    worst = 0.0
    for name, value in params.items():
        for _ in range(entries_per_param):
            index = tuple(gen.integers(0, n) for n in value.shape)
            original = value[index]
            value[index] = original + h
            up = loss_and_grads(params, config, ids, targets)[0]
            value[index] = original - h
            down = loss_and_grads(params, config, ids, targets)[0]
            value[index] = original
            worst = max(worst, abs((up - down) / (2 * h) - grads[name][index]))
    print(f"{family:>5}: loss {loss:.4f} (ln V = {math.log(config.vocab_size):.4f}), {len(params)} parameters "
          f"checked, largest difference {worst:.2e}")
    return worst


for family in ("llama", "gpt2"):
    assert check_model_gradients(family, entries_per_param=2 if SMALL else 8) < 1e-7

# %% [markdown]
# ## 4. Cross-entropy: the loss
#
# At each position the model outputs logits `(V,)`; the softmax makes them probabilities, and
# the loss is the negative log-probability the model gave the token that actually came next,
# averaged over all B × T positions: `tinyinfer/ops.py: cross_entropy_forward(logits, targets)`.
# A model that knows nothing spreads its probability evenly, 1/V per token, so its loss is
# ln V (6.93 for V = 1024): that is where training starts. `exp(loss)` is the *perplexity*: "as
# unsure as a uniform choice among this many tokens".
#
# Its gradient is beautifully simple: `softmax(logits) - onehot(target)`, divided by the number
# of positions (`cross_entropy_backward`):

# %%
V = 1024
loss, _ = ops.cross_entropy_forward(np.zeros((1, 4, V)), np.array([[1, 2, 3, 4]]))
print(f"uniform logits: loss {loss:.4f} = ln {V} = {math.log(V):.4f}, perplexity {math.exp(loss):.0f}")

logits = rng.standard_normal((2, 3, 5))  # (B, T, V) with V = 5
targets = np.array([[0, 4, 2], [1, 1, 3]])
loss, ce_cache = ops.cross_entropy_forward(logits, targets)
dlogits = ops.cross_entropy_backward(1.0, ce_cache)
probs = np.exp(logits - logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
expected = (probs - np.eye(5)[targets]) / targets.size
print("dlogits == (softmax - onehot) / N:", np.allclose(dlogits, expected))

# %% [markdown]
# ## 5. AdamW and the learning-rate schedule
#
# Plain gradient descent moves each parameter by `lr * gradient`, so parameters with tiny
# gradients barely move and those with large ones overshoot. **Adam** keeps two running
# averages per parameter, of the gradient (`m`, momentum) and of its square (`v`), and moves by
# `lr * m / sqrt(v)`: roughly `lr` in the direction of the recent gradients, whatever their scale.
# **AdamW** adds *decoupled* weight decay: every matrix shrinks by `lr * weight_decay` each
# step, a pull toward small weights that does not go through `m` and `v` (norm gains and biases
# are not decayed). All of it is `tinyinfer/train.py: AdamW.step`, a dozen lines.
#
# The first step shows the scale-invariance: two parameters whose gradients differ by a factor of
# a million move by the same amount, `lr`.

# %%
tc = TrainConfig(lr=0.01, weight_decay=0.0)
toy = {"small_grad": np.array([1.0]), "large_grad": np.array([1.0])}
opt = AdamW(toy, tc)
opt.step(toy, {"small_grad": np.array([1e-3]), "large_grad": np.array([1e3])}, lr=tc.lr)
print({name: round(1.0 - float(value[0]), 6) for name, value in toy.items()}, "moved, with lr =", tc.lr)

# %% [markdown]
# The learning rate itself follows a schedule, `tinyinfer/train.py: lr_at(step, tc)`: a linear
# **warmup** from 0 (Adam's `v` averages are unreliable for the first steps, and random weights
# make early gradients large), then a **cosine** decay from `lr` to `min_lr`, so the last steps
# take small careful moves. Here are the schedules of the two presets (`tinyinfer/presets.py`):

# %%
plt.figure(figsize=(6, 3.2))
for name in ("tiny", "teacher"):
    preset_tc = get_preset(name)[1]
    steps = np.arange(preset_tc.max_steps)
    plt.plot(steps, [lr_at(int(s), preset_tc) for s in steps],
             label=f"{name}: warmup {preset_tc.warmup_steps}, {preset_tc.max_steps} steps")
plt.xlabel("step")
plt.ylabel("learning rate")
plt.title("warmup + cosine schedule (lr_at)")
plt.legend()
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. A short training run
#
# Now the loop itself, written out with the library's pieces (it is what `tinyinfer/train.py:
# train` does, minus checkpoints, resuming and the progress bar):
#
# 1. `sample_batch(stream, tc, step)`: B random windows of T + 1 tokens from the training
#    stream; inputs are the first T, targets the same shifted by one. Seeded by (seed, step), so
#    a resumed run draws the same batches;
# 2. `loss_and_grads`: forward, loss, backward;
# 3. `clip_grad_norm`: if the gradients together are longer than `grad_clip`, scale them down
#    (one unlucky batch should not throw the weights far);
# 4. `AdamW.step` with the learning rate `lr_at(step, tc)`.
#
# Every few steps we measure the loss on **held-out** documents that training never sees
# (`tinyinfer/evaluate.py: evaluate`): the training loss can keep falling by memorising, the
# held-out loss only by learning something that generalises.
#
# The text: a handful of documents from the corpus' training and validation splits
# (`tinyinfer/corpus.py: split_documents`, split by a hash of each document's name), encoded
# with the shipped tokenizer and joined with `<|endoftext|>`. The model: much smaller than the
# shipped tiny one.

# %%
tokenizer = Tokenizer.from_file(ROOT / "models" / "tiny" / "tokenizer.json")
splits = corpus.split_documents()
n_train_docs = 16 if SMALL else 80
train_docs = splits["train"][:: len(splits["train"]) // n_train_docs][:n_train_docs]  # a spread of names
val_docs = splits["val"][:6]


def encode_docs(docs):
    ids = []
    for d in docs:
        ids.extend(tokenizer.encode(d.text))
        ids.append(tokenizer.eos_id)
    return np.array(ids, dtype=np.int64)


train_stream, val_stream = encode_docs(train_docs), encode_docs(val_docs)
print(f"training text: {len(train_docs)} documents, {len(train_stream):,} tokens; "
      f"held-out: {len(val_docs)} documents, {len(val_stream):,} tokens")

small_config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=2,
                           n_kv_head=1, n_ctx=64, ffn_hidden=96)
tc = TrainConfig(seq_len=32, batch_size=8, max_steps=400 if SMALL else 2000, lr=3e-3, min_lr=3e-4,
                 warmup_steps=30 if SMALL else 100)
params = init_params(small_config, seed=tc.seed)
model = Model(small_config, params, tokenizer)
opt = AdamW(params, tc)
print(f"{small_config.num_params():,} parameters, {tc.max_steps} steps of {tc.batch_size}x{tc.seq_len} tokens")

eval_every = 25 if SMALL else 100
train_losses, val_points = [], []
for step in range(tc.max_steps):
    if step % eval_every == 0:
        val_points.append((step, evaluate(model, val_stream, tc.seq_len, max_windows=16)["loss"]))
    inputs, targets = sample_batch(train_stream, tc, step)  # (B, T) each
    loss, grads = loss_and_grads(params, small_config, inputs, targets)
    clip_grad_norm(grads, tc.grad_clip)
    opt.step(params, grads, lr_at(step, tc))  # updates params in place: model sees the new weights
    train_losses.append(loss)
val_points.append((tc.max_steps, evaluate(model, val_stream, tc.seq_len, max_windows=16)["loss"]))
print(f"train loss {np.mean(train_losses[:10]):.3f} -> {np.mean(train_losses[-10:]):.3f}; "
      f"held-out loss {val_points[0][1]:.3f} -> {val_points[-1][1]:.3f}")

# %%
window = 10
smooth = np.convolve(train_losses, np.ones(window) / window, mode="valid")
plt.figure(figsize=(6.5, 3.6))
plt.plot(train_losses, color="C0", alpha=0.3, lw=1)
plt.plot(np.arange(window - 1, len(train_losses)), smooth, color="C0", label="train (10-step mean)")
plt.plot(*zip(*val_points), "o-", color="C1", label="held-out")
plt.axhline(math.log(small_config.vocab_size), color="gray", ls=":", label="ln V: a uniform guess")
plt.xlabel("step")
plt.ylabel("cross-entropy (nats per token)")
plt.title(f"a {small_config.num_params():,}-parameter model, {tc.max_steps} steps")
plt.legend()
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# The loss drops fast from ln V as the model learns which tokens are common at all, then more
# slowly. Whether the held-out loss ends above the training loss, and by how much, says whether
# the model is starting to remember its few training documents rather than learn the corpus:

# %%
final_train, final_val = float(np.mean(train_losses[-10:])), val_points[-1][1]
print(compare(final_val, final_train, what="The held-out loss", verb="ends at", of="the training loss",
              more="above it: the model does better on the text it trains on than on new text",
              less="below it: no sign of memorising yet", same="level with it: no sign of memorising yet"))

# %% [markdown]
# What it writes after so little training:

# %%
prompt_ids = tokenizer.encode("def ")
print(tokenizer.decode(model.generate(prompt_ids, max_new_tokens=30, temperature=0.8, top_k=40, seed=0)))

# %% [markdown]
# ## 7. The shipped models' training curves
#
# `tinyinfer train` writes `history.json` next to the model: the training loss every 25 steps
# and the held-out loss at every checkpoint, with the configurations used. We plot the teacher's
# and the tiny model's against the number of training tokens seen (steps × batch size × sequence
# length).

# %%
histories = {name: json.loads((ROOT / "models" / name / "history.json").read_text()) for name in ("teacher", "tiny")}

fig, ax = plt.subplots(figsize=(6.5, 3.8))
for (name, history), color in zip(histories.items(), ["C3", "C0"]):
    htc = history["train_config"]
    tokens_per_step = htc["batch_size"] * htc["seq_len"]
    ax.plot([e["step"] * tokens_per_step for e in history["train"]], [e["loss"] for e in history["train"]],
            color=color, alpha=0.6, label=f"{name}: train")
    ax.plot([e["step"] * tokens_per_step for e in history["val"]], [e["loss"] for e in history["val"]],
            "o-", color=color, label=f"{name}: held-out")
ax.set_xscale("log")
ax.set_xlabel("training tokens seen")
ax.set_ylabel("cross-entropy (nats per token)")
ax.set_title("shipped models (history.json)")
ax.legend(loc="best")
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()
for name, history in histories.items():
    last = history["val"][-1]
    print(f"{name}: held-out loss {last['loss']:.3f}, perplexity {last['perplexity']:.1f}, "
          f"top-1 {last['top1']:.1%} after {history['train_seconds'] / 60:.0f} minutes of training "
          f"({history['model_config']['n_layer']} layers)")

# %% [markdown]
# ## 8. Tokens per parameter, and why the teacher must be well trained
#
# How long to train? A useful measure is **training tokens per parameter**. The "Chinchilla"
# study (Hoffmann et al., 2022) found that for a fixed compute budget, loss is lowest at around
# 20 tokens per parameter; far below that, the model has capacity it never learned to use. The
# table reads each shipped model's size from the configuration in its `history.json` and the
# tokens it saw from the same file.

# %%
CHINCHILLA = 20  # tokens per parameter at the compute-optimal point (Hoffmann et al., 2022)
tokens_per_param = {}
print(f"{'model':>8} {'parameters':>11} {'tokens seen':>12} {'tokens/param':>13}")
for name, history in histories.items():
    n_params = ModelConfig(**history["model_config"]).num_params()
    tokens_per_param[name] = history["tokens_seen"] / n_params
    print(f"{name:>8} {n_params:>11,} {history['tokens_seen']:>12,} {tokens_per_param[name]:>13.1f}")
ours = tc.max_steps * tc.batch_size * tc.seq_len
print(f"{'ours':>8} {small_config.num_params():>11,} {ours:>12,} {ours / small_config.num_params():>13.1f}  (section 6)")

# %% [markdown]
# Every later lesson measures against the teacher: how much quantizing its weights to 8 or 4
# bits costs, how much pruning removes, how close a distilled student gets, whether the engine
# generates the same tokens. Those measurements only mean something if the teacher is good:
#
# * an undertrained model has little to lose, so quantization and pruning would look nearly
#   free on it and misleadingly expensive on a real model;
# * a distilled student learns the teacher's whole next-token distribution, its mistakes
#   included; a vague teacher teaches vagueness;
# * its held-out loss should have flattened, not still be falling fast, or two measurements taken
#   a checkpoint apart would disagree.
#
# How the shipped teacher stands on the last two counts, read from its history:

# %%
teacher_val = histories["teacher"]["val"]
recent = teacher_val[-5:]  # the last five checkpoints
fall = recent[0]["loss"] - recent[-1]["loss"]
steps = recent[-1]["step"] - recent[0]["step"]
print(compare(tokens_per_param["teacher"], CHINCHILLA,
              what=f"The teacher saw {tokens_per_param['teacher']:.1f} tokens per parameter,", verb="",
              of=f"Chinchilla's {CHINCHILLA}",
              more="more than compute-optimal", less="short of compute-optimal, on a CPU budget of "
              f"{histories['teacher']['train_seconds'] / 3600:.1f} hours"))
print(f"Over its last {steps:,} steps its held-out loss fell from {recent[0]['loss']:.3f} to {recent[-1]['loss']:.3f} "
      f"({fall / recent[0]['loss']:.1%}): "
      + ("still falling, so a longer run would give a somewhat better teacher; the later lessons measure "
         "this one, and its figures would move a little with more training" if fall / recent[0]["loss"] > 0.005
         else "nearly flat, so more steps at this size would change little"))
print(f"The tiny model saw {tokens_per_param['tiny']:.1f} tokens per parameter in "
      f"{histories['tiny']['train_seconds'] / 60:.0f} minutes: it is for fast tests only.")

# %% [markdown]
# ## Exercises
#
# Worked solutions for every exercise are in `lessons/solutions/03-training.py` (run it from the
# repository root: `python lessons/solutions/03-training.py`); exercise 6 has a check cell below.
#
# 1. **Break a backward.** Copy `ops.rmsnorm_backward`, drop the `- xhat * (...)` term, and run
#    the check of section 2 against your copy. How large is the error? Which term of the
#    derivation in section 1 did you forget?
# 2. **The GELU check.** Write the finite-difference check of section 2 for `ops.gelu_forward` /
#    `ops.gelu_backward`. Then do it for `ops.attention_forward` with G < H: what are the shapes
#    of `dk` and `dv`, and why are they summed over the query heads of a group?
# 3. **No warmup.** Rerun section 6 with `warmup_steps=0` and `lr=1e-2`. What happens to the first
#    steps? With `grad_clip=0` as well?
# 4. **Overfitting on purpose.** Train on only two documents for many steps. How far apart do the
#    training and held-out losses end up?
# 5. **Weight decay.** AdamW decays matrices only (`p.ndim >= 2`). Why not norm gains, which
#    start at 1?
# 6. **Budget.** The teacher's `history.json` records `tokens_seen` and `train_seconds`. At that
#    average speed, how many hours would 20 tokens per parameter take for the teacher?

# %%
from tinyinfer.lesson_tools import check, solution

answers = solution("03-training")
budget_hours = None  # exercise 6: your answer, in hours
check(budget_hours, answers.hours_for_tokens_per_param(histories["teacher"], 20), tol=0.02, name="budget_hours");
