"""The embedded corpus: real text that every Python install already has, no download.

Lesson: lessons/03-training.py

Two sources, both written by the Python developers (none of it by this project):

* the standard library's own modules (`Lib/**/*.py`), without their test suites, IDLE's tests,
  site-packages, and the generated codec tables of `encodings/`;
* `pydoc_data.topics`: the language reference and help topics that `help()` shows.

On CPython 3.11 that is about 560 modules and 79 topics, roughly 10 MB of text. The split into
training and held-out (validation) sets is by *document*, decided by a CRC32 of the document's
name, so it is the same on every machine and never leaks one file into both halves. The corpus
depends on the Python version: figures in model cards name the version they were measured on.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VAL_PERCENT = 5  # documents whose crc32(name) % 100 < 5 are held out
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "ensurepip"}


@dataclass(frozen=True)
class Document:
    name: str  # "stdlib/json/decoder.py" or "pydoc/topic/assert"
    text: str

    @property
    def split(self) -> str:
        return "val" if zlib.crc32(self.name.encode()) % 100 < VAL_PERCENT else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_excluded(rel: Path) -> bool:
    parts = rel.parts
    return (any(p in _EXCLUDED_DIRS for p in parts[:-1]) or parts[-1].startswith("test_")
            or rel.as_posix() == "pydoc_data/topics.py")


def documents(max_docs: int | None = None) -> list[Document]:
    """Every document of the corpus, sorted by name (deterministic)."""
    root = stdlib_root()
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _is_excluded(rel):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Document("stdlib/" + rel.as_posix(), text))
    from pydoc_data.topics import topics

    for key in sorted(topics):
        docs.append(Document("pydoc/topic/" + key, topics[key]))
    docs.sort(key=lambda d: d.name)
    return docs[:max_docs] if max_docs else docs


def split_documents(docs=None) -> dict[str, list[Document]]:
    docs = documents() if docs is None else docs
    return {"train": [d for d in docs if d.split == "train"], "val": [d for d in docs if d.split == "val"]}


def describe() -> dict:
    """Size and provenance, for model cards and the README."""
    parts = split_documents()
    return {
        "python": sys.version.split()[0],
        "stdlib": str(stdlib_root()),
        "documents": {k: len(v) for k, v in parts.items()},
        "characters": {k: sum(len(d.text) for d in v) for k, v in parts.items()},
        "bytes": {k: sum(len(d.text.encode()) for d in v) for k, v in parts.items()},
    }


def cache_dir() -> Path:
    path = Path(os.environ.get("TINYINFER_CACHE", Path.home() / ".cache" / "tinyinfer"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def token_stream(tokenizer, split: str, max_docs: int | None = None, progress: bool = True) -> np.ndarray:
    """One split tokenized as a single uint16/int32 stream, documents separated by end-of-text.

    Encoding 10 MB of text in pure Python takes a minute, so the result is cached on disk under a
    key made of the tokenizer's vocabulary and merges, the document names and sizes, and the split.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    docs = split_documents(documents(max_docs))[split]
    key = hashlib.sha256()
    key.update(json.dumps(tokenizer.to_dict(), sort_keys=True).encode())
    for d in docs:
        key.update(f"{d.name}:{len(d.text)}\n".encode())
    path = cache_dir() / f"tokens-{split}-{key.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)  # never unpickle: plain arrays only
    eot = tokenizer.eos_id
    if eot is None:
        raise ValueError("the tokenizer has no <|endoftext|> token to separate documents")
    from tqdm import tqdm

    ids = []
    for d in tqdm(docs, desc=f"tokenizing {split}", disable=not progress, unit="doc"):
        ids.extend(tokenizer.encode(d.text))
        ids.append(eot)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    arr = np.asarray(ids, dtype=dtype)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # two processes filling the cache never share a file
    np.save(tmp, arr)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache behind
    return arr
