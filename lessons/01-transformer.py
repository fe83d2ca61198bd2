# Lesson 01: the transformer, one token's path.
# Source of notebooks/01-transformer.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/01-transformer.py` from the repository root.

# %% [markdown]
# # Lesson 01 — The transformer: one token's path
#
# A language model is a function from a list of integers to a table of scores. Everything that
# makes inference fast (a KV cache, quantized weights, pruned weights, batching) is a change to
# *one* step of this path, so we first walk the whole path slowly, with the real code:
#
# ```
# text ──tokenizer──▶ ids ──model (forward, NumPy)──▶ logits ──sampler──▶ next id
#                      ▲                                               │
#                      └──────────── append it, run again ◀────────────┘
# ```
#
# | step | what it does | where |
# |---|---|---|
# | tokenizer | text → integer ids (lesson 02) | `tinyinfer/tokenizer/bpe.py: Tokenizer.encode` |
# | model | ids `(T,)` → logits `(T, V)`: one score per vocabulary entry, per position | `tinyinfer/model.py: forward`, `Model.logits` |
# | sampler | one row of logits `(V,)` → one id | `tinyinfer/sampling.py: sample_token` |
# | loop | append the id and go again, reusing past work | `tinyinfer/model.py: Model.generate`, `tinyinfer/kv_cache.py` |
#
# The first code cell reads one setting: `TINYINFER_LESSON_SMALL=1` (the test suite sets it) runs
# everything on small settings so the notebook finishes in seconds.
#
# Every lesson measures things on the machine that runs it, and a sentence written for one run's
# numbers would mislead on another's. So where a lesson states a direction ("faster", "within the
# bound"), the sentence is printed from the numbers just measured, by the small helpers of
# `tinyinfer/lesson_tools.py: compare`, `spread`, `check` (timings come as a median with the
# interquartile range, IQR, of the rounds: the middle half of them).

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores (on a busy machine, extra threads can make them many times slower).
# This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinyinfer
from tinyinfer import ops
from tinyinfer.config import ModelConfig
from tinyinfer.model import block_forward, embedding_name, init_params, layer_names
from tinyinfer.sampling import sample_token

from tinyinfer.lesson_tools import compare, ratio_spread, spread, spread_note, workload
from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
MODEL_DIR = ROOT / "models" / "teacher"
print(f"small settings: {SMALL}; model: {MODEL_DIR.relative_to(ROOT)}")

# %% [markdown]
# ## 1. Load a model
#
# `tinyinfer.load(folder)` reads a Hugging Face folder: `config.json` (the sizes),
# `model.safetensors` (the weights) and `tokenizer.json`. It returns a `Model` holding three
# things: `model.config` (a `ModelConfig`), `model.params` (a plain dict of NumPy arrays, named
# exactly as Hugging Face names them) and `model.tokenizer`. The loader is
# `tinyinfer/checkpoint.py: load`.

# %%
model = tinyinfer.load(MODEL_DIR)
config = model.config
print(config)
print(f"{model.num_params():,} parameters, stored as {model.dtype}")

# %% [markdown]
# ## 2. `ModelConfig` and the shape legend
#
# Every size of the model is a field of `tinyinfer/config.py: ModelConfig`. The code comments
# all over tinyinfer name array shapes with one letter per size, so `q: (B, H, T, D)` reads as
# "batch, heads, time, head dimension". The legend lives at the top of `config.py`:
#
# | letter | meaning | `ModelConfig` field |
# |---|---|---|
# | B | batch size (sequences at once) | — |
# | T | time: tokens in this forward pass | — (at most `n_ctx`) |
# | S | all positions attention can see: T plus the past held in a KV cache (used by `attention_forward` and `kv_cache.py`) | — |
# | C | channels: the width of the residual stream | `n_embd` |
# | H | attention (query) heads | `n_head` |
# | G | key/value heads; G < H is grouped-query attention | `n_kv_head` |
# | D | head dimension, C / H | `head_dim` (a property) |
# | F | feed-forward hidden size | `ffn_hidden` |
# | V | vocabulary size | `vocab_size` |
#
# The values for the model we just loaded:

