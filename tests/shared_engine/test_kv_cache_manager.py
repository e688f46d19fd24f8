"""KVCacheManager: block pool, reference counts, prefix caching and LRU eviction (no tensors, no model)."""

from __future__ import annotations

import pytest

from shared_engine.kv_cache_manager import ComputedBlocks, KVCacheManager, hash_block
from shared_engine.sampling_params import SamplingParams
from tests.shared_engine.factories import (
    check_invariants,
    fill_blocks,
    free_queue_order,
    make_kv,
    make_request,
    prompt,
)

BS = 4


def _snapshot(kv: KVCacheManager) -> tuple[object, ...]:
    return (
        list(kv.ref_counts),
        list(kv.block_hash),
        list(kv.free_queue),
        dict(kv.cached),
        kv.prefix_queries,
        kv.prefix_hits,
    )


# -- construction and small helpers ------------------------------------------------------------------


def test_rejects_empty_pool() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        KVCacheManager(0, BS)


def test_fresh_pool_is_all_free() -> None:
    kv = make_kv(num_blocks=8)
    assert kv.num_free_blocks == 8
    assert kv.usage == 0.0
    assert kv.prefix_hit_rate == 0.0
    assert free_queue_order(kv) == list(range(8))
    assert kv.cached == {}


@pytest.mark.parametrize(("tokens", "blocks"), [(0, 0), (1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3)])
def test_blocks_needed_rounds_up(tokens: int, blocks: int) -> None:
    assert make_kv().blocks_needed(tokens) == blocks


def test_hash_block_is_deterministic_and_chained() -> None:
    h0 = hash_block(None, [1, 2, 3, 4])
    assert isinstance(h0, bytes)
    assert len(h0) == 16
    assert hash_block(None, [1, 2, 3, 4]) == h0
    assert hash_block(None, [1, 2, 3, 5]) != h0
    # Same tokens under a different prefix are a different block.
    assert hash_block(h0, [1, 2, 3, 4]) != h0
    assert hash_block(h0, [5, 6, 7, 8]) != hash_block(hash_block(None, [9, 9, 9, 9]), [5, 6, 7, 8])
    # Large token ids are hashed without overflow or collisions with small ones.
    assert hash_block(None, [2**40, 0, 0, 0]) != hash_block(None, [0, 0, 0, 0])


# -- allocation, ref counts, free ---------------------------------------------------------------------


def test_allocate_takes_free_blocks_in_order_with_ref_count_one() -> None:
    kv = make_kv(num_blocks=8)
    req = make_request("a", prompt(10))
    new = kv.allocate_slots(req, 10)
    assert new == [0, 1, 2]
    assert req.block_ids == [0, 1, 2]
    assert kv.ref_counts[:4] == [1, 1, 1, 0]
    assert kv.num_free_blocks == 5
    assert kv.usage == pytest.approx(3 / 8)
    check_invariants(kv, [req])


def test_allocate_adds_only_missing_blocks() -> None:
    kv = make_kv(num_blocks=8)
    req = make_request("a", prompt(10))
    assert kv.allocate_slots(req, 10) == [0, 1, 2]
    req.num_computed_tokens = 10
    # Tokens 11 and 12 still fit in the third block.
    assert kv.allocate_slots(req, 2) == []
    assert req.block_ids == [0, 1, 2]
    req.num_computed_tokens = 12
    assert kv.allocate_slots(req, 1) == [3]
    assert kv.allocate_slots(req, 0) == []
    assert req.block_ids == [0, 1, 2, 3]
    check_invariants(kv, [req])


def test_free_drops_every_reference() -> None:
    kv = make_kv(num_blocks=8)
    req = make_request("a", prompt(10))
    fill_blocks(kv, req)
    assert req.block_hashes
    kv.free(req)
    assert req.block_ids == []
    assert req.block_hashes == []
    assert kv.ref_counts == [0] * 8
    assert kv.num_free_blocks == 8
    assert kv.usage == 0.0
    check_invariants(kv, [])


def test_allocate_exactly_the_whole_pool() -> None:
    kv = make_kv(num_blocks=3)
    req = make_request("a", prompt(12))
    assert kv.allocate_slots(req, 12) == [0, 1, 2]
    assert kv.num_free_blocks == 0
    assert kv.usage == 1.0


