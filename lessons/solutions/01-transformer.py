"""Worked solutions to the exercises of lesson 01 (the transformer, one token's path).

Run from the repository root: `python lessons/solutions/01-transformer.py` (all exercises) or
`python lessons/solutions/01-transformer.py 3 5` (some). TINYINFER_LESSON_SMALL=1 shortens the
timings. The lesson's check cells import kv_cache_mib and top_p_keeps from here.
"""
import functools
import inspect
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
from tinyinfer import ops
from tinyinfer.config import ModelConfig
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.lesson_tools import check, compare, run_exercises
from tinyinfer.lessons import repo_root
from tinyinfer.model import block_forward, embedding_name, forward, init_params, layer_names
from tinyinfer.sampling import sample_token, token_probs

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
PROMPT = "def fibonacci(n):\n    if n < 2:\n        return"  # section 3's prompt


# ---- what the check cells use -------------------------------------------------------------------


def kv_cache_mib(n_layer, n_kv_head, head_dim, tokens, sequences, bytes_per_value):
    """Keys and values (2) for every layer, KV head and head dim, per token and sequence, in MiB."""
    return 2 * n_layer * n_kv_head * head_dim * bytes_per_value * tokens * sequences / 2 ** 20


def top_p_keeps(probs, top_p):
    """The ids of the smallest set of most likely tokens whose probability reaches top_p."""
    order = np.argsort(-np.asarray(probs), kind="stable")  # most likely first
    kept, mass = set(), 0.0
    for token in order:
        kept.add(int(token))
        mass += probs[token]
        if mass >= top_p:
            return kept
    return kept


# ---- shared set-up ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def teacher():
    return tinyinfer.load(repo_root() / "models" / "teacher")


def block_by_hand(x, params, config, layer, positions, use_rope=True):
    """Section 6's block for any layer -> (output (B, T, C), attention p (B, G, R, T, S))."""
    names = layer_names(config, layer)
    H, G, D = config.n_head, config.n_kv_head, config.head_dim
    B, T, C = x.shape
    h, _ = ops.rmsnorm_forward(x, params[names["norm1"] + ".weight"], config.norm_eps)
    q = ops.linear_forward(h, params[names["q"] + ".weight"])[0].reshape(B, T, H, D).transpose(0, 2, 1, 3)
    k = ops.linear_forward(h, params[names["k"] + ".weight"])[0].reshape(B, T, G, D).transpose(0, 2, 1, 3)
    v = ops.linear_forward(h, params[names["v"] + ".weight"])[0].reshape(B, T, G, D).transpose(0, 2, 1, 3)
    if use_rope:
        cos, sin = ops.rope_tables(D, positions, config.rope_theta)
        q, k = ops.rope_forward(q, cos, sin)[0], ops.rope_forward(k, cos, sin)[0]
    heads, cache = ops.attention_forward(q, k, v)  # (B, H, T, D)
    x1 = x + ops.linear_forward(heads.transpose(0, 2, 1, 3).reshape(B, T, H * D), params[names["o"] + ".weight"])[0]
    h2, _ = ops.rmsnorm_forward(x1, params[names["norm2"] + ".weight"], config.norm_eps)
    act, _ = ops.swiglu_forward(ops.linear_forward(h2, params[names["gate"] + ".weight"])[0],
                                ops.linear_forward(h2, params[names["up"] + ".weight"])[0])
    return x1 + ops.linear_forward(act, params[names["down"] + ".weight"])[0], cache[-1]


def attention_maps(model, ids):
    """Every layer's attention for one sequence -> list of (H, T, T) arrays."""
    config = model.config
    x, _ = ops.embedding_forward(np.asarray(ids)[None, :], model.params[embedding_name(config)])
    positions = np.arange(len(ids))
    maps = []
    for layer in range(config.n_layer):
        x, p = block_by_hand(x, model.params, config, layer, positions)
        maps.append(p[0].reshape(config.n_head, len(ids), len(ids)))  # (G, R, T, S) -> (H, T, S)
    return maps


def mean_look_back(p):
    """Attention-weighted mean distance t - s for each head of p (H, T, T) -> (H,)."""
    T = p.shape[-1]
    distance = np.arange(T)[:, None] - np.arange(T)[None, :]  # (T, S), t - s
    return (p * np.maximum(distance, 0)).sum(axis=(1, 2)) / T


