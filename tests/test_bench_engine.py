"""The engine benchmark (tinyinfer/bench/engine.py): its quick path runs and reports every figure;
no speed is asserted here (speed belongs in benchmarks, measured on a quiet machine)."""
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
        elif "ratio" in key or "_over_" in key:
            yield f"{path}{key}", value


def test_quick_run_reports_everything(tmp_path):
    out = tmp_path / "engine.json"
    bench.main(["--model", f"{ROOT}/models/tiny", "--quick", "--json", str(out)])
    r = json.loads(out.read_text())
    for section in ("machine", "kv_cache", "offline", "online", "prefix_cache", "targets", "settings"):
        assert section in r, section
    off = r["offline"]
    for key in ("naive_tok_s", "cached_tok_s", "static_tok_s", "continuous_tok_s"):
        assert off[key] > 0, key
    found = dict(ratios(r))
    for key in ("kv_cache.at_length.ratio", "kv_cache.growing.ratio", "offline.continuous_over_static",
                "offline.continuous_over_cached", "offline.continuous_over_static_padded", "offline.cached_over_naive",
                "prefix_cache.ttft_off_over_on"):
        assert key in found, key
    assert all(v > 0 for v in found.values()), found
    onl = r["online"]
    assert onl["num_requests"] == r["settings"]["online_requests"]
    for key in ("ttft_median_s", "ttft_p99_s", "tpot_median_s", "tpot_p99_s", "throughput_tok_s"):
        assert onl[key] > 0, key
    assert onl["ttft_p99_s"] >= onl["ttft_median_s"]
    assert set(r["targets"]) == {"kv_cache_over_recompute_at_length", "continuous_over_static",
                                 "continuous_over_one_at_a_time_cached", "prefix_cache_ttft_turn5"}
    for t in r["targets"].values():
        assert t["measured"] > 0 and isinstance(t["met"], bool)
    # the chat's turn 5 really did reuse turns 1-4 with the cache on, and nothing without it
    assert r["prefix_cache"]["cached_prompt_tokens"] > 0
    assert r["prefix_cache"]["cached_prompt_tokens_without_cache"] == 0


def test_workload_is_seeded_and_mixed():
    a = bench.make_workload(16, 100, (16, 128), (8, 96), seed=5)
    assert a == bench.make_workload(16, 100, (16, 128), (8, 96), seed=5)
    assert a != bench.make_workload(16, 100, (16, 128), (8, 96), seed=6)
    assert all(16 <= len(p) <= 128 and 8 <= n <= 96 for p, n in a)
    sub = bench.representative_subset(a, 4)
    assert len(sub) == 4 and all(w in a for w in sub)


def test_static_and_continuous_give_the_same_greedy_tokens(tiny):
    s = bench.Settings.quick(num_requests=10, max_num_seqs=4).fit(tiny.config.n_ctx)
    work = bench.make_workload(s.num_requests, tiny.config.vocab_size, s.prompt_len, s.output_len, seed=1)
    static, _ = bench.run_static(tiny, work, s)
    continuous, _ = bench.run_continuous(tiny, work, s)
    assert [len(t) for t in continuous] == [n for _, n in work]  # ignore_eos: exactly max_tokens each
    assert static == continuous
    padded, _ = bench.run_static(tiny, work, s, pad_decode=True)
    assert padded == continuous
    cached, _ = bench.run_cached(tiny, work[:3])
    assert cached == continuous[:3]
