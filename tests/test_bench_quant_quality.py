"""The quantization quality runner (tinyinfer/bench/quant_quality.py) on the tiny model: every
variant is evaluated, fp32 agrees with itself exactly, and the targets are judged from the rows."""
import json

from tinyinfer.bench import quant_quality


def test_the_variants_in_order():
    names = [name for name, _bits, _make in quant_quality.variants(None, None, None)]  # made lazily: none is
    assert names == ["fp32", "Q8_0", "Q5_1", "Q5_1 + imatrix", "Q5_0", "Q5_0 + imatrix", "Q4_1", "Q4_1 + imatrix",
                     "Q4_0", "Q4_0 + imatrix", "IQ4_NL", "IQ4_NL + imatrix", "GPTQ Q4_0 (paper defaults)",
                     "GPTQ Q4_0", "GPTQ Q4_0 + imatrix", "GPTQ IQ4_NL", "GPTQ IQ4_NL + imatrix",
                     "GPTQ IQ4_NL + imatrix, damp 0.01 everywhere", "GPTQ Q5_0 + imatrix",
                     "IQ4_NL + imatrix, tuned scales", "GPTQ IQ4_NL + imatrix, tuned scales",
                     "AWQ + RTN Q4_0", "AWQ + GPTQ Q4_0 (paper defaults)", "ternary (simulated)"]


def test_quant_quality_runs_on_tiny(tmp_path):
    result = quant_quality.run("tiny", windows=2, seq_len=32, calib_windows=4, calib_len=32, prompts=1,
                               gen_tokens=4, layer_windows=2, progress=False, log=lambda *_: None,
                               only=["Q8_0", "Q4_0", "IQ4_NL + imatrix", "GPTQ IQ4_NL + imatrix",
                                     "GPTQ IQ4_NL + imatrix, tuned scales", "AWQ + RTN Q4_0", "ternary (simulated)"])
    assert [r["variant"] for r in result["rows"]] == ["fp32", "Q8_0", "Q4_0", "IQ4_NL + imatrix",
                                                      "GPTQ IQ4_NL + imatrix", "GPTQ IQ4_NL + imatrix, tuned scales",
                                                      "AWQ + RTN Q4_0", "ternary (simulated)"]
    fp32 = result["rows"][0]
    assert fp32["top1_agreement"] == 1.0 and fp32["kl_divergence"] < 1e-9 and fp32["greedy_agreement"] == 1.0
    assert max(fp32["layer_errors"].values()) == 0.0
    by = {r["variant"]: r for r in result["rows"]}
    # Q8_0 stores 34 bytes per 32 weights, Q4_0 18: the quantized models are smaller, in that order
    assert by["Q4_0"]["weight_bytes"] < by["Q8_0"]["weight_bytes"] < fp32["weight_bytes"]
    assert by["Q8_0"]["kl_divergence"] < by["Q4_0"]["kl_divergence"]
    assert max(by["Q8_0"]["layer_errors"].values()) < min(by["Q4_0"]["layer_errors"].values())
    assert set(by["GPTQ IQ4_NL + imatrix"]["gptq_layers"]) == set(fp32["layer_errors"])
    tuned, gptq = by["GPTQ IQ4_NL + imatrix, tuned scales"], by["GPTQ IQ4_NL + imatrix"]
    assert tuned["weight_bytes"] == gptq["weight_bytes"]  # tuning moves scales, not bytes
    assert by["AWQ + RTN Q4_0"]["layer_errors"] is None  # rescaled weights: not comparable layer by layer
    for name, t in result["targets"].items():
        assert isinstance(t["met"], bool), name
    assert {"Q4_0", "IQ4_NL + imatrix", "GPTQ IQ4_NL + imatrix: KL vs RTN Q4_0"} <= set(result["targets"])
    gains = result["predicted_gptq_error_ratio"]
    assert set(gains) == set(fp32["layer_errors"]) and all(0 < g <= 1.0 + 1e-9 for g in gains.values())
    text = quant_quality.markdown(result)
    assert "| GPTQ IQ4_NL + imatrix |" in text and "Targets:" in text and "| 1 down_proj |" in text
    json.dumps(result)  # machine-readable as it stands


def test_only_some_variants(tmp_path):
    result = quant_quality.run("tiny", windows=1, seq_len=16, calib_windows=2, calib_len=16, prompts=1,
                               gen_tokens=2, layer_windows=1, progress=False, log=lambda *_: None,
                               only=["IQ4_NL + imatrix"])
    assert [r["variant"] for r in result["rows"]] == ["fp32", "IQ4_NL + imatrix"]
    assert "IQ4_NL + imatrix" in result["targets"]


def test_smollm2_markdown_names_its_caveats():
    row = {"variant": "Q4_0", "bits_per_quantized_weight": 4.5, "weight_bytes": 10, "perplexity": 9.0,
           "perplexity_increase": 0.05, "top1": 0.5, "top1_agreement": 0.9, "kl_divergence": 0.03,
           "make_cpu_seconds": 1.0, "eval_tokens": 2048}
    result = {"model": "SmolLM2", "windows": 8, "seq_len": 256, "calibration": "16 windows", "rows": [row],
              "predicted_gptq_error_ratio": {"a": 0.8, "b": 0.6}, "predicted_from": "64 windows"}
    text = quant_quality.markdown_smollm2(result)
    assert "| Q4_0 | 4.5 |" in text and "median 0.70" in text
    assert "already-rounded" in text and "training data" in text
