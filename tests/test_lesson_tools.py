"""The lessons' helpers: sentences from measurements, spreads, exercise checks, the figure audit,
reference checks, lean outputs, and no internal references in the README or the package."""
import base64
import io
from pathlib import Path

import pytest

from tinyinfer.lesson_tools import (Spread, bound_check, check, compare, direction, ratio_spread, spread,
                                    spread_note, time_calls, workload)
from tinyinfer.lessons import (cap_text, check_references, internal_references, lesson_references,
                               MAX_OUTPUT_LINES)

ROOT = Path(__file__).resolve().parents[1]


# ---- sentences that follow the data --------------------------------------------------------------


def test_compare_reads_the_direction_off_the_numbers():
    assert compare(0.60, what="Q8_0", of="the speed of NumPy float32") == \
        "Q8_0 runs at 0.60x the speed of NumPy float32 (slower)"
    assert compare(3.0, 1.5, what="the cache", of="recompute's speed").endswith("2.00x recompute's speed (faster)")
    assert compare(1.02, what="x").endswith("(about the same)")
    assert direction(0.7, more="larger", less="smaller") == "smaller"


def test_compare_says_when_the_rounds_cannot_tell():
    noisy = spread([0.8, 1.3, 0.9, 1.2])
    assert "no clear difference" in compare(1.1, what="x", measured=noisy)
    assert compare(1.5, what="x", measured=spread([1.4, 1.5, 1.6])).endswith("(faster)")


def test_compare_refuses_nonsense():
    with pytest.raises(ValueError, match="nonzero reference"):
        compare(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        compare(float("nan"))


def test_spread_median_and_quartiles():
    s = spread([5, 1, 4, 2, 3])
    assert (s.median, s.q1, s.q3, s.n) == (3, 2, 4, 5)
    assert s.iqr == 2 and s.relative_iqr == pytest.approx(2 / 3)
    assert s.is_wide and "spread widely" in spread_note(s, "the test")
    assert spread_note(spread([1.0, 1.01, 0.99]), "x") == ""
    assert spread([7.0]) == Spread(7.0, 7.0, 7.0, 1)
    assert spread([0.001, 0.002, 0.003]).format() == "2.00 ms (IQR 1.50-2.50 ms, 3 rounds)"
    with pytest.raises(ValueError, match="at least one"):
        spread([])


def test_ratio_spread_and_time_calls():
    assert ratio_spread([2.0, 4.0, 6.0], [1.0, 1.0, 2.0]).median == 3.0
    with pytest.raises(ValueError, match="one fast time per slow time"):
        ratio_spread([1.0], [1.0, 2.0])
    calls = []
    measured = time_calls(lambda: calls.append(1), rounds=5, warmup=2)
    assert len(calls) == 7 and measured.n == 5 and measured.median >= 0
    assert workload("the table", B=2, T=64) == "workload of the table: B=2, T=64"


def test_bound_check_warns_only_past_the_bound(capsys):
    assert bound_check(1.5, 2.0, "speed-up", "the ideal")
    assert capsys.readouterr().out == ""
    assert not bound_check(3.2, 2.0, "speed-up", "the ideal", reasons="the matrix fits in the cache")
    out = capsys.readouterr().out
    assert out.startswith("warning: speed-up = 3.2 is above the ideal (2)") and "fits in the cache" in out
    assert not bound_check(0.5, 1.0, "x", "the floor", upper=False)
    assert "below the floor" in capsys.readouterr().out


def test_check_says_right_or_not_yet(capsys):
    assert not check(None, 3.0, name="my_mb")
    assert "not yet: set my_mb" in capsys.readouterr().out
    assert check(3.01, 3.0, tol=0.01)
    assert capsys.readouterr().out.startswith("right")
    assert not check(4, 3.0) and "too high" in capsys.readouterr().out
    assert not check("many", 3.0) and "should be a number" in capsys.readouterr().out
    assert check({"b", "a"}, {"a", "b"}) and check(["a", "b"], ("a", "b")) and check("x", "x")
    assert not check({"a"}, {"a", "b"}) and "misses 1" in capsys.readouterr().out.splitlines()[-1]


# ---- notebooks stay lean ------------------------------------------------------------------------


def test_cap_text_keeps_head_and_tail():
    text = "".join(f"line {i}\n" for i in range(500))
    capped = cap_text(text)
    assert capped.startswith("line 0\n") and capped.endswith("line 499\n")
    assert "lines cut here" in capped and len(capped.splitlines()) <= MAX_OUTPUT_LINES + 2
    assert cap_text("short\n") == "short\n"


def test_compress_png_keeps_the_picture_and_shrinks_it():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from tinyinfer.lessons import compress_png

    fig, ax = plt.subplots()
    ax.plot(range(100), [i * i for i in range(100)], label="a curve")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    original = base64.b64encode(buffer.getvalue()).decode()
    small = compress_png(original)
    assert len(small) <= len(original)
    before, after = (Image.open(io.BytesIO(base64.b64decode(d))) for d in (original, small))
    assert before.size == after.size


# ---- the figure audit -----------------------------------------------------------------------------


def _audit(draw):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyinfer.lessons import audit_figure

    fig = draw(plt)
    try:
        return audit_figure(fig)["problems"]
    finally:
        plt.close(fig)


def test_audit_accepts_a_readable_figure():
    def draw(plt):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([1, 2, 3], [1, 4, 9], label="measured")
        ax.plot([1, 2, 3], [1, 2, 3], label="model")
        ax.set_xlabel("length (tokens)")
        ax.set_ylabel("time (ms)")
        ax.legend(loc="upper left")
        fig.tight_layout()
        return fig

    assert _audit(draw) == []


def test_audit_finds_unlabelled_axes_and_missing_legends():
    def draw(plt):
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [1, 4, 9], label="acceptance rate")
        ax.plot([1, 2, 3], [1, 2, 3], label="tokens per pass")
        ax.set_xlabel("draft length k")
        return fig

    problems = _audit(draw)
    assert any("y axis has tick labels but no axis label" in p for p in problems)
    assert any("2 labelled artists but no legend" in p for p in problems)


