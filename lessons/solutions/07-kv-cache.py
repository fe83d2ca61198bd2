"""Worked solutions to the exercises of lesson 07 (the KV cache, contiguous and paged).

Run from the repository root: `python lessons/solutions/07-kv-cache.py` (all exercises) or
`python lessons/solutions/07-kv-cache.py 3` (some). TINYINFER_LESSON_SMALL=1 shortens the timings
and the generations.
"""
import functools
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
from tinyinfer.corpus import token_stream
from tinyinfer.engine import LLM, SamplingParams
from tinyinfer.engine.block_manager import BlockManager
from tinyinfer.engine.openai_api import chat_prompt
from tinyinfer.engine.sequence import Sequence
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.lesson_tools import compare, ratio_spread, run_exercises, spread
from tinyinfer.lessons import repo_root
from tinyinfer.model import forward
from tinyinfer.ops import attention_forward

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
ROUNDS = 3 if SMALL else 7


@functools.lru_cache(maxsize=None)
def setting():
    model = tinyinfer.load(repo_root() / "models" / "teacher")
    return model, token_stream(model.tokenizer, "val", progress=False)


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- exercise 1 -----------------------------------------------------------------------------------


def exercise_1():
    """Where the crossover sits, and what a cached step spends its time on."""
    model, text = setting()
    params, config = model.params, model.config

    def recompute(L):
        return seconds(lambda: forward(params, config, text[None, :L + 1]))  # all L + 1 positions

    def cached(L):
        cache = ContiguousKVCache(config, 1, max_len=L + 1)
        forward(params, config, text[None, :L], 0, cache)  # prefill, untimed
        return seconds(lambda: forward(params, config, text[None, L:L + 1], L, cache))

    pays = []
    for L in (1, 2, 4, 8, 16, 64):
        slow, fast = [], []
        for _ in range(ROUNDS * 3):  # these steps are short: more rounds are cheap
            slow.append(recompute(L))
            fast.append(cached(L))
        ratio = ratio_spread(slow, fast)
        if ratio.q1 > 1.0:  # the middle half of the rounds all favour the cache
            pays.append(L)
        print(f"L = {L:3d}: " + compare(ratio.median, what="a cached step", of="the speed of recomputing",
                                        measured=ratio))
    print(f"In this run the cache clearly pays from L = {pays[0] if pays else 'none of these lengths'} on "
          f"(the IQR of the per-round ratios entirely above 1).")
    print("The cache pays once recomputing L + 1 positions costs more than one position plus the cache's "
          "bookkeeping (writing k and v, slicing the stored past). At a handful of positions both are "
          "dominated by the fixed cost per call (Python, NumPy dispatch, one small product per weight), "
          "so the crossover is wherever that fixed cost stops hiding the extra rows; it is not at L = 2, "
          "where the arithmetic alone would put it, and it moves with the machine and its load.")
    H, G, D = config.n_head, config.n_kv_head, config.head_dim
    rng = np.random.default_rng(0)
    for L in (64, min(500, config.n_ctx - 1)):
        step = spread(cached(L) for _ in range(ROUNDS * 3))
        q = rng.standard_normal((1, H, 1, D)).astype(np.float32)
        k = rng.standard_normal((1, G, L + 1, D)).astype(np.float32)
        attention = spread(seconds(lambda: [attention_forward(q, k, k) for _ in range(config.n_layer)])
                           for _ in range(ROUNDS * 3))
        print(f"L = {L}: a cached step {step}; attention alone (every layer) {attention}, "
              f"{attention.median / step.median:.0%} of the step; the rest is the linear layers and overhead")


# ---- exercise 2 -----------------------------------------------------------------------------------