def test_allocate_returns_none_and_changes_nothing_when_pool_too_small() -> None:
    kv = make_kv(num_blocks=4)
    a = make_request("a", prompt(12))
    fill_blocks(kv, a)  # 3 blocks, all full and published
    b = make_request("b", prompt(8, base=100))
    before = _snapshot(kv)
    assert kv.allocate_slots(b, 8) is None
    assert _snapshot(kv) == before
    assert b.block_ids == []
    assert b.block_hashes == []
    # A running request that needs one more block than is left gets None too, and keeps its blocks.
    a.append_output_token(7)
    c = make_request("c", prompt(4, base=200))
    assert kv.allocate_slots(c, 4) == [3]
    before = _snapshot(kv)
    assert kv.allocate_slots(a, 1) is None
    assert _snapshot(kv) == before
    assert a.block_ids == [0, 1, 2]
    check_invariants(kv, [a, c])


def test_a_seeded_request_reads_nothing_from_the_prefix_cache() -> None:
    """Its answer must not depend on whether its prompt was cached (a cached prefix changes rounding)."""
    kv = make_kv(num_blocks=8)
    a = make_request("a", prompt(9))
    fill_blocks(kv, a)
    kv.free(a)
    unseeded = make_request("b", prompt(9), params=SamplingParams(max_tokens=4, temperature=1.0))
    assert kv.get_computed_blocks(unseeded).block_ids == [0, 1]
    seeded = make_request("c", prompt(9), params=SamplingParams(max_tokens=4, temperature=1.0, seed=3))
    assert kv.get_computed_blocks(seeded).block_ids == []


def test_revived_prefix_hits_count_against_the_free_pool() -> None:
    """Cached blocks sitting in the free queue are part of the free pool: reviving them for a hit
    leaves fewer blocks to hand out, and a failed allocation must not revive anything."""
    kv = make_kv(num_blocks=4)
    a = make_request("a", prompt(9))
    fill_blocks(kv, a)  # blocks 0, 1 published, block 2 partial
    kv.free(a)
    assert kv.num_free_blocks == 4

    # Same 8-token prefix (2 hits, both in the free queue) plus 12 more tokens = 3 new blocks: 5 > 4.
    b = make_request("b", prompt(8) + prompt(12, base=500))
    computed = kv.get_computed_blocks(b)
    assert computed.block_ids == [0, 1]
    before = _snapshot(kv)
    assert kv.allocate_slots(b, 12, computed) is None
    assert _snapshot(kv) == before
    assert b.block_ids == []
    assert b.block_hashes == []
    assert kv.ref_counts == [0, 0, 0, 0]
    assert set(kv.free_queue) == {0, 1, 2, 3}

    # Two hits + two new blocks fit exactly.
    c = make_request("c", prompt(8) + prompt(8, base=500))
    computed = kv.get_computed_blocks(c)
    new = kv.allocate_slots(c, 8, computed)
    assert new is not None
    assert len(new) == 2
    assert c.block_ids[:2] == [0, 1]
    assert kv.num_free_blocks == 0
    check_invariants(kv, [c])


# -- publishing full blocks ---------------------------------------------------------------------------


def test_cache_full_blocks_publishes_only_full_computed_blocks() -> None:
    kv = make_kv(num_blocks=8)
    req = make_request("a", prompt(10))
    assert kv.allocate_slots(req, 10) == [0, 1, 2]
    req.num_computed_tokens = 7  # a prefill chunk: one full block so far
    kv.cache_full_blocks(req)
    h0 = hash_block(None, prompt(4))
    assert req.block_hashes == [h0]
    assert kv.block_hash[:3] == [h0, None, None]
    assert kv.cached == {h0: 0}

    req.num_computed_tokens = 10
    kv.cache_full_blocks(req)
    h1 = hash_block(h0, [4, 5, 6, 7])
    assert req.block_hashes == [h0, h1]
    assert kv.block_hash[:3] == [h0, h1, None]  # block 2 holds only 2 tokens
    assert kv.cached == {h0: 0, h1: 1}
    # Idempotent.
    kv.cache_full_blocks(req)
    assert req.block_hashes == [h0, h1]
    check_invariants(kv, [req])


