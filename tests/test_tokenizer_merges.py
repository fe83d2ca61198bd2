"""Tests for tinyinfer/tokenizer/merges.py: the Numba merge kernel agrees with its Python twin.

The kernel (merge_kernel.py) runs the same heap-of-(rank, position) loop as apply_merges with a
sorted key array instead of a dict and an int64 heap instead of tuples. Checked on random id
sequences of awkward lengths (0, 1, 2, odd, far past the heap's first growth), on a trained
vocabulary and on a deliberately odd merge list where merge order matters.
"""
from __future__ import annotations

import inspect
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyinfer.tokenizer import Tokenizer, bytes_to_unicode
from tinyinfer.tokenizer.merges import LONG_PIECE, apply_merges, apply_merges_kernel

SETTINGS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train([inspect.getsource(json)], 600, progress=False)


@pytest.fixture(scope="module")
def odd() -> Tokenizer:
    """Merges [("bc","b"), ("b","c")]: a pair made by a merge outranks the rest of that merge's pairs."""
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    vocab.update({"bc": 256, "bcb": 257})
    return Tokenizer(vocab, [("bc", "b"), ("b", "c")])


def byte_ids(tok: Tokenizer, data: bytes) -> list[int]:
    return [tok._byte_ids[b] for b in data]


@SETTINGS
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                      st.sampled_from([b"", b"a", b"ab", b" " * 3, b" " * 1001, b"bcbc" * 77, b"\n" * 257])))
def test_kernel_matches_python_twin(trained, odd, data):
    for tok in (trained, odd):
        ids = byte_ids(tok, data)
        assert apply_merges_kernel(ids, tok._merges).tolist() == apply_merges(ids, tok._merges.pairs)


@SETTINGS
@given(ids=st.lists(st.integers(0, 599), max_size=200))
def test_kernel_matches_on_any_ids(trained, ids):
    """Not only byte sequences: any ids, merged ones included (a cached result fed back in)."""
    assert apply_merges_kernel(ids, trained._merges).tolist() == apply_merges(ids, trained._merges.pairs)


def test_odd_merge_order(odd):
    ids = byte_ids(odd, b"bcbc")
    assert apply_merges(ids, odd._merges.pairs) == apply_merges_kernel(ids, odd._merges).tolist() == [257, odd._byte_ids[ord("c")]]


def test_long_pretokens_use_the_kernel_and_agree(trained):
    """A pre-token of LONG_PIECE bytes or more is merged by the kernel inside encode."""
    for text in (" " * 5000, "x" * (LONG_PIECE + 1), "ab" * 3000, "é" * 700):
        trained._cache.clear()
        assert len(text.encode()) >= LONG_PIECE
        expected = apply_merges(byte_ids(trained, text.encode()), trained._merges.pairs)
        assert trained.encode(text) == expected
        assert trained.decode(trained.encode(text)) == text
