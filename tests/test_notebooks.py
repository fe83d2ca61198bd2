"""The lessons: each notebook matches its lesson source, runs, draws readable figures, names only
code that exists, and every exercise has a check or a worked solution that runs.

Lessons are written as lessons/NN-topic.py and turned into notebooks/NN-topic.ipynb by
tinyinfer/lessons.py (`python -m tinyinfer.lessons`; `--execute` renders them with outputs). These
tests execute each notebook in a real Jupyter kernel on small settings (TINYINFER_LESSON_SMALL=1).

    pytest tests/test_notebooks.py            # all of it (a few minutes on small settings)
    pytest -k "not executes and not readable and not solution_runs"   # without running any lesson

No custom marker on purpose: pytest calls pytest_configure only for conftest.py files and plugins,
never for a test module, so a marker cannot be registered from here, and an unregistered one warns
(or fails under --strict-markers). `-k` selects the same tests a marker would.
"""
import ast
import base64
import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinyinfer.lessons import (EXECUTION_ENV, KEPT_MIME_TYPES, MAX_OUTPUT_CHARS, MAX_OUTPUT_LINES, SMALL_ENV,
                               build_notebook, check_references, execute_notebook, internal_references,
                               lesson_files, notebook_text, parse_cells, read_figure_report, strip_outputs)

ROOT = Path(__file__).resolve().parents[1]
LESSONS = lesson_files(ROOT / "lessons")  # lessons/NN-topic.py, in order
SOLUTIONS = ROOT / "lessons" / "solutions"

# The lessons held to the reader checks below: figures with labelled axes and legends, references
# that resolve, no internal references, a check or a worked solution for every exercise. Every
# lesson belongs here; a lesson joins the list in the commit that makes it pass the checks.
READER_CHECKED = ["01-transformer", "02-tokenizer", "03-training", "04-quantization", "05-pruning", "06-distillation", "07-kv-cache", "08-serving", "09-putting-it-together", "10-formats", "11-real-model"]
# Lessons that run SmolLM2-135M-Instruct: skipped, saying how to install it, where its file is absent.
NEEDS_SMOLLM2 = {"11-real-model"}
CHECKED = [p for p in LESSONS if p.stem in READER_CHECKED]

MAX_NOTEBOOK_BYTES = 1_500_000  # a rendered notebook, figures included: the repository stays lean
MAX_PNG_BYTES = 250_000  # one figure


def _ids(paths):
    return [p.stem for p in paths]


def test_there_are_lessons():
    assert LESSONS, f"no lessons/NN-topic.py files under {ROOT / 'lessons'}"
    assert set(READER_CHECKED) <= {p.stem for p in LESSONS}, "READER_CHECKED names a lesson that does not exist"


# ---- the notebook is the lesson: same cells, lean outputs ------------------------------------


@pytest.mark.parametrize("lesson", LESSONS, ids=_ids(LESSONS))
def test_notebook_matches_lesson(lesson):
    """The committed notebook, outputs aside, is exactly what build_notebook makes from the lesson now."""
    nbformat = pytest.importorskip("nbformat")
    path = ROOT / "notebooks" / (lesson.stem + ".ipynb")
    assert path.is_file(), f"{path} is missing; run `python -m tinyinfer.lessons` in {ROOT}"
    committed = nbformat.read(path, as_version=4)
    built = build_notebook(lesson)
    stale = f"{path.name} is out of date with lessons/{lesson.name}; run `python -m tinyinfer.lessons`"
    assert [c.cell_type for c in committed.cells] == [c.cell_type for c in built.cells], stale
    assert [c.source for c in committed.cells] == [c.source for c in built.cells], stale
    assert notebook_text(strip_outputs(committed)) == notebook_text(built), f"{stale} (cell ids or metadata)"


@pytest.mark.parametrize("lesson", LESSONS, ids=_ids(LESSONS))
def test_notebook_outputs_are_lean(lesson):
    """Rendered outputs stay small: text capped per cell, figures as compressed PNGs, nothing else."""
    nbformat = pytest.importorskip("nbformat")
    path = ROOT / "notebooks" / (lesson.stem + ".ipynb")
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size:,} bytes"
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not cell.metadata, f"{path.name} cell {index}: metadata {dict(cell.metadata)} (timings?)"
        for out in cell.outputs:
            texts = [out.text] if out.output_type == "stream" else [out.get("data", {}).get("text/plain", "")]
            for text in texts:
                lines = text.splitlines()
                assert len(lines) <= MAX_OUTPUT_LINES + 2 and len(text) <= MAX_OUTPUT_CHARS + 200, \
                    f"{path.name} cell {index}: {len(lines)} lines, {len(text)} characters of output"
            data = out.get("data", {})
            assert set(data) <= set(KEPT_MIME_TYPES), f"{path.name} cell {index}: output types {sorted(data)}"
            if "image/png" in data:
                size = len(base64.b64decode(data["image/png"]))
                assert size <= MAX_PNG_BYTES, f"{path.name} cell {index}: a {size:,}-byte figure"


