"""The serving benchmark (tinyinfer/bench/serving.py): `tinyinfer serve` in its own process, the official
openai client streaming chats from several threads, every request answered, the block pool empty
afterwards. Small scale on the tiny model; on SmolLM2 when it is installed."""
import pytest

from conftest import ROOT
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available

pytest.importorskip("openai", reason="the serving benchmark drives the server with the openai package")


def check(r, requests):
    assert r["requests"] == requests and r["all_answered"] and r["answered"] == requests, r["errors"]
    assert r["nothing_leaked"] and r["leaked_blocks"] == 0
    assert r["health_after"]["kv_cache_blocks"]["free"] == r["health_after"]["kv_cache_blocks"]["total"]
    assert r["output_tokens"] > 0 and r["throughput_tok_s"] > 0
    assert 0 < r["ttft_median_s"] <= r["ttft_p99_s"] and 0 < r["tpot_median_s"] <= r["tpot_p99_s"]


def test_streaming_clients_on_the_tiny_model():
    from tinyinfer.bench.serving import bench_serving, format_serving

    r = bench_serving(f"{ROOT}/models/tiny", clients=4, requests=8, max_tokens=12, scale=0.05, max_model_len=256)
    check(r, 8)
    assert "nothing leaked" in format_serving(r)


@pytest.mark.skipif(not smollm2_available(), reason=f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
def test_streaming_clients_on_smollm2():
    from tinyinfer.bench.serving import bench_serving

    r = bench_serving("smollm2", clients=3, requests=3, max_tokens=8, scale=0.05, max_model_len=512)
    check(r, 3)


def test_stall_benchmark_runs_both_settings_on_the_teacher():
    """The long-prompt pause benchmark (tinyinfer/bench/stall.py) end to end, small: it reports the gaps
    and the long prompt's TTFT for both settings (their sizes are the benchmark's to measure, not this test's)."""
    from tinyinfer.bench.stall import bench_stall, format_stall

    r = bench_stall("teacher", prompt_tokens=40, streams=2, stream_tokens=400, trials=1, settle=0.3,
                    max_num_batched_tokens=16)
    assert set(r["settings"]) == {"budget", "chunks"}
    for s in r["settings"].values():
        assert s["gap_during_s"] > 0 and s["long_prompt_ttft_s"] > 0
    assert "--max-prefill-ms 0 (chunks of 16)" in format_stall(r)
