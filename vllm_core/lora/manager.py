"""``LoRAManager``: the worker-side owner of adapters: registered paths, an LRU of loaded
adapters in host memory (``max_cpu_loras``), and ``max_loras`` device slots swapped between
steps.

Contract with the scheduler: the requests of one step use at most ``max_loras`` distinct
adapters (``Scheduler`` admits a request with a new adapter only while fewer are running), so
``prepare_step`` always finds a slot: it keeps resident adapters in place, loads missing ones
into free slots or evicts the least recently used slot that this step does not use. An
adapter evicted from host memory is read from its path again when next needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from vllm_core.config import LoRAConfig, ModelArchConfig
from vllm_core.logger import init_logger
from vllm_core.lora.batch import LoRABatch
from vllm_core.lora.layers import LoRALinearBase, wrap_with_lora
from vllm_core.lora.peft_adapter import LoRAAdapter, load_peft_adapter

logger = init_logger(__name__)

Loader = Callable[[int, str], LoRAAdapter]


class LoRAManager:
    """See the module docstring. ``layers`` are the model's LoRA wrappers by module path;
    ``batch`` the step index they read."""

    def __init__(self, config: LoRAConfig, layers: dict[str, LoRALinearBase], batch: LoRABatch,
                 loader: Loader, pin_memory: bool = False) -> None:
        self.config = config
        self.layers = layers
        self.batch = batch
        self.loader = loader
        self.pin_memory = pin_memory
        self.paths: dict[int, str] = {}
        self.host: OrderedDict[int, LoRAAdapter] = OrderedDict()
        self.slot_ids = [0] * config.max_loras          # adapter id per slot (0: empty)
        self.slot_last_use = [0] * config.max_loras
        self._step = 0
        self._lookup = np.full(1, -1, dtype=np.int64)  # adapter id -> slot (-1: none)
        self.num_swaps = 0
        self.num_disk_loads = 0

    @classmethod
    def for_model(cls, model: nn.Module, config: LoRAConfig, arch: ModelArchConfig,
                  dtype: torch.dtype, device: torch.device, max_tokens: int, mode: str,
                  pin_memory: bool = False, kernels: object = None) -> LoRAManager:
        """Wrap ``model``'s projections and return their manager."""
        batch = LoRABatch(config.max_loras, max_tokens, device, dtype, mode, pin_memory,
                          kernels)
        layers = wrap_with_lora(model, batch, config.max_lora_rank)

        def loader(lora_id: int, path: str) -> LoRAAdapter:
            return load_peft_adapter(lora_id, path, arch, config.max_lora_rank, dtype)

        return cls(config, layers, batch, loader, pin_memory)

    # ------------------------------------------------------------------ registry
    def add(self, lora_id: int, path: str) -> None:
        """Register and load an adapter (ValueError when it does not fit the model). Adding
        the same id with the same path again is a no-op; with another path, an error."""
        if lora_id < 1:
            raise ValueError(f"LoRA id must be >= 1, got {lora_id}")
        known = self.paths.get(lora_id)
        if known is not None:
            if known != path:
                raise ValueError(f"LoRA id {lora_id} is already loaded from {known!r}")
            return
        adapter = self._read(lora_id, path)
        self.paths[lora_id] = path
        self._cache(adapter)

    def remove(self, lora_id: int) -> bool:
        """Forget an adapter (its slot becomes free). False if it was not registered."""
        if self.paths.pop(lora_id, None) is None:
            return False
        self.host.pop(lora_id, None)
        for slot, sid in enumerate(self.slot_ids):
            if sid == lora_id:
                self.slot_ids[slot] = 0
                self._lookup_set(lora_id, -1)
        return True

    def list_ids(self) -> list[int]:
        return sorted(self.paths)

    # ------------------------------------------------------------------ per step
    def prepare_step(self, token_lora_ids: np.ndarray, num_padded: int | None = None) -> None:
        """Make every adapter of this step resident and set the per-token slot index."""
        self._step += 1
        ids = np.unique(token_lora_ids)
        ids = ids[ids > 0].tolist()
        if len(ids) > len(self.slot_ids):
            raise RuntimeError(f"a step uses {len(ids)} LoRA adapters, more than max_loras="
                               f"{len(self.slot_ids)} (the scheduler must bound them)")
        for lora_id in ids:                 # the step's adapters are the most recent ones
            if lora_id in self.host:
                self.host.move_to_end(lora_id)
        for lora_id in ids:
            self._ensure_resident(lora_id, ids)
        if ids:
            slots = self._lookup[token_lora_ids]       # id 0 (base) maps to -1
        else:
            slots = np.full(len(token_lora_ids), -1, dtype=np.int64)
        self.batch.set_step(slots, num_padded)

    def _ensure_resident(self, lora_id: int, step_ids: list[int]) -> None:
        if lora_id in self.slot_ids:
            self.slot_last_use[self.slot_ids.index(lora_id)] = self._step
            return
        path = self.paths.get(lora_id)
        if path is None:
            raise RuntimeError(f"LoRA id {lora_id} was scheduled but never added")
        adapter = self.host.get(lora_id)
        if adapter is None:
            adapter = self._read(lora_id, path)
            self._cache(adapter)
        else:
            self.host.move_to_end(lora_id)
        free = [s for s, sid in enumerate(self.slot_ids) if sid == 0]
        if free:
            slot = free[0]
        else:
            candidates = [s for s, sid in enumerate(self.slot_ids) if sid not in step_ids]
            slot = min(candidates, key=lambda s: self.slot_last_use[s])
            self._lookup_set(self.slot_ids[slot], -1)
            self.num_swaps += 1
        for name, layer in self.layers.items():
            layer.set_slot(slot, adapter.modules.get(name))
        self.slot_ids[slot] = lora_id
        self.slot_last_use[slot] = self._step
        self._lookup_set(lora_id, slot)

    # ------------------------------------------------------------------ helpers
    def _read(self, lora_id: int, path: str) -> LoRAAdapter:
        adapter = self.loader(lora_id, path)
        self.num_disk_loads += 1
        if self.pin_memory:
            for shards in adapter.modules.values():
                for w in shards.values():
                    w.a, w.b = w.a.pin_memory(), w.b.pin_memory()
        return adapter

    def _cache(self, adapter: LoRAAdapter) -> None:
        self.host[adapter.lora_id] = adapter
        self.host.move_to_end(adapter.lora_id)
        while len(self.host) > int(self.config.max_cpu_loras):
            evicted, _ = self.host.popitem(last=False)
            logger.debug("LoRA %d evicted from host memory", evicted)

    def _lookup_set(self, lora_id: int, slot: int) -> None:
        if lora_id >= len(self._lookup):
            grown = np.full(max(lora_id + 1, 2 * len(self._lookup)), -1, dtype=np.int64)
            grown[:len(self._lookup)] = self._lookup
            self._lookup = grown
        self._lookup[lora_id] = slot
