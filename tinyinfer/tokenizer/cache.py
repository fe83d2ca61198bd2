"""A pre-token -> ids cache whose memory is bounded in bytes.

Lesson: lessons/02-tokenizer.py

Text repeats itself: " the", "    ", "self" come back thousands of times in a megabyte, and
running BPE on each again would be wasted work. So the tokenizer remembers the ids of the
pre-tokens it has seen. A cache that is bounded only by its number of entries is not bounded in
memory: a server fed a million distinct long pre-tokens would keep them all. This one counts
the bytes each entry costs (its string, its tuple of ids, the dict's share), and:

  * never keeps a pre-token longer than `max_piece_chars` (a 1 MB run of spaces is one
    pre-token: caching it would cost megabytes and help nobody);
  * when the next entry would pass `max_bytes`, forgets the oldest entries until half the
    budget is free. No bookkeeping happens on a hit (that is what keeps hits cheap), so this
    is first-in-first-out rather than least-recently-used: a word still in use is simply
    computed and cached again.

Several threads may encode at once (a server tokenizes in each client's thread): reads are
plain dict lookups, and a lock keeps the byte count right when entries are added or dropped.
"""
from __future__ import annotations

import sys
import threading

__all__ = ["PieceCache", "DEFAULT_CACHE_BYTES", "MAX_CACHED_PIECE_CHARS"]

DEFAULT_CACHE_BYTES = 8 << 20   # 8 MiB: ~50,000 typical entries, room for a few MB of varied text
MAX_CACHED_PIECE_CHARS = 256    # longer pre-tokens are rare and seldom repeat
# What a dict entry costs beyond its key and value objects: the 24-byte entry (hash, key,
# value) in a table kept at most 2/3 full, plus its index slot; measured with tracemalloc in
# tests/test_tokenizer_cache.py.
_DICT_ENTRY_BYTES = 48


class PieceCache:
    """{pre-token: tuple of ids}, holding at most `max_bytes` bytes (as estimated by entry_bytes)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, max_piece_chars: int = MAX_CACHED_PIECE_CHARS):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"cache max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.max_piece_chars = max_piece_chars
        self.nbytes = 0                                   # sum of entry_bytes over the entries
        self._entries: dict[str, tuple[int, ...]] = {}    # insertion order = age
        self._lock = threading.Lock()

    @staticmethod
    def entry_bytes(piece: str, ids: tuple[int, ...]) -> int:
        """Bytes one entry holds: the key string, the tuple, the dict's slot. The ints inside
        are shared with the tokenizer's tables, so they cost nothing here."""
        return sys.getsizeof(piece) + sys.getsizeof(ids) + _DICT_ENTRY_BYTES

    def get(self, piece: str) -> tuple[int, ...] | None:
        return self._entries.get(piece)

    @property
    def entries(self) -> dict[str, tuple[int, ...]]:
        """The dict itself, for a hot loop's lookups (read-only: add with put). Eviction
        replaces it with a new dict, so a reference held across puts may go stale, never wrong."""
        return self._entries

    def put(self, piece: str, ids: tuple[int, ...]) -> None:
        if len(piece) > self.max_piece_chars:
            return
        cost = self.entry_bytes(piece, ids)
        with self._lock:
            if piece in self._entries:
                return
            if self.nbytes + cost > self.max_bytes:
                self._drop_oldest(keep_bytes=self.max_bytes // 2 - cost)
                if self.nbytes + cost > self.max_bytes:
                    return                                # the entry alone is over budget
            self._entries[piece] = ids
            self.nbytes += cost

    def _drop_oldest(self, keep_bytes: int) -> None:
        """Keep only the newest entries that fit in keep_bytes. Rebuilding the dict (rather
        than deleting from its front) also returns the old table's memory."""
        kept: list[tuple[str, tuple[int, ...]]] = []
        total = 0
        for piece, ids in reversed(self._entries.items()):
            cost = self.entry_bytes(piece, ids)
            if total + cost > keep_bytes:
                break
            kept.append((piece, ids))
            total += cost
        self._entries = dict(reversed(kept))
        self.nbytes = total

    def clear(self) -> None:
        with self._lock:
            self._entries = {}
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self):
        """A copy (copy.deepcopy, pickle) starts empty: a lock cannot be copied, entries need not be."""
        return (PieceCache, (self.max_bytes, self.max_piece_chars))
