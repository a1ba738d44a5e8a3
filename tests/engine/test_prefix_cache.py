"""Prefix caching: chained hashes, lookup walks, last token recomputed, eviction, collisions."""

from __future__ import annotations

from vllm_core.engine.kv_cache_manager import KVCacheManager
from vllm_core.engine.prefix_cache import (
    BlockKey,
    block_key,
    hash_block_tokens,
    update_block_hashes,
)
from vllm_core.engine.request import Request
from vllm_core.sampling.params import SamplingParams

BS = 4


def _req(rid: str, tokens: list[int], **kw) -> Request:
    params = kw.pop("params", None) or SamplingParams(max_tokens=4)
    return Request(rid, tokens, params, **kw)


def _compute(mgr: KVCacheManager, req: Request) -> None:
    """Admit ``req`` with its prefix hits and compute all its tokens (as one scheduler step)."""
    hits, num_hit = mgr.get_computed_blocks(req)
    assert mgr.allocate_slots(req, req.num_tokens - num_hit, num_hit, hits) is not None
    req.num_computed_tokens = req.num_tokens
    mgr.cache_blocks(req, req.num_computed_tokens)


def test_hash_chains_parent_tokens_and_extra_keys() -> None:
    h0 = hash_block_tokens(None, [1, 2, 3, 4])
    assert h0 == hash_block_tokens(None, [1, 2, 3, 4])          # deterministic
    assert len(h0) == 32                                          # sha256 digest
    assert hash_block_tokens(h0, [5, 6, 7, 8]) != hash_block_tokens(None, [5, 6, 7, 8])
    other_parent = hash_block_tokens(None, [1, 2, 3, 5])
    assert hash_block_tokens(h0, [5, 6, 7, 8]) != hash_block_tokens(other_parent, [5, 6, 7, 8])
    assert hash_block_tokens(None, [1, 2, 3, 4], (1, None)) != h0
    assert hash_block_tokens(None, [1, 2, 3, 4], (0, "a")) != hash_block_tokens(
        None, [1, 2, 3, 4], (0, "b"))
    # unambiguous encoding: token 256 is not tokens (0, 1)
    assert hash_block_tokens(None, [256]) != hash_block_tokens(None, [0, 1])


def test_block_hashes_cover_full_blocks_only_and_grow() -> None:
    req = _req("a", list(range(10)))
    hashes = update_block_hashes(req, BS)
    assert len(hashes) == 2                                       # 10 tokens: 2 full blocks
    assert hashes[1] == hash_block_tokens(hashes[0], [4, 5, 6, 7], (0, None))
    req.append_output_token_ids([10, 11])
    assert len(update_block_hashes(req, BS)) == 3
    assert block_key(req, 2, BS) == BlockKey(hashes[1], (8, 9, 10, 11), (0, None))


def test_lookup_hits_shared_prefix_and_stops_at_first_miss() -> None:
    mgr = KVCacheManager(32, BS)
    a = _req("a", list(range(17)))                                # 4 full blocks
    _compute(mgr, a)
    # b shares blocks 0, 1, differs in block 2, equal tokens again in block 3
    b_tokens = list(range(17))
    b_tokens[9] = 99
    b = _req("b", b_tokens)
    hits, n = mgr.get_computed_blocks(b)
    assert n == 8 and [h.block_id for h in hits] == mgr.get_block_ids("a")[:2]


def test_lookup_stops_at_a_missing_block_even_if_later_ones_are_cached() -> None:
    mgr = KVCacheManager(32, BS)
    a = _req("a", list(range(13)))
    assert mgr.allocate_slots(a, 13) is not None
    hashes = update_block_hashes(a, BS)
    blocks = mgr.req_to_blocks["a"]
    pool = mgr.block_pool
    pool.cache_block(blocks[0], hashes[0], block_key(a, 0, BS))
    pool.cache_block(blocks[2], hashes[2], block_key(a, 2, BS))  # block 1 not cached
    hits, n = mgr.get_computed_blocks(_req("b", list(range(13))))
    assert n == BS and hits == [blocks[0]]


