"""BlockManager: allocation, prefix hits and misses, eviction order, ref counts, window release."""

import pytest
import torch
from engine_fakes import assert_all_free, make_seq

from rusteeze import SamplingParams
from rusteeze.engine.block_manager import NO_PARENT, NULL_BLOCK, BlockManager, default_hash
from rusteeze.engine.engine import EngineStepError


def computed(bm: BlockManager, seq, cached=()):
    """Admit ``seq`` with ``cached`` blocks and mark its whole prompt computed."""
    n = len(cached) * bm.block_size
    assert bm.allocate_slots(seq, seq.num_tokens - n, cached)
    seq.num_computed_tokens = seq.num_tokens
    bm.register_full_blocks(seq)


def test_allocation_takes_blocks_in_order_and_grows_one_block_at_a_time():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(10)))
    assert bm.allocate_slots(seq, 10)
    assert seq.block_table == [0, 1, 2]
    seq.num_computed_tokens = 10
    seq.token_ids += [7, 7]
    assert bm.allocate_slots(seq, 2)  # positions 10, 11 still fit block 2
    assert seq.block_table == [0, 1, 2]
    seq.num_computed_tokens = 12
    seq.token_ids.append(7)
    assert bm.allocate_slots(seq, 1)
    assert seq.block_table == [0, 1, 2, 3]
    assert bm.num_free_blocks == 4
    bm.free(seq)
    assert seq.block_table == []
    assert_all_free(bm)


def test_allocation_failure_changes_nothing():
    bm = BlockManager(num_blocks=2, block_size=4)
    a, b = make_seq(list(range(5))), make_seq(list(range(9)))
    assert bm.allocate_slots(a, 5)
    assert not bm.allocate_slots(b, 9)
    assert b.block_table == [] and bm.num_free_blocks == 0 and bm.ref_counts == [1, 1]
    bm.free(a)
    assert_all_free(bm)


def test_prefix_hit_shares_blocks_and_counts_references():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(list(range(10)))
    computed(bm, a)  # blocks 0, 1 full (registered); block 2 partial
    assert bm.is_cached(0) and bm.is_cached(1) and not bm.is_cached(2)
    b = make_seq([*range(8), 99, 98, 97])
    hits = bm.find_cached_prefix(b)
    assert hits == [0, 1]
    computed(bm, b, hits)
    assert b.block_table[:2] == [0, 1] and b.block_table[2] not in (0, 1, 2)
    assert bm.ref_counts[0] == bm.ref_counts[1] == 2
    c = make_seq([*range(4), 50, 5, 6, 7, 8])  # differs in block 1: a miss from there on
    assert bm.find_cached_prefix(c) == [0]
    bm.free(a)
    assert bm.ref_counts[0] == bm.ref_counts[1] == 1
    bm.free(b)
    assert_all_free(bm)


def test_a_fully_cached_prompt_still_computes_its_last_token():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq(list(range(8)))
    computed(bm, a)
    bm.free(a)
    b = make_seq(list(range(8)))
    assert bm.find_cached_prefix(b) == [0]  # not [0, 1]: position 7's logits are needed
    assert bm.find_cached_prefix(make_seq(list(range(9)))) == [0, 1]


def test_freed_cached_blocks_survive_until_evicted_in_lru_order():
    bm = BlockManager(num_blocks=6, block_size=4)
    a = make_seq(list(range(10)))
    computed(bm, a)  # table [0, 1, 2]; 0 and 1 hashed
    bm.free(a)
    # Unhashed block 2 first (worthless), then never-used blocks, then the
    # cached ones, the prompt's end (1) before its start (0).
    assert bm.free_block_ids() == [2, 3, 4, 5, 1, 0]
    b = make_seq(list(range(10)))
    assert bm.find_cached_prefix(b) == [0, 1]  # still cached while free
    filler = make_seq(list(range(100, 116)))
    assert bm.allocate_slots(filler, 16)  # 4 blocks: the uncached ones go first
    assert filler.block_table == [2, 3, 4, 5]
    assert bm.is_cached(1)
    one = make_seq([7, 7, 7])
    assert bm.allocate_slots(one, 3)  # evicts block 1, the least recently freed cached block
    assert one.block_table == [1]
    assert not bm.is_cached(1) and bm.is_cached(0)
    assert bm.find_cached_prefix(b) == [0]
    bm.free(filler)
    assert bm.allocate_slots(b, 6, [0])  # revives block 0 from the free list
    assert bm.ref_counts[0] == 1 and bm.num_free_blocks == 2
    for s in (b, one):
        bm.free(s)
    assert_all_free(bm)


