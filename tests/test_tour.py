"""The tour (tinyinfer/tour/): runs end to end on the tiny model, writes its report, says what is missing."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT
from tinyinfer.cli import main as cli_main

TINY = os.path.join(ROOT, "models", "tiny")
TINY_GPT2 = dict(vocab_size=64, n_embd=64, n_head=2, n_ctx=32)  # a miniature of the realistic part
ROW_KEYS = {"key", "technique", "claim", "previous", "status", "note"}
MEASURED_KEYS = {"tokens_per_s", "ratio_vs_naive", "ratio_vs_previous", "weight_bytes", "perplexity", "top1",
                 "top1_relative", "top1_agreement", "same_tokens_as_teacher"}


@pytest.fixture(scope="module")
def tour_run(tmp_path_factory):
    """One tiny tour through the CLI: the tiny model as teacher and as its own student, no pruned model."""
    from tinyinfer import tour

    out = tmp_path_factory.mktemp("tour")
    real = tour.TourSettings.quick_settings  # the CLI has no flag for a miniature GPT-2 shape: patch it in

    def quick_settings(**overrides):
        return real(**{**overrides, "realistic_config": TINY_GPT2, "realistic_layers": 1})

    mp = pytest.MonkeyPatch()
    mp.setattr(tour.TourSettings, "quick_settings", staticmethod(quick_settings))
    try:
        cli_main(["tour", "--quick", "--no-progress", "--model", TINY, "--student", TINY,
                  "--pruned", str(out / "no-such-model"), "--num-requests", "2", "--naive-requests", "1", "--prompt-len", "8",
                  "--new-tokens", "6", "--rounds", "1", "--eval-windows", "2", "--eval-seq-len", "32", "--realistic-tokens", "2",
                  "--out", str(out / "report"), "--json", str(out / "tour.json")])
    finally:
        mp.undo()
    return out, json.loads((out / "tour.json").read_text())


def test_json_has_one_object_per_row_with_claim_and_machine(tour_run):
    _, res = tour_run
    assert {"machine", "settings", "rows", "speculative_sweep", "realistic", "targets", "wall_time_s"} <= set(res)
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


def test_targets_and_realistic_part_are_reported(tour_run):
    _, res = tour_run
    assert len(res["targets"]) == 7
    for t in res["targets"]:
        assert t["met"] in (True, False, None) and t["measured"]
    formats = [x["format"] for x in res["realistic"]]
    assert formats == ["fp32", "q8_0 (blocks)", "q8_0 (all)", "q4_0 (blocks)", "q4_0 (all)"]
    sizes = {x["format"]: x["weight_mb"] for x in res["realistic"]}
    assert sizes["q4_0 (all)"] < sizes["q8_0 (all)"] < sizes["q8_0 (blocks)"] < sizes["fp32"]


def test_report_folder_is_written(tour_run):
    out, res = tour_run
    report = (out / "report" / "report.md").read_text()
    assert "naive baseline" in report and "| #" in report
    for png in ("speedup.png", "speed_vs_quality.png", "speculative.png", "realistic.png"):
        assert (out / "report" / png).stat().st_size > 1000, png
    assert json.loads((out / "report" / "results.json").read_text())["rows"] == res["rows"]


def test_a_quantized_embedding_is_a_lookup_and_a_head():
    """quantize_all: the tied embedding becomes one QTensor, looked up by rows and multiplied as the head."""
    from tinyinfer.quant import QTensor
    from tinyinfer.tour.realistic import build, quantize_all
    from tinyinfer.quant.model import quantize_model

    model = build(1, config_overrides=TINY_GPT2)
    full = quantize_all(quantize_model(model, "q8_0"), "q8_0")
    assert isinstance(full.params["transformer.wte.weight"], QTensor)
    ids = [1, 5, 9, 2]
    ref = model.logits(ids)
    assert np.abs(full.logits(ids) - ref).max() < 0.05 * np.abs(ref).max()
    with pytest.raises(ValueError, match="tied"):
        quantize_all(full, "q8_0")  # already quantized


def test_bad_settings_are_refused():
    from tinyinfer.tour import decode

    with pytest.raises(ValueError, match="num_requests"):
        decode.make_workload(np.arange(100), 0, 8, 4)
    with pytest.raises(ValueError, match="too few"):
        decode.make_workload(np.arange(10), 4, 8, 4)
    with pytest.raises(SystemExit, match="no model folder"):
        cli_main(["tour", "--quick", "--no-progress", "--model", "/no/such/teacher", "--realistic-layers", "0"])