def test_last_prompt_token_is_always_recomputed() -> None:
    mgr = KVCacheManager(32, BS)
    _compute(mgr, _req("a", list(range(8))))
    # a fully cached prompt of exactly 2 blocks: only 1 block may be used
    hits, n = mgr.get_computed_blocks(_req("b", list(range(8))))
    assert n == 4 and len(hits) == 1
    # one more token: both blocks are usable, the 9th token is computed
    hits, n = mgr.get_computed_blocks(_req("c", list(range(9))))
    assert n == 8


def test_eviction_removes_hash() -> None:
    mgr = KVCacheManager(5, BS)                                   # 4 usable blocks
    a = _req("a", list(range(8)))
    _compute(mgr, a)
    mgr.free(a)
    assert mgr.block_pool.num_cached_blocks == 2
    assert mgr.get_computed_blocks(_req("b", list(range(9))))[1] == 8
    other = _req("c", list(range(100, 116)))                      # needs all 4 blocks
    assert mgr.allocate_slots(other, 16) is not None
    assert mgr.block_pool.num_cached_blocks == 0
    assert mgr.get_computed_blocks(_req("d", list(range(9)))) == ([], 0)


def test_collision_guard_rejects_same_hash_different_content() -> None:
    def weak_hash(parent, tokens, extra) -> bytes:
        return b"always-the-same"

    mgr = KVCacheManager(32, BS, hash_fn=weak_hash)
    a = _req("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    _compute(mgr, a)
    assert mgr.block_pool.num_cached_blocks == 1                  # block 1 collided: not cached
    # different tokens, same (weak) hash: must be a miss
    assert mgr.get_computed_blocks(_req("b", [9, 9, 9, 9, 5, 6, 7, 8, 9])) == ([], 0)
    # same first block: hit it, then block 1's lookup finds block 0 by hash and rejects it
    hits, n = mgr.get_computed_blocks(_req("c", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert n == 4 and [h.block_id for h in hits] == mgr.get_block_ids("a")[:1]


def test_extra_keys_isolate_lora_and_cache_salt() -> None:
    mgr = KVCacheManager(32, BS)
    tokens = list(range(9))
    _compute(mgr, _req("a", tokens, lora_id=1, cache_salt="s1"))
    assert mgr.get_computed_blocks(_req("b", tokens))[1] == 0
    assert mgr.get_computed_blocks(_req("c", tokens, lora_id=2, cache_salt="s1"))[1] == 0
    assert mgr.get_computed_blocks(_req("d", tokens, lora_id=1, cache_salt="s2"))[1] == 0
    assert mgr.get_computed_blocks(_req("e", tokens, lora_id=1, cache_salt="s1"))[1] == 8


def test_prompt_logprobs_and_disabled_caching_skip_the_cache() -> None:
    mgr = KVCacheManager(32, BS)
    _compute(mgr, _req("a", list(range(9))))
    wants_lp = _req("b", list(range(9)), params=SamplingParams(prompt_logprobs=1))
    assert mgr.get_computed_blocks(wants_lp) == ([], 0)

    off = KVCacheManager(32, BS, enable_caching=False)
    _compute(off, _req("a", list(range(9))))
    assert off.block_pool.num_cached_blocks == 0
    assert off.get_computed_blocks(_req("b", list(range(9)))) == ([], 0)
    assert off.take_prefix_cache_stats().queries == 0


def test_hit_and_query_counters_in_tokens() -> None:
    mgr = KVCacheManager(32, BS)
    _compute(mgr, _req("a", list(range(9))))
    _compute(mgr, _req("b", list(range(10))))
    stats = mgr.take_prefix_cache_stats()
    assert (stats.requests, stats.queries, stats.hits) == (2, 19, 8)
    again = mgr.take_prefix_cache_stats()
    assert (again.requests, again.queries, again.hits) == (0, 0, 0)
