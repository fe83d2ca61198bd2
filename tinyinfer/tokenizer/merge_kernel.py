"""apply_merges (tinyinfer/tokenizer/merges.py) compiled by Numba, for long pre-tokens.

Lesson: lessons/02-tokenizer.py

The same loop as the Python version, written for a compiler: the merge table is a sorted array
of pair keys (left_id * V + right_id) searched by bisection instead of a dict, and the heap is a
plain int64 array holding (rank << 32 | position), so integer order is (rank, position) order.
Compiled on first use and cached on disk (cache=True).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["merge_kernel"]


@njit(cache=True)
def _find(keys, key):
    """Index of `key` in the sorted `keys`, or -1."""
    lo, hi = 0, keys.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < keys.shape[0] and keys[lo] == key else -1


@njit(cache=True)
def _push(heap, size, item):
    """Add `item` to the binary min-heap heap[:size]; returns the new size."""
    heap[size] = item
    child = size
    while child > 0:
        parent = (child - 1) >> 1
        if heap[parent] <= heap[child]:
            break
        heap[parent], heap[child] = heap[child], heap[parent]
        child = parent
    return size + 1


@njit(cache=True)
def _pop(heap, size):
    """Drop the smallest item heap[0] (read it first); returns the new size."""
    size -= 1
    heap[0] = heap[size]
    parent = 0
    while True:
        child = 2 * parent + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[parent] <= heap[child]:
            break
        heap[parent], heap[child] = heap[child], heap[parent]
        parent = child
    return size


@njit(cache=True)
def merge_kernel(sym, keys, ranks, merged, vocab_size):
    """sym: (n,) int64 ids of one pre-token (n >= 2), merged in place -> the surviving ids.
    keys, ranks, merged: (M,) int64, MergeTable.arrays()."""
    n = sym.shape[0]
    nxt = np.arange(1, n + 1)                 # linked list of live symbols
    nxt[n - 1] = -1
    prv = np.arange(-1, n - 1)
    alive = np.ones(n, np.bool_)
    heap = np.empty(3 * n, np.int64)          # n - 1 initial pairs + at most 2 per merge
    size = 0
    for i in range(n - 1):
        m = _find(keys, sym[i] * vocab_size + sym[i + 1])
        if m >= 0:
            size = _push(heap, size, (ranks[m] << 32) | i)
    while size > 0:
        item = heap[0]
        size = _pop(heap, size)
        rank, i = item >> 32, item & 0xFFFFFFFF
        j = nxt[i]
        if not alive[i] or j == -1:
            continue
        m = _find(keys, sym[i] * vocab_size + sym[j])
        if m < 0 or ranks[m] != rank:         # an earlier merge already changed this spot
            continue
        sym[i] = merged[m]                    # the left symbol absorbs the right one
        alive[j] = False
        k = nxt[j]
        nxt[i] = k
        if k != -1:
            prv[k] = i
            m = _find(keys, sym[i] * vocab_size + sym[k])
            if m >= 0:
                size = _push(heap, size, (ranks[m] << 32) | i)
        p = prv[i]
        if p != -1:
            m = _find(keys, sym[p] * vocab_size + sym[i])
            if m >= 0:
                size = _push(heap, size, (ranks[m] << 32) | p)
    return sym[alive]