# ---- the exercises ------------------------------------------------------------------------------


def exercise_1():
    """Another layer: block 1 by hand, and how far each layer's heads look back."""
    model = teacher()
    config, P = model.config, model.params
    ids = np.array(model.tokenizer.encode(PROMPT))
    positions = np.arange(len(ids))
    x, _ = ops.embedding_forward(ids[None, :], P[embedding_name(config)])
    out0, p0 = block_by_hand(x, P, config, 0, positions)
    out1, p1 = block_by_hand(out0, P, config, 1, positions)
    difference = np.abs(out1 - block_forward(out0, P, config, 1, positions)).max()
    print(f"block 1 by hand vs block_forward: largest difference {difference:.1e}")
    assert difference < 1e-4
    maps = attention_maps(model, ids)
    for layer, p in enumerate(maps):
        print(f"layer {layer}: mean look-back per head (positions) {np.round(mean_look_back(p).astype(float), 2).tolist()}")
    means = [float(mean_look_back(p).mean()) for p in maps]
    print(compare(means[1], means[0], what="Layer 1's heads", verb="look back", of="as far as layer 0's",
                  more="further", less="less far"))
    print("(a plot: plt.imshow(maps[1][head]) for each head, as in section 7 of the lesson)")


def exercise_2():
    """Where RoPE hides: a block without RoPE, and what still knows the order."""
    model = teacher()
    config, P = model.config, model.params
    ids = np.array(model.tokenizer.encode(PROMPT))
    positions = np.arange(len(ids))
    x, _ = ops.embedding_forward(ids[None, :], P[embedding_name(config)])
    with_rope = block_forward(x, P, config, 0, positions)
    without, _ = block_by_hand(x, P, config, 0, positions, use_rope=False)
    print(f"without RoPE, block 0's output differs from block_forward by up to {np.abs(without - with_rope).max():.3f} "
          f"(the residual stream's entries are of order {np.abs(with_rope).max():.1f})")
    # Without RoPE, position t's output is a function of its own token and the *set* of tokens
    # before it: attention sums over keys in any order. Shuffle the earlier tokens and see.
    rng = np.random.default_rng(0)
    shuffled = np.concatenate([rng.permutation(ids[:-1]), ids[-1:]])
    xs, _ = ops.embedding_forward(shuffled[None, :], P[embedding_name(config)])
    last_plain = block_by_hand(x, P, config, 0, positions, use_rope=False)[0][0, -1]
    last_shuffled = block_by_hand(xs, P, config, 0, positions, use_rope=False)[0][0, -1]
    last_rope = block_forward(xs, P, config, 0, positions)[0, -1]
    print(f"shuffle the earlier tokens: the last position's output changes by "
          f"{np.abs(last_shuffled - last_plain).max():.1e} without RoPE, "
          f"{np.abs(last_rope - with_rope[0, -1]).max():.2f} with it")
    print("Without RoPE only the causal mask knows the order: position t averages over tokens 0..t, so it "
          "knows how many came before and which, but not in what order. A stack of layers can recover "
          "some order from that (a token's own count of predecessors differs by position), which is how "
          "models without position encodings still learn a little about order.")


def exercise_3():
    """The same text twice: looking for an induction head."""
    model = teacher()
    phrase = model.tokenizer.encode("def area(radius):\n    return 3.14159 * radius ** 2\n\n")
    ids = np.array(phrase + phrase)
    L = len(phrase)
    maps = attention_maps(model, ids)
    print(f"{L} tokens repeated once; induction score = mean attention from position t of the second copy "
          f"to t - {L} + 1, the token after the same token's earlier occurrence")
    print(f"(a head spreading evenly over the past would score about {np.mean(1 / np.arange(L + 1, 2 * L + 1)):.3f})")
    best = []
    for layer, p in enumerate(maps):
        t = np.arange(L, 2 * L - 1)
        scores = p[:, t, t - L + 1].mean(axis=1)  # (H,)
        best.append((float(scores.max()), layer, int(scores.argmax())))
        print(f"layer {layer}: induction score per head {np.round(scores.astype(float), 3).tolist()}")
    score, layer, head = max(best)
    print(f"the strongest: layer {layer}, head {head}, {score:.2f} of its attention on the induction target")
    print("It cannot be layer 0: to look at 'the token after an earlier copy of me', the key at that "
          "position must already carry 'my previous token was X'. Only an earlier layer's attention "
          "(a previous-token head) can move that into the residual stream, so induction needs two layers.")