def greedy_with_cache(model, prompt, n_new, dtype):
    """Greedy decoding with a ContiguousKVCache of the given dtype -> (tokens, logits per step)."""
    cache = ContiguousKVCache(model.config, 1, dtype=dtype)
    logits = forward(model.params, model.config, prompt[None, :], 0, cache)[0, -1]
    tokens, all_logits = [], []
    for _ in range(n_new):
        all_logits.append(logits)
        tokens.append(int(np.argmax(logits)))
        logits = forward(model.params, model.config, np.array([[tokens[-1]]]), len(prompt) + len(tokens) - 1,
                         cache)[0, -1]
    return tokens, np.array(all_logits)


def exercise_2():
    """A cache in float16: memory, and when the greedy tokens part ways."""
    model, text = setting()
    n_new = 64 if SMALL else 200
    prompt = np.asarray(text[100:132], dtype=np.int64)
    t32, l32 = greedy_with_cache(model, prompt, n_new, np.float32)
    t16, l16 = greedy_with_cache(model, prompt, n_new, np.float16)
    per_position = {dt: 2 * model.config.n_layer * model.config.n_kv_head * model.config.head_dim * np.dtype(dt).itemsize
                    for dt in (np.float32, np.float16)}
    print(f"bytes per position: float32 {per_position[np.float32]}, float16 {per_position[np.float16]}")
    differ = next((i for i, (a, b) in enumerate(zip(t32, t16)) if a != b), None)
    upto = n_new if differ is None else differ
    print(f"largest logit difference over the first {upto} tokens: {np.abs(l32[:upto] - l16[:upto]).max():.1e} "
          f"(logits of order {np.abs(l32).max():.0f})")
    print(f"the greedy tokens {'never differ in ' + str(n_new) if differ is None else 'first differ at token ' + str(differ)}; "
          f"after a first difference the two texts go separate ways, each still a fine continuation")


# ---- exercise 3 -----------------------------------------------------------------------------------


class RingKVCache:
    """A KV cache that keeps only the last `window` positions, in a ring of `window` slots.

    For decoding, one token per call (a prompt is fed token by token): slot = position % window.
    Keys are stored *after* RoPE, so each carries its own absolute position, and attention needs
    no unrotating: the score of q at position m and k at n depends only on m - n, wherever k sits
    in the ring. Attention over a set of keys does not care about their order either (a softmax
    over a set), so the ring's slots need no reordering.
    """

    def __init__(self, config, window, dtype=np.float32):
        shape = (1, config.n_kv_head, window, config.head_dim)  # (B, G, W, D)
        self.keys = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.values = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.window, self.length, self._n_layer = window, 0, config.n_layer

    def attend(self, layer, q, k, v):
        if k.shape[2] != 1:
            raise ValueError(f"RingKVCache takes one token per step, got {k.shape[2]}; feed the prompt one by one")
        slot = self.length % self.window
        self.keys[layer][:, :, slot] = k[:, :, 0]
        self.values[layer][:, :, slot] = v[:, :, 0]
        filled = min(self.length + 1, self.window)
        if layer == self._n_layer - 1:
            self.length += 1
        # one query, every stored key is in its past: the causal mask has nothing to hide
        return attention_forward(q, self.keys[layer][:, :, :filled], self.values[layer][:, :, :filled])[0]


class WindowedReference:
    """The same sliding-window attention computed plainly: a full contiguous cache, sliced."""

    def __init__(self, config, window):
        self.full, self.window = ContiguousKVCache(config, 1), window

    def attend(self, layer, q, k, v):
        full = self.full
        end = full.length + 1
        full.keys[layer][:, :, full.length] = k[:, :, 0]
        full.values[layer][:, :, full.length] = v[:, :, 0]
        if layer == len(full.keys) - 1:
            full.length = end
        start = max(0, end - self.window)
        return attention_forward(q, full.keys[layer][:, :, start:end], full.values[layer][:, :, start:end])[0]