def test_cache_full_blocks_hashes_output_tokens_too() -> None:
    kv = make_kv(num_blocks=8)
    req = make_request("a", prompt(6))
    fill_blocks(kv, req)
    h0 = hash_block(None, prompt(4))
    assert req.block_hashes == [h0]
    # Two decode steps: each feeds back the previously sampled token.
    req.append_output_token(50)
    assert kv.allocate_slots(req, 1) == []
    req.num_computed_tokens += 1
    kv.cache_full_blocks(req)
    assert req.block_hashes == [h0]  # 7 computed tokens: block 1 is not full yet
    req.append_output_token(51)
    assert kv.allocate_slots(req, 1) == []
    req.num_computed_tokens += 1
    kv.cache_full_blocks(req)
    h1 = hash_block(h0, [4, 5, 50, 51])
    assert req.block_hashes == [h0, h1]
    assert kv.cached[h1] == req.block_ids[1]
    req.append_output_token(52)  # sampled, not computed yet: must not be published

    # A follow-up turn whose prompt is the earlier prompt plus the generated text hits both blocks.
    follow_up = make_request("b", [*prompt(6), 50, 51, 52, 9])
    assert kv.get_computed_blocks(follow_up).block_ids == req.block_ids[:2]


# -- prefix hits -----------------------------------------------------------------------------------------


def test_second_request_with_same_prefix_hits_cached_blocks() -> None:
    kv = make_kv(num_blocks=8)
    a = make_request("a", prompt(10))
    fill_blocks(kv, a)
    b = make_request("b", [*prompt(8), 77, 78, 79])
    computed = kv.get_computed_blocks(b)
    assert computed == ComputedBlocks([0, 1], a.block_hashes[:2])
    new = kv.allocate_slots(b, 3, computed)
    assert new == [3]
    assert b.block_ids == [0, 1, 3]
    assert b.block_hashes == a.block_hashes[:2]
    # Shared between two live requests.
    assert kv.ref_counts[:4] == [2, 2, 1, 1]
    check_invariants(kv, [a, b])


@pytest.mark.parametrize(
    ("num_tokens", "hit_blocks"),
    [(1, 0), (4, 0), (5, 1), (8, 1), (9, 2), (12, 2), (13, 3), (20, 3)],
)
def test_hit_is_capped_so_the_last_token_is_computed(num_tokens: int, hit_blocks: int) -> None:
    kv = make_kv(num_blocks=16)
    a = make_request("a", prompt(12))
    fill_blocks(kv, a)  # three full, published blocks
    b = make_request("b", prompt(num_tokens))
    computed = kv.get_computed_blocks(b)
    assert computed.block_ids == [0, 1, 2][:hit_blocks]
    assert hit_blocks * BS < num_tokens


def test_hit_stops_at_the_first_mismatching_block() -> None:
    kv = make_kv(num_blocks=16)
    a = make_request("a", prompt(13))
    fill_blocks(kv, a)
    # Block 1 differs; block 2 has the same tokens as a's block 2 but a different prefix: no hit.
    b = make_request("b", [*prompt(4), 0, 0, 0, 0, *prompt(5, base=8)])
    assert kv.get_computed_blocks(b).block_ids == [0]
    c = make_request("c", [*prompt(12, base=1), 0])
    assert kv.get_computed_blocks(c).block_ids == []


def test_shared_blocks_survive_freeing_one_owner() -> None:
    kv = make_kv(num_blocks=8)
    a = make_request("a", prompt(10))
    fill_blocks(kv, a)
    b = make_request("b", prompt(9))
    assert kv.allocate_slots(b, 1, kv.get_computed_blocks(b)) == [3]
    assert kv.ref_counts[:2] == [2, 2]

    kv.free(a)
    assert kv.ref_counts[:4] == [1, 1, 0, 1]
    assert 0 not in kv.free_queue
    assert 1 not in kv.free_queue
    assert 2 in kv.free_queue
    check_invariants(kv, [b])

    kv.free(b)
    assert kv.ref_counts == [0] * 8
    assert kv.num_free_blocks == 8
    # Still cached after both owners are gone.
    d = make_request("d", prompt(9))
    assert kv.get_computed_blocks(d).block_ids == [0, 1]
    check_invariants(kv, [])


