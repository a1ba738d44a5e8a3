"""BlockPool and FreeBlockQueue: ref counts, LRU order, null block, check-then-commit."""

from __future__ import annotations

import pytest

from vllm_core.engine.block_pool import NULL_BLOCK_ID, BlockPool, FreeBlockQueue, KVBlock
from vllm_core.engine.prefix_cache import BlockKey, hash_block_tokens


def _key(tokens: tuple[int, ...]) -> tuple[bytes, BlockKey]:
    return hash_block_tokens(None, tokens, ()), BlockKey(None, tokens, ())


def _queue_ids(pool: BlockPool) -> list[int]:
    return [b.block_id for b in pool.free_queue]


def test_free_queue_o1_operations() -> None:
    blocks = [KVBlock(i) for i in range(5)]
    q = FreeBlockQueue(blocks)
    assert [b.block_id for b in q] == [0, 1, 2, 3, 4] and len(q) == 5
    q.remove(blocks[2])                     # from the middle
    assert [b.block_id for b in q] == [0, 1, 3, 4] and blocks[2] not in q
    q.appendleft(blocks[2])
    assert [b.block_id for b in q] == [2, 0, 1, 3, 4]
    assert q.popleft() is blocks[2]
    q.append(blocks[2])
    assert [b.block_id for b in q] == [0, 1, 3, 4, 2]
    with pytest.raises(RuntimeError):
        q.append(blocks[2])                 # already queued
    for _ in range(5):
        q.popleft()
    assert len(q) == 0
    with pytest.raises(RuntimeError):
        q.popleft()
    with pytest.raises(RuntimeError):
        q.remove(blocks[0])


def test_null_block_is_never_handed_out() -> None:
    pool = BlockPool(6)
    assert pool.num_usable_blocks == 5 and pool.get_num_free_blocks() == 5
    got = pool.allocate(5)
    assert sorted(b.block_id for b in got) == [1, 2, 3, 4, 5]
    assert NULL_BLOCK_ID not in {b.block_id for b in got}
    assert not pool.can_allocate(1) and pool.get_num_free_blocks() == 0
    with pytest.raises(RuntimeError):
        pool.free([pool.null_block])
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(1)


def test_check_then_commit_leaves_state_unchanged_on_failure() -> None:
    pool = BlockPool(5)
    held = pool.allocate(2)
    before = _queue_ids(pool)
    assert pool.can_allocate(2) and not pool.can_allocate(3)
    with pytest.raises(RuntimeError, match="cannot allocate 3"):
        pool.allocate(3)
    assert _queue_ids(pool) == before and pool.get_num_free_blocks() == 2
    assert all(b.ref_cnt == 1 for b in held)
    assert pool.allocate(0) == []


def test_ref_counts_share_and_free() -> None:
    pool = BlockPool(4)
    (b,) = pool.allocate(1)
    assert b.ref_cnt == 1
    pool.touch([b])
    assert b.ref_cnt == 2 and b not in pool.free_queue
    pool.free([b])
    assert b.ref_cnt == 1 and b not in pool.free_queue   # still used by the other table
    pool.free([b])
    assert b.ref_cnt == 0 and b in pool.free_queue
    with pytest.raises(RuntimeError, match="double free"):
        pool.free([b])


def test_lru_order_and_tail_first_free() -> None:
    pool = BlockPool(6)
    blocks = pool.allocate(3)                               # a request's table: 1, 2, 3
    for i, blk in enumerate(blocks):
        h, k = _key((i,))
        assert pool.cache_block(blk, h, k)
    pool.free(reversed(blocks))                             # tail first
    # untouched blocks 4, 5 first, then the request's tail before its prefix
    assert _queue_ids(pool) == [4, 5, 3, 2, 1]
    first = pool.allocate(3)
    assert [b.block_id for b in first] == [4, 5, 3]         # LRU end; block 3's hash evicted
    assert pool.get_cached_block(*_key((2,))) is None
    assert pool.get_cached_block(*_key((0,))) is blocks[0]  # prefix outlived the suffix


def test_uncached_freed_block_is_reused_first() -> None:
    pool = BlockPool(5)
    a, b = pool.allocate(2)
    pool.cache_block(a, *_key((7,)))
    pool.free([b, a])                                       # b holds nothing worth keeping
    assert _queue_ids(pool)[0] == b.block_id
    assert _queue_ids(pool)[-1] == a.block_id


def test_touch_revives_cached_free_block_from_the_middle() -> None:
    pool = BlockPool(5)
    blocks = pool.allocate(4)
    for i, blk in enumerate(blocks):
        pool.cache_block(blk, *_key((i,)))
    pool.free(blocks)
    hit = pool.get_cached_block(*_key((2,)))
    assert hit is blocks[2]
    pool.touch([hit])
    assert hit.ref_cnt == 1 and hit.block_id not in _queue_ids(pool)
    assert pool.get_num_free_blocks() == 3
    assert hit.block_hash is not None                       # a revived hit keeps its hash


def test_usage_and_cache_rules() -> None:
    pool = BlockPool(5)
    assert pool.usage == 0.0
    blocks = pool.allocate(2)
    assert pool.usage == pytest.approx(0.5)
    h, k = _key((1, 2))
    assert pool.cache_block(blocks[0], h, k)
    assert not pool.cache_block(blocks[1], h, k)            # same hash: first wins
    assert blocks[1].block_hash is None and pool.num_cached_blocks == 1
    free_block = pool.free_queue.popleft()
    pool.free_queue.appendleft(free_block)
    with pytest.raises(RuntimeError):
        pool.cache_block(free_block, *_key((9,)))           # not allocated
    assert not pool.reset_prefix_cache()                    # blocks in use
    pool.free(blocks)
    assert pool.usage == 0.0
    assert pool.reset_prefix_cache() and pool.num_cached_blocks == 0


def test_caching_disabled_registers_nothing() -> None:
    pool = BlockPool(4, enable_caching=False)
    (b,) = pool.allocate(1)
    assert not pool.cache_block(b, *_key((1,)))
    assert pool.get_cached_block(*_key((1,))) is None