def test_regeneration_is_idempotent(tmp_path):
    """Building twice gives byte-identical files, and every committed notebook is up to date."""
    pytest.importorskip("nbformat")
    from tinyinfer.lessons import write_notebooks

    first = write_notebooks(ROOT / "lessons", tmp_path)
    contents = {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")}
    assert len(first) == len(LESSONS)
    assert write_notebooks(ROOT / "lessons", tmp_path) == []
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")} == contents
    stale = write_notebooks(ROOT / "lessons", ROOT / "notebooks", check=True)
    assert stale == [], f"out of date: {[p.name for p in stale]}; run `python -m tinyinfer.lessons`"


# ---- running them -------------------------------------------------------------------------------


def _skip_without_smollm2(stem: str):
    from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available

    if stem in NEEDS_SMOLLM2 and not smollm2_available():
        pytest.skip(f"{stem} runs SmolLM2-135M-Instruct, which is not installed: {SMOLLM2_INSTALL}")


@functools.lru_cache(maxsize=None)
def executed(stem: str):
    """Execute a lesson's notebook once per test session -> (notebook, seconds, figure records)."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _skip_without_smollm2(stem)
    path = ROOT / "notebooks" / (stem + ".ipynb")
    nb = strip_outputs(nbformat.read(path, as_version=4))
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"tinyinfer-test-{os.getpid()}-{stem}.figures.jsonl"
    try:
        seconds = execute_notebook(nb, ROOT, small=True, figure_report=report)  # raises, naming the cell
        figures = read_figure_report(report)
    finally:
        report.unlink(missing_ok=True)
    print(f"{path.name}: executed in {seconds:.1f} s (small settings)")
    return nb, seconds, figures


def _images(nb):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
            if "image/png" in out.get("data", {})]


@pytest.mark.parametrize("lesson", LESSONS, ids=_ids(LESSONS))
def test_notebook_executes(lesson):
    """Run the notebook top to bottom in a kernel: no error, and at least one figure drawn."""
    nb, _, _ = executed(lesson.stem)
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, f"{lesson.stem}: {errors[0].ename}: {errors[0].evalue}"
    assert _images(nb), f"{lesson.stem} drew no figure (no image/png output)"


@pytest.mark.parametrize("lesson", CHECKED, ids=_ids(CHECKED))
def test_figures_are_readable(lesson):
    """Every figure: labelled axes where there is data, a legend for several labelled lines, no
    legend over the data, no overlapping labels (tinyinfer/lessons.py: audit_figure)."""
    nb, _, figures = executed(lesson.stem)
    assert len(figures) == len(_images(nb)), \
        f"{lesson.stem}: {len(_images(nb))} figures in the outputs but {len(figures)} audited"
    problems = [p for figure in figures for p in figure["problems"]]
    assert not problems, f"{lesson.stem}:\n" + "\n".join(problems)


# ---- what a lesson says: references, exercises, solutions ------------------------------------


@pytest.mark.parametrize("lesson", CHECKED, ids=_ids(CHECKED))
def test_lesson_references_resolve(lesson):
    """Every `path: name` a lesson quotes exists and defines that name; every path it names exists."""
    problems = check_references(lesson, ROOT)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lesson", CHECKED, ids=_ids(CHECKED))
def test_lesson_has_no_internal_references(lesson):
    """No issue, ticket, planning file or run the reader cannot see."""
    found = internal_references(lesson.read_text(encoding="utf-8"), lesson.name)
    solution = SOLUTIONS / lesson.name
    if solution.is_file():
        found += internal_references(solution.read_text(encoding="utf-8"), f"solutions/{solution.name}")
    assert not found, "\n".join(found)


def _exercise_numbers(lesson) -> list[int]:
    """The numbers of the items under a lesson's '## Exercises' heading."""
    cells = parse_cells(lesson.read_text(encoding="utf-8"), str(lesson))
    text = "\n".join(source for kind, source in cells if kind == "markdown")
    _, _, exercises = text.partition("## Exercises")
    return [int(n) for n in re.findall(r"^(\d+)\. ", exercises, flags=re.M)]


@pytest.mark.parametrize("lesson", CHECKED, ids=_ids(CHECKED))
def test_every_exercise_has_a_worked_solution(lesson):
    """lessons/solutions/<lesson>.py defines exercise_N for each exercise N, and the lesson points to it."""
    numbers = _exercise_numbers(lesson)
    assert numbers, f"{lesson.name} has no numbered exercises under '## Exercises'"
    path = SOLUTIONS / lesson.name
    assert path.is_file(), f"{lesson.name}: no worked solutions at lessons/solutions/{lesson.name}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert defined >= {f"exercise_{n}" for n in numbers}, \
        f"lessons/solutions/{lesson.name} lacks {sorted({f'exercise_{n}' for n in numbers} - defined)}"
    assert f"lessons/solutions/{lesson.name}" in lesson.read_text(encoding="utf-8"), \
        f"{lesson.name} does not tell the reader where its solutions are"


SOLUTION_FILES = sorted(SOLUTIONS.glob("*.py")) if SOLUTIONS.is_dir() else []


@pytest.mark.parametrize("solution", SOLUTION_FILES, ids=_ids(SOLUTION_FILES))
def test_solution_runs(solution):
    """Each worked-solutions file runs on small settings from the repository root, every exercise."""
    _skip_without_smollm2(solution.stem)
    env = dict(os.environ, **EXECUTION_ENV, **SMALL_ENV)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(solution)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    seconds = time.perf_counter() - start
    print(f"solutions/{solution.name}: {seconds:.1f} s")
    assert result.returncode == 0, f"solutions/{solution.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "not yet" not in result.stdout, f"a worked solution fails its own check:\n{result.stdout[-3000:]}"