def exercise_3():
    """Sliding window: a ring cache, checked against sliding-window attention computed plainly."""
    model, text = setting()
    window, n = 16, 48 if SMALL else 120
    ids = np.asarray(text[:n], dtype=np.int64)
    worst, worst_full = 0.0, 0.0
    ring, ref, plain = RingKVCache(model.config, window), WindowedReference(model.config, window), \
        ContiguousKVCache(model.config, 1)
    for pos in range(n):
        step = ids[None, pos:pos + 1]
        a = forward(model.params, model.config, step, pos, ring)[0, -1]
        b = forward(model.params, model.config, step, pos, ref)[0, -1]
        c = forward(model.params, model.config, step, pos, plain)[0, -1]
        worst = max(worst, float(np.abs(a - b).max()))
        if pos >= window:
            worst_full = max(worst_full, float(np.abs(a - c).max()))
    print(f"ring cache of {window} vs sliding-window attention computed plainly, {n} positions: "
          f"largest logit difference {worst:.1e}")
    print(f"vs the ordinary model (attending to everything), past position {window}: {worst_full:.2f}")
    print("So the ring gives exactly a model trained with a sliding window of W (as Mistral's first "
          "models were); for our teacher, trained with full attention, it changes the logits once the "
          "text is longer than W. It works with RoPE because the keys were rotated at their own "
          "positions when stored: a score needs only m - n, never the slot.")
    assert worst < 1e-4


# ---- exercise 4 -----------------------------------------------------------------------------------


def exercise_4():
    """Fragmentation by hand: 3 blocks admitted with no 3 adjacent free blocks."""
    manager = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    params = SamplingParams()
    seqs = {}

    def arrive(name, n_tokens):
        seqs[name] = Sequence(name, list(range(n_tokens)), params, 4, 0.0)
        manager.append(seqs[name], n_tokens)
        seqs[name].num_computed_tokens = n_tokens

    for name, n_tokens in (("A", 4), ("B", 4), ("C", 4), ("D", 4), ("E", 8)):
        arrive(name, n_tokens)  # blocks 0, 1, 2, 3 and 4-5: six of eight used
    for name in ("B", "D"):
        manager.free(seqs.pop(name))  # blocks 1 and 3 come back: free are 6, 7, 1, 3
    free = sorted(manager.free_block_ids)
    runs = np.split(free, np.flatnonzero(np.diff(free) != 1) + 1)
    print(f"free blocks {free}: the longest run of adjacent ones has {max(len(r) for r in runs)} blocks")
    arrive("F", 12)  # needs 3 blocks
    print(f"F (12 positions, 3 blocks) admitted with block table {seqs['F'].block_table}")
    print("A contiguous allocator needs 3 adjacent blocks: it would refuse F (or move A, C and E to "
          "compact the memory) although 4 blocks are free. Paging makes adjacency irrelevant.")


# ---- exercise 5 -----------------------------------------------------------------------------------


