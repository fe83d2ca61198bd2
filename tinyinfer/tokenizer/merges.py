"""Step 3b of byte-level BPE: replaying the learned merges on one pre-token (encoding).

Lesson: lessons/02-tokenizer.py

A pre-token starts as its bytes' ids. The merge table says, for a pair of adjacent ids, which
id replaces them and with what priority (rank = the order the merge was learned in). Encoding
applies the lowest-ranked mergeable pair, leftmost first, until no adjacent pair can merge.

Two implementations of the same algorithm:

    apply_merges          plain Python: a heap of (rank, position) and a linked list of symbols
    apply_merges_kernel   the same loop compiled by Numba, for long pre-tokens

Why a kernel: the Python loop costs a few microseconds per merge, which is nothing for a word
but 20 s for a 1 MB run of spaces (one pre-token, a million symbols, ~940,000 merges). Compiled,
the same loop takes a fraction of a second. tests/test_tokenizer_merges.py checks the two agree,
and the Tokenizer uses the kernel only for pre-tokens of LONG_PIECE bytes or more.
"""
from __future__ import annotations

import heapq

import numpy as np

__all__ = ["LONG_PIECE", "MergeTable", "apply_merges", "apply_merges_kernel"]

LONG_PIECE = 64  # pre-tokens of at least this many bytes go to the compiled kernel


class MergeTable:
    """The merges of a vocabulary, in the two forms the two implementations read.

        pairs        {(left_id, right_id): (rank, merged_id)}   for apply_merges
        keys         (M,) int64, sorted: left_id * vocab_size + right_id
        ranks        (M,) int64, rank of each key's merge       for apply_merges_kernel
        merged       (M,) int64, id that replaces the pair
    """

    def __init__(self, pairs: dict[tuple[int, int], tuple[int, int]], vocab_size: int):
        self.pairs = pairs
        self.vocab_size = vocab_size
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, ranks, merged), built on first use: short texts never need them."""
        if self._arrays is None:
            n = len(self.pairs)
            keys = np.fromiter((a * self.vocab_size + b for a, b in self.pairs), np.int64, n)
            ranks = np.fromiter((r for r, _ in self.pairs.values()), np.int64, n)
            merged = np.fromiter((m for _, m in self.pairs.values()), np.int64, n)
            order = np.argsort(keys)
            self._arrays = (keys[order], ranks[order], merged[order])
        return self._arrays


def apply_merges(ids: list[int], merges: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """Apply merges to one pre-token's ids, lowest rank first, leftmost first.

    This is the algorithm of Hugging Face's BPE and of llama.cpp's (llm_tokenizer_bpe_session),
    so results match even for odd merge lists: keep every mergeable adjacent pair in a heap
    keyed by (rank, position); pop the best, merge it if the pair is still there, then push
    the two new pairs it created with its neighbours. Symbols live in a linked list
    (`nxt`/`prv` arrays) so a merge costs O(log n), not O(n).
    """
    n = len(ids)
    if n < 2:
        return list(ids)
    sym = list(ids)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = []
    for i in range(n - 1):
        m = merges.get((sym[i], sym[i + 1]))
        if m is not None:
            heap.append((m[0], i, m[1]))
    heapq.heapify(heap)
    while heap:
        rank, i, new_id = heapq.heappop(heap)
        j = nxt[i]
        if not alive[i] or j == -1 or merges.get((sym[i], sym[j])) != (rank, new_id):
            continue                          # an earlier merge already changed this spot
        sym[i] = new_id                       # the left symbol absorbs the right one
        alive[j] = False
        k = nxt[j]
        nxt[i] = k
        if k != -1:
            prv[k] = i
            m = merges.get((new_id, sym[k]))
            if m is not None:
                heapq.heappush(heap, (m[0], i, m[1]))
        p = prv[i]
        if p != -1:
            m = merges.get((sym[p], new_id))
            if m is not None:
                heapq.heappush(heap, (m[0], p, m[1]))
    return [s for s, a in zip(sym, alive) if a]


def apply_merges_kernel(ids, table: MergeTable) -> np.ndarray:
    """apply_merges compiled with Numba, for long pre-tokens: same ids out, as an int64 array.
    `ids` is a list of ints or an int64 array (which is merged in place)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        return ids
    if len(ids) >= 1 << 31:
        raise ValueError(f"a pre-token of {len(ids):,} bytes is too long (positions must fit 31 bits)")
    from .merge_kernel import merge_kernel   # imports Numba: only when a long pre-token needs it

    keys, ranks, merged = table.arrays()
    return merge_kernel(ids, keys, ranks, merged, table.vocab_size)
