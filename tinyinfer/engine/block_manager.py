"""BlockManager: who owns which block of the paged KV cache (bookkeeping only, no arrays).

Lesson: lessons/07-kv-cache.py

The cache memory is cut into num_blocks fixed-size blocks of block_size positions each (the
arrays live in tinyinfer/engine/paged_attention.py). A sequence owns a *block table*: a list of
block ids, the i-th holding its positions i*block_size .. (i+1)*block_size - 1. Blocks need not
be adjacent, so memory is handed out one block at a time as sequences grow, and nothing is
reserved for tokens a request may never generate (the contiguous cache in tinyinfer/kv_cache.py
reserves n_ctx positions per sequence up front).

Every block is in exactly one of three places:

    free_block_ids     ref_count 0, content worthless         (a deque: take from the left)
    cached_block_ids   ref_count 0, content kept for reuse    (an LRU pool, oldest first)
    used_block_ids     ref_count > 0: in some live block table

Prefix caching (vLLM's automatic prefix caching, nano-vllm's hash_to_block_id): when a block is
full and its keys/values are computed, it is registered under a hash of its tokens chained with
its parent block's hash, so the hash names the whole prefix up to the block's end. A new request
whose first blocks hash the same (and whose tokens compare equal, in case of a hash collision)
points its block table at those blocks instead of recomputing them; ref_count counts the sharers.
A shared block is full and never written again, so sharing needs no copy. When the last sharer
lets go, a registered block moves to the LRU pool instead of the free list: a later request (the
next turn of a chat) can still hit it, until a fresh block is needed and the least recently
released one is evicted.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from .sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")  # a cache can hold 100,000s of these

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0              # how many live block tables hold this block
        self.hash: int | None = None    # set while registered in the prefix cache
        self.token_ids: tuple | None = None  # the tokens it holds, checked on a hash hit

    def __repr__(self):
        return f"Block({self.block_id}, ref={self.ref_count}, hash={self.hash})"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.cached_block_ids: OrderedDict[int, None] = OrderedDict()  # LRU pool: first = oldest
        self.used_block_ids: set[int] = set()
        self.hash_to_block_id: dict[int, int] = {}

    # ---- counting ----------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now: truly free ones plus evictable cached ones."""
        return len(self.free_block_ids) + len(self.cached_block_ids)

    def num_blocks_for(self, num_positions: int) -> int:
        return cdiv(num_positions, self.block_size)

    def num_new_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks seq must add to hold its computed tokens plus num_new_tokens more."""
        end = seq.num_computed_tokens + num_new_tokens
        return max(0, self.num_blocks_for(end) - len(seq.block_table))

    # ---- single blocks -----------------------------------------------------------------

    def _take_block(self) -> int:
        """A block for new content: a free one if any, else evict the least recently used cached one."""
        if self.free_block_ids:
            block_id = self.free_block_ids.popleft()
        else:
            block_id, _ = self.cached_block_ids.popitem(last=False)  # evict: forget its content
            block = self.blocks[block_id]
            del self.hash_to_block_id[block.hash]
            block.hash, block.token_ids = None, None
        self.blocks[block_id].ref_count = 1
        self.used_block_ids.add(block_id)
        return block_id

    def _ref(self, block_id: int):
        """One more table holds block_id (a prefix-cache hit)."""
        block = self.blocks[block_id]
        if block.ref_count == 0:  # a hit on a released block brings it back from the LRU pool
            del self.cached_block_ids[block_id]
            self.used_block_ids.add(block_id)
        block.ref_count += 1

    def _unref(self, block_id: int):
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.used_block_ids.remove(block_id)
            if block.hash is not None:
                self.cached_block_ids[block_id] = None  # newest in the LRU pool
            else:
                self.free_block_ids.append(block_id)

    # ---- prefix cache ------------------------------------------------------------------

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest run of seq's leading full blocks found in the prefix cache.

        Only blocks that end within the first n-1 tokens count: the model must still be fed at
        least one token to produce the logits of the next one (vLLM caps its hit the same way).
        """
        if not self.enable_prefix_caching:
            return []
        hits = []
        for i in range((seq.num_tokens - 1) // self.block_size):
            block_id = self.hash_to_block_id.get(seq.block_hash(i))
            if block_id is None or self.blocks[block_id].token_ids != seq.block_tokens(i):
                break  # a miss ends the prefix: later blocks' keys depend on this one's
            hits.append(block_id)
        return hits

    def register_full_blocks(self, seq: Sequence):
        """Put seq's full, computed blocks into the prefix cache (called after each model step)."""
        if not self.enable_prefix_caching:
            return
        for i in range(seq.num_computed_tokens // self.block_size):
            block = self.blocks[seq.block_table[i]]
            if block.hash is not None:
                continue  # registered already (or a hit)
            h = seq.block_hash(i)
            if h in self.hash_to_block_id:
                continue  # another sequence computed the same prefix first; keep one copy
            block.hash, block.token_ids = h, seq.block_tokens(i)
            self.hash_to_block_id[h] = block.block_id

    # ---- whole sequences ---------------------------------------------------------------

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.num_new_blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def append(self, seq: Sequence, num_new_tokens: int):
        """Grow seq's block table so positions up to num_computed + num_new_tokens have a slot."""
        for _ in range(self.num_new_blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._take_block())

    def can_admit(self, seq: Sequence, cached_block_ids: list[int], num_new_tokens: int) -> bool:
        """Could a waiting seq start with these prefix hits and a first chunk of num_new_tokens?"""
        num_cached = len(cached_block_ids) * self.block_size
        needed = self.num_blocks_for(num_cached + num_new_tokens) - len(cached_block_ids)
        # hits sitting in the LRU pool are counted as free, but taking them makes them used
        revived = sum(1 for b in cached_block_ids if self.blocks[b].ref_count == 0)
        return needed <= self.num_free_blocks - revived

    def admit(self, seq: Sequence, cached_block_ids: list[int], num_new_tokens: int):
        """Give a waiting seq its prefix hits and blocks for its first chunk (check can_admit first)."""
        assert not seq.block_table, "a waiting sequence holds no blocks"
        for block_id in cached_block_ids:  # before _take_block, so eviction cannot pick a hit
            self._ref(block_id)
        seq.block_table = list(cached_block_ids)
        seq.num_computed_tokens = seq.num_cached_tokens = len(cached_block_ids) * self.block_size
        self.append(seq, num_new_tokens)

    def free(self, seq: Sequence):
        """Release seq's blocks (finish, abort or preemption); its computed tokens are gone."""
        # Tail first: the LRU pool then evicts a prefix's last blocks before its first ones,
        # and first blocks are the ones other requests are most likely to share.
        for block_id in reversed(seq.block_table):
            self._unref(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0