def test_revived_cached_blocks_count_against_free_space():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = make_seq(list(range(8)))
    computed(bm, a)
    bm.free(a)
    b = make_seq([*range(4), 9, 9, 9, 9, 9, 9, 9, 9, 9])
    hits = bm.find_cached_prefix(b)
    assert hits == [0]
    # Needs block 0 (revived) + 3 new ones: 4 > 3 free blocks.
    assert not bm.allocate_slots(b, 9, hits)
    assert_all_free(bm)


def test_hash_collisions_are_misses_not_wrong_kv():
    bm = BlockManager(num_blocks=8, block_size=4, hash_fn=lambda parent, tokens: 0)
    a = make_seq(list(range(9)))
    computed(bm, a)  # block 0 registered under hash 0; block 1 collides and is not registered
    assert bm.is_cached(0) and not bm.is_cached(1)
    assert bm.find_cached_prefix(make_seq([9, 9, 9, 9, 9])) == []
    assert bm.find_cached_prefix(make_seq(list(range(9)))) == [0]
    bm.free(a)
    assert_all_free(bm)


def test_prefix_caching_off_never_hits():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_seq(list(range(9)))
    computed(bm, a)
    assert not bm.is_cached(0)
    assert bm.find_cached_prefix(make_seq(list(range(9)))) == []
    bm.free(a)
    assert bm.free_block_ids()[:3] == [0, 1, 2]
    assert_all_free(bm)


def test_sliding_window_releases_blocks_no_query_can_see():
    bm = BlockManager(num_blocks=16, block_size=4, sliding_window=6)
    seq = make_seq(list(range(10)))
    assert bm.allocate_slots(seq, 10)
    seq.num_computed_tokens = 10  # next query at position 10 sees keys 5..10
    bm.release_out_of_window(seq)
    assert seq.block_table[0] == NULL_BLOCK and seq.block_table[1:] == [1, 2]  # block 1 holds key 5
    assert bm.ref_counts[0] == 0 and bm.num_free_blocks == 14
    seq.token_ids += [1, 1, 1]
    assert bm.allocate_slots(seq, 3)
    seq.num_computed_tokens = 13  # keys 8.. alive: block 1 (4..7) dead
    bm.release_out_of_window(seq)
    assert seq.block_table[:2] == [NULL_BLOCK, NULL_BLOCK]
    assert len(seq.block_table) == 4
    bm.free(seq)
    assert_all_free(bm)


def test_digest_is_sha256_over_the_whole_chain():
    bm = BlockManager(num_blocks=8, block_size=4)
    a, b = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9]), make_seq([0, 2, 3, 4, 5, 6, 7, 8, 9])
    bm.find_cached_prefix(a)
    bm.find_cached_prefix(b)
    assert all(isinstance(h, bytes) and len(h) == 32 for h in a.block_hashes)
    assert a.block_hashes[0] == default_hash(NO_PARENT, (1, 2, 3, 4))
    assert a.block_hashes[1] != b.block_hashes[1]  # same tokens, different parent
    assert default_hash(NO_PARENT, (1, 2)) != default_hash(NO_PARENT, (1 << 32 | 1, 2))  # 64-bit ids


