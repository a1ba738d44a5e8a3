"""KVCacheManager: block tables, check-then-commit allocation, caching as tokens compute, free."""

from __future__ import annotations

import pytest

from vllm_core.engine.kv_cache_manager import KVCacheManager
from vllm_core.engine.request import Request
from vllm_core.sampling.params import SamplingParams

BS = 4


def _req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=8))


def test_allocate_slots_grows_the_table_and_returns_new_ids() -> None:
    mgr = KVCacheManager(10, BS)
    req = _req("a", list(range(6)))
    ids = mgr.allocate_slots(req, 6)
    assert ids is not None and len(ids) == 2 and mgr.get_block_ids("a") == ids
    req.num_computed_tokens = 6
    req.append_output_token_ids(6)
    assert mgr.allocate_slots(req, 1) == []                       # token 7 fits in block 1
    req.num_computed_tokens = 7
    req.append_output_token_ids(7)
    req.num_computed_tokens = 8
    req.append_output_token_ids(8)
    new = mgr.allocate_slots(req, 1)                              # token 9 needs block 2
    assert new is not None and len(new) == 1
    assert mgr.get_block_ids("a") == ids + new
    assert mgr.usage == pytest.approx(3 / 9)


def test_allocation_failure_changes_nothing() -> None:
    mgr = KVCacheManager(5, BS)                                   # 4 usable
    a = _req("a", list(range(12)))
    assert mgr.allocate_slots(a, 12) is not None
    free_before = mgr.block_pool.get_num_free_blocks()
    b = _req("b", list(range(8)))
    assert mgr.allocate_slots(b, 8) is None
    assert mgr.block_pool.get_num_free_blocks() == free_before
    assert "b" not in mgr.req_to_blocks
    assert mgr.take_prefix_cache_stats().requests == 1            # b was not counted


def test_revived_hits_count_against_free_blocks() -> None:
    mgr = KVCacheManager(5, BS)                                   # 4 usable
    a = _req("a", list(range(9)))
    mgr.allocate_slots(a, 9)
    a.num_computed_tokens = 9
    mgr.cache_blocks(a, 9)
    mgr.free(a)                                                   # 2 cached + 1 plain free
    b = _req("b", list(range(9)) + list(range(50, 60)))           # 19 tokens: 5 blocks
    hits, n = mgr.get_computed_blocks(b)
    assert n == 8
    # 2 revived + 3 new = 5 > 4 free: must refuse and leave the hit blocks cached and free
    assert mgr.allocate_slots(b, b.num_tokens - n, n, hits) is None
    assert all(h.ref_cnt == 0 and h in mgr.block_pool.free_queue for h in hits)
    c = _req("c", list(range(9)) + [70, 71, 72])                  # 12 tokens: 3 blocks
    hits, n = mgr.get_computed_blocks(c)
    ids = mgr.allocate_slots(c, c.num_tokens - n, n, hits)
    assert ids is not None and ids[:2] == [h.block_id for h in hits]
    assert all(h.ref_cnt == 1 for h in hits)


def test_cache_blocks_registers_only_full_computed_blocks() -> None:
    mgr = KVCacheManager(10, BS)
    req = _req("a", list(range(10)))
    mgr.allocate_slots(req, 6)                                    # chunk 1: tokens 0..5
    req.num_computed_tokens = 6
    mgr.cache_blocks(req, 6)
    assert mgr.block_pool.num_cached_blocks == 1
    mgr.allocate_slots(req, 4)
    req.num_computed_tokens = 10
    mgr.cache_blocks(req, 10)
    assert mgr.block_pool.num_cached_blocks == 2                  # block 2 holds 2 of 4


def test_shared_blocks_ref_counts_and_tail_first_free() -> None:
    mgr = KVCacheManager(16, BS)
    a = _req("a", list(range(13)))
    mgr.allocate_slots(a, 13)
    a.num_computed_tokens = 13
    mgr.cache_blocks(a, 13)
    b = _req("b", list(range(13)))
    hits, n = mgr.get_computed_blocks(b)
    assert n == 12
    mgr.allocate_slots(b, 1, n, hits)
    a_ids, b_ids = mgr.get_block_ids("a"), mgr.get_block_ids("b")
    assert a_ids[:3] == b_ids[:3] and a_ids[3] != b_ids[3]
    assert [blk.ref_cnt for blk in mgr.req_to_blocks["a"]] == [2, 2, 2, 1]
    mgr.free(a)
    assert [blk.ref_cnt for blk in mgr.req_to_blocks["b"]] == [1, 1, 1, 1]
    mgr.free(b)
    order = [blk.block_id for blk in mgr.block_pool.free_queue]
    # b's uncached tail block goes to the front; the cached prefix is freed tail first
    assert order[0] == b_ids[3]
    assert order.index(b_ids[2]) < order.index(b_ids[1]) < order.index(b_ids[0])
    assert mgr.usage == 0.0
    mgr.free(b)                                                    # second free is a no-op


def test_argument_checks() -> None:
    mgr = KVCacheManager(10, BS)
    req = _req("a", list(range(6)))
    with pytest.raises(ValueError, match="num_new_tokens"):
        mgr.allocate_slots(req, -1)
    with pytest.raises(ValueError, match="num_new_computed_tokens"):
        mgr.allocate_slots(req, 1, num_new_computed_tokens=4)
    with pytest.raises(ValueError, match="block_size"):
        KVCacheManager(10, 0)