class CopyOnWriteBlockManager(BlockManager):
    """BlockManager with fork(): children share every block, and a write to a shared, partly filled
    last block first copies it. `copies` records (source, destination) for the engine, which would
    copy those blocks' keys and values in PagedKVCache's arrays before the step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.copies = []

    def fork(self, seq, request_id):
        child = Sequence(request_id, list(seq.token_ids), seq.params, self.block_size, 0.0)
        child.block_table = list(seq.block_table)
        child.num_computed_tokens = seq.num_computed_tokens
        for block_id in child.block_table:
            self._ref(block_id)
        return child

    def append(self, seq, num_new_tokens):
        if seq.block_table and seq.num_computed_tokens % self.block_size:  # the last block is partly filled
            last = seq.block_table[-1]
            if self.blocks[last].ref_count > 1:  # and someone else holds it: copy before writing
                fresh = self._take_block()
                self.copies.append((last, fresh))
                self._unref(last)
                seq.block_table[-1] = fresh
        super().append(seq, num_new_tokens)


def exercise_5():
    """Copy-on-write: fork a sequence into several answers that share its blocks."""
    manager = CopyOnWriteBlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    parent = Sequence("prompt", list(range(6)), SamplingParams(), 4, 0.0)
    manager.append(parent, 6)
    parent.num_computed_tokens = 6  # blocks: one full, one holding 2 of 4 positions
    children = [manager.fork(parent, f"answer {i}") for i in range(2)]
    print(f"after forking twice: tables {[s.block_table for s in (parent, *children)]}, ref counts "
          f"{ {b.block_id: b.ref_count for b in manager.blocks if b.ref_count} }")
    for seq in (*children, parent):  # each writes its next token into position 6
        manager.append(seq, 1)
        seq.num_computed_tokens += 1
    print(f"after each wrote one token: tables {[s.block_table for s in (parent, *children)]}, copies "
          f"(source, destination) {manager.copies}")
    print("The full block 0 stays shared by all three; the partly filled block 1 is copied for the first two "
          "writers, and the last holder writes in place. BlockManager needs: fork() (ref every block), the "
          "check in append(), and the engine must copy the recorded blocks' arrays before the step.")
    assert manager.blocks[parent.block_table[0]].ref_count == 3 and len(manager.copies) == 2


# ---- exercise 6 -----------------------------------------------------------------------------------


def exercise_6():
    """Tokens, not text: what re-tokenizing the conversation costs the prefix cache."""
    model, _ = setting()
    tok = model.tokenizer
    messages = [{"role": "system", "content": "You answer questions about Python."},
                {"role": "user", "content": "How do I read a file line by line?"}]
    ids = tok.encode(chat_prompt(messages))
    engine = LLM(model, block_size=16, max_num_seqs=1, enable_prefix_caching=True)
    total_lost = 0
    for turn, question in enumerate(["And skip blank lines?", "Count the words instead?", "For every file?"], 2):
        out = engine.generate(ids, SamplingParams(max_tokens=24 if SMALL else 64, temperature=1.0, seed=turn,
                                                  ignore_eos=True))[0]  # sampled: greedy text is rarely odd
        ids_so_far = ids + out.token_ids + tok.encode("\n")  # what the model actually produced
        messages += [{"role": "assistant", "content": out.text}, {"role": "user", "content": question}]
        as_text = tok.encode(tok.decode(ids_so_far) + f"<|user|>\n{question}\n<|assistant|>\n")
        first = next((i for i, (a, b) in enumerate(zip(ids_so_far, as_text)) if a != b), min(len(ids_so_far), len(as_text)))
        lost = max(0, len(ids_so_far) // 16 - first // 16)
        total_lost += lost
        print(f"turn {turn}: {len(ids_so_far)} tokens so far; re-tokenized text first differs at token {first}"
              f"{' (not at all)' if first == len(ids_so_far) else ''}: {lost} full block(s) of the prefix cache lost")
        if first < len(ids_so_far):
            print(f"   generated: {tok.decode(ids_so_far[max(0, first - 2):first + 3])!r} as "
                  f"{ids_so_far[max(0, first - 2):first + 3]}, re-encoded as {as_text[max(0, first - 2):first + 3]}")
        ids = ids_so_far + tok.encode(f"<|user|>\n{question}\n<|assistant|>\n")
    print(f"In this chat re-tokenizing cost {total_lost} cached block(s) in all.")
    word = " return"
    whole = tok.encode(word)
    pieces = tok.encode(word[:4]) + tok.encode(word[4:])  # the same text as two shorter tokens
    print(f"How it can happen: {word!r} encodes as {whole}, but a sampler may emit {pieces} "
          f"({[tok.decode([i]) for i in pieces]}); both decode to the same text, and re-encoding gives "
          f"{tok.encode(tok.decode(pieces))}: the ids change from there on.")
    print("A model may generate a token sequence that BPE would never produce from the text (two tokens "
          "where the merges make one). Encoding the decoded text then gives other ids from that point, "
          "and every block after it misses the cache. Servers that keep the token ids of a conversation "
          "(or compare at the text level) avoid it.")


if __name__ == "__main__":
    run_exercises(globals())
