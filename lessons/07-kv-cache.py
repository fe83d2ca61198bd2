# Lesson 07: the KV cache, contiguous and paged, and prefix caching.
# Source of notebooks/07-kv-cache.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/07-kv-cache.py` from the repository root.

# %% [markdown]
# # Lesson 07 — The KV cache: stop recomputing the past
#
# A language model writes one token at a time, and every new token needs the model to look at all
# the tokens before it. Done naively, that means running the whole text through the model again for
# every token it adds. The **KV cache** keeps what does not change (the keys and values of past
# positions) so each new token costs one position's work. It is the first thing every inference
# engine does, and the article's "2–10x without changing the model" starts here. What we measure,
# and the bar we hold each claim to:
#
# | claim | what we measure | section |
# |---|---|---|
# | a cache makes long generations much faster (the bar: ≥ 20x over recompute at 512 tokens) | decode tokens/s of a full recompute, the contiguous cache and the paged cache, as the sequence grows | 4 |
# | paged memory wastes almost nothing, so more requests fit | positions reserved vs used on a mixed-length batch, contiguous vs paged | 5 |
# | prefix caching makes a chat's later turns start fast (the bar: ≥ 5x lower time to first token on turn 5) | time to first token per turn of a chat, prefix cache on vs off | 6 |
#
# And one that is not a speed claim but matters more: **the cache changes nothing in the output**
# (section 3 shows the paged cache's logits equal a full recompute's).
#
# Where the code is:
#
# | piece | where |
# |---|---|
# | the model's forward pass, which asks a cache for attention | `tinyinfer/model.py: forward(params, config, ids, start_pos, kv_cache, positions=...)` |
# | the contiguous cache: one `(B, G, n_ctx, D)` array per layer | `tinyinfer/kv_cache.py: ContiguousKVCache` |
# | who owns which block: block tables, free list, ref counts, prefix hashes | `tinyinfer/engine/block_manager.py: BlockManager` |
# | the block arrays, and attention that gathers a sequence's blocks | `tinyinfer/engine/paged_attention.py: PagedKVCache` |
# | a request's tokens, block table and chained block hashes | `tinyinfer/engine/sequence.py: Sequence` |
# | one packed forward pass over many sequences | `tinyinfer/engine/model_runner.py: ModelRunner` |
# | the whole engine | `tinyinfer/engine/llm.py: LLM` (lesson 08) |
# | the workload benchmark whose helpers we reuse | `tinyinfer/bench/engine.py` |
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) keeps the sequences and the workloads short.

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores. This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math
import statistics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinyinfer
from tinyinfer.bench import machine
from tinyinfer.bench.engine import alternate, make_workload, median_ratio, params_for
from tinyinfer.corpus import token_stream
from tinyinfer.engine import LLM, SamplingParams
from tinyinfer.engine.block_manager import BlockManager
from tinyinfer.engine.model_runner import ModelRunner
from tinyinfer.engine.openai_api import chat_prompt
from tinyinfer.engine.sequence import Sequence
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.model import Model, forward

from tinyinfer.lesson_tools import compare, ratio_spread, spread, spread_note, workload
from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
MODEL_DIR = ROOT / "models" / "teacher"
model = tinyinfer.load(MODEL_DIR)
config = model.config
tok = model.tokenizer
text_ids = token_stream(tok, "val", progress=False)  # held-out Python documentation, as token ids
print(f"small settings: {SMALL}; model: {MODEL_DIR.relative_to(ROOT)}, {model.num_params():,} parameters, "
      f"{config.n_layer} layers, {config.n_head} query heads sharing {config.n_kv_head} key/value heads "
      f"of {config.head_dim} dims, context n_ctx = {config.n_ctx}")

# %% [markdown]
# ## 1. Decoding without a cache recomputes everything
#
# To pick token t+1 the model needs the logits at position t, and those depend, through attention,
# on the **keys and values** of positions 0..t in every layer. The simplest generator just calls
# the model on the whole sequence every time (this is `tinyinfer/bench/engine.py: run_naive`):
#
#     for _ in range(n_new):
#         logits = forward(params, config, np.array([seq]))  # all len(seq) positions, again
#         seq.append(int(np.argmax(logits[0, -1])))
#
# Step t pushes t positions through every linear layer (about 2·t·W flops, W = the parameters in
# the blocks), and attention compares each of them with all earlier ones (t²/2 query-key scores
# per head and layer). Summed over a generation of T tokens that is **~T²/2 positions** through
# the weights and ~T³/6 scores. But causal attention means position i only ever looks *back*:
# its key and value, once computed, never change when later tokens arrive. Keep them, and each
# step computes one new position, whose query attends over the stored keys: T positions through
# the weights in total, and ~T²/2 scores.
#
# Let us check the premise on the real model: run 48 tokens of text with a cache, then the same 48
# plus 16 more, and compare the stored keys and values of the first 48 positions.
#
# In exact arithmetic they are equal: position 47's key depends on tokens 0..47 only. In floating
# point they need not be equal *bit for bit*, and that is not a contradiction. The two runs
# multiply a 48-row and a 64-row matrix by the same weights, and the BLAS library that does the
# products may cut a bigger matrix into blocks differently and add the partial sums of a dot
# product in another order. Float addition is not associative ((a + b) + c and a + (b + c) can
# differ in the last bit), so the last bits of a key can change with the *shape* of the product,
# never with the later tokens' values. The size of the difference tells the two apart: rounding
# is of the order of float32's machine epsilon (1.2e-7) relative to the keys, a real dependence
# would be of the order of the keys themselves. Running the same check in float64 shrinks a
# rounding difference by many orders of magnitude (or to nothing, when float64's products happen
# to be blocked alike), and would leave a real one as it was.