# %%
legend = {"V (vocab_size)": config.vocab_size, "C (n_embd)": config.n_embd, "H (n_head)": config.n_head,
          "G (n_kv_head)": config.n_kv_head, "D (head_dim)": config.head_dim,
          "F (ffn_hidden)": config.ffn_hidden, "layers (n_layer)": config.n_layer,
          "longest sequence (n_ctx)": config.n_ctx}
for name, value in legend.items():
    print(f"{name:>26}: {value}")

# %% [markdown]
# ## 3. Text → ids → logits
#
# The tokenizer cuts text into pieces from a vocabulary of V entries and returns their ids
# (lesson 02 builds it). `model.logits(ids)` takes ids of shape `(T,)` and returns float32
# logits of shape `(T, V)`: row t scores every possible *next* token after position t. Only the
# last row matters for generating: it is the model's guess for the token after the prompt.

# %%
tok = model.tokenizer
prompt = "def fibonacci(n):\n    if n < 2:\n        return"
ids = np.array(tok.encode(prompt))
print("ids:", ids.tolist())
print("pieces:", [tok.decode([i]) for i in ids])
logits = model.logits(ids)
print("logits shape (T, V):", logits.shape)

# %% [markdown]
# Logits are unnormalised scores. The softmax turns the last row into a probability
# distribution over the vocabulary: `p = exp(z - max z) / sum(exp(z - max z))` (subtracting the
# maximum changes nothing mathematically and keeps `exp` from overflowing).

# %%
def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


probs = softmax(logits[-1])  # (V,)
top = np.argsort(-probs)[:12]
labels = [repr(tok.decode([i])) for i in top]
plt.figure(figsize=(8, 3.5))
plt.bar(range(len(top)), probs[top])
plt.xticks(range(len(top)), labels, rotation=45, ha="right")
plt.xlabel("candidate next token")
plt.ylabel("probability")
plt.title(f"next token after {prompt[-18:]!r}")
plt.tight_layout()
plt.show()
print(f"the top 12 tokens hold {probs[top].sum():.0%} of the probability mass")

# %% [markdown]
# ## 4. What the parameters are
#
# `model.params` is a dict from Hugging Face names to arrays. A LLaMA block `i` has two norms,
# four attention projections and three MLP matrices; `tinyinfer/model.py: layer_names` lists
# them by role. Linear weights are stored `(N, K)` (output features, input features), like
# `torch.nn.Linear`, and applied as `y = x @ w.T`.

# %%
for role, name in layer_names(config, 0).items():
    print(f"{role:>6}: {name + '.weight':<45} {model.params[name + '.weight'].shape}")
print(f"embedding: {embedding_name(config)} {model.params[embedding_name(config)].shape}"
      f"  (tied: the output head reuses it = {config.tie_word_embeddings})")

