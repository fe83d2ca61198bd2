"""The lessons: every notebook matches its lesson source, and every notebook runs.

Lessons are written as lessons/NN-topic.py and turned into notebooks/NN-topic.ipynb by
tinyinfer/lessons.py (`python -m tinyinfer.lessons`). These tests keep the two from drifting and
execute each notebook in a real Jupyter kernel on small settings (TINYINFER_LESSON_SMALL=1).

    pytest tests/test_notebooks.py            # all of it (well under a minute on small settings)
    pytest -k "not executes"                  # the whole suite without running notebooks

No custom marker on purpose: pytest calls pytest_configure only for conftest.py files and plugins,
never for a test module, so a marker cannot be registered from here, and an unregistered one warns
(or fails under --strict-markers). `-k "not executes"` selects the same tests a marker would.
"""
import sys
import time
from pathlib import Path

import pytest

from tinyinfer.lessons import lesson_files

ROOT = Path(__file__).resolve().parents[1]
LESSONS = lesson_files(ROOT / "lessons")  # lessons/NN-topic.py, in order
CELL_TIMEOUT = 300  # seconds per cell; on small settings a whole notebook takes well under a minute


def _lesson_ids():
    return [p.stem for p in LESSONS]


def test_there_are_lessons():
    assert LESSONS, f"no lessons/NN-topic.py files under {ROOT / 'lessons'}"


@pytest.mark.parametrize("lesson", LESSONS, ids=_lesson_ids())
def test_notebook_matches_lesson(lesson):
    """The committed notebook is what build_notebook makes from the lesson now (no drift, no outputs)."""
    nbformat = pytest.importorskip("nbformat")
    from tinyinfer.lessons import build_notebook

    path = ROOT / "notebooks" / (lesson.stem + ".ipynb")
    assert path.is_file(), f"{path} is missing; run `python -m tinyinfer.lessons` in {ROOT}"
    committed = nbformat.read(path, as_version=4)
    built = build_notebook(lesson)
    stale = f"{path.name} is out of date with lessons/{lesson.name}; run `python -m tinyinfer.lessons`"
    assert [c.cell_type for c in committed.cells] == [c.cell_type for c in built.cells], stale
    assert [c.source for c in committed.cells] == [c.source for c in built.cells], stale
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: committed with outputs"


def test_regeneration_is_idempotent(tmp_path):
    """Building twice gives byte-identical files, so regenerating never makes a git diff by itself."""
    pytest.importorskip("nbformat")
    from tinyinfer.lessons import write_notebooks

    first = write_notebooks(ROOT / "lessons", tmp_path)
    contents = {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")}
    assert len(first) == len(LESSONS)
    assert write_notebooks(ROOT / "lessons", tmp_path) == []
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")} == contents
    for name, data in contents.items():  # and they equal the committed ones
        assert (ROOT / "notebooks" / name).read_bytes() == data, f"notebooks/{name} differs from a fresh build"


def _kernel_manager():
    """A KernelManager whose "python3" kernel is *this* interpreter.

    nbclient normally looks the kernel up by name among the installed kernelspecs, and a
    "python3" spec in the user's Jupyter folders (another Python, another venv) would win over
    the one ipykernel installs into this venv. Pinning argv to sys.executable makes the test run
    the code under test, whatever kernels the machine has.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (tests)",
                              language="python", resource_dir=str(ROOT))

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())


@pytest.mark.parametrize("lesson", LESSONS, ids=_lesson_ids())
def test_notebook_executes(lesson, monkeypatch):
    """Run the notebook top to bottom in a kernel: no error, and at least one figure drawn."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    # The kernel inherits this environment. Agg: no GUI window, ever (the lessons switch to the
    # inline backend with %matplotlib inline, which is what puts PNGs in the outputs). One BLAS
    # thread: these matrices are tiny, and extra threads on a shared machine only slow them down.
    for name, value in {"TINYINFER_LESSON_SMALL": "1", "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1",
                        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}.items():
        monkeypatch.setenv(name, value)
    path = ROOT / "notebooks" / (lesson.stem + ".ipynb")
    nb = nbformat.read(path, as_version=4)
    km = _kernel_manager()
    client = nbclient.NotebookClient(nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(ROOT)}})  # cwd: models/ is found
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    finally:
        if km.has_kernel:  # nbclient leaves a kernel it did not create running; stop ours now
            km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in {seconds:.1f} s")

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{path.name} drew no figure (no image/png output)"