# %%
def past_keys_difference(m, ids, short_len):
    """Largest |k - k'| and |v - v'| over the first short_len positions, every layer, when the
    model runs short_len tokens and when it runs all of ids -> (difference, largest |key|)."""
    dtype = m.params[next(iter(m.params))].dtype
    short, long = ContiguousKVCache(m.config, 1, dtype), ContiguousKVCache(m.config, 1, dtype)  # (1, G, n_ctx, D)
    forward(m.params, m.config, ids[None, :short_len], 0, short)
    forward(m.params, m.config, ids[None, :], 0, long)
    diff, scale = 0.0, 0.0
    for layer in range(m.config.n_layer):
        for kept_short, kept_long in ((short.keys[layer], long.keys[layer]), (short.values[layer], long.values[layer])):
            diff = max(diff, float(np.abs(kept_short[:, :, :short_len] - kept_long[:, :, :short_len]).max()))
        scale = max(scale, float(np.abs(short.keys[layer][:, :, :short_len]).max()))
    return diff, scale


ids = text_ids[:64]
m64 = Model(config, {k: v.astype(np.float64) for k, v in model.params.items()}, tok)  # the same model in float64
diff32, scale = past_keys_difference(model, ids, 48)
diff64, _ = past_keys_difference(m64, ids, 48)
print(f"keys and values of positions 0..47, with and without 16 later tokens: largest difference "
      f"{diff32:.1e} in float32, {diff64:.1e} in float64 (the keys are of order {scale:.1f})")
if diff32 == 0:
    print("bit for bit identical in this run: the BLAS happened to add in the same order for both shapes")
else:
    print(f"not bit for bit identical, but {diff32 / scale:.0e} of the keys' size in float32 and "
          f"{diff64 / scale:.0e} in float64: summation-order rounding, not a dependence on later tokens")

T = config.n_ctx
positions_recompute = sum(range(1, T + 1))  # step t runs t positions
print(f"generating {T} tokens from one: {positions_recompute:,} positions through the weights without a cache, "
      f"{T:,} with one ({positions_recompute / T:.0f}x fewer)")

# %% [markdown]
# ## 2. The contiguous cache
#
# `tinyinfer/kv_cache.py: ContiguousKVCache` is the textbook version, and what `Model.generate`
# uses. For each layer it preallocates a key array and a value array of shape `(B, G, n_ctx, D)`:
# batch, key/value heads, every position the context can hold, head dim. The model's attention
# calls `cache.attend(layer, q, k, v)`: it writes this step's k, v at positions
# `length .. length + T - 1` and attends the new queries over positions `0 .. length + T - 1`.
# The last layer moves `length` on.
#
# How much memory is that? Per position: keys and values (2), for every layer, every key/value
# head, every head dim, 4 bytes a float32:

# %%
bytes_per_position = 2 * config.n_layer * config.n_kv_head * config.head_dim * 4
print(f"{MODEL_DIR.name}: {bytes_per_position:,} bytes per position; a full context of {config.n_ctx} "
      f"positions: {bytes_per_position * config.n_ctx / 1e6:.2f} MB per sequence "
      f"(the weights: {4 * model.num_params() / 1e6:.1f} MB)")
for name, layers, kv_heads, head_dim, ctx in (("LLaMA-2 7B", 32, 32, 128, 4096), ("LLaMA-3 8B", 32, 8, 128, 8192)):
    per_position = 2 * layers * kv_heads * head_dim * 2  # float16
    print(f"{name} (float16): {per_position / 1024:.0f} KiB per position; {ctx} positions: "
          f"{per_position * ctx / 2**30:.1f} GiB per sequence")

# %% [markdown]
# On a real model the cache of one long sequence is gigabytes (LLaMA-3 shares each key/value head
# among 4 query heads, grouped-query attention, which is why its figure is smaller; our model
# shares among 3). That is what makes memory, not arithmetic, the limit on how many requests a
# server can hold at once (section 5).
#
# Using the cache by hand: the prompt goes through in one call (*prefill*), then every step feeds
# only the newest token at its position. The logits must equal a full recompute's:

# %%
prompt, n_new = text_ids[100:132], 24
cache = ContiguousKVCache(config, 1)
logits = forward(model.params, config, prompt[None, :], 0, cache)[0, -1]  # prefill: (V,)
seq = prompt.tolist()
worst = 0.0
for _ in range(n_new):
    seq.append(int(np.argmax(logits)))
    logits = forward(model.params, config, np.array([[seq[-1]]]), len(seq) - 1, cache)[0, -1]  # one position
    full = forward(model.params, config, np.array([seq]))[0, -1]  # (V,) every position, no cache
    worst = max(worst, float(np.abs(logits - full).max()))
print(f"{n_new} cached decode steps: largest logit difference from a full recompute {worst:.1e} "
      f"(logits are of order {np.abs(full).max():.0f}; float32)")
print("generated:", repr(tok.decode(seq[len(prompt):])))

