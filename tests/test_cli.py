"""The command line: every subcommand answers --help, and train / eval / generate work end to end."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "tinyinfer", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tinyinfer {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("command", ["train", "eval", "generate", "bench", "quantize"])
def test_help(command):
    assert "usage: tinyinfer " + command in run(command, "--help").stdout


def test_generate_from_the_shipped_tiny_model():
    proc = run("generate", "--model", "tiny", "--prompt", "import os\n", "--max-new-tokens", "12", "--seed", "1")
    assert proc.stdout.startswith("import os\n") and len(proc.stdout) > len("import os\n")
    assert "tokens/s" in proc.stderr


def test_train_then_resume_then_eval(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--out", str(out), "--tokenizer", "models/tiny/tokenizer.json",
            "--max-docs", "30", "--seq-len", "32", "--eval-every", "4"]
    run(*args, "--max-steps", "4")
    first = json.loads((out / "history.json").read_text())
    assert first["tokens_seen"] == 4 * 8 * 32
    run(*args, "--max-steps", "8")  # resumes at step 4
    second = json.loads((out / "history.json").read_text())
    assert second["tokens_seen"] == 8 * 8 * 32 and [v["step"] for v in second["val"]] == [4, 8]
    result = json.loads(run("eval", "--model", str(out), "--windows", "2", "--seq-len", "32", "--json").stdout)
    assert set(result) >= {"loss", "perplexity", "top1"} and result["tokens"] == 64


def test_clear_errors():
    proc = run("generate", "--model", "no/such/model", check=False)
    assert proc.returncode != 0 and "no/such/model" in proc.stderr
    proc = run("train", "--preset", "huge", "--out", "/tmp/never", check=False)
    assert proc.returncode != 0 and "preset" in proc.stderr


def test_bench_suites_are_reachable():
    help_text = run("bench", "--help").stdout
    assert all(suite in help_text for suite in ("foundation", "engine", "quant", "sparse"))


def test_bench_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    run("bench", "--model", "tiny", "--rounds", "1", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["decode"]["kv_cache_over_recompute"] > 0 and result["machine"]["cores"] >= 1
    assert result["train_llama_5m"]["numpy_tok_s"] > 0


def test_quantize_then_generate(tmp_path):
    out = tmp_path / "tiny-q8"
    proc = run("quantize", "--model", "tiny", "--format", "q8_0", "--out", str(out))
    assert "MB" in proc.stdout
    assert run("generate", "--model", str(out), "--prompt", "x = ", "--max-new-tokens", "5").stdout.startswith("x = ")
