"""Per-request block tables over a ``BlockPool``, with prefix caching. Torch-free.

Protocol the scheduler follows for one request:

1. at admission, ``get_computed_blocks(request)`` finds the longest cached prefix (whole blocks,
   walking from block 0 and stopping at the first miss, never covering the last token, so at
   least one token is always computed and the request samples);
2. ``allocate_slots(request, n, num_new_computed_tokens=h, new_computed_blocks=blocks)`` makes
   room for ``n`` new tokens after ``request.num_computed_tokens + h``; it returns the ids of the
   blocks appended to the table, or None, changing nothing, when the pool cannot supply them;
3. once the step's tokens are committed (the scheduler advanced ``num_computed_tokens``),
   ``cache_blocks(request, request.num_computed_tokens)`` registers the blocks that became full.
   The scheduler calls it at the end of ``schedule()``: the KV is written by that step, which
   runs before any later step can read it;
4. ``free(request)`` returns the blocks tail first (prefixes outlive suffixes).

Prefix caching is skipped for requests that want prompt logprobs (every prompt position must be
scored) and when ``enable_caching`` is False.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_core.engine.block_pool import BlockPool, KVBlock
from vllm_core.engine.prefix_cache import (
    HashFn,
    PrefixCacheStats,
    block_key,
    hash_block_tokens,
    update_block_hashes,
)
from vllm_core.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Owns the block tables of all running requests."""

    def __init__(self, num_blocks: int, block_size: int, *, enable_caching: bool = True,
                 log_stats: bool = True, hash_fn: HashFn = hash_block_tokens) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.log_stats = log_stats
        self.hash_fn = hash_fn
        self.block_pool = BlockPool(num_blocks, enable_caching=enable_caching)
        self.req_to_blocks: dict[str, list[KVBlock]] = {}
        self._num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_stats = PrefixCacheStats()

    # ------------------------------------------------------------------ queries
    @property
    def usage(self) -> float:
        return self.block_pool.usage

    @property
    def num_usable_blocks(self) -> int:
        return self.block_pool.num_usable_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, ())]

    def uses_prefix_cache(self, request: Request) -> bool:
        return self.enable_caching and request.sampling_params.prompt_logprobs is None

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of ``request.all_token_ids``: (blocks, number of tokens).

        Walks full blocks from block 0 and stops at the first miss; at most
        ``num_tokens - 1`` tokens are covered. Nothing changes (no references are taken).
        """
        if not self.uses_prefix_cache(request):
            return [], 0
        bs = self.block_size
        hashes = update_block_hashes(request, bs, self.hash_fn)
        max_blocks = (request.num_tokens - 1) // bs
        hits: list[KVBlock] = []
        for i in range(min(max_blocks, len(hashes))):
            block = self.block_pool.get_cached_block(hashes[i], block_key(request, i, bs))
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * bs

    # ------------------------------------------------------------------ allocation
    def allocate_slots(self, request: Request, num_new_tokens: int,
                       num_new_computed_tokens: int = 0,
                       new_computed_blocks: Sequence[KVBlock] = ()) -> list[int] | None:
        """Make room for ``num_new_tokens`` after the computed (and newly hit) tokens.

        ``new_computed_blocks`` / ``num_new_computed_tokens`` come from ``get_computed_blocks``
        and are only accepted for a request that holds no blocks yet. Returns the ids appended
        to the block table (hit blocks first), possibly empty; None when the pool cannot supply
        them, in which case nothing changed.
        """
        req_id = request.request_id
        blocks = self.req_to_blocks.get(req_id)
        if blocks is not None and not new_computed_blocks and num_new_tokens >= 0:
            # Fast path (decodes, later chunks): grow an existing table.
            total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
            num_new_blocks = -(-total // self.block_size) - len(blocks)
            if num_new_blocks <= 0:
                return []
            if not self.block_pool.can_allocate(num_new_blocks):
                return None
            new_blocks = self.block_pool.allocate(num_new_blocks)
            blocks.extend(new_blocks)
            return [b.block_id for b in new_blocks]

        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        if num_new_computed_tokens != len(new_computed_blocks) * self.block_size:
            raise ValueError(f"num_new_computed_tokens ({num_new_computed_tokens}) must equal "
                             f"len(new_computed_blocks) * block_size "
                             f"({len(new_computed_blocks)} * {self.block_size})")
        num_existing = len(blocks) if blocks is not None else 0
        if new_computed_blocks and num_existing:
            raise ValueError(f"request {req_id!r} already holds blocks; prefix hits are only "
                             f"accepted at admission")
        total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        num_new_blocks = max(self.num_blocks_for(total) - num_existing
                             - len(new_computed_blocks), 0)
        num_revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if not self.block_pool.can_allocate(num_new_blocks + num_revived):
            return None

        # Commit.
        if blocks is None:
            blocks = self.req_to_blocks[req_id] = []
            self._num_cached_blocks[req_id] = len(new_computed_blocks)
            if self.log_stats and self.uses_prefix_cache(request):
                self.prefix_cache_stats.record(request.num_tokens, num_new_computed_tokens)
        self.block_pool.touch(new_computed_blocks)
        new_blocks = self.block_pool.allocate(num_new_blocks)
        blocks.extend(new_computed_blocks)
        blocks.extend(new_blocks)
        return [b.block_id for b in new_computed_blocks] + [b.block_id for b in new_blocks]

    def cache_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Register the request's blocks that are full within ``num_computed_tokens``."""
        if not self.enable_caching:
            return
        req_id = request.request_id
        start = self._num_cached_blocks.get(req_id)
        if start is None or num_computed_tokens // self.block_size <= start:
            return
        blocks = self.req_to_blocks[req_id]
        end = min(num_computed_tokens // self.block_size, len(blocks))
        if end <= start:
            return
        hashes = update_block_hashes(request, self.block_size, self.hash_fn)
        for i in range(start, end):
            self.block_pool.cache_block(blocks[i], hashes[i],
                                        block_key(request, i, self.block_size))
        self._num_cached_blocks[req_id] = end

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first. Safe to call for a request with none."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        if blocks:
            self.block_pool.free(reversed(blocks))

    # ------------------------------------------------------------------ stats / admin
    def take_prefix_cache_stats(self) -> PrefixCacheStats:
        """Prefix-cache counters since the last call (then reset)."""
        return self.prefix_cache_stats.take()

    def reset_prefix_cache(self) -> bool:
        return self.block_pool.reset_prefix_cache()
