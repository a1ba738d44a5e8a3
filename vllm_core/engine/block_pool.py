"""Fixed-size KV blocks: reference counts, an LRU free queue, and the prefix-cache map. Torch-free.

Block ids index the KV-cache tensors the workers allocate (``num_blocks`` of them). Block 0 is
the null block: reserved, never handed out, never freed (workers may point padding at it).

Invariants:
- a block with ``ref_cnt > 0`` is used by that many block tables and is not in the free queue;
  a block with ``ref_cnt == 0`` (other than the null block) is in the free queue, so
  ``get_num_free_blocks() + used == num_blocks - 1``;
- a free block may still hold a cached prefix (its hash stays registered) until it is evicted:
  ``allocate`` takes blocks from the front of the free queue (least recently used) and removes
  the hash of any cached block it takes; ``touch`` revives a cached free block in O(1);
- ``free`` returns blocks in the order given; callers pass a request's blocks tail first so
  that the prefix blocks, appended last, are evicted last. A freed block that holds no cached
  prefix carries nothing worth keeping and goes to the front (reused first);
- every resource operation is a check-then-commit pair: ``can_allocate(n)`` then
  ``allocate(n)``; ``allocate`` raises without changing anything when the check would fail.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vllm_core.engine.prefix_cache import BlockHash, BlockKey

NULL_BLOCK_ID = 0


@dataclass(slots=True, eq=False)
class KVBlock:
    """One block's metadata. ``block_hash``/``block_key`` are set while it holds a cached prefix."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None
    block_key: BlockKey | None = None
    prev_free: KVBlock | None = None
    next_free: KVBlock | None = None

    def __repr__(self) -> str:
        cached = "cached" if self.block_hash is not None else "uncached"
        return f"KVBlock({self.block_id}, ref={self.ref_cnt}, {cached})"


class FreeBlockQueue:
    """Doubly linked list of free blocks in LRU order (front = evicted / reused first).

    All operations are O(1), including ``remove`` of a block from the middle (a prefix-cache hit
    on a free block). A block is in the queue iff its ``prev_free`` link is set.
    """

    def __init__(self, blocks: Iterable[KVBlock] = ()) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        node = self._head.next_free
        while node is not self._tail:
            assert node is not None
            yield node
            node = node.next_free

    def __contains__(self, block: KVBlock) -> bool:
        return block.prev_free is not None

    def _link_after(self, prev: KVBlock, block: KVBlock) -> None:
        if block.prev_free is not None:
            raise RuntimeError(f"{block!r} is already in the free queue")
        nxt = prev.next_free
        assert nxt is not None
        block.prev_free, block.next_free = prev, nxt
        prev.next_free = block
        nxt.prev_free = block
        self._len += 1

    def append(self, block: KVBlock) -> None:
        """Put ``block`` at the back (most recently used, evicted last)."""
        prev = self._tail.prev_free
        assert prev is not None
        self._link_after(prev, block)

    def appendleft(self, block: KVBlock) -> None:
        """Put ``block`` at the front (reused first)."""
        self._link_after(self._head, block)

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        if prev is None or nxt is None:
            raise RuntimeError(f"{block!r} is not in the free queue")
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self._len -= 1

    def popleft(self) -> KVBlock:
        block = self._head.next_free
        if block is self._tail or block is None:
            raise RuntimeError("the free block queue is empty")
        self.remove(block)
        return block


class BlockPool:
    """Owns every ``KVBlock``: allocation, sharing (ref counts), freeing and the prefix map."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 2:
            raise ValueError(f"num_blocks must be an integer >= 2 (block 0 is reserved), "
                             f"got {num_blocks!r}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.null_block = self.blocks[NULL_BLOCK_ID]
        self.free_queue = FreeBlockQueue(self.blocks[1:])
        self._cached: dict[BlockHash, KVBlock] = {}

    # ------------------------------------------------------------------ capacity
    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    def get_num_free_blocks(self) -> int:
        """Blocks no request uses (cached free blocks included: they can be evicted)."""
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks in use by requests, 0..1."""
        return 1.0 - len(self.free_queue) / self.num_usable_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    # ------------------------------------------------------------------ allocate / free
    def can_allocate(self, num_blocks: int) -> bool:
        return 0 <= num_blocks <= len(self.free_queue)

    def allocate(self, num_blocks: int) -> list[KVBlock]:
        """Take ``num_blocks`` fresh blocks (ref_cnt 1) from the LRU end, evicting their hashes.

        Raises RuntimeError, changing nothing, if ``can_allocate(num_blocks)`` is False.
        """
        if not self.can_allocate(num_blocks):
            raise RuntimeError(f"cannot allocate {num_blocks} blocks: "
                               f"{len(self.free_queue)} free")
        out = []
        for _ in range(num_blocks):
            block = self.free_queue.popleft()
            self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add a reference to each block (prefix-cache hits), reviving free ones."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block, in the given order (pass tail first)."""
        for block in blocks:
            if block is self.null_block:
                raise RuntimeError("the null block is never allocated and cannot be freed")
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of {block!r}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    self.free_queue.appendleft(block)
                else:
                    self.free_queue.append(block)

    # ------------------------------------------------------------------ prefix cache
    def get_cached_block(self, block_hash: BlockHash, key: BlockKey) -> KVBlock | None:
        """The block holding this prefix, or None; a hash match with another key is a miss."""
        block = self._cached.get(block_hash)
        if block is None or block.block_key != key:
            return None
        return block

    def cache_block(self, block: KVBlock, block_hash: BlockHash, key: BlockKey) -> bool:
        """Register a full, in-use block under ``block_hash``.

        Returns False (and leaves the block uncached) when caching is disabled or another block
        already holds that hash: the same prefix computed twice, or a hash collision.
        """
        if not self.enable_caching or block_hash in self._cached:
            return False
        if block.ref_cnt <= 0 or block is self.null_block:
            raise RuntimeError(f"only an allocated block can be cached, got {block!r}")
        if block.block_hash is not None:
            raise RuntimeError(f"{block!r} already holds a cached prefix")
        block.block_hash = block_hash
        block.block_key = key
        self._cached[block_hash] = block
        return True

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) is block:
                del self._cached[block.block_hash]
            block.block_hash = None
            block.block_key = None

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; only possible (returns True) when no block is in use."""
        if len(self.free_queue) != self.num_usable_blocks:
            return False
        for block in self.blocks[1:]:
            self._evict(block)
        return True
