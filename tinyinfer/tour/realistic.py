"""At realistic size: a GPT-2-small-shaped model (124M parameters, random weights) in fp32, Q8_0, Q4_0.

Lesson: lessons/09-putting-it-together.py

The shipped teacher (2M parameters, 8.7 MB in float32) fits in the processor's caches, so a decode
step costs Python and NumPy call overhead, not memory traffic, and fewer bits per weight cannot
make it faster. The article's "4x faster with 8 bits" is an argument about memory bandwidth: a
decode step reads every weight once. It can only show on a model too big for the caches, so this
module builds GPT-2 small's shape (12 layers, C = 768, 12 heads, V = 50257) with random weights
(speed does not depend on the values) and times batch-1 decoding in each format, interleaved.

Two ways to quantize, both reported:

* "blocks": what tinyinfer/quant/model.py:quantize_model does: every linear layer inside the
  blocks (85M weights). GPT-2's output head is the token embedding (38.6M weights, 154 MB in
  float32), which stays float32, so every token still reads those 154 MB: it caps the speedup.
* "all": the embedding / tied head quantized too, as llama.cpp stores token_embd. The lookup
  dequantizes the rows it needs (QTensor.take_rows); the head product is a QTensor's.
"""
from __future__ import annotations

import time

import numpy as np

from ..bench.engine import median_ratio
from ..config import ModelConfig
from ..model import Model, embedding_name, init_params
from ..quant.formats import quantize
from ..quant.model import quantize_model, weight_bytes

GPT2_SMALL = dict(family="gpt2", vocab_size=50257, n_layer=12, n_embd=768, n_head=12, n_ctx=1024)


def quantize_all(qmodel: Model, fmt: str) -> Model:
    """A quantize_model(model, fmt) result with the float tied embedding / head quantized too."""
    name = embedding_name(qmodel.config)
    if not qmodel.config.tie_word_embeddings or not isinstance(qmodel.params[name], np.ndarray):
        raise ValueError(f"quantize_all expects a model with a float, tied {name}")
    params = dict(qmodel.params)
    params[name] = quantize(qmodel.params[name], fmt)  # a lookup table and the tied head, in one QTensor
    return Model(qmodel.config, params, qmodel.tokenizer)


def build(n_layer: int = 12, seed: int = 0, config_overrides: dict | None = None) -> Model:
    """GPT-2 small's shape with random weights (fewer layers or config_overrides: smaller, for tests)."""
    config = ModelConfig(**{**GPT2_SMALL, "n_layer": n_layer, **(config_overrides or {})})
    return Model(config, init_params(config, seed))


def run(n_layer: int = 12, new_tokens: int = 16, rounds: int = 3, prompt_len: int = 8, seed: int = 0,
        progress: bool = True, config_overrides: dict | None = None) -> list[dict]:
    """Batch-1 decode tokens/s of each format, interleaved, with ratios against fp32."""
    from tqdm.auto import tqdm

    steps = tqdm(total=5, desc="GPT-2-small shape: building", disable=not progress, leave=False)
    fp32 = build(n_layer, seed, config_overrides)
    steps.update(1)
    variants = {"fp32": fp32}
    for fmt in ("q8_0", "q4_0"):
        steps.set_description(f"GPT-2-small shape: {fmt}")
        variants[f"{fmt} (blocks)"] = quantize_model(fp32, fmt)
        steps.update(1)
        variants[f"{fmt} (all)"] = quantize_all(variants[f"{fmt} (blocks)"], fmt)
        steps.update(1)
    steps.close()
    prompt = np.random.default_rng(seed).integers(0, fp32.config.vocab_size, size=prompt_len).tolist()

    def timer(model):
        def run_once():
            t0 = time.perf_counter()
            model.generate(prompt, new_tokens)
            return time.perf_counter() - t0
        return run_once

    fns = {name: timer(model) for name, model in variants.items()}
    times = {name: [] for name in fns}
    names = list(fns)
    for r in tqdm(range(rounds + 1), desc="GPT-2-small shape: decoding", disable=not progress, leave=False):
        k = r % len(names)  # rotate the order every round, so no format always goes first
        for name in names[k:] + names[:k]:
            seconds = fns[name]()
            if r > 0:  # round 0 is a warm-up (JIT compilation, first-touch of the weights)
                times[name].append(seconds)
    rows = []
    for name, model in variants.items():
        rows.append({"format": name, "params": fp32.num_params(), "weight_mb": weight_bytes(model) / 1e6,
                     "tokens_per_s": new_tokens / float(np.median(times[name])),
                     "ratio_vs_fp32": median_ratio(times["fp32"], times[name]),
                     "new_tokens": new_tokens, "prompt_len": prompt_len, "rounds": rounds, "n_layer": fp32.config.n_layer})
    return rows
