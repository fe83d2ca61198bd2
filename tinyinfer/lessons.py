"""Lessons as plain text, notebooks generated from them, executed with their outputs.

A lesson is written as `lessons/NN-topic.py` in the "percent" format that jupytext reads:

    # %% [markdown]
    # # A title
    # Prose, one comment line per markdown line.

    # %%
    x = 1 + 1  # a code cell

Why text first: a .py file diffs, reviews and greps like code, and runs with plain `python` as a
smoke test; an .ipynb is JSON with outputs and ids in it. So the lesson is the source and
`notebooks/NN-topic.ipynb` is built from it with fixed cell ids, so the same lesson always gives
the same cells. The committed notebooks carry their outputs (text capped per cell, figures as
compressed PNGs), so a reader browsing the repository sees every figure without running anything:

    python -m tinyinfer.lessons                       # rebuild notebooks whose cells changed (their outputs go)
    python -m tinyinfer.lessons --execute             # run every lesson and save it with its outputs
    python -m tinyinfer.lessons --execute 07-kv-cache --small    # one lesson, on the tests' small settings
    python -m tinyinfer.lessons --check               # exit 1 if a notebook's cells differ from its lesson,
                                                      # or a lesson names code that does not exist

Two more rules, both jupytext's:
  * comment lines before the first `# %%` are a header for readers of the .py; they are dropped;
  * a line magic written as a comment in a code cell (`# %matplotlib inline`) is uncommented in the
    notebook, so the .py stays valid Python and the notebook still gets the magic.

While a notebook executes here, every figure it draws is inspected (install_figure_audit): axes
that show data need labelled axes, several labelled lines need a legend, and labels of different
axes must not overlap. tests/test_notebooks.py runs the same checks, and checks that each committed
notebook, outputs aside, is exactly what build_notebook makes from its lesson now.
"""
from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import copy
import io
import json
import os
import re
import sys
import time
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


def notebook_cells(nb) -> list[tuple[str, str]]:
    """[(cell_type, source), ...] of a notebook: what must agree with its lesson (outputs aside)."""
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def strip_outputs(nb):
    """A copy of nb without outputs or execution counts: equal to build_notebook's when up to date."""
    bare = copy.deepcopy(nb)
    for cell in bare.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return bare


def is_up_to_date(notebook_path, lesson_path) -> bool:
    """The notebook file, outputs aside, is byte for byte what the lesson builds now."""
    import nbformat

    path = Path(notebook_path)
    if not path.is_file():
        return False
    committed = nbformat.read(path, as_version=4)
    return notebook_text(strip_outputs(committed)) == notebook_text(build_notebook(lesson_path))


def write_notebooks(lessons_dir, notebooks_dir, check: bool = False, names=None) -> list[Path]:
    """Build notebooks_dir/NN-topic.ipynb for every lessons_dir/NN-topic.py whose cells changed.

    A notebook that is up to date is left alone, outputs and all. One whose lesson changed is
    rewritten without outputs: its old outputs belong to old code (run --execute to render it
    again). names: only these lessons ("07-kv-cache"). Returns the notebooks that were (with
    check=True: that would be) written, so an empty list means everything was up to date.
    """
    out_dir = Path(notebooks_dir)
    changed = []
    for lesson in select_lessons(lesson_files(lessons_dir), names):
        target = out_dir / (lesson.stem + ".ipynb")
        if is_up_to_date(target, lesson):
            continue
        changed.append(target)
        if not check:
            out_dir.mkdir(parents=True, exist_ok=True)
            target.write_text(notebook_text(build_notebook(lesson)), encoding="utf-8")
    return changed


def select_lessons(lessons: list[Path], names=None) -> list[Path]:
    """The lessons named ("07-kv-cache" or "07-kv-cache.py"), or all of them when names is empty."""
    if not names:
        return list(lessons)
    known = {p.stem: p for p in lessons} | {p.name: p for p in lessons}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"no such lesson(s): {', '.join(unknown)}; known: {', '.join(p.stem for p in lessons)}")
    return [p for p in lessons if p.stem in names or p.name in names]