def test_freed_cached_blocks_are_revived_by_a_hit() -> None:
    kv = make_kv(num_blocks=8)
    a = make_request("a", prompt(10))
    fill_blocks(kv, a)
    kv.free(a)
    b = make_request("b", prompt(10))
    computed = kv.get_computed_blocks(b)
    assert computed.block_ids == [0, 1]
    new = kv.allocate_slots(b, 2, computed)
    assert new is not None
    assert len(new) == 1
    assert new[0] not in (0, 1)
    assert b.block_ids[:2] == [0, 1]
    assert kv.ref_counts[0] == kv.ref_counts[1] == 1
    assert 0 not in kv.free_queue
    assert 1 not in kv.free_queue
    check_invariants(kv, [b])


def test_concurrently_computed_duplicate_block_stays_private() -> None:
    """Two requests compute the same block before either publishes: the first publisher wins and the
    other copy stays unhashed (reused first once freed)."""
    kv = make_kv(num_blocks=8)
    a = make_request("a", prompt(6))
    b = make_request("b", prompt(6))
    assert kv.allocate_slots(a, 6) == [0, 1]
    assert kv.allocate_slots(b, 6) == [2, 3]
    a.num_computed_tokens = b.num_computed_tokens = 6
    kv.cache_full_blocks(a)
    kv.cache_full_blocks(b)
    h0 = hash_block(None, prompt(4))
    assert kv.cached == {h0: 0}
    assert kv.block_hash[:4] == [h0, None, None, None]
    # b still knows the chain so that its later blocks hash the same as everyone else's.
    assert b.block_hashes == [h0]
    kv.free(b)
    assert free_queue_order(kv)[:2] == [2, 3]
    check_invariants(kv, [a])


# -- LRU eviction ----------------------------------------------------------------------------------------


def test_free_queues_unhashed_blocks_first_then_tail_before_head() -> None:
    kv = make_kv(num_blocks=6)
    a = make_request("a", prompt(14))
    assert fill_blocks(kv, a) == [0, 1, 2, 3]  # 0..2 full and published, 3 half full
    assert free_queue_order(kv) == [4, 5]
    kv.free(a)
    # Unhashed block 3 goes to the very front; hashed blocks go to the back, tail first.
    assert free_queue_order(kv) == [3, 4, 5, 2, 1, 0]

    # Handing out blocks follows that order; the cached head survives longest.
    b = make_request("b", prompt(16, base=100))
    assert kv.allocate_slots(b, 16) == [3, 4, 5, 2]
    c = make_request("c", prompt(14))
    assert kv.get_computed_blocks(c).block_ids == [0, 1]
    check_invariants(kv, [b])


def test_eviction_drops_the_hash_so_a_later_lookup_misses() -> None:
    kv = make_kv(num_blocks=3)
    a = make_request("a", prompt(8))
    fill_blocks(kv, a)
    h0, h1 = a.block_hashes
    kv.free(a)
    assert free_queue_order(kv) == [2, 1, 0]

    b = make_request("b", prompt(4, base=100))
    assert kv.allocate_slots(b, 4) == [2]  # the never-used block first: nothing evicted
    assert kv.cached == {h0: 0, h1: 1}
    c = make_request("c", prompt(4, base=200))
    assert kv.allocate_slots(c, 4) == [1]  # evicts a's tail block
    assert kv.block_hash[1] is None
    assert kv.cached == {h0: 0}

    probe = make_request("probe", prompt(9))
    assert kv.get_computed_blocks(probe).block_ids == [0]  # block 1's hash is gone
    kv.free(b)
    kv.free(c)
    d = make_request("d", prompt(4, base=300))
    e = make_request("e", prompt(8, base=400))
    assert kv.allocate_slots(d, 4) is not None
    assert kv.allocate_slots(e, 8) is not None
    assert kv.cached == {}
    assert kv.get_computed_blocks(probe).block_ids == []
    check_invariants(kv, [d, e])


