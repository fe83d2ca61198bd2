"""bench smollm2's pieces that run without SmolLM2: the products timed one call at a time, and the report."""
import numpy as np

import tinyinfer
from tinyinfer.bench import smollm2
from tinyinfer.inference import InferenceModel
from tinyinfer.quant.model import quantize_model


def test_products_one_call_at_a_time_are_timed():
    model = quantize_model(tinyinfer.load("tiny"), "q4_1")
    fast = InferenceModel(model)
    products = smollm2.products_seconds(fast, repeats=3)
    ids = model.tokenizer.encode("def fib(n):")
    step = smollm2.tinyinfer_decode_seconds(fast, ids, 8) / 8
    assert 0 < products < 5 * step  # the same order as a step (timing noise allowed for)


def test_report_names_every_part():
    tok = {"tokens_per_s": 50.0, "iqr_tokens_per_s": [45.0, 55.0], "median_s": 1.28}
    ratio = {"median": 0.8, "iqr": [0.7, 0.9], "rounds": 5}
    fmt = {"tokens_per_s": 50.0, "ms_per_token": 20.0, "weight_mb_per_token": 96.4, "streaming_ms": 5.0,
           "everything_else_ms": 15.0, "ratio_vs_fp32": ratio}
    r = {"threads": 2, "tokens": 64, "rounds": 5, "machine": {"load_average": 0.1},
         "load": {"seconds": 0.7, "rss_added_mb": 130.0, "rss_over_file": 1.38, "file_mb": 94.0},
         "quality": {"perplexity": 8.7, "top1": 0.557, "positions": 2048},
         "decode": {"tinyinfer": tok, "llama.cpp": tok, "ratio_vs_llama_cpp": ratio},
         "prefill": {"tinyinfer": tok, "llama.cpp": tok, "ratio_vs_llama_cpp": ratio},
         "products_ms_per_token": 12.5, "transformers": "not installed", "read_bandwidth_gb_s": 20.0,
         "formats": {"fp32": fmt, "q4_1": fmt}}
    text = smollm2.format_results(r)
    for part in ("1.38x", "tinyinfer / llama.cpp = 0.80x", "one at a time from Python take 12.5 ms", "transformers: not installed",
                 "q4_1"):
        assert part in text, part
    assert np.isfinite(r["products_ms_per_token"])