# %% [markdown]
# ## 3. The paged cache
#
# The contiguous cache has one problem for a server: it must reserve a sequence's whole space when
# the sequence starts, because the array cannot grow in place, and when a request arrives nobody
# knows how long its answer will be. So every sequence holds `n_ctx` positions (or at least
# prompt + max_tokens), used or not. vLLM's answer (PagedAttention, 2023) is the operating system's
# answer to the same problem: **pages**.
#
# * The cache memory is one pool of `num_blocks` fixed-size **blocks** of `block_size` positions,
#   per layer an array `(num_blocks, G, block_size, D)`
#   (`tinyinfer/engine/paged_attention.py: PagedKVCache`).
# * Each sequence has a **block table**: the list of its block ids, the i-th holding its positions
#   `i*block_size .. (i+1)*block_size - 1`. Blocks need not be adjacent or in order.
# * A **free list** hands out blocks one at a time, as a sequence grows; when it finishes, its
#   blocks go back (`tinyinfer/engine/block_manager.py: BlockManager.append`, `.free`).
# * A **reference count** per block says how many block tables hold it: blocks can be shared
#   (prefix caching, section 6), and a block is free only when nobody holds it.
#
# Here is the bookkeeping on its own, with a pool of 8 blocks of 4 positions. Three sequences
# arrive, one grows, one finishes, and a fourth arrives and takes the blocks the finished one gave
# back:

# %%
P = 4
manager = BlockManager(num_blocks=8, block_size=P, enable_prefix_caching=False)
params = SamplingParams()
toy = {name: Sequence(name, list(range(n)), params, P, 0.0) for name, n in (("A", 6), ("B", 11), ("C", 3))}


def grow(seq, n):
    """Give seq blocks for n more computed positions, as the scheduler does before a step."""
    manager.append(seq, n)  # takes ceil(...) - len(block_table) blocks from the free list
    seq.num_computed_tokens += n


def show(title):
    print(title)
    for s in toy.values():
        if s.block_table:
            print(f"   {s.request_id}: {s.num_computed_tokens:2d} positions, block table {s.block_table}")
    print(f"   free list {list(manager.free_block_ids)}; ref counts "
          f"{ {b.block_id: b.ref_count for b in manager.blocks if b.ref_count} }")


layout = []  # owner of every block, after each event, for the picture below
for name in ("A", "B", "C"):
    grow(toy[name], toy[name].num_tokens)
    layout.append((f"{name} arrives ({toy[name].num_tokens})",
                   {b: s.request_id for s in toy.values() for b in s.block_table}))
show("after A (6), B (11) and C (3) are prefilled:")
grow(toy["A"], 3)  # A decodes 3 tokens: 6 -> 9 positions, a third block
layout.append(("A grows to 9", {b: s.request_id for s in toy.values() for b in s.block_table}))
manager.free(toy["B"])  # B finishes: its 3 blocks return to the free list
layout.append(("B finishes", {b: s.request_id for s in toy.values() for b in s.block_table}))
toy["D"] = Sequence("D", list(range(14)), params, P, 0.0)
grow(toy["D"], 14)  # D needs 4 blocks: the last never-used one and B's three
layout.append(("D arrives (14)", {b: s.request_id for s in toy.values() for b in s.block_table}))
show("after A grows to 9, B finishes and D (14) arrives:")

owners = sorted(toy)
fig, ax = plt.subplots(figsize=(10, 2.6))
for row, (title, owner) in enumerate(layout):
    for block in range(manager.num_blocks):
        name = owner.get(block)
        color = f"C{owners.index(name)}" if name else "0.92"
        ax.add_patch(plt.Rectangle((block, -row), 0.95, 0.9, color=color))
        if name:
            ax.text(block + 0.47, -row + 0.45, name, ha="center", va="center", color="white", fontsize=9)
ax.set_xlim(0, manager.num_blocks)
ax.set_ylim(-len(layout) + 1, 1)
ax.set_yticks([-r + 0.45 for r in range(len(layout))], [t for t, _ in layout])
ax.set_xticks(np.arange(manager.num_blocks) + 0.47, range(manager.num_blocks))
ax.set_xlabel("block id in the pool (gray: free)")
ax.set_ylabel("after each event")
ax.set_title("the paged pool: a sequence's blocks need not be adjacent")
plt.tight_layout()
plt.show()

# %% [markdown]
# D's block table is out of order and in pieces, and nothing cares: attention reads a sequence's
# keys *through its block table*. `PagedKVCache.attend(layer, q, k, v)` does two things:
#
# 1. **write**: token t's key and value go to slot `slot_mapping[t] = block * block_size + offset`,
#    one NumPy scatter for all new tokens of the step (`PagedKVCache.write`);
# 2. **read**: for each sequence, gather its blocks in table order into one contiguous
#    `(1, G, L, D)` past (`paged_attention.py: gather_blocks`) and run ordinary causal attention.
#    Sequences that decode one token each are batched into a single padded gather and product
#    (`PagedKVCache.attend_decodes`).
#
# A server step feeds *many* sequences at once: `ModelRunner.prepare` packs all their new tokens
# into one row `(1, T)` with each token's own position, so RoPE rotates it correctly, and the
# cache keeps the sequences apart. GPU engines do the gather inside the attention kernel (reading
# blocks in place); the copy here is the readable NumPy twin.
#
# ### Paged-cache logits equal a full recompute
#
# The claim to check: feeding two real texts through scattered blocks, in uneven packed chunks
# (a prompt in two pieces, then token-by-token decoding, both sequences in the same forward
# passes), gives the same logits as running each whole text through the model with no cache at
# all. In float32 they agree to rounding; a float64 copy of the model shows the agreement is exact
# up to float64 rounding, so no position, block or mask is off by one.

