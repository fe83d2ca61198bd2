"""Lessons as plain text, notebooks generated from them.

A lesson is written as `lessons/NN-topic.py` in the "percent" format that jupytext reads:

    # %% [markdown]
    # # A title
    # Prose, one comment line per markdown line.

    # %%
    x = 1 + 1  # a code cell

Why text first: a .py file diffs, reviews and greps like code, and runs with plain `python` as a
smoke test; an .ipynb is JSON with outputs and ids in it. So the lesson is the source and
`notebooks/NN-topic.ipynb` is built from it, with no outputs and fixed cell ids, so the same
lesson always gives the same bytes and git diffs stay clean.

    python -m tinyinfer.lessons            # regenerate notebooks/ from lessons/ (run in the repo root)
    python -m tinyinfer.lessons --check    # exit 1 if a notebook is out of date

Two more rules, both jupytext's:
  * comment lines before the first `# %%` are a header for readers of the .py; they are dropped;
  * a line magic written as a comment in a code cell (`# %matplotlib inline`) is uncommented in the
    notebook, so the .py stays valid Python and the notebook still gets the magic.

tests/test_notebooks.py checks that every committed notebook equals what build_notebook makes now,
and executes each one.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

LESSON_NAME = re.compile(r"^\d\d-[A-Za-z0-9_-]+\.py$")  # "01-transformer.py"
_CELL_MARKER = re.compile(r"^# %%(?!%)(.*)$")  # "# %%", "# %% [markdown]", "# %% a title"
# Only these magics are uncommented, so an ordinary comment such as "# %s is a format" never is.
_COMMENTED_MAGIC = re.compile(r"^# (%(?:matplotlib|time|timeit|load_ext|autoreload)\b.*)$")

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def parse_cells(text: str, source: str = "lesson") -> list[tuple[str, str]]:
    """Percent-format text -> [(cell_type, cell_source), ...], cell_type "markdown" or "code"."""
    cells: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        marker = _CELL_MARKER.match(line)
        if marker:
            options = marker.group(1).strip()
            cells.append(("markdown" if options.startswith("[markdown]") else "code", []))
            continue
        if not cells:  # the header, before the first cell
            if line.strip() and not line.startswith("#"):
                raise ValueError(f"{source}:{number}: code before the first '# %%' cell marker; "
                                 f"start the lesson with '# %% [markdown]' or '# %%'")
            continue
        cells[-1][1].append(line)

    out = []
    for kind, lines in cells:
        lines = _strip_blank_edges(lines)
        if kind == "markdown":
            lines = [_uncomment_markdown(line, source) for line in lines]
        else:
            lines = [_uncomment_magic(line) for line in lines]
        if lines:  # an empty cell carries nothing; dropping it keeps notebooks tidy
            out.append((kind, "\n".join(lines)))
    return out


def _strip_blank_edges(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _uncomment_markdown(line: str, source: str) -> str:
    if line == "#" or not line.strip():
        return ""
    if line.startswith("# "):
        return line[2:]
    raise ValueError(f"{source}: a markdown line must start with '# ' (or be a lone '#'), got {line!r}")


def _uncomment_magic(line: str) -> str:
    magic = _COMMENTED_MAGIC.match(line)
    return magic.group(1) if magic else line


def build_notebook(lesson_path):
    """The nbformat-4 notebook of one lesson file: no outputs, deterministic cell ids."""
    import nbformat  # a dev dependency: only needed to build notebooks, not to use tinyinfer

    path = Path(lesson_path)
    cells = parse_cells(path.read_text(encoding="utf-8"), source=str(path))
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for index, (kind, text) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        # nbformat gives every new cell a random id; a fixed one keeps regenerated files identical.
        cell.id = f"cell-{index:03d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def notebook_text(nb) -> str:
    """The exact text written to disk (nbformat's own JSON layout, with a final newline)."""
    import nbformat

    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"  # what nbformat.write puts in a file


def repo_root() -> Path:
    """The repository folder, for a lesson's paths (models/, benchmarks/): a notebook runs from the
    root (the tests execute it there) or from notebooks/ (Jupyter's default)."""
    cwd = Path.cwd()
    for folder in (cwd, cwd.parent):
        if (folder / "models").is_dir() and (folder / "lessons").is_dir():
            return folder
    raise FileNotFoundError(f"run the lesson from the tinyinfer repository or its notebooks/ folder; "
                            f"no models/ and lessons/ in {cwd} or its parent")


def lesson_files(lessons_dir) -> list[Path]:
    """The NN-topic.py files of a lessons folder, in order."""
    folder = Path(lessons_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"lessons folder not found: {folder.resolve()} "
                                f"(run from the repository root, or pass --lessons)")
    return sorted(p for p in folder.iterdir() if LESSON_NAME.match(p.name))


def write_notebooks(lessons_dir, notebooks_dir, check: bool = False) -> list[Path]:
    """Build notebooks_dir/NN-topic.ipynb for every lessons_dir/NN-topic.py.

    Files are only rewritten when their text changes. Returns the notebooks that were (with
    check=True: that would be) written, so an empty list means everything was up to date.
    """
    out_dir = Path(notebooks_dir)
    changed = []
    for lesson in lesson_files(lessons_dir):
        target = out_dir / (lesson.stem + ".ipynb")
        text = notebook_text(build_notebook(lesson))
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        changed.append(target)
        if not check:
            out_dir.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinyinfer.lessons",
                                     description="Regenerate notebooks/NN-topic.ipynb from lessons/NN-topic.py.")
    parser.add_argument("--lessons", default="lessons", help="folder of lesson sources (default: lessons)")
    parser.add_argument("--notebooks", default="notebooks", help="folder of notebooks (default: notebooks)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook is out of date")
    args = parser.parse_args(argv)
    changed = write_notebooks(args.lessons, args.notebooks, check=args.check)
    total = len(lesson_files(args.lessons))
    if args.check:
        for path in changed:
            print(f"out of date: {path}")
        return 1 if changed else 0
    for path in changed:
        print(f"wrote {path}")
    print(f"{total} lesson(s), {len(changed)} notebook(s) written, {total - len(changed)} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
