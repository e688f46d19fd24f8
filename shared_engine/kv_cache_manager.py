"""Block pool and KV cache bookkeeping: plain Python, no tensors.

The runner owns the KV tensors; this module only decides which block ids a request may write to.
Every physical block has a reference count. A block that is full of computed tokens gets a prefix
hash (its tokens chained with the hash of the block before it), so a later request whose prompt
starts with the same tokens reuses it instead of recomputing. Blocks whose reference count drops to
zero go to the free queue but keep their hash until they are handed out again: the free queue is the
LRU eviction order of the prefix cache.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import NamedTuple

from shared_engine.request import Request

BlockHash = bytes


def hash_block(parent: BlockHash | None, token_ids: list[int]) -> BlockHash:
    """128-bit digest of a full block's tokens chained with its prefix's digest."""
    h = hashlib.blake2b(digest_size=16)
    if parent is not None:
        h.update(parent)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class ComputedBlocks(NamedTuple):
    block_ids: list[int]
    hashes: list[BlockHash]


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        # Front = next to be handed out (evicted). Unhashed blocks are put at the front since they
        # hold nothing worth keeping.
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[BlockHash, int] = {}
        self.prefix_queries = 0
        self.prefix_hits = 0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by live requests (cached-but-free blocks count as free)."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, request: Request) -> ComputedBlocks:
        """The longest run of cached full blocks that prefixes ``request``'s tokens.

        The last token is never served from cache: the model must run on at least one token to
        produce the logits of the next one. A seeded request reads nothing from cache: a prompt's tail
        computed against cached keys and values takes another attention path than the whole prompt,
        whose rounding can change a sampled token, and the same seed must give the same answer.
        """
        if not self.enable_prefix_caching or request.params.seed is not None:
            return ComputedBlocks([], [])
        tokens = request.all_token_ids
        max_blocks = (len(tokens) - 1) // self.block_size
        ids: list[int] = []
        hashes: list[BlockHash] = []
        parent: BlockHash | None = None
        for i in range(max_blocks):
            h = hash_block(parent, tokens[i * self.block_size : (i + 1) * self.block_size])
            block_id = self.cached.get(h)
            if block_id is None:
                break
            ids.append(block_id)
            hashes.append(h)
            parent = h
        return ComputedBlocks(ids, hashes)

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count the lookup of a request's first admission (not the retries of one that waits)."""
        if self.enable_prefix_caching:
            self.prefix_queries += num_tokens
            self.prefix_hits += num_hit_tokens

    # -- allocation ------------------------------------------------------------------------------

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed: ComputedBlocks | None = None
    ) -> list[int] | None:
        """Make room for ``num_new_tokens`` more tokens of ``request``.

        Returns the newly allocated block ids, or ``None`` (and changes nothing) when the pool cannot
        hold them: the caller then preempts or waits.
        """
        hit_ids = computed.block_ids if computed else []
        total = request.num_computed_tokens + len(hit_ids) * self.block_size + num_new_tokens
        num_new_blocks = self.blocks_needed(total) - len(request.block_ids) - len(hit_ids)
        # Reviving a cached block that sits in the free queue takes it out of the free pool.
        revived = sum(1 for b in hit_ids if self.ref_counts[b] == 0)
        if num_new_blocks > len(self.free_queue) - revived:
            return None
        for block_id in hit_ids:
            if self.ref_counts[block_id] == 0:
                del self.free_queue[block_id]
            self.ref_counts[block_id] += 1
        if computed:
            request.block_ids.extend(hit_ids)
            request.block_hashes.extend(computed.hashes)
        new_ids = [self._take_free_block() for _ in range(max(num_new_blocks, 0))]
        request.block_ids.extend(new_ids)
        return new_ids

    def _take_free_block(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        old = self.block_hash[block_id]
        if old is not None:
            if self.cached.get(old) == block_id:
                del self.cached[old]
            self.block_hash[block_id] = None
        self.ref_counts[block_id] = 1
        return block_id

    def cache_full_blocks(self, request: Request) -> None:
        """Publish the request's newly completed blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        # Accepted guesses count as computed before the step's tokens join the request: the blocks
        # they complete are published once their tokens are known (the next step, or the finish).
        num_full = min(request.num_computed_tokens, request.num_tokens) // self.block_size
        first = len(request.block_hashes)
        if num_full <= first:
            return
        tokens = request.token_ids_slice(first * self.block_size, num_full * self.block_size)
        parent = request.block_hashes[-1] if request.block_hashes else None
        for i in range(first, num_full):
            offset = (i - first) * self.block_size
            h = hash_block(parent, tokens[offset : offset + self.block_size])
            block_id = request.block_ids[i]
            # Two requests may compute the same block concurrently; the first one published wins
            # and the other block simply stays private to its request.
            if h not in self.cached and self.block_hash[block_id] is None:
                self.cached[h] = block_id
                self.block_hash[block_id] = h
            request.block_hashes.append(h)
            parent = h

    def free(self, request: Request) -> None:
        """Drop the request's references. Its tail blocks are queued for eviction before its head,
        since a shared prefix is the part most likely to be asked for again."""
        for block_id in reversed(request.block_ids):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None
                if self.block_hash[block_id] is None:
                    self.free_queue.move_to_end(block_id, last=False)
        request.block_ids = []
        request.block_hashes = []

    def reset_prefix_cache(self) -> None:
        for h, block_id in list(self.cached.items()):
            self.block_hash[block_id] = None
            del self.cached[h]