# %%
def paged_vs_recompute(m, texts, chunks, block_size=4, num_blocks=64, seed=0):
    """Feed texts (lists of ids) in packed steps (chunks[s][i]: tokens of text s fed at step i)
    through a paged cache with a shuffled free list -> largest |logit difference| from a full
    recompute, over every fed position, and the share of positions whose argmax agrees."""
    runner = ModelRunner(m, num_blocks, block_size)
    blocks = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
    shuffled = np.random.default_rng(seed).permutation(num_blocks).tolist()
    blocks.free_block_ids = type(blocks.free_block_ids)(shuffled)  # blocks handed out in random order
    seqs = [Sequence(str(i), t, SamplingParams(), block_size, 0.0) for i, t in enumerate(texts)]
    full = [forward(m.params, m.config, np.array([t]))[0] for t in texts]  # (T_s, V) each, no cache
    worst, agree, total = 0.0, 0, 0
    for step in range(max(len(c) for c in chunks)):
        batch = [(s, c[step]) for s, c in zip(seqs, chunks) if step < len(c)]
        for s, n in batch:
            blocks.append(s, n)
        logits = runner.forward([s for s, _ in batch], [n for _, n in batch], all_columns=True)  # (T, V)
        start = 0
        for s, n in batch:
            a = s.num_computed_tokens
            mine, ref = logits[start:start + n], full[int(s.request_id)][a:a + n]  # (n, V) each
            worst = max(worst, float(np.abs(mine - ref).max()))
            agree += int((mine.argmax(-1) == ref.argmax(-1)).sum())
            total += n
            s.num_computed_tokens += n
            start += n
    return worst, agree / total, [s.block_table for s in seqs]


texts = [text_ids[2000:2045].tolist(), text_ids[5000:5030].tolist()]
chunks = [[20, 17] + [1] * 8, [9, 5, 3] + [1] * 13]  # prompt chunks, then one token per step
for label, m in (("float32", model), ("float64", m64)):  # m64: section 1's float64 copy
    worst, agree, tables = paged_vs_recompute(m, texts, chunks)
    print(f"{label}: largest |paged - recompute| over {sum(map(sum, chunks))} positions = {worst:.1e}; "
          f"argmax agrees at {agree:.0%}")
print("block tables (scattered on purpose):", tables)

# %% [markdown]
# tests/test_engine.py checks the same for both model families, for the per-sequence path and the
# batched decode path, and that a request's greedy tokens do not depend on which other requests
# share its batch.
#
# ## 4. Speed: cache vs recompute as the sequence grows
#
# Three ways to produce the next token when the sequence already holds L tokens:
#
# * **recompute**: `forward` on all L+1 tokens (what `run_naive` does), all logits;
# * **contiguous cache**: `forward` on the one new token with a `ContiguousKVCache` holding L
#   positions (prefilled beforehand, untimed);
# * **paged cache**: the engine (`LLM`) with one request; its time per output token (TPOT, from
#   the request's metrics) is the same kind of step, through the paged cache and the scheduler.
#
# Timed in one process, alternating the contenders round after round (`tinyinfer/bench/timing.py:
# alternate`); we report medians and the median of the per-round ratios. The machine may be
# shared, so absolute figures drift; ratios taken side by side drift much less.

# %%
decode_steps = 4 if SMALL else 8  # timed decode tokens per measurement
# the engine's request needs L + decode_steps + 1 positions (its first token comes from the prefill)
lengths = [16, 64, 128, 256] if SMALL else [16, 64, 128, 256, 384, config.n_ctx - decode_steps - 1]
lengths = [L for L in lengths if L + decode_steps + 1 <= config.n_ctx]
rounds = 3 if SMALL else 5
engine = LLM(model, block_size=16, max_num_seqs=1, max_num_batched_tokens=config.n_ctx,
             enable_prefix_caching=False)


def time_recompute(ids):
    t0 = time.perf_counter()
    for i in range(decode_steps):  # the sequence grows by one each step, as in generation
        forward(model.params, config, ids[None, :len(ids) - decode_steps + i + 1])
    return time.perf_counter() - t0


def time_contiguous(ids):
    L = len(ids) - decode_steps
    cache = ContiguousKVCache(config, 1, max_len=len(ids))
    forward(model.params, config, ids[None, :L], 0, cache)  # prefill, untimed
    t0 = time.perf_counter()
    for pos in range(L, len(ids)):
        forward(model.params, config, ids[None, pos:pos + 1], pos, cache)
    return time.perf_counter() - t0


def time_paged(ids):
    L = len(ids) - decode_steps
    out = engine.generate(ids[:L].tolist(), params_for(decode_steps + 1))[0]  # 1 token from the prefill
    return out.metrics["tpot"] * decode_steps  # (e2e - ttft) / (tokens - 1): the decode steps only


print(workload("the table below", model=MODEL_DIR.name, lengths=lengths, timed_decode_steps=decode_steps,
               rounds=rounds, warmup_rounds=1, block_size=16, blas_threads=os.environ.get("OPENBLAS_NUM_THREADS")))