# %% [markdown]
# ## 5. Attention and RoPE, on paper
#
# Before the code, the two equations it computes. **Attention** lets position t read from earlier
# positions. Each position has a query `q_t`, a key `k_s` and a value `v_s` (vectors of D numbers,
# one set per head). Position t scores every position s by how well its query matches that key,
# turns the scores into weights with a softmax, and takes the weighted average of the values:
#
# $$ \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{D}} + M\right) V,
# \qquad M_{ts} = \begin{cases} 0 & s \le t \\ -\infty & s > t \end{cases} $$
#
# * `Q K^T` is the `(T, S)` table of scores `q_t · k_s`;
# * dividing by √D keeps the scores' spread independent of the head size: a dot product of two
#   vectors of D random entries of variance 1 has variance D, and a softmax of large scores is
#   nearly one-hot, whose gradient vanishes;
# * M is the **causal mask**: `exp(-inf) = 0`, so position t gives no weight to any later s;
# * the softmax runs along each row, so every row of weights sums to 1;
# * with grouped-query attention, query head h uses the keys and values of group `h // (H / G)`.
#
# **RoPE** (rotary position embedding, Su et al. 2021) tells attention where the tokens are.
# Split a head's D dimensions into D/2 pairs; tinyinfer pairs dimension i with i + D/2. At position
# m, pair i is rotated in its plane by the angle `m θ_i`, with `θ_i = base^(-2i/D)` (`base` is
# `rope_theta`, 10,000 here): pair 0 turns by one radian per position, the last pair very slowly.
# Queries and keys are rotated, values are not. Because a rotation by a and then by -b is one
# rotation by a - b,
#
# $$ \big(R(m\theta)\,q\big) \cdot \big(R(n\theta)\,k\big) = q \cdot R\big((n - m)\theta\big)\,k , $$
#
# a score depends only on the *offset* between the two positions, not on where the pair sits in
# the text. The picture below uses the library's own `rope_tables` and `rope_forward`: on the left,
# one pair rotated at positions 0 to 8; on the right, the score of the same q and k as their
# offset varies, for queries at three absolute positions.

# %%
D = config.head_dim


def rotate(vector, position):
    """RoPE of one head vector (D,) at one position, by the library's code."""
    cos, sin = ops.rope_tables(D, [position], config.rope_theta, dtype=np.float64)  # (1, D) each
    return ops.rope_forward(vector[None, None, None, :], cos, sin)[0][0, 0, 0]  # (D,)


fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
for pair, color in ((0, "C0"), (2, "C1")):
    unit = np.zeros(D)
    unit[pair] = 1.0  # a vector that lies in the plane of pair (pair, pair + D/2)
    theta = config.rope_theta ** (-2 * pair / D)
    for m in range(9):
        r = rotate(unit, m)
        left.annotate("", xy=(r[pair], r[pair + D // 2]), xytext=(0, 0),
                      arrowprops=dict(arrowstyle="->", color=color, alpha=0.35 + 0.08 * m))
        left.text(1.1 * r[pair], 1.1 * r[pair + D // 2], str(m), color=color, ha="center", va="center", fontsize=8)
    left.plot([], [], color=color, label=f"pair {pair}: {theta:.2f} rad per position")
left.set_xlim(-1.35, 1.35)
left.set_ylim(-1.35, 1.35)
left.set_aspect("equal")
left.set_xlabel("dimension i of the pair")
left.set_ylabel("dimension i + D/2 of the pair")
left.set_title("a pair rotated at positions 0..8")
left.legend(fontsize=8, loc="lower left")

rng = np.random.default_rng(0)
q_vec, k_vec = rng.standard_normal(D), rng.standard_normal(D)  # any query and key
curves = {}
for m, style in ((40, "o"), (120, "x"), (300, "+")):
    offsets = np.arange(0, 40)
    curves[m] = np.array([rotate(q_vec, m) @ rotate(k_vec, m - o) for o in offsets])
    right.plot(offsets, curves[m], style, ms=5, label=f"query at position m = {m}")
right.set_xlabel("offset m - n between query and key (positions)")
right.set_ylabel("score q · k after RoPE")
right.set_title("the score depends on the offset only")
right.legend(fontsize=8, loc="best")
fig.tight_layout()
plt.show()
print(f"largest difference between the three curves: {np.abs(curves[40] - curves[300]).max():.1e} "
      f"(float64 rounding): a score sees the distance between two tokens, not where they are")

# %% [markdown]
# ## 6. One LLaMA block, by hand
#
# A block reads the residual stream `x: (B, T, C)` and adds two things to it: what attention
# finds by looking back at earlier positions, then what a small MLP computes at each position.
# Each step below is one pure function of `tinyinfer/ops.py`:
#
# 1. `rmsnorm_forward(x, w, eps)`: rescale each position's vector to unit root-mean-square;
# 2. `linear_forward(h, w)`: the projections `q: (B, T, H*D)`, `k, v: (B, T, G*D)`;
# 3. reshape to heads: `q: (B, H, T, D)`, `k, v: (B, G, T, D)`;
# 4. `rope_tables` + `rope_forward`: rotate q and k by an angle that grows with the position;
# 5. `attention_forward(q, k, v)`: section 5's equation, `(B, H, T, D)`;
# 6. back to `(B, T, C)`, the output projection `o`, and add to the residual;
# 7. `rmsnorm_forward` again, then the MLP: `swiglu_forward(gate, up)` = silu(gate) * up,
#    and the `down` projection back to C, added to the residual.
#
# Then we check that our result equals `tinyinfer/model.py: block_forward`.

# %%
P = model.params
names = layer_names(config, 0)
H, G, D, eps = config.n_head, config.n_kv_head, config.head_dim, config.norm_eps
x, _ = ops.embedding_forward(ids[None, :], P[embedding_name(config)])  # (B, T, C), B = 1
B, T, C = x.shape
positions = np.arange(T)

# --- attention ---
h, _ = ops.rmsnorm_forward(x, P[names["norm1"] + ".weight"], eps)  # (B, T, C)
q, _ = ops.linear_forward(h, P[names["q"] + ".weight"])  # (B, T, H*D)
k, _ = ops.linear_forward(h, P[names["k"] + ".weight"])  # (B, T, G*D)
v, _ = ops.linear_forward(h, P[names["v"] + ".weight"])  # (B, T, G*D)
q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
k = k.reshape(B, T, G, D).transpose(0, 2, 1, 3)  # (B, G, T, D)
v = v.reshape(B, T, G, D).transpose(0, 2, 1, 3)  # (B, G, T, D)
cos, sin = ops.rope_tables(D, positions, config.rope_theta)  # (T, D) each
q, _ = ops.rope_forward(q, cos, sin)
k, _ = ops.rope_forward(k, cos, sin)
heads, attn_cache = ops.attention_forward(q, k, v)  # (B, H, T, D)
y = heads.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, C)
o, _ = ops.linear_forward(y, P[names["o"] + ".weight"])
x1 = x + o  # the residual stream after attention

# --- MLP ---
h2, _ = ops.rmsnorm_forward(x1, P[names["norm2"] + ".weight"], eps)
gate, _ = ops.linear_forward(h2, P[names["gate"] + ".weight"])  # (B, T, F)
up, _ = ops.linear_forward(h2, P[names["up"] + ".weight"])  # (B, T, F)
act, _ = ops.swiglu_forward(gate, up)  # (B, T, F)
down, _ = ops.linear_forward(act, P[names["down"] + ".weight"])  # (B, T, C)
by_hand = x1 + down

reference = block_forward(x, P, config, 0, positions)
print("by hand:", by_hand.shape, " block_forward:", reference.shape)
print("largest difference:", float(np.abs(by_hand - reference).max()))
assert np.allclose(by_hand, reference, rtol=1e-5, atol=1e-6)

# %% [markdown]
# And `attention_forward` is section 5's equation: here it is written out for one head, with the
# mask as an upper triangle of -inf.

# %%
head = 4 % H
R = H // G  # query heads per key/value head
scores = q[0, head] @ k[0, head // R].T / np.sqrt(D)  # (T, T) = Q K^T / sqrt(D)
scores = scores + np.triu(np.full((T, T), -np.inf), k=1)  # M: -inf above the diagonal
weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
weights /= weights.sum(axis=-1, keepdims=True)  # softmax along each row
print(f"head {head}: |equation - attention_forward| = {np.abs(weights @ v[0, head // R] - heads[0, head]).max():.1e}")

# %% [markdown]
# ## 7. What attention looked at
#
# `attention_forward` returns a cache for the backward pass; its last entry is the attention
# matrix `p: (B, G, R, T, S)` where R = H / G query heads share each key/value head. Row t of a
# head's matrix says how much position t drew from each position s ≤ t. Everything above the
# diagonal is exactly zero: that is the causal mask (`tinyinfer/ops.py: causal_mask`), a token
# may not look at the future.

# %%
p = attn_cache[-1]  # (B, G, R, T, S)
pieces = [repr(tok.decode([i]))[1:-1] for i in ids]
fig, axes = plt.subplots(1, H, figsize=(3.0 * H, 3.9), layout="constrained")
for head, ax in enumerate(np.atleast_1d(axes)):
    image = ax.imshow(p[0, head // R, head % R], cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"head {head} (kv group {head // R})", fontsize=9)
    ax.set_xticks(range(T), pieces, rotation=90, fontsize=7)
    ax.set_yticks(range(T), pieces if head == 0 else [], fontsize=7)  # the rows are the same tokens
    ax.set_xlabel("looks at (key position)")
axes[0].set_ylabel("query position")
fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
fig.suptitle("layer 0 of the teacher: who looks at whom")
plt.show()

# %% [markdown]
# ## 8. GPT-2 and LLaMA: one code path, four differences
#
# tinyinfer runs both families through the same `forward` and `block_forward`; the config's
# `family` switches four parts:
#
# | | GPT-2 | LLaMA |
# |---|---|---|
# | normalisation | LayerNorm: subtract the mean, divide by the std, scale and shift (`layernorm_forward`) | RMSNorm: divide by the root-mean-square, scale only (`rmsnorm_forward`); cheaper, no bias |
# | positions | a learned table `transformer.wpe.weight: (n_ctx, C)` added to the input | RoPE: q and k are rotated by position-dependent angles inside every block (`rope_forward`); nothing to learn, only relative offsets matter |
# | MLP | `c_fc` to F = 4C, GELU (tanh approximation, `gelu_forward`), back to C | three matrices: silu(gate) * up (`swiglu_forward`), back to C; by default F ≈ 8C/3 (`config.py: llama_ffn_hidden`) so the cost matches GPT-2's two |
# | attention | fused `c_attn: (C, 3C)` with biases; every head has its own k and v | separate `q_proj`, `k_proj`, `v_proj`, no biases; grouped-query attention: G < H key/value heads |
#
# GPT-2 also stores its linear weights as `(K, N)` (Hugging Face's `Conv1D`); `tinyinfer/model.py:
# linear_weight` reads them transposed, so every layer is still `x @ w.T`.
#
# First the two activations, straight from `tinyinfer/ops.py`:

# %%
xs = np.linspace(-5, 5, 201)
gelu, _ = ops.gelu_forward(xs)
silu, _ = ops.swiglu_forward(xs, np.ones_like(xs))  # silu(gate) * up with up = 1 is SiLU alone
plt.figure(figsize=(5.5, 3.2))
plt.plot(xs, gelu, label="GELU (GPT-2)")
plt.plot(xs, silu, "--", label="SiLU, the gate of SwiGLU (LLaMA)")
plt.plot(xs, np.maximum(xs, 0), "k:", lw=1, label="ReLU, for comparison")
plt.xlabel("input x")
plt.ylabel("activation(x)")
plt.legend(loc="upper left", fontsize=8)
plt.grid(alpha=0.3)
plt.title("activation functions")
plt.tight_layout()
plt.show()

# %% [markdown]
# LayerNorm centres each vector and scales it to unit standard deviation; RMSNorm only scales it
# to unit root-mean-square, leaving the mean where it was:

# %%
vec = np.array([[3.0, 1.0, 2.0, 6.0]])
ln, _ = ops.layernorm_forward(vec, np.ones(4), np.zeros(4), 1e-5)
rms, _ = ops.rmsnorm_forward(vec, np.ones(4), 1e-5)
print("LayerNorm:", ln.round(3), " mean", ln.mean().round(3), " std", ln.std().round(3))
print("RMSNorm:  ", rms.round(3), " mean", rms.mean().round(3), " rms", np.sqrt((rms ** 2).mean()).round(3))

# %% [markdown]
# Now a small GPT-2-family model with random weights, built from a `ModelConfig` and
# `tinyinfer/model.py: init_params` (GPT-2's initialisation: N(0, 0.02)). Its parameter names and
# shapes are GPT-2's, yet `Model.logits` and `Model.generate` are the very same functions. With
# random weights it produces gibberish, but the shapes are right.

# %%
gpt2_config = ModelConfig(family="gpt2", vocab_size=config.vocab_size, n_layer=2, n_embd=64, n_head=4, n_ctx=128)
gpt2 = tinyinfer.Model(gpt2_config, init_params(gpt2_config, seed=0), tokenizer=tok)
print(gpt2_config)
for name in list(gpt2.params)[:8]:
    print(f"  {name:<32} {gpt2.params[name].shape}")
print("logits:", gpt2.logits(ids).shape)
print("generated:", repr(tok.decode(gpt2.generate(ids, max_new_tokens=8)[len(ids):])))

# %% [markdown]
# **Grouped-query attention** in numbers. The loaded model has H query heads but only G key/value
# heads, so `k_proj` and `v_proj` are G/H the size of `q_proj`; more importantly, the keys and
# values a KV cache keeps per token shrink by the same factor (section 9).

# %%
print("q_proj:", P[names["q"] + ".weight"].shape, " k_proj:", P[names["k"] + ".weight"].shape,
      " v_proj:", P[names["v"] + ".weight"].shape)
bytes_per_token = 2 * config.n_layer * config.n_kv_head * config.head_dim * 4  # k and v, float32
bytes_if_mha = 2 * config.n_layer * config.n_head * config.head_dim * 4
print(f"KV cache per token: {bytes_per_token} bytes with G={config.n_kv_head}, "
      f"{bytes_if_mha} bytes if every head had its own k, v (G=H={config.n_head})")

# %% [markdown]
# ## 9. The loop, and the KV cache
#
# To generate, we append the chosen id and run the model again. Run naively, step t feeds the
# *whole* sequence 0..t through every layer, although the keys and values of positions before t
# cannot change (a position only looks back). So `Model.generate` keeps them in a
# `tinyinfer/kv_cache.py: ContiguousKVCache` (one `(B, G, S, D)` array per layer for keys and
# one for values): the prompt runs once (*prefill*) and each later step feeds only the newest
# token (*decode*), at position `start_pos`, attending to everything stored so far.
#
# Below, `generate_without_cache` is the naive loop. With greedy decoding (temperature 0) both
# must pick exactly the same tokens. Then we time both, alternating them round after round so a
# busy moment on the machine hits both alike, and keep every round: the median is the figure, the
# IQR of the rounds says how much to trust it.

# %%
def generate_without_cache(model, ids, max_new_tokens):
    """Greedy decoding that recomputes the whole sequence at every step."""
    seq = list(ids)
    for _ in range(max_new_tokens):
        logits = model.logits(np.array(seq))  # (t, V): every position, every step
        seq.append(int(np.argmax(logits[-1])))
    return np.array(seq)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


lengths = [8, 16, 32] if SMALL else [32, 64, 128]
lengths = [n for n in lengths if len(ids) + n <= config.n_ctx]
rounds = 3 if SMALL else 7
print(workload("the timings below", model=MODEL_DIR.name, prompt_tokens=len(ids), new_tokens=lengths,
               decoding="greedy", rounds=rounds, blas_threads=os.environ.get("OPENBLAS_NUM_THREADS")))
speed = {"with KV cache": [], "recompute every step": []}  # per length: Spread of tokens/s
ratios = {}
for n in lengths:
    cached_times, naive_times = [], []
    for r in range(rounds):
        for which in (("cached", "naive") if r % 2 == 0 else ("naive", "cached")):  # alternate the order
            if which == "cached":
                seconds, cached = timed(lambda: model.generate(ids, max_new_tokens=n, temperature=0.0))
                cached_times.append(seconds)
            else:
                seconds, naive = timed(lambda: generate_without_cache(model, ids, n))
                naive_times.append(seconds)
    assert np.array_equal(cached, naive), "the KV cache changed the greedy tokens"
    speed["with KV cache"].append(spread(n / t for t in cached_times))
    speed["recompute every step"].append(spread(n / t for t in naive_times))
    ratios[n] = ratio_spread(naive_times, cached_times)
    print(f"{n:4d} new tokens, identical tokens; with the cache {speed['with KV cache'][-1].format('tok/s', 1, 0)}, "
          f"without {speed['recompute every step'][-1].format('tok/s', 1, 0)}")
    print("     " + compare(ratios[n].median, what="the cache", of="the speed of recomputing", measured=ratios[n]))
    note = spread_note(ratios[n], f"the {n}-token ratio")
    if note:
        print("     " + note)
print("greedy continuation:", repr(tok.decode(cached[len(ids):])))

plt.figure(figsize=(7.5, 3.4))
for label, values in speed.items():
    medians = np.array([s.median for s in values])
    below = medians - np.array([s.q1 for s in values])
    above = np.array([s.q3 for s in values]) - medians
    plt.errorbar(lengths, medians, yerr=[below, above], fmt="o-", capsize=3, label=label)
plt.xlabel("new tokens generated")
plt.ylabel("tokens / s (median, IQR bars)")
plt.title(f"decoding speed, {MODEL_DIR.name} model, on this machine")
plt.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # outside: the IQR bars vary run to run
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()
first, last = lengths[0], lengths[-1]
print(compare(ratios[last].median, ratios[first].median, what=f"At {last} new tokens the cache's advantage",
              verb="is", of=f"its advantage at {first}", more="larger: the gap widens as the sequence grows",
              less="smaller: here the fixed cost of a step hides the growing recompute",
              same="about the same: the fixed cost of a step hides the growing recompute"))

# %% [markdown]
# These timings come from whatever machine runs the notebook (the tests run it on a shared,
# busy CPU), so read the *ratio* rather than the absolute numbers. The cache turns the cost of
# step t from "all t positions through every layer" into "one position, plus attention over t
# stored keys", so in principle the gap widens as the sequence grows; the sentence above says
# whether it did in this run. For a model this small, Python overhead per step is a large share
# of the time, which narrows the gap at short lengths. Lesson 07 measures the cache properly.
#
# Notice also that greedy decoding of a small model tends to loop (the same phrase again and
# again): the most likely token is not the most natural text. That is what sampling is for.

# %% [markdown]
# ## 10. The sampler: temperature, top-k, top-p
#
# `tinyinfer/sampling.py: sample_token(logits, rng, temperature, top_k, top_p)` turns one row of
# logits `(V,)` into one id:
#
# * **temperature** 0 means greedy (argmax). Otherwise logits are divided by it before the
#   softmax: below 1 sharpens the distribution, above 1 flattens it.
# * **top-k** keeps only the k highest-scoring tokens.
# * **top-p** (nucleus) keeps the smallest set of top tokens whose probability adds up to p.
#
# Rather than re-deriving the filtered distributions, we *measure* the real sampler: draw many
# tokens with a seeded `numpy` generator and count how often each comes up.

# %%
draws = 1000 if SMALL else 5000
settings = {"T=0.5": dict(temperature=0.5), "T=1": dict(temperature=1.0), "T=2": dict(temperature=2.0),
            "T=1, top_k=3": dict(temperature=1.0, top_k=3), "T=1, top_p=0.5": dict(temperature=1.0, top_p=0.5)}
show = np.argsort(-logits[-1])[:10]  # the 10 most likely tokens
fig, ax = plt.subplots(figsize=(9, 3.8))
width = 0.8 / len(settings)
sampler_counts = {}
for j, (label, kwargs) in enumerate(settings.items()):
    rng = np.random.default_rng(0)
    counts = np.bincount([sample_token(logits[-1], rng, **kwargs) for _ in range(draws)], minlength=config.vocab_size)
    sampler_counts[label] = counts
    ax.bar(np.arange(len(show)) + j * width, counts[show] / draws, width, label=label)
    print(f"{label:>15}: {np.count_nonzero(counts):4d} distinct tokens in {draws} draws")
ax.set_xticks(np.arange(len(show)) + 0.4 - width / 2, [repr(tok.decode([i])) for i in show], rotation=45, ha="right")
ax.set_xlabel("candidate next token (the 10 most likely at T = 1)")
ax.set_ylabel(f"fraction of {draws} draws")
ax.set_title("how the sampler's settings reshape the next-token distribution")
ax.legend(fontsize=8, loc="best")
plt.tight_layout()
plt.show()

# %% [markdown]
# Sampling with a moderate temperature and a top-k filter usually reads better than greedy:

# %%
sampled = model.generate(ids, max_new_tokens=40, temperature=0.8, top_k=40, seed=0)
print(prompt + tok.decode(sampled[len(ids):]))

# %% [markdown]
# ## Exercises
#
# Worked solutions for every exercise are in `lessons/solutions/01-transformer.py` (run it from the
# repository root: `python lessons/solutions/01-transformer.py`); exercises 5 and 6 have a check
# cell below.
#
# 1. **Another layer.** Walk block 1 by hand: feed it `by_hand` (block 0's output) at the same
#    positions, compare with `block_forward(by_hand, P, config, 1, positions)`, and plot its
#    attention. Do later heads look further back?
# 2. **Where RoPE hides.** Skip the two `rope_forward` calls in section 6. How large is the
#    difference to `block_forward` now? Without RoPE, what in a LLaMA block knows the order
#    of the tokens at all?
# 3. **The same text twice.** Build a prompt that repeats a phrase, e.g. `"x = 1\ny = 2\nx = 1\ny ="`,
#    and look at the attention of every layer of the teacher. Can you find a head that looks at the
#    position right after the earlier copy (an "induction head")? In which layer, and why can it
#    not be in the first?
# 4. **A KV cache for GPT-2.** Time `gpt2.generate` against `generate_without_cache(gpt2, ...)`
#    as in section 9. Why must GPT-2 add its learned position `wpe[start_pos + t]`, and where does
#    `tinyinfer/model.py: forward` do it?
# 5. **Memory.** Using section 8's formula, how many MiB (2^20 bytes) would the KV cache of a
#    32-layer model with C = 4096, H = 32, G = 8, D = 128 need for 8 sequences of 4,096 tokens in
#    float16? And with G = H?
# 6. **Top-p by hand.** For the distribution `probs` of section 3, compute which tokens top-p = 0.5
#    keeps (their ids), then check your answer against the counts the sampler produced in section 10.

# %%
from tinyinfer.lesson_tools import check, solution

answers = solution("01-transformer")
kv_cache_mib_gqa = None  # exercise 5: your answer in MiB, with G = 8
kv_cache_mib_mha = None  # exercise 5: your answer in MiB, with G = H = 32
top_p_ids = None  # exercise 6: the set of token ids top-p = 0.5 keeps, e.g. {12, 345}
check(kv_cache_mib_gqa, answers.kv_cache_mib(n_layer=32, n_kv_head=8, head_dim=128, tokens=4096, sequences=8,
                                             bytes_per_value=2), name="kv_cache_mib_gqa")
check(kv_cache_mib_mha, answers.kv_cache_mib(n_layer=32, n_kv_head=32, head_dim=128, tokens=4096, sequences=8,
                                             bytes_per_value=2), name="kv_cache_mib_mha")
check(top_p_ids, answers.top_p_keeps(probs, 0.5), name="top_p_ids");
