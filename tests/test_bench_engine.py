"""The engine benchmark (tinyinfer/bench/engine.py, batching.py, speculative.py): its quick path runs
and reports every figure; no speed is asserted here (speed belongs in benchmarks, measured on a
quiet machine)."""
import json

import pytest

import tinyinfer
from conftest import ROOT
from tinyinfer.bench import engine as bench


@pytest.fixture(scope="module")
def tiny():
    return tinyinfer.load(f"{ROOT}/models/tiny")


def ratios(tree, path=""):
    """Every (path, value) whose key names a ratio, anywhere in the results."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from ratios(value, f"{path}{key}.")
        elif ("ratio" in key or "_over_" in key) and not key.endswith("_iqr"):
            yield f"{path}{key}", value


def test_quick_run_reports_everything(tmp_path):
    out = tmp_path / "engine.json"
    plots = tmp_path / "plots"
    bench.main(["--model", f"{ROOT}/models/tiny", "--quick", "--json", str(out), "--plots", str(plots)])
    r = json.loads(out.read_text())
    for section in ("machine", "kv_cache", "offline", "scaling", "llamacpp", "online", "prefix_cache", "speculative",
                    "goals", "settings"):
        assert section in r, section
    off = r["offline"]
    for key in ("naive_tok_s", "cached_tok_s", "static_tok_s", "static_padded_tok_s", "continuous_tok_s"):
        assert off[key] > 0, key
    assert off["workload"]["output_len"]["max"] <= r["settings"]["max_tokens"]
    found = dict(ratios(r))
    for key in ("kv_cache.at_length.ratio", "kv_cache.growing.ratio", "offline.continuous_over_static",
                "offline.continuous_over_cached", "offline.continuous_over_static_padded", "offline.cached_over_naive",
                "prefix_cache.ttft_off_over_on"):
        assert key in found, key
    assert all(v > 0 for v in found.values()), found
    # every way of serving gave every request the same greedy tokens
    assert off["same_tokens_static_continuous"] == f"{off['num_requests']}/{off['num_requests']}"
    sc = r["scaling"]
    assert [row["batch"] for row in sc["rows"]] == r["settings"]["batch_sizes"]
    assert all(row["tokens_per_s"] > 0 for row in sc["rows"]) and sc["weight_bytes"] > 0
    assert "skipped" in r["llamacpp"]  # the tiny model is not a GGUF file
    assert "skipped" in r["speculative"]  # nor a chat model
    onl = r["online"]
    assert onl["num_requests"] == r["settings"]["online_requests"]
    for key in ("ttft_median_s", "ttft_p99_s", "tpot_median_s", "tpot_p99_s", "throughput_tok_s"):
        assert onl[key] > 0, key
    assert onl["ttft_p99_s"] >= onl["ttft_median_s"]
    assert set(r["goals"]) == set(bench.GOALS)
    for name, g in r["goals"].items():
        assert (g["measured"] is None) == (g["met"] is None), name
    assert r["goals"]["aggregate_32_over_llamacpp_batch1"]["measured"] is None
    # the chat's last turn really did reuse the earlier turns with the cache on, and nothing without it
    pre = r["prefix_cache"]
    assert pre["cached_prompt_tokens"] > 0 and 0 < pre["shared_fraction"] < 1
    assert pre["cached_prompt_tokens_without_cache"] == 0
    assert (plots / "decode_scaling.png").stat().st_size > 1000


def test_workload_is_seeded_and_mixed():
    a = bench.make_workload(16, 100, (16, 128), (8, 96), seed=5)
    assert a == bench.make_workload(16, 100, (16, 128), (8, 96), seed=5)
    assert a != bench.make_workload(16, 100, (16, 128), (8, 96), seed=6)
    assert all(16 <= len(p) <= 128 and 8 <= n <= 96 for p, n in a)
    sub = bench.representative_subset(a, 4)
    assert len(sub) == 4 and all(w in a for w in sub)


def test_static_and_continuous_give_the_same_greedy_tokens(tiny):
    s = bench.Settings.quick(num_requests=10, max_num_seqs=4).fit(tiny.config.n_ctx)
    work = bench.offline_work(tiny, s)
    assert len({n for _, n in work}) > 3  # heavy-tailed: many different lengths
    static, _ = bench.run_static(tiny, work, s)
    continuous, _ = bench.run_continuous(tiny, work, s)
    assert [len(t) for t in continuous] == [n for _, n in work]  # ignore_eos: exactly max_tokens each
    assert static == continuous
    padded, _ = bench.run_static(tiny, work, s, pad_decode=True)
    assert padded == continuous
    cached, _ = bench.run_cached(tiny, work[:3])
    assert cached == continuous[:3]


def test_settings_fit_the_context(tiny):
    s = bench.Settings().fit(tiny.config.n_ctx)
    assert s.max_total <= tiny.config.n_ctx and s.max_prompt <= s.max_total // 2
    assert s.max_tokens < s.max_total and s.long_len <= tiny.config.n_ctx
    real = bench.Settings.real_model()
    assert real.cached_requests and not real.kv_growing  # the slow baselines are cut down for a real model


def test_goals_read_every_section():
    r = {"kv_cache": {"at_length": {"ratio": 30.0}}, "offline": {"continuous_over_cached": 2.0,
                                                                 "continuous_over_static": 2.5},
         "llamacpp": {"skipped": "no"}, "prefix_cache": {"ttft_off_over_on": 6.0, "shared_fraction": 0.95},
         "speculative": {"best": {"speedup": 1.6, "same_tokens": True}}}
    g = bench.goals(r)
    assert g["kv_cache_over_recompute_at_512"]["met"] is True
    assert g["continuous_over_one_at_a_time_cached"]["met"] is False
    assert g["aggregate_32_over_llamacpp_batch1"]["measured"] is None
    assert g["speculative_over_batch1"]["greedy_identical"] is True
    assert g["prefix_cache_ttft"]["shared_fraction"] == 0.95


@pytest.mark.parametrize("slope_ms", [0.5, -0.1])
def test_scaling_report_with_and_without_a_compute_bound_ceiling(slope_ms):
    """A fit whose step time does not grow with the batch (a fixed cost dominates, or noise) has no
    ceiling to report: the report says so instead of failing."""
    from tinyinfer.bench.batching import format_scaling

    per_token = slope_ms / 1e3
    r = {"context": 32, "steps": 3, "rounds": 1, "weight_bytes": 1e6, "flops_per_token": 2e6,
         "rows": [{"batch": b, "step_ms": 1.0 + b * max(slope_ms, 0), "step_iqr_ms": [0.9, 1.1],
                   "tokens_per_s": 100.0 * b, "gflops": 0.1} for b in (1, 2, 4)],
         "fit": {"fixed_ms": 1.0, "per_token_ms": slope_ms, "fitted_on": [2, 4]},
         "compute_bound_tokens_per_s": 1.0 / per_token if per_token > 0 else None,
         "crossover_batch": 1e-3 / per_token if per_token > 0 else float("inf"),
         "stream_weights_ms": 0.1, "ceilings": {"read_gbs_all_threads": 10.0, "sgemm_gflops": 100.0, "int8_gmacs": 10.0}}
    text = format_scaling(r)
    if slope_ms > 0:
        assert "compute-bound ceiling 2000 tokens/s" in text
    else:
        assert "no compute-bound ceiling within these batch sizes" in text