speed, spreads = {}, {}
for L in lengths:
    ids = text_ids[:L + decode_steps]
    times = alternate({"recompute": lambda: time_recompute(ids), "contiguous": lambda: time_contiguous(ids),
                       "paged": lambda: time_paged(ids)}, rounds, warmup=1)
    speed[L] = {name: decode_steps / statistics.median(t) for name, t in times.items()}  # tokens/s
    spreads[L] = {"ratio": ratio_spread(times["recompute"], times["contiguous"]),
                  "paged_ratio": ratio_spread(times["recompute"], times["paged"])}
    speed[L]["ratio"] = spreads[L]["ratio"].median
    speed[L]["paged_ratio"] = spreads[L]["paged_ratio"].median
    r, pr = spreads[L]["ratio"], spreads[L]["paged_ratio"]
    print(f"L = {L:4d}: recompute {speed[L]['recompute']:7.1f} tok/s, contiguous cache "
          f"{speed[L]['contiguous']:7.1f}, paged (engine) {speed[L]['paged']:7.1f};  cache / recompute "
          f"{r.median:5.1f}x (IQR {r.q1:.1f}-{r.q3:.1f}), paged {pr.median:5.1f}x (IQR {pr.q1:.1f}-{pr.q3:.1f})")
    for name in ("ratio", "paged_ratio"):
        if spread_note(spreads[L][name], f"the L = {L} {name.replace('_', ' ')}"):
            print("   " + spread_note(spreads[L][name], f"the L = {L} {name.replace('_', ' ')}"))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
ax = axes[0]
for name, style in (("recompute", "o-"), ("contiguous", "s-"), ("paged", "^--")):
    ax.plot(lengths, [speed[L][name] for L in lengths], style, label=name if name == "recompute" else f"{name} cache")
ax.set_yscale("log")
ax.set_xlabel("tokens already in the sequence (L)")
ax.set_ylabel("decode tokens/s (log)")
ax.set_title(f"one decode step at length L ({MODEL_DIR.name})")
ax.legend()
ax.grid(alpha=0.3)
ax = axes[1]
for key, style, label in (("ratio", "s-", "contiguous cache / recompute"), ("paged_ratio", "^--", "paged cache / recompute")):
    medians = np.array([spreads[L][key].median for L in lengths])
    bars = [medians - [spreads[L][key].q1 for L in lengths], [spreads[L][key].q3 for L in lengths] - medians]
    ax.errorbar(lengths, medians, yerr=bars, fmt=style, capsize=3, label=label)
BAR_LENGTH, BAR_RATIO = 512, 20  # the bar applies at one length only: a marker there, not a line
ax.plot([BAR_LENGTH], [BAR_RATIO], "k*", ms=12, label=f"the bar: {BAR_RATIO}x at {BAR_LENGTH} tokens")
ax.set_xlabel("tokens already in the sequence (L)")
ax.set_ylabel("speed-up over recompute (median, IQR bars)")
ax.set_title("the cache's advantage as L grows")
ax.legend(fontsize=8, loc="upper left")
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()
L = lengths[-1]
print(compare(spreads[L]["ratio"].median, spreads[lengths[0]]["ratio"].median,
              what=f"The contiguous cache's advantage at L = {L}", verb="is", of=f"its advantage at L = {lengths[0]}",
              more="larger: it grows with L", less="smaller", same="about the same"))
if L >= BAR_LENGTH - 16:
    print(compare(spreads[L]["ratio"].median, BAR_RATIO, what=f"At L = {L}, near the bar's {BAR_LENGTH}, it",
                  verb="is", of=f"the bar of {BAR_RATIO}x", more="above the bar", less="below the bar",
                  same="at the bar"))
else:
    print(f"This run stops at L = {L} (small settings), short of the bar's {BAR_LENGTH} tokens: the ratio above is "
          f"not a measurement of the claim; run the notebook without TINYINFER_LESSON_SMALL, or "
          f"`python -m tinyinfer.bench.engine`, for that.")

# %% [markdown]
# How to read it. A cached step costs roughly the same at every length: it pushes one position
# through the weights, and only attention grows (one query against L keys, tiny here). A
# recompute step pushes L positions, so its cost grows linearly with L (and its attention part
# quadratically), and the speed-up should grow with L; the sentences under the figure say what
# this run measured. A 2M-parameter model on a CPU has a large fixed cost per call (Python, NumPy
# dispatch, a few dozen small matrix products), so at short lengths recompute is barely slower.
# The bar is judged at 512 tokens, so it is one marker, not a line across every length
# (`python -m tinyinfer.bench.engine` measures it too, and lesson 08 the rest of the engine).
#
# The paged engine pays for its bookkeeping: building the packed step, the block gather, the
# scheduler, the sampler. On this small model that is a visible share of a step; on a real one,
# where a step's matrix products take milliseconds, it would disappear in the noise.
#
# ## 5. Memory: what a contiguous cache reserves and a paged one does not
#
# Take a mixed batch of requests like a server sees: prompts and answers of different lengths
# (`tinyinfer/bench/engine.py: make_workload`, the same generator the benchmark uses). Count
# positions of cache memory three ways:
#
# * **contiguous, n_ctx each**: reserve the whole context per request (all you can do if you do
#   not know how long the answer will be);
# * **contiguous, prompt + max_tokens each**: reserve what the request may ever need (a server
#   knows max_tokens; a model that stops early at its end-of-text token still wastes the rest);
# * **paged**: whole blocks for the positions actually stored: at most one partly filled block per
#   sequence is wasted.