def test_audit_lets_an_axis_without_ticks_go_unlabelled():
    def draw(plt):
        fig, ax = plt.subplots()
        ax.barh(0, 10)
        ax.set_yticks([])
        ax.set_xlabel("byte offset")
        return fig

    assert _audit(draw) == []


def test_audit_finds_a_legend_over_the_data_and_overlapping_axes():
    def legend_on_data(plt):
        fig, ax = plt.subplots(figsize=(3, 2))
        for i in range(4):
            ax.plot(range(50), [i] * 50, "o", label=f"a long legend entry number {i}")
        ax.set_xlabel("x (units)")
        ax.set_ylabel("y (units)")
        ax.legend(loc="center")
        return fig

    assert any("legend covers" in p for p in _audit(legend_on_data))

    def crowded(plt):
        fig, axes = plt.subplots(1, 2, figsize=(3, 2))  # no tight_layout: the y label runs into the left axes
        for ax in axes:
            ax.plot([0, 1000000], [0, 1000000])
            ax.set_xlabel("a long x label that needs room")
            ax.set_ylabel("a long y label that needs room")
        return fig

    assert any("overlaps" in p for p in _audit(crowded))


# ---- references a reader can follow -------------------------------------------------------------


def test_lesson_references_are_parsed():
    text = ("The loop is `tinyinfer/model.py: forward(params, config, ids)`, `PRESETS` lives in "
            "`tinyinfer/presets.py: PRESETS[\"student\"]`, and `tinyinfer/gguf.py: write_gguf, read_gguf`.\n"
            "```\ncode ` fence\n```\nsee tests/export_README.md and `tinyinfer/engine/sequence.py:\n"
            "Sequence.block_hash`; a `tokenizer.json` is a kind of file.")
    refs = lesson_references(text)
    assert ("tinyinfer/model.py", ["forward"]) in refs
    assert ("tinyinfer/presets.py", ["PRESETS"]) in refs
    assert ("tinyinfer/gguf.py", ["write_gguf", "read_gguf"]) in refs
    assert ("tinyinfer/engine/sequence.py", ["Sequence.block_hash"]) in refs
    assert ("tests/export_README.md", []) in refs


def test_check_references_finds_missing_files_and_names(tmp_path):
    (tmp_path / "tinyinfer" / "engine").mkdir(parents=True)
    (tmp_path / "tinyinfer" / "engine" / "api.py").write_text(
        "def chat_prompt(messages):\n    pass\n\nclass Engine:\n    def step(self):\n        pass\n")
    lesson = tmp_path / "01-x.py"
    lesson.write_text("# %% [markdown]\n# `tinyinfer/engine/api.py: chat_prompt`, `tinyinfer/engine/api.py: "
                      "Engine.step`, `api.py: Engine`\n# `tinyinfer/engine/server.py: chat_prompt`, "
                      "`tinyinfer/engine/api.py: Engine.stop`, `tinyinfer/engine/api.py: the loop`\n")
    problems = check_references(lesson, tmp_path)
    assert len(problems) == 3, problems
    assert "server.py` names a file that does not exist" in problems[0].replace(": chat_prompt", "")
    assert "Engine.stop is defined in none" in problems[1]
    assert "'the loop' is not a name" in problems[2]


def test_internal_references_are_found():
    text = "As the issue asks (see TARGETS.md),\nour calibration run showed it; ticket 4.\nThe tissue issued."
    found = internal_references(text, "x.md")
    assert [f.split(":")[1] for f in found] == ["1", "1", "2", "2"]
    assert internal_references("an issue of float rounding; the targets of training", "y") == []


def _package_texts():
    files = [ROOT / "README.md", *sorted(ROOT.glob("models/*/README.md")), *sorted(ROOT.glob("tests/*.md")),
             *sorted(p for p in (ROOT / "tinyinfer").rglob("*.py") if "__pycache__" not in p.parts)]
    return [p for p in files if p.is_file()]


@pytest.mark.parametrize("path", _package_texts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_references_in_the_package_and_readmes(path):
    """Docstrings, comments, messages and READMEs name nothing a reader cannot see."""
    found = internal_references(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "\n".join(found)
