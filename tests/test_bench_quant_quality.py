"""The quantization quality runner (tinyinfer/bench/quant_quality.py) on the tiny model: every
variant is evaluated, fp32 agrees with itself exactly, and the targets are judged from the rows."""
import json

from tinyinfer.bench import quant_quality


def test_quant_quality_runs_every_variant_on_tiny(tmp_path):
    result = quant_quality.run("tiny", windows=2, seq_len=32, calib_windows=4, calib_len=32, prompts=1,
                               gen_tokens=4, progress=False, log=lambda *_: None)
    names = [r["variant"] for r in result["rows"]]
    assert names == ["fp32", "RTN Q8_0", "RTN Q4_0", "GPTQ Q4_0", "AWQ + RTN Q4_0", "AWQ + GPTQ Q4_0",
                     "ternary (simulated)"]
    fp32 = result["rows"][0]
    assert fp32["top1_agreement"] == 1.0 and fp32["kl_divergence"] < 1e-9 and fp32["greedy_agreement"] == 1.0
    by = {r["variant"]: r for r in result["rows"]}
    # Q8_0 stores 34 bytes per 32 weights, Q4_0 18: the quantized models are smaller, in that order
    assert by["RTN Q4_0"]["weight_bytes"] < by["RTN Q8_0"]["weight_bytes"] < fp32["weight_bytes"]
    assert by["RTN Q8_0"]["kl_divergence"] < by["RTN Q4_0"]["kl_divergence"]
    for name, t in result["targets"].items():
        assert isinstance(t["met"], bool), name
    text = quant_quality.markdown(result)
    assert "| GPTQ Q4_0 |" in text and "Targets:" in text
    json.dumps(result)  # machine-readable as it stands