# %%
n_requests = 16 if SMALL else 64
prompt_range, output_range = (16, config.n_ctx // 4), (8, config.n_ctx // 2)
work = make_workload(n_requests, config.vocab_size, prompt_range, output_range, seed=0)  # [(prompt ids, max_tokens)]
# a real answer often stops before max_tokens: let each stop at a random point in its budget
stop_at = np.random.default_rng(1).uniform(0.3, 1.0, size=n_requests)
stored = np.array([len(p) + max(1, int(n * f)) - 1 for (p, n), f in zip(work, stop_at)])  # positions finally stored
may_need = np.array([len(p) + n - 1 for p, n in work])  # prompt + max_tokens (the last token is never stored)
block_size = 16
policies = {
    "contiguous\n(n_ctx each)": n_requests * config.n_ctx,
    "contiguous\n(prompt + max_tokens)": int(may_need.sum()),
    f"paged\n(blocks of {block_size})": int((np.ceil(stored / block_size) * block_size).sum()),
}
used = int(stored.sum())
for label, reserved in policies.items():
    print(f"{label.replace(chr(10), ' '):>36}: {reserved:7,d} positions reserved, {used:,} used, "
          f"{1 - used / reserved:5.1%} wasted")

block_sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
paged_waste = [1 - used / (np.ceil(stored / b) * b).sum() for b in block_sizes]

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
ax = axes[0]
labels = list(policies)
ax.bar(labels, [used] * len(labels), color="C2", label="positions actually stored")
ax.bar(labels, [policies[k] - used for k in labels], bottom=[used] * len(labels), color="0.75",
       label="reserved, never used")
for i, k in enumerate(labels):
    ax.text(i, policies[k], f"{1 - used / policies[k]:.0%} wasted", ha="center", va="bottom", fontsize=9)
ax.set_xlabel("how the cache memory is reserved")
ax.set_ylabel("KV-cache positions")
ax.set_title(f"{n_requests} requests, prompts {prompt_range[0]}-{prompt_range[1]}, "
             f"answers up to {output_range[1]} tokens")
ax.legend(fontsize=8)
ax = axes[1]
ax.plot(block_sizes, [100 * w for w in paged_waste], "o-", label="measured on this batch")
ax.plot(block_sizes, [100 * (n_requests * (b - 1) / 2) / ((np.ceil(stored / b) * b).sum()) for b in block_sizes],
        "k:", label="estimate: half a block per sequence")
ax.set_xscale("log", base=2)
ax.set_xlabel("block size (positions)")
ax.set_ylabel("% of the paged memory wasted")
ax.set_title("paged waste: the last block of each sequence")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# The PagedAttention paper measured 60–80% of KV-cache memory wasted in the serving systems before
# it (reservation, padding between requests, fragmentation), and under 4% with paging. Small blocks
# waste less but mean more, smaller gathers per attention call and a longer block table; vLLM's
# default is 16 positions.
#
# **What the saving buys: more requests at once.** The measurement that matters is what the engine
# does with a fixed amount of memory. Give the engine the memory of 4 contiguous sequences
# (`num_blocks = 4 * n_ctx / block_size`) and let it run up to 16 requests: every step, record how
# many run, how many positions they have stored, and how many blocks are in use.

# %%
budget_seqs = 4
num_blocks = budget_seqs * config.n_ctx // block_size
llm = LLM(model, block_size=block_size, num_blocks=num_blocks, max_num_seqs=16,
          max_num_batched_tokens=config.n_ctx, enable_prefix_caching=False)
for (prompt_ids, n), f in zip(work, stop_at):
    llm.add_request(prompt_ids, params_for(max(1, int(n * f))))  # each stops where "its answer ends"
trace = []  # per step: running sequences, positions stored, positions in allocated blocks
while llm.has_unfinished_requests():
    llm.step()
    running = llm.scheduler.running
    trace.append((len(running), sum(s.num_computed_tokens for s in running),
                  len(llm.block_manager.used_block_ids) * block_size))
trace = np.array(trace)  # (steps, 3)
print(f"memory for {budget_seqs} contiguous sequences of {config.n_ctx} = {num_blocks} blocks of {block_size}; "
      f"the paged engine ran up to {trace[:, 0].max()} sequences at once (mean {trace[:, 0].mean():.1f}), "
      f"filling {trace[:, 2].max() / (num_blocks * block_size):.0%} of the pool at the peak; "
      f"stored positions / allocated positions over all steps: {trace[:, 1].sum() / trace[:, 2].sum():.1%}")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
ax = axes[0]
ax.plot(trace[:, 0], label="paged: sequences running")
ax.axhline(budget_seqs, color="C3", ls="--", label=f"contiguous, n_ctx each: {budget_seqs}")
ax.set_xlabel("engine step")
ax.set_ylabel("sequences in the batch")
ax.set_title("same memory, how many requests run at once")
ax.legend(fontsize=8)
ax = axes[1]
ax.fill_between(np.arange(len(trace)), trace[:, 2], color="0.8", label="positions in allocated blocks")
ax.plot(trace[:, 1], color="C2", label="positions stored")
ax.axhline(num_blocks * block_size, color="k", ls=":", label="the whole pool")
ax.set_xlabel("engine step")
ax.set_ylabel("KV-cache positions")
ax.set_title("the paged pool over time")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Early on, prompts are short and many sequences fit; as answers grow, the pool fills, and the
# scheduler stops admitting (or preempts, lesson 08) until someone finishes. A contiguous cache
# with the same memory would have run 4 at a time throughout. More sequences per step is exactly
# what makes batching pay (lesson 08).
#
# ## 6. Prefix caching: a chat reuses its earlier turns
#
# In a chat, every turn's prompt is the whole conversation so far: the system prompt, all earlier
# questions and answers, and the new question. Without help the server prefills all of it again,
# every turn. But the keys and values of those earlier tokens are the same as last turn (section
# 1: positions only look back), so if their blocks are still in memory they can be reused.
#
# The engine finds them by **hashing full blocks**, chained (`tinyinfer/engine/sequence.py:
# Sequence.block_hash`):
#
#     hash_i = hash((hash_{i-1}, tokens of block i))     with hash_{-1} = -1
#
# so block i's hash names the *whole prefix* up to its end. Chaining matters: the same 16 tokens
# after a different beginning have different keys and values (attention saw a different past),
# and must not match. `BlockManager.register_full_blocks` records each full, computed block under
# its hash; `BlockManager.find_cached_prefix` walks a new request's blocks from the start while
# the hashes hit (and the tokens compare equal, in case two prefixes collide on a hash), and stops
# at the first miss. The hit is capped so at least one token is left to compute: the model must
# run on something to give the logits of the next token. Blocks nobody holds any more keep their
# content in an LRU pool (`cached_block_ids`) until a fresh block is needed and the oldest is
# evicted. A shared block is full and never written again, so sharing needs no copying, only
# reference counts.

# %%
a = Sequence("a", [1, 2, 3, 4, 5, 6, 7, 8], params, 4, 0.0)  # blocks (1 2 3 4) (5 6 7 8)
b = Sequence("b", [9, 9, 9, 9, 5, 6, 7, 8], params, 4, 0.0)  # blocks (9 9 9 9) (5 6 7 8)
print(f"block 1 holds the same tokens in a and b: {a.block_tokens(1) == b.block_tokens(1)}; "
      f"same chained hash: {a.block_hash(1) == b.block_hash(1)}")
c = Sequence("c", [1, 2, 3, 4, 5, 6, 7, 8, 10, 11], params, 4, 0.0)  # a's tokens, then more
print(f"c starts with a's 8 tokens: hashes of its blocks 0 and 1 equal a's: "
      f"{[c.block_hash(i) == a.block_hash(i) for i in range(2)]}")

# %% [markdown]
# Now a real conversation, in token ids: a system prompt, then each turn appends the model's answer
# and a new user message, in the chat template of tinyinfer's server
# (`tinyinfer/engine/openai_api.py: chat_prompt`, which turns a list of messages into one prompt).
# We keep the conversation as token ids, appending each answer's ids as the model produced them,
# so that every turn's prompt starts with exactly the previous turn's tokens; a check below makes
# sure those ids decode to what `chat_prompt` writes for the same messages. One engine plays all
# turns; we read each turn's time to first token (TTFT) and how many prompt tokens came from the
# cache (`metrics["num_cached_prompt_tokens"]`), with prefix caching on and off, alternating the
# two for a few rounds.

# %%
system = ("You are a helpful assistant who answers questions about Python's standard library. "
          "Answer with short, correct code examples and explain what each line does.")
questions = ["How do I read a file line by line?", "And how do I skip blank lines?",
             "What does the with statement do there?", "How would I count the words instead?",
             "Can I do the same for every file in a folder?"]
turns = 5  # the bar is judged on turn 5
# chat_prompt ends every prompt with "<|assistant|>\n"; a message is "<|role|>\n{content}\n". So the
# text a turn adds is the answer, "\n", the user's message, and the assistant header again:
opening = chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": questions[0]}])
answer_tokens = 32 if SMALL else 48  # five turns of 48 stay within the teacher's 512 positions
chat_log = {}
last_engine = {}  # the block manager of the last chat played, to look at afterwards


def play_chat(prefix_caching):
    """All turns on one fresh engine -> per turn (prompt tokens, cached prompt tokens, TTFT s)."""
    chat_engine = LLM(model, block_size=16, max_num_seqs=1, max_num_batched_tokens=config.n_ctx,
                      enable_prefix_caching=prefix_caching)
    ids = tok.encode(opening)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": questions[0]}]
    per_turn = []
    for turn, question in enumerate(questions[:turns]):
        if turn:  # the previous answer is in ids already; add the new question in the template
            messages.append({"role": "user", "content": question})
            ids = ids + tok.encode(f"<|user|>\n{question}\n<|assistant|>\n")
        assert tok.decode(ids) == chat_prompt(messages), "the token ids drifted from the server's chat template"
        out = chat_engine.generate(ids, SamplingParams(max_tokens=answer_tokens, ignore_eos=True))[0]
        per_turn.append((len(ids), out.metrics["num_cached_prompt_tokens"], out.metrics["ttft"]))
        messages.append({"role": "assistant", "content": tok.decode(out.token_ids)})
        ids = ids + out.token_ids + tok.encode("\n")  # the answer becomes part of the conversation
    last_engine["state"] = chat_engine.block_manager
    return per_turn


def timed_chat(flag):
    def run():
        chat_log.setdefault(flag, []).append(play_chat(flag))
        return chat_log[flag][-1][-1][2]  # the last turn's TTFT
    return run


chat_rounds = 3 if SMALL else 5
print(workload("the chat below", model=MODEL_DIR.name, turns=turns, answer_tokens=answer_tokens, block_size=16,
               rounds=chat_rounds, order="on and off alternate"))
times = alternate({"on": timed_chat(True), "off": timed_chat(False)}, rounds=chat_rounds, warmup=0)
ttft = {flag: np.median([[t for _, _, t in run] for run in runs], axis=0) for flag, runs in chat_log.items()}
on = chat_log[True][-1]
print(f"{'turn':>4} {'prompt tokens':>13} {'from the cache':>14} {'TTFT on':>9} {'TTFT off':>9} {'off / on':>8}")
for i, (n, cached, _) in enumerate(on):
    print(f"{i + 1:>4} {n:>13} {cached:>14} {ttft[True][i] * 1e3:>7.1f}ms {ttft[False][i] * 1e3:>7.1f}ms "
          f"{ttft[False][i] / ttft[True][i]:>7.1f}x")
last_turn = ratio_spread(times["off"], times["on"])
print(f"turn {turns}: TTFT off / on, median of the per-round ratios {last_turn.median:.1f}x "
      f"(IQR {last_turn.q1:.1f}-{last_turn.q3:.1f}x, {last_turn.n} rounds)")
print(compare(last_turn.median, 5.0, what=f"On turn {turns} the prefix cache's gain", verb="is",
              of="the bar of 5x", more="above the bar", less="below the bar", same="at the bar"))
if spread_note(last_turn, "the turn-5 ratio"):
    print(spread_note(last_turn, "the turn-5 ratio"))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
turn_axis = np.arange(1, turns + 1)
ax = axes[0]
ax.plot(turn_axis, ttft[False] * 1e3, "o-", label="prefix cache off")
ax.plot(turn_axis, ttft[True] * 1e3, "s-", label="prefix cache on")
ax.set_xticks(turn_axis)
ax.set_xlabel("chat turn")
ax.set_ylabel("time to first token (ms)")
ax.set_title("TTFT per turn (median over rounds)")
ax.legend()
ax.grid(alpha=0.3)
ax = axes[1]
ax.bar(turn_axis, [n for n, _, _ in on], color="0.8", label="prompt tokens")
ax.bar(turn_axis, [c for _, c, _ in on], color="C2", label="reused from the prefix cache")
ax.set_xlabel("chat turn")
ax.set_ylabel("tokens")
ax.set_title("what each turn had to prefill")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
bm = last_engine["state"]  # the pool after the last chat (prefix caching off or on, whichever ran last)
print(f"the pool after the last chat played (prefix caching {'on' if bm.enable_prefix_caching else 'off'}): "
      f"{len(bm.free_block_ids)} free, {len(bm.cached_block_ids)} cached in the LRU pool (ref count 0, "
      f"content kept), {len(bm.used_block_ids)} used")

# %% [markdown]
# Turn 1 has nothing to reuse. From turn 2 on, every full block of the previous turn's prompt and
# answer is a hit, and only the tail (the part of the last block that was not full, plus the new
# question) is prefilled, so TTFT should stay nearly flat while the conversation grows; without
# the cache it grows with the prompt (the table above shows both). The ratio grows with the
# conversation, and is larger for a model whose prefill is more expensive relative to its fixed
# per-step cost.
#
# Finally, the figures of this notebook next to the bars they were held to:

# %%
L = lengths[-1]
print(f"model: {MODEL_DIR.name}; machine: {machine()['cpu']}, {machine()['cores']} cores (possibly shared)")
print(f"KV cache vs recompute at L = {L}: {speed[L]['ratio']:.1f}x (contiguous), {speed[L]['paged_ratio']:.1f}x "
      f"(paged engine); the bar: >= 20x at 512 tokens" + (f" (small settings stop at {L})" if L < 500 else ""))
print(f"memory wasted on a mixed batch: contiguous (n_ctx) {1 - used / policies[labels[0]]:.0%}, "
      f"contiguous (prompt + max_tokens) {1 - used / policies[labels[1]]:.0%}, paged {1 - used / policies[labels[2]]:.1%}")
print(f"prefix cache, chat turn {turns}: TTFT {median_ratio(times['off'], times['on']):.1f}x lower; the bar: >= 5x at turn 5")

# %% [markdown]
# ## Exercises
#
# Each exercise is an experiment or a piece of code to write, so each has a worked solution in
# `lessons/solutions/07-kv-cache.py` (run it from the repository root:
# `python lessons/solutions/07-kv-cache.py`, or `... 3` for exercise 3 alone).
#
# 1. **Where does the crossover sit?** Extend section 4's lengths down to 1, 2, 4 and 8 tokens. At
#    which length does the cache start to pay, and why is it not 2? Time the two parts of a cached
#    step separately (the linear layers vs `attention_forward`) at L = 64 and L = 500.
# 2. **A cache in float16.** `ContiguousKVCache(config, 1, dtype=np.float16)` halves the memory.
#    Generate 200 tokens greedily with it and with a float32 cache: after how many tokens do the
#    outputs differ, and what is the largest logit difference before that? (llama.cpp and vLLM
#    store keys and values in float16 by default; some engines go to 8 bits.)
# 3. **Sliding window.** Some models (Mistral) attend only to the last W positions. Write a
#    `RingKVCache` with `attend(layer, q, k, v)` like `ContiguousKVCache` whose arrays hold only W
#    positions and wrap around. Which model would produce the same logits as with it? (Careful:
#    RoPE keys carry their absolute positions, so you store them rotated; why does that still work?)
# 4. **Fragmentation by hand.** With `BlockManager(num_blocks=8, block_size=4)`, write a sequence
#    of arrivals and finishes after which a request needing 3 blocks is admitted although no 3
#    *adjacent* blocks are free. What would a contiguous allocator have done?
# 5. **Copy-on-write.** Prefix caching shares only *full* blocks, which are never written again.
#    vLLM's parallel sampling (n > 1 answers to one prompt) also shares the last, partly filled
#    block and copies it when one of the answers writes to it. Sketch what `BlockManager` would
#    need for that (a `fork(seq)` and a check in `append`).
# 6. **Tokens, not text.** Section 6 builds each turn's prompt from token ids. A real chat client
#    sends text, and the server re-tokenizes it: encode `tok.decode(ids_so_far) + new_message`
#    and compare with `ids_so_far`. Where do they differ, and how many cached blocks does that cost
#    per turn?