def test_a_collision_under_an_evicted_parent_is_a_miss_not_wrong_kv():
    """Digest = the block's last token: the parent is not in the digest at all.

    A's block 1 (tokens 5..8 after 1..4) stays cached while A's block 0 slides out of
    the window and is evicted. Z = [10, 11, 12, 4] gets block 0's digest. A prompt
    Z + 5..8 must not reuse A's block 1: its KV was computed after 1..4, not after Z.
    """
    bm = BlockManager(num_blocks=4, block_size=4, sliding_window=4, hash_fn=lambda parent, tokens: tokens[-1])
    a = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    computed(bm, a)
    bm.release_out_of_window(a)  # block 0 (1..4) freed, still cached
    assert a.block_table[0] == NULL_BLOCK and bm.is_cached(0) and bm.is_cached(1)
    z = make_seq([10, 11, 12, 4, 13])
    computed(bm, z)  # takes blocks 3 and 0: A's block 0 is evicted
    assert z.block_table == [3, 0] and bm.is_cached(3) and not bm.is_cached(0)
    hits = bm.find_cached_prefix(make_seq([10, 11, 12, 4, 5, 6, 7, 8, 9]))
    assert hits == [3]  # block 1 under the wrong parent is a miss (it was a hit before the fix)
    assert bm.find_cached_prefix(make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9])) == []  # its real parent is gone
    for s in (a, z):
        bm.free(s)
    assert_all_free(bm)


def test_an_orphaned_cache_entry_gives_way_to_the_recomputed_block():
    """After its parent is evicted, a cached block is unreachable; recomputing the chain re-registers it."""
    bm = BlockManager(num_blocks=4, block_size=4, sliding_window=4)
    a = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    computed(bm, a)
    bm.release_out_of_window(a)
    filler = make_seq([20, 21, 22, 23, 24])
    computed(bm, filler)  # evicts A's block 0; block 1 (held by A) is now an orphan
    bm.free(filler)
    b = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert bm.find_cached_prefix(b) == []
    bm.free(a)
    computed(bm, b)
    assert bm.find_cached_prefix(make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])) == b.block_table[:2]
    bm.free(b)
    assert_all_free(bm)


def test_poison_records_fresh_and_uncached_freed_blocks_never_cache_hits():
    bm = BlockManager(num_blocks=8, block_size=4, poison=True)
    a = make_seq(list(range(10)))
    computed(bm, a)  # blocks 0, 1 cached; 2 partial
    assert bm.take_poisoned() == [0, 1, 2] and bm.take_poisoned() == []
    bm.free(a)
    assert bm.take_poisoned() == [2]  # the uncached block only
    b = make_seq([*range(8), 50, 51])
    hits = bm.find_cached_prefix(b)
    computed(bm, b, hits)
    assert hits == [0, 1] and bm.take_poisoned() == [2]  # the hits hold valid KV
    bm.free(b)
    bm.take_poisoned()
    w = BlockManager(num_blocks=8, block_size=4, sliding_window=4, enable_prefix_caching=False, poison=True)
    s = make_seq(list(range(9)))
    computed(w, s)
    w.take_poisoned()
    w.release_out_of_window(s)
    assert w.take_poisoned() == [0]  # released by the window
    assert not BlockManager(num_blocks=2, block_size=4, poison=False).take_poisoned()


def test_poisoned_engine_fills_the_cache_with_nan_and_catches_a_stray_read(make_engine):
    engine = make_engine("llama", enable_prefix_caching=False)
    bm, k_cache = engine.block_manager, engine.runner.kv_caches[0][0]
    assert engine.runner.poison and k_cache.shape[0] == bm.num_blocks + 1 and k_cache.isnan().all()
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    engine.add_request(list(range(3, 13)), params)
    while engine.has_unfinished_requests():
        engine.step()
    used = [b for b in range(bm.num_blocks) if not k_cache[b].isnan().all()]
    assert used and bm.take_poisoned()  # freed blocks wait for the next step's fill
    engine.add_request(list(range(3, 13)), params, request_id="stray")
    engine.step()  # the prompt is in the cache; the first run's other blocks are NaN again
    seq = engine.requests["stray"].seqs[0]
    assert all(torch.isnan(k_cache[b]).all() for b in used if b not in seq.block_table)
    bm._poisoned.append(seq.block_table[0])  # as if its first block had never been written
    with pytest.raises(EngineStepError, match="poisoned KV read"):
        engine.step()
    assert bm.num_free_blocks == bm.num_blocks