def test_least_recently_freed_request_is_evicted_first() -> None:
    kv = make_kv(num_blocks=4)
    a = make_request("a", prompt(8))
    b = make_request("b", prompt(8, base=100))
    fill_blocks(kv, a)
    fill_blocks(kv, b)
    kv.free(a)
    kv.free(b)
    assert free_queue_order(kv) == [1, 0, 3, 2]
    c = make_request("c", prompt(8, base=200))
    assert kv.allocate_slots(c, 8) == [1, 0]
    assert kv.get_computed_blocks(make_request("pa", prompt(9))).block_ids == []
    assert kv.get_computed_blocks(make_request("pb", prompt(9, base=100))).block_ids == [2, 3]


def test_a_hit_refreshes_nothing_until_freed_again() -> None:
    """Reviving cached blocks and freeing them again moves them to the back of the LRU queue."""
    kv = make_kv(num_blocks=4)
    a = make_request("a", prompt(8))
    b = make_request("b", prompt(8, base=100))
    fill_blocks(kv, a)
    fill_blocks(kv, b)
    kv.free(a)
    kv.free(b)
    a2 = make_request("a2", prompt(5))
    computed = kv.get_computed_blocks(a2)
    assert computed.block_ids == [0]
    assert kv.allocate_slots(a2, 1, computed) == [1]  # block 1 (a's tail) is evicted for the new token
    a2.num_computed_tokens = 5
    kv.free(a2)
    assert free_queue_order(kv) == [1, 3, 2, 0]


def test_reset_prefix_cache_forgets_every_hash() -> None:
    kv = make_kv(num_blocks=8)
    a = make_request("a", prompt(10))
    fill_blocks(kv, a)
    kv.free(a)
    kv.reset_prefix_cache()
    assert kv.cached == {}
    assert kv.block_hash == [None] * 8
    assert kv.get_computed_blocks(make_request("b", prompt(10))).block_ids == []
    check_invariants(kv, [])


# -- accounting -------------------------------------------------------------------------------------------


def test_prefix_hit_rate_counts_tokens_of_recorded_lookups() -> None:
    kv = make_kv(num_blocks=16)
    a = make_request("a", prompt(10))
    assert kv.get_computed_blocks(a).block_ids == []
    assert (kv.prefix_queries, kv.prefix_hits) == (0, 0)  # a lookup alone is not an admission
    kv.record_prefix_lookup(a.num_tokens, 0)
    assert (kv.prefix_queries, kv.prefix_hits) == (10, 0)
    assert kv.prefix_hit_rate == 0.0
    fill_blocks(kv, a)

    b = make_request("b", prompt(10))
    hits = kv.get_computed_blocks(b).block_ids
    assert len(hits) == 2
    kv.record_prefix_lookup(b.num_tokens, len(hits) * kv.block_size)
    assert (kv.prefix_queries, kv.prefix_hits) == (20, 8)
    assert kv.prefix_hit_rate == pytest.approx(8 / 20)


def test_usage_counts_cached_but_free_blocks_as_free() -> None:
    kv = make_kv(num_blocks=4)
    a = make_request("a", prompt(8))
    fill_blocks(kv, a)
    assert kv.usage == 0.5
    kv.free(a)
    assert kv.usage == 0.0
    assert len(kv.cached) == 2


def test_disabled_prefix_caching_never_hits() -> None:
    kv = make_kv(num_blocks=8, enable_prefix_caching=False)
    a = make_request("a", prompt(10))
    fill_blocks(kv, a)
    assert a.block_hashes == []
    assert kv.cached == {}
    assert kv.block_hash == [None] * 8
    b = make_request("b", prompt(10))
    assert kv.get_computed_blocks(b) == ComputedBlocks([], [])
    kv.free(a)
    assert kv.get_computed_blocks(b) == ComputedBlocks([], [])
    assert kv.prefix_queries == 0
    assert kv.prefix_hits == 0
    assert kv.prefix_hit_rate == 0.0
    # Freed blocks are plain free blocks again: every one can be handed out.
    c = make_request("c", prompt(32, base=100))
    assert sorted(kv.allocate_slots(c, 32) or []) == list(range(8))
    check_invariants(kv, [c])
