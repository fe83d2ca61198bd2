"""Tests for tinyinfer/tokenizer/cache.py: the pre-token cache stays within its byte budget.

A server tokenizes whatever clients send. Before, the cache was capped at 131,072 entries, and 40
prompts of 1 MB of distinct long words grew it by hundreds of MB. Now it counts bytes, never keeps
a huge pre-token, and forgets its oldest half when full.
"""
from __future__ import annotations

import gc
import random
import string
import sys
import threading
import tracemalloc

import pytest

from tinyinfer.tokenizer import Tokenizer, bytes_to_unicode
from tinyinfer.tokenizer.cache import MAX_CACHED_PIECE_CHARS, PieceCache


def byte_tokenizer(cache_bytes: int) -> Tokenizer:
    """256 byte tokens, and merges only for runs of "a" ("aa", "aaaa", ... up to 4096 of them).
    Encoding ordinary words then costs almost nothing but the cache's own work, and a run of
    4,000 "a"s (too long to be cached) becomes a handful of ids: 40 MB of text runs in seconds.
    (What the cache does is independent of the merges.)"""
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    merges = [("a" * 2 ** k, "a" * 2 ** k) for k in range(12)]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    return Tokenizer(vocab, merges, cache_bytes=cache_bytes)


def words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_letters, k=rng.randint(3, 12))) for _ in range(n)]


def test_entry_bytes_bound_what_the_entries_really_take():
    """nbytes (the cache's own count) >= what tracemalloc sees the strings, tuples and dict take."""
    rng = random.Random(0)
    cache = PieceCache(max_bytes=1 << 30)
    pieces = [" " + w for w in words(rng, 30_000)]
    # A full collection empties CPython's free lists: small tuples taken from a list that earlier
    # tests filled are not new allocations, so tracemalloc would not see them (measured: 2.11 MB seen
    # with full tuple lists against 3.12 MB after a collection, for the same 5.32 MB counted).
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k, piece in enumerate(pieces):
            cache.put(piece[:] + "", tuple(range(k % 7 + 1)))   # fresh copies, as re.findall makes
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == len(set(pieces))
    assert used <= cache.nbytes, f"entries take {used:,} bytes but the cache counts {cache.nbytes:,}"
    assert cache.nbytes < 2 * used          # and the count is not wildly pessimistic either


def test_forty_distinct_1mb_prompts_stay_within_the_budget():
    budget = 1 << 20
    tok = byte_tokenizer(cache_bytes=budget)
    rng = random.Random(1)
    peak = 0
    for k in range(40):
        # 5,000 new words (cacheable), then runs of "b" that fill the prompt to 1 MB (each longer
        # than MAX_CACHED_PIECE_CHARS, so never cached).
        head = " ".join(words(rng, 5000)) + " "
        filler = "b" * (4000 + k) + " "
        prompt = head + filler * ((1_000_000 - len(head)) // len(filler) + 1)
        assert len(prompt) >= 1_000_000
        ids = tok.encode(prompt)
        if k == 0:
            assert tok.decode(ids) == prompt
        peak = max(peak, tok._cache.nbytes)
        assert tok._cache.nbytes <= budget
    assert peak > budget // 2                             # it was used, and it evicted
    assert all(len(piece) <= MAX_CACHED_PIECE_CHARS for piece in tok._cache.entries)


def test_oldest_entries_go_first():
    cache = PieceCache(max_bytes=20_000)
    for k in range(1000):
        cache.put(f"w{k}", (k,))
    assert cache.nbytes <= 20_000 and 0 < len(cache) < 1000
    kept = [int(p[1:]) for p in cache.entries]
    assert kept == list(range(1000 - len(kept), 1000))   # the newest ones, in order
    assert cache.nbytes == sum(PieceCache.entry_bytes(p, ids) for p, ids in cache.entries.items())


def test_huge_and_over_budget_pieces_are_not_cached():
    cache = PieceCache(max_bytes=10_000)
    cache.put("x" * (MAX_CACHED_PIECE_CHARS + 1), (1,))
    cache.put("y" * 200, tuple(range(5000)))              # fits the length limit, not the budget
    assert len(cache) == 0 and cache.nbytes == 0
    tok = byte_tokenizer(cache_bytes=0)                   # a zero budget: nothing cached, same ids
    assert tok.encode("hello world") == byte_tokenizer(cache_bytes=1 << 20).encode("hello world")
    assert len(tok._cache) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8MB"])
def test_bad_budget(bad):
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        PieceCache(max_bytes=bad)


def test_threads_share_the_cache_safely():
    tok = byte_tokenizer(cache_bytes=200_000)
    rng = random.Random(2)
    texts = [" ".join(words(rng, 3000)) for _ in range(8)]
    expected = [byte_tokenizer(cache_bytes=0).encode(t) for t in texts]
    results: dict[int, list[int]] = {}

    def work(k):
        results[k] = tok.encode(texts[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)                           # switch threads often
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert [results[k] for k in range(8)] == expected
    assert tok._cache.nbytes <= 200_000
    assert tok._cache.nbytes == sum(PieceCache.entry_bytes(p, ids) for p, ids in tok._cache.entries.items())