def exercise_4():
    """A KV cache for GPT-2: timing, and where the learned positions are added."""
    model = teacher()
    tok = model.tokenizer
    gpt2_config = ModelConfig(family="gpt2", vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_ctx=128)
    gpt2 = tinyinfer.Model(gpt2_config, init_params(gpt2_config, seed=0), tokenizer=tok)
    ids = np.array(tok.encode(PROMPT))
    n = 16 if SMALL else 64
    cached_times, naive_times = [], []
    for _ in range(3 if SMALL else 7):
        start = time.perf_counter()
        cached = gpt2.generate(ids, max_new_tokens=n)
        cached_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        seq = list(ids)
        for _ in range(n):
            seq.append(int(np.argmax(gpt2.logits(np.array(seq))[-1])))
        naive_times.append(time.perf_counter() - start)
    assert np.array_equal(cached, np.array(seq)), "the cache changed GPT-2's greedy tokens"
    print(compare(np.median(naive_times), np.median(cached_times), what=f"GPT-2 with a cache ({n} tokens)",
                  of="the speed of recomputing"))
    source = inspect.getsource(forward).splitlines()
    for number, line in enumerate(source):
        if "wpe" in line or "positions = " in line:
            print(f"   tinyinfer/model.py forward: {line.strip()}")
    print("A cached step feeds only the new token, but that token sits at position start_pos + t of the "
          "text, so it must get that position's learned vector; with wpe[t] it would always look like "
          "the first token. forward computes positions from start_pos and adds wpe[positions].")


def exercise_5():
    """Memory: the KV cache of a 32-layer, G = 8 model for 8 sequences of 4,096 tokens in float16."""
    small = ModelConfig(family="llama", vocab_size=64, n_layer=3, n_embd=32, n_head=4, n_kv_head=2, n_ctx=40)
    cache = ContiguousKVCache(small, 2, dtype=np.float16)
    allocated = sum(a.nbytes for a in cache.keys + cache.values) / 2 ** 20
    formula = kv_cache_mib(small.n_layer, small.n_kv_head, small.head_dim, small.n_ctx, 2, 2)
    print("the formula against a real ContiguousKVCache (3 layers, 2 KV heads, float16):", end=" ")
    check(formula, allocated, tol=1e-9, name="formula MiB")
    gqa = kv_cache_mib(32, 8, 128, 4096, 8, 2)
    mha = kv_cache_mib(32, 32, 128, 4096, 8, 2)
    print(f"G = 8: {gqa:,.0f} MiB ({gqa / 1024:.0f} GiB); G = H = 32: {mha:,.0f} MiB ({mha / 1024:.0f} GiB), "
          f"{mha / gqa:.0f}x more. (C = 4096 does not enter: only G * D per layer does.)")


def exercise_6():
    """Top-p by hand, against the sampler's counts."""
    model = teacher()
    ids = np.array(model.tokenizer.encode(PROMPT))
    logits = model.logits(ids)[-1]
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    kept = top_p_keeps(probs, 0.5)
    print(f"top-p = 0.5 keeps {len(kept)} token(s): "
          f"{[(i, model.tokenizer.decode([i]), round(float(probs[i]), 3)) for i in sorted(kept, key=lambda i: -probs[i])]}")
    library = set(np.flatnonzero(token_probs(logits, 1.0, top_p=0.5)).tolist())
    print("the same set as the library's token_probs:", end=" ")
    check(kept, library, name="kept ids")
    rng = np.random.default_rng(0)
    drawn = {sample_token(logits, rng, temperature=1.0, top_p=0.5) for _ in range(1000)}
    print(f"1000 draws of the sampler gave {len(drawn)} distinct token(s), all in the kept set: {drawn <= kept}")
    assert drawn <= kept


if __name__ == "__main__":
    run_exercises(globals())