# ---- executing a notebook, and keeping its outputs lean ---------------------------------------

# The environment a lesson runs in, here and in the tests. Agg: no GUI window, ever (the lessons
# switch to the inline backend with %matplotlib inline, which is what puts PNGs in the outputs).
# One BLAS thread: the lessons' matrices are small, and extra threads on a shared machine only slow
# them down.
EXECUTION_ENV = {"MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                 "MKL_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
SMALL_ENV = {"TINYINFER_LESSON_SMALL": "1"}  # the tests' small settings (each lesson reads it)
FIGURE_REPORT_ENV = "TINYINFER_FIGURE_REPORT"  # where install_figure_audit writes, one JSON line a figure
CELL_TIMEOUT = 1800  # seconds per cell: full settings train small models in some cells
MAX_OUTPUT_LINES = 40  # a cell's text output beyond this is cut in the middle
MAX_OUTPUT_CHARS = 5000
KEPT_MIME_TYPES = ("image/png", "text/plain")  # no HTML, widgets or duplicates of a figure


def kernel_manager(root):
    """A KernelManager whose "python3" kernel is *this* interpreter, auditing figures as it runs.

    nbclient normally looks the kernel up by name among the installed kernelspecs, and a
    "python3" spec in the user's Jupyter folders (another Python, another venv) would win over
    the one ipykernel installs into this venv. Pinning argv to sys.executable runs the code under
    test, whatever kernels the machine has. The kernel's exec_lines install the figure audit
    before the first cell, without a cell (or an execution count) of its own.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    audit = "__import__('tinyinfer.lessons').lessons.install_figure_audit()"

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                                    f"--IPKernelApp.exec_lines={audit}"],
                              display_name=f"Python {sys.version_info.major}.{sys.version_info.minor}",
                              language="python", resource_dir=str(root))

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())


@contextlib.contextmanager
def _environment(values: dict):
    """Set environment variables for the duration (the kernel inherits them), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute_notebook(nb, root, small: bool, figure_report=None, timeout: int = CELL_TIMEOUT) -> float:
    """Run nb top to bottom in a fresh kernel started in root (outputs land in nb) -> seconds.

    Raises nbclient's CellExecutionError, naming the cell, if a cell fails. figure_report: a file
    that receives one JSON line per figure drawn (see audit_figure).
    """
    import nbclient

    env = dict(EXECUTION_ENV, **(SMALL_ENV if small else {"TINYINFER_LESSON_SMALL": "0"}))
    if figure_report is not None:
        Path(figure_report).write_text("")
        env[FIGURE_REPORT_ENV] = str(figure_report)
    km = kernel_manager(root)
    client = nbclient.NotebookClient(nb, km=km, kernel_name="python3", timeout=timeout, record_timing=False,
                                     resources={"metadata": {"path": str(root)}})  # cwd: models/ is found
    start = time.perf_counter()
    with _environment(env):
        try:
            client.execute()
        finally:
            if km.has_kernel:  # nbclient leaves a kernel it did not create running; stop ours now
                km.shutdown_kernel(now=True)
    return time.perf_counter() - start


def tidy_outputs(nb):
    """Make an executed notebook lean and stable: capped text, compressed PNGs, fixed metadata."""
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata = {}
        outputs = []
        for out in cell.outputs:
            if out.output_type == "stream" and outputs and outputs[-1].output_type == "stream" \
                    and outputs[-1].name == out.name:
                outputs[-1].text += out.text  # one stream output per run of prints
                continue
            if out.output_type in ("display_data", "execute_result"):
                out.data = {k: v for k, v in out.data.items() if k in KEPT_MIME_TYPES}
                out.metadata = {k: v for k, v in out.get("metadata", {}).items() if k in out.data}
                if "image/png" in out.data:
                    out.data.pop("text/plain", None)  # "<Figure size 640x480 with 1 Axes>" says nothing
                    out.data["image/png"] = compress_png(out.data["image/png"])
                if not out.data:
                    continue
            outputs.append(out)
        for out in outputs:
            if out.output_type == "stream":
                out.text = cap_text(out.text)
            elif "text/plain" in out.get("data", {}):
                out.data["text/plain"] = cap_text(out.data["text/plain"])
        cell.outputs = outputs
    return nb


def cap_text(text: str, max_lines: int = MAX_OUTPUT_LINES, max_chars: int = MAX_OUTPUT_CHARS) -> str:
    """Keep the head and tail of a long output, and say what was cut and how to see it."""
    lines = text.splitlines(keepends=True)
    if len(lines) <= max_lines and len(text) <= max_chars:
        return text
    head, tail = lines[: max_lines // 2], lines[-(max_lines // 4):]
    cut = len(lines) - len(head) - len(tail)
    body = "".join(head)[: max_chars // 2] + f"\n[... {cut} lines cut here; run the notebook to see them all ...]\n"
    return body + "".join(tail)[-(max_chars // 4):]


def compress_png(data: str) -> str:
    """A base64 PNG re-encoded with a 256-colour palette when that is smaller (plots have few colours)."""
    from PIL import Image

    raw = base64.b64decode(data)
    image = Image.open(io.BytesIO(raw))
    rgb = image.convert("RGB")  # the figures are opaque: their background is white
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    small = buffer.getvalue()
    return base64.b64encode(small if len(small) < len(raw) else raw).decode("ascii")


def render_lesson(lesson_path, notebooks_dir, root, small: bool = False) -> dict:
    """Build, execute, tidy and write one lesson's notebook -> {"seconds", "figures", "problems"}."""
    import nbformat

    lesson_path = Path(lesson_path)
    nb = build_notebook(lesson_path)
    report = Path(notebooks_dir) / f".{lesson_path.stem}.figures.jsonl"
    try:
        seconds = execute_notebook(nb, root, small, figure_report=report)
        figures = read_figure_report(report)
    finally:
        report.unlink(missing_ok=True)
    tidy_outputs(nb)
    nbformat.validate(nb)
    target = Path(notebooks_dir) / (lesson_path.stem + ".ipynb")
    target.write_text(notebook_text(nb), encoding="utf-8")
    problems = [p for figure in figures for p in figure["problems"]]
    return {"path": target, "seconds": seconds, "figures": len(figures), "problems": problems}


# ---- the figure audit: labelled axes, legends, no overlapping text ----------------------------


def install_figure_audit():
    """In a kernel: record every figure rendered to an image into $TINYINFER_FIGURE_REPORT.

    Nothing happens when the variable is not set. matplotlib is not imported here (that would
    import NumPy before a lesson pins its BLAS threads); the audit hooks in before each cell runs,
    once the lesson has imported matplotlib itself.
    """
    path = os.environ.get(FIGURE_REPORT_ENV)
    if not path:
        return
    from IPython import get_ipython

    shell = get_ipython()

    def hook(*_):
        if "matplotlib.backend_bases" in sys.modules:
            _patch_print_figure(path, shell)

    shell.events.register("pre_run_cell", hook)
    shell.events.register("post_run_cell", hook)


def _patch_print_figure(path, shell):
    from matplotlib.backend_bases import FigureCanvasBase

    if getattr(FigureCanvasBase.print_figure, "_audited", False):
        return
    original = FigureCanvasBase.print_figure

    def print_figure(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        try:
            record = audit_figure(self.figure)
        except Exception as error:  # noqa: BLE001 - a bug in the audit must show, not kill the lesson
            record = {"title": "?", "axes": [], "problems": [f"the figure audit failed: {error!r}"]}
        record["cell"] = shell.execution_count
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return result

    print_figure._audited = True
    FigureCanvasBase.print_figure = print_figure


def read_figure_report(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _labelled(artist) -> bool:
    label = artist.get_label()
    return bool(label) and not str(label).startswith("_")


def _shows_data(ax) -> bool:
    return any(a.get_visible() for a in (*ax.lines, *ax.collections, *ax.patches, *ax.images))


def _tick_texts(axis):
    """The tick labels a reader sees: major ticks inside the view, drawn, with text."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(lo), abs(hi), 1.0)
    return [label for tick in axis.get_major_ticks() if lo - slack <= tick.get_loc() <= hi + slack
            for label in (tick.label1, tick.label2) if label.get_visible() and label.get_text().strip()]


def _data_points(ax, renderer):
    """Display coordinates of what an axes plots: line vertices (densified) and scatter offsets."""
    import numpy as np

    points = []
    for line in ax.lines:
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(line.get_xydata())  # (n, 2) pixels
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) > 1 and line.get_linestyle() not in ("None", "none", "", " "):
            steps = np.linspace(0, 1, 8, endpoint=False)[:, None, None]  # 8 samples per segment
            xy = (xy[:-1] + steps * (xy[1:] - xy[:-1])).reshape(-1, 2)
        points.append(xy)
    for collection in ax.collections:
        offsets = collection.get_offsets()
        if collection.get_visible() and len(offsets) and collection.get_offset_transform() is not None:
            points.append(collection.get_offset_transform().transform(offsets))
    return np.concatenate(points) if points else np.zeros((0, 2))


def audit_figure(fig) -> dict:
    """What a reader needs from a figure, checked -> {"title", "axes": [...], "problems": [...]}.

    * every axis with tick labels, on axes that show data, has a label (a colour bar's too): an
      axis without a label leaves the reader guessing the quantity and its unit;
    * axes with two or more labelled artists have a legend (on the axes or the figure);
    * a legend inside the axes covers at most 2% of the plotted points and line samples;
    * texts of different axes (titles, axis labels, tick labels, legends) do not overlap, nor do
      neighbouring tick labels of one axis.
    """
    fig.draw_without_rendering()  # lay the figure out as it was saved (tight or constrained layout)
    renderer = fig.canvas.get_renderer()
    suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
    title = suptitle or next((ax.get_title() for ax in fig.axes if ax.get_title()), "untitled")
    problems, axes_info, texts = [], [], []  # texts: (owner, what, bbox)
    for number, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        name = f"figure '{title}', axes {number}" + (f" ('{ax.get_title()}')" if ax.get_title() else "")
        info = {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                "shows_data": _shows_data(ax), "legend": ax.get_legend() is not None}
        labelled = [a for a in (*ax.lines, *ax.collections, *ax.containers, *ax.patches, *ax.images)
                    if _labelled(a)]
        info["labelled_artists"] = len(labelled)
        axes_info.append(info)
        if info["shows_data"]:
            for letter, axis, label in (("x", ax.xaxis, info["xlabel"]), ("y", ax.yaxis, info["ylabel"])):
                if _tick_texts(axis) and not label.strip():
                    problems.append(f"{name}: the {letter} axis has tick labels but no axis label")
        legend = ax.get_legend()
        if len(labelled) >= 2 and legend is None and not fig.legends:
            problems.append(f"{name}: {len(labelled)} labelled artists but no legend")
        if legend is not None and legend.get_visible():
            box = legend.get_window_extent(renderer)
            center = ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
            inside_axes = ax.get_window_extent(renderer).contains(*center)  # else: placed outside
            points = _data_points(ax, renderer)
            if inside_axes and len(points):
                covered = ((points[:, 0] > box.x0) & (points[:, 0] < box.x1)
                           & (points[:, 1] > box.y0) & (points[:, 1] < box.y1)).mean()
                if covered > 0.02:
                    problems.append(f"{name}: the legend covers {covered:.0%} of the plotted points "
                                    f"(try loc='best', or bbox_to_anchor outside the axes)")
            texts.append((number, "legend", box))
        for what, artist in (("title", ax.title), ("x label", ax.xaxis.label), ("y label", ax.yaxis.label)):
            if artist.get_visible() and artist.get_text().strip():
                texts.append((number, what, artist.get_window_extent(renderer)))
        for letter, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            ticks = _tick_texts(axis)
            boxes = [t.get_window_extent(renderer) for t in ticks]
            texts.extend((number, f"{letter} tick labels", b) for b in boxes)
            for (a, ta), (b, tb) in zip(zip(boxes, ticks), zip(boxes[1:], ticks[1:])):
                if _overlap(a, b) > 0.2:
                    problems.append(f"{name}: {letter} tick labels {ta.get_text()!r} and {tb.get_text()!r} overlap")
                    break
    if suptitle:
        texts.append(("figure", "suptitle", fig._suptitle.get_window_extent(renderer)))
    reported = set()
    for i, (owner_a, what_a, a) in enumerate(texts):
        for owner_b, what_b, b in texts[i + 1:]:
            if owner_a != owner_b and _overlap(a, b) > 0.2 and (owner_a, what_a, owner_b, what_b) not in reported:
                reported.add((owner_a, what_a, owner_b, what_b))
                problems.append(f"figure '{title}': the {what_a} of axes {owner_a} overlaps the {what_b} "
                                f"of axes {owner_b} (call fig.tight_layout() or give the figure more room)")
    return {"title": title, "axes": axes_info, "problems": problems}


def _overlap(a, b) -> float:
    """Area shared by two boxes (pixels), as a share of the smaller one's area."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min(a.width * a.height, b.width * b.height)
    return width * height / smaller if smaller > 0 else 0.0


# ---- code a lesson names must exist ------------------------------------------------------------

# `tinyinfer/model.py: forward`, `tinyinfer/engine/sequence.py: Sequence.block_hash`,
# `paged_attention.py: gather_blocks`, `tinyinfer/gguf.py: write_gguf, read_gguf`
_CODE_SPAN = re.compile(r"`([^`]+)`")
_FILE_REFERENCE = re.compile(r"^\s*([\w./-]*\w\.(?:py|md|json|toml|txt))\s*(?::\s*(.*?))?\s*$", re.S)
# a path in running text: tests/export_README.md, benchmarks/distill.md, models/student/
_BARE_PATH = re.compile(r"(?<![\w/.-])((?:tinyinfer|tests|lessons|notebooks|benchmarks|models)/[\w/.-]*[\w/])")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def _drop_brackets(text: str) -> str:
    """forward(params, config, ...) -> forward; PRESETS["student"] -> PRESETS."""
    previous = None
    while previous != text:
        previous, text = text, re.sub(r"\([^()]*\)|\[[^\[\]]*\]", "", text)
    return text


def lesson_references(text: str) -> list[tuple[str, list[str]]]:
    """[(path, [names])] named in a lesson: code spans `path: name, name` and paths in the text."""
    references = []
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # fenced blocks would pair their ``` with other spans
    for span in _CODE_SPAN.findall(text):
        span = re.sub(r"\s*\n#?\s*", " ", span)  # a span broken over two comment lines
        match = _FILE_REFERENCE.match(span)
        if not match:
            continue
        path, names = match.group(1), match.group(2)
        names = [n.strip() for n in _drop_brackets(names).split(",")] if names else []
        references.append((path, [n for n in names if n]))
    quoted = {path for path, _ in references}
    references += [(path, []) for path in _BARE_PATH.findall(text) if path not in quoted]
    unique = []
    for reference in references:
        if reference not in unique:
            unique.append(reference)
    return unique


def defined_names(source: str) -> dict[str, set[str]]:
    """{top-level name: names defined in it (a class's methods and attributes; else empty)}."""
    tree = ast.parse(source)
    found: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    members.update(t.id for t in item.targets if isinstance(t, ast.Name))
            found[node.name] = members
        elif isinstance(node, ast.Assign):
            found.update((t.id, set()) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = set()
    return found


def _defines(path: Path, name: str) -> bool:
    names = defined_names(path.read_text(encoding="utf-8"))
    head, _, member = name.partition(".")
    return head in names and (not member or member in names[head])


def check_references(lesson_path, root) -> list[str]:
    """Every file a lesson names exists, and every `path: name` is defined there -> problems."""
    root = Path(root)
    text = Path(lesson_path).read_text(encoding="utf-8")
    text = "\n".join(source for _, source in parse_cells(text, str(lesson_path)))  # markdown uncommented
    problems = []
    for path, names in lesson_references(text):
        where = f"{Path(lesson_path).name}: `{path}" + (f": {', '.join(names)}`" if names else "`")
        if "/" in path:
            candidates = [root / path] if (root / path).exists() else []
        elif names:  # "paged_attention.py: gather_blocks": a module named by its file name alone
            candidates = sorted((root / "tinyinfer").rglob(path))
        else:  # "tokenizer.json", "convert_hf_to_gguf.py": a kind of file, or another project's
            continue
        if not candidates:
            problems.append(f"{where} names a file that does not exist")
            continue
        for name in names:
            if not _IDENTIFIER.match(name):
                problems.append(f"{where}: {name!r} is not a name of a function, class or constant")
                continue
            hits = [c for c in candidates if c.suffix == ".py" and c.is_file() and _defines(c, name)]
            if len(hits) != 1:
                problems.append(f"{where}: {name} is {'defined in none' if not hits else 'ambiguous among'} "
                                f"of {', '.join(str(c.relative_to(root)) for c in hits or candidates)}")
    return problems


# ---- no references a reader cannot follow ----------------------------------------------------

# Phrases that point outside what a reader has: the project's issue tracker, its planning notes,
# runs nobody can reproduce. A lesson or docstring says what it means instead ("the claim we test",
# "measured below").
INTERNAL_REFERENCES = {
    r"\bTARGETS\.md\b": "a planning file that is not in the repository",
    r"\b(?:the|this|that) issue\b|\bissue\s*#?\d+|\bissue's\b|\bissues/\d+": "an issue in a tracker",
    r"\btickets?\b": "an entry in a tracker",
    r"\bcalibration runs?\b": "a run the reader cannot see or repeat",
    r"\bBRIEF\.md\b|/work/(?:notes|shared)\b": "notes outside the repository",
}


def internal_references(text: str, source: str = "text") -> list[str]:
    """["source:line: 'phrase' (why)", ...] for every phrase of INTERNAL_REFERENCES in text."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, why in INTERNAL_REFERENCES.items():
            for match in re.finditer(pattern, line, flags=re.I):
                found.append(f"{source}:{number}: {match.group(0)!r} refers to {why}")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinyinfer.lessons",
                                     description="Build notebooks/NN-topic.ipynb from lessons/NN-topic.py, "
                                                 "and execute them with their outputs.")
    parser.add_argument("names", nargs="*", help="only these lessons (e.g. 07-kv-cache; default: all)")
    parser.add_argument("--lessons", default="lessons", help="folder of lesson sources (default: lessons)")
    parser.add_argument("--notebooks", default="notebooks", help="folder of notebooks (default: notebooks)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook is out of date, or a lesson names missing code or "
                             "refers to things a reader cannot see")
    parser.add_argument("--execute", action="store_true", help="run the lessons and save them with their outputs")
    parser.add_argument("--small", action="store_true", help="with --execute: the tests' small settings")
    args = parser.parse_args(argv)
    try:
        lessons = select_lessons(lesson_files(args.lessons), args.names)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    root = Path(args.lessons).resolve().parent
    if args.check:
        stale = write_notebooks(args.lessons, args.notebooks, check=True, names=args.names)
        problems = [p for lesson in lessons for p in check_references(lesson, root)]
        problems += [p for lesson in lessons
                     for p in internal_references(lesson.read_text(encoding="utf-8"), lesson.name)]
        for path in stale:
            print(f"out of date: {path}")
        for problem in problems:
            print(f"problem: {problem}")
        return 1 if stale or problems else 0
    if args.execute:
        failed = 0
        for lesson in lessons:
            print(f"executing {lesson.name} ({'small' if args.small else 'full'} settings) ...", flush=True)
            result = render_lesson(lesson, args.notebooks, root, small=args.small)
            size = result["path"].stat().st_size / 1e3
            print(f"wrote {result['path']} in {result['seconds']:.0f} s: {result['figures']} figures, {size:.0f} kB")
            for problem in result["problems"]:
                print(f"   figure problem: {problem}")
            failed += bool(result["problems"])
        return 1 if failed else 0
    changed = write_notebooks(args.lessons, args.notebooks, names=args.names)
    for path in changed:
        print(f"wrote {path} (without outputs: render it with --execute)")
    print(f"{len(lessons)} lesson(s), {len(changed)} notebook(s) written, {len(lessons) - len(changed)} up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
