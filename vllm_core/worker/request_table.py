"""``RequestTable``: the worker's persistent numpy state of the live requests, one row ("slot")
each, updated from the scheduler's deltas only.

A step's flat inputs are gathered from it with vectorised indexing (``StepPlan``); no Python
loop runs over tokens. The Python-side per-request state the sampler needs (live output lists,
generators, penalty caches) lives next to it in ``CachedRequestState``.
"""

from __future__ import annotations

import numpy as np


class RequestTable:
    """Rows of live requests.

    Invariants, for a slot ``s`` in use: ``token_ids[s, :num_tokens[s]]`` are the request's
    prompt + output ids known on the host (a token still being sampled by a step in flight is
    not there yet); ``block_table[s, :num_blocks[s]]`` its KV blocks; ``num_computed[s]`` the
    scheduler's computed count at the start of the current step; ``lora_ids[s]`` its adapter id
    (0: none). Slots are recycled through a free list; capacity doubles on demand.
    """

    def __init__(self, capacity: int, max_model_len: int, max_blocks: int) -> None:
        self.max_len = max_model_len + 1          # room for the token sampled at the limit
        self.max_blocks = max_blocks
        self.slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self.token_ids = np.zeros((0, self.max_len), dtype=np.int64)
        self.block_table = np.zeros((0, max_blocks), dtype=np.int64)
        self.num_tokens = np.zeros(0, dtype=np.int64)
        self.num_blocks = np.zeros(0, dtype=np.int64)
        self.num_computed = np.zeros(0, dtype=np.int64)
        self.lora_ids = np.zeros(0, dtype=np.int64)
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        old = self.num_tokens.shape[0]
        if capacity <= old:
            return

        def grow(a: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            out[:old] = a
            return out

        for name in ("token_ids", "block_table", "num_tokens", "num_blocks", "num_computed",
                     "lora_ids"):
            setattr(self, name, grow(getattr(self, name)))
        self._free.extend(range(capacity - 1, old - 1, -1))

    def add(self, req_id: str, token_ids: list[int], block_ids: list[int], num_computed: int,
            lora_id: int = 0) -> int:
        """Insert (or, for a resumed request, overwrite) a request; returns its slot."""
        n = len(token_ids)
        if n > self.max_len or len(block_ids) > self.max_blocks:
            raise ValueError(f"request {req_id!r} has {n} tokens / {len(block_ids)} blocks, more "
                             f"than max_model_len allows")
        slot = self.slot_of.get(req_id)
        if slot is None:
            if not self._free:
                self._grow(2 * self.num_tokens.shape[0])
            slot = self._free.pop()
            self.slot_of[req_id] = slot
        self.token_ids[slot, :n] = token_ids
        self.num_tokens[slot] = n
        self.block_table[slot, :len(block_ids)] = block_ids
        self.num_blocks[slot] = len(block_ids)
        self.num_computed[slot] = num_computed
        self.lora_ids[slot] = lora_id
        return slot

    def remove(self, req_id: str) -> None:
        slot = self.slot_of.pop(req_id, None)
        if slot is not None:
            self._free.append(slot)

    def extend_blocks(self, slot: int, block_ids: list[int]) -> None:
        start = int(self.num_blocks[slot])
        end = start + len(block_ids)
        if end > self.max_blocks:
            raise ValueError(f"block table of slot {slot} would hold {end} blocks, more than "
                             f"max_model_len allows ({self.max_blocks})")
        self.block_table[slot, start:end] = block_ids
        self.num_blocks[slot] = end

    def append_tokens(self, slots: np.ndarray, token_ids: np.ndarray) -> None:
        """Append one token to each of ``slots`` (distinct)."""
        pos = self.num_tokens[slots]
        ok = pos < self.max_len
        self.token_ids[slots[ok], pos[ok]] = token_ids[ok]
        self.num_tokens[slots] += 1

    def append_run(self, slot: int, token_ids: np.ndarray) -> None:
        """Append several tokens to one slot (a verified speculative run)."""
        pos = int(self.num_tokens[slot])
        end = min(pos + len(token_ids), self.max_len)
        self.token_ids[slot, pos:end] = token_ids[:end - pos]
        self.num_tokens[slot] += len(token_ids)
