"""Prefix-cache hashing: the identity of a full KV block's content. Torch-free.

A full block's hash chains three things: the previous block's hash (the root hash for block 0),
the block's token ids, and extra keys that change the KV without changing the tokens (LoRA id,
cache salt, and the content hashes of the images whose placeholder tokens fall in the block). Two blocks with equal hashes therefore hold the KV of the same whole prefix.

The hash is SHA-256 over an unambiguous byte encoding (fixed-size parent digest, length-prefixed
extra keys, little-endian int64 tokens). As a guard against collisions (or a weak ``hash_fn``
injected in tests), a cached block also stores its ``BlockKey`` (parent hash, token ids, extra
keys) and a lookup only hits when the stored key equals the query's key.

Partial blocks are never hashed or shared.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.engine.request import Request

BlockHash = bytes
HashFn = Callable[["BlockHash | None", Sequence[int], tuple], BlockHash]

ROOT_HASH: BlockHash = hashlib.sha256(b"vllm-core prefix cache root").digest()


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int],
                      extra_keys: tuple = ()) -> BlockHash:
    """SHA-256 digest of (parent hash, extra keys, token ids); ``parent=None`` for block 0."""
    extra = repr(extra_keys).encode()
    h = hashlib.sha256(parent if parent is not None else ROOT_HASH)
    h.update(struct.pack("<I", len(extra)))
    h.update(extra)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


@dataclass(slots=True, frozen=True)
class BlockKey:
    """The full identity of a cached block's content, compared on every hit."""

    parent: BlockHash | None
    token_ids: tuple[int, ...]
    extra_keys: tuple


def request_extra_keys(request: Request) -> tuple:
    """Keys that isolate requests whose tokens match but whose KV differs."""
    return (request.lora_id, request.cache_salt)


def block_extra_keys(request: Request, index: int, block_size: int) -> tuple:
    """``request_extra_keys`` plus the hashes of the images whose placeholder tokens fall in
    block ``index`` (equal placeholder tokens of different images hold different KV)."""
    keys = request_extra_keys(request)
    feats = request.mm_features
    if feats is None or not feats.items:
        return keys
    start = index * block_size
    return keys + feats.block_extra_keys(start, start + block_size)


def block_key(request: Request, index: int, block_size: int) -> BlockKey:
    """The key of full block ``index`` of ``request.all_token_ids`` (its hash must exist)."""
    start = index * block_size
    return BlockKey(parent=request.block_hashes[index - 1] if index > 0 else None,
                    token_ids=tuple(request.all_token_ids[start:start + block_size]),
                    extra_keys=block_extra_keys(request, index, block_size))


def update_block_hashes(request: Request, block_size: int,
                        hash_fn: HashFn = hash_block_tokens) -> list[BlockHash]:
    """Extend ``request.block_hashes`` to cover every full block of its tokens; return it."""
    hashes = request.block_hashes
    num_full = request.num_tokens // block_size
    if len(hashes) < num_full:
        tokens = request.all_token_ids
        for i in range(len(hashes), num_full):
            parent = hashes[i - 1] if i > 0 else None
            hashes.append(hash_fn(parent, tokens[i * block_size:(i + 1) * block_size],
                                  block_extra_keys(request, i, block_size)))
    return hashes


@dataclass(slots=True)
class PrefixCacheStats:
    """Counters in tokens: ``queries`` looked up at admission, ``hits`` of them found cached."""

    requests: int = 0
    queries: int = 0
    hits: int = 0

    def record(self, num_queried: int, num_hit: int) -> None:
        self.requests += 1
        self.queries += num_queried
        self.hits += num_hit

    def take(self) -> PrefixCacheStats:
        """Return the counts so far and reset them."""
        out = PrefixCacheStats(self.requests, self.queries, self.hits)
        self.requests = self.queries = self.hits = 0
        return out
