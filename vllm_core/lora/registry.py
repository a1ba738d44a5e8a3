"""``LoRARegistry``: the engine's table of known adapters (name <-> id <-> path). Torch-free.

The engine keeps one; the server lists it in ``/v1/models`` and resolves ``model=<name>``
through it. Loading the weights is the workers' business (``load`` callback); the registry only
records an adapter once they accepted it.
"""

from __future__ import annotations

from collections.abc import Callable

from vllm_core.lora.request import LoRARequest


class LoRARegistry:
    """Adapters by name and by id. Invariant: a name maps to one id and one path, and back."""

    def __init__(self) -> None:
        self.by_name: dict[str, LoRARequest] = {}
        self.by_id: dict[int, LoRARequest] = {}

    def add(self, request: LoRARequest, load: Callable[[int, str], None]) -> bool:
        """Register ``request`` after ``load(id, path)`` succeeds (it raises ValueError for an
        adapter that does not fit). Returns False when exactly this adapter is already
        registered; ValueError when its name or id is taken by another adapter."""
        same_name = self.by_name.get(request.lora_name)
        same_id = self.by_id.get(request.lora_int_id)
        if same_name == request and same_id == request:
            return False
        if same_name is not None:
            raise ValueError(f"a LoRA adapter named {request.lora_name!r} is already loaded "
                             f"(id {same_name.lora_int_id}, path {same_name.lora_path!r})")
        if same_id is not None:
            raise ValueError(f"LoRA id {request.lora_int_id} is already used by adapter "
                             f"{same_id.lora_name!r}")
        load(request.lora_int_id, request.lora_path)
        self.by_name[request.lora_name] = request
        self.by_id[request.lora_int_id] = request
        return True

    def remove(self, name: str) -> LoRARequest:
        """Forget the adapter ``name`` (KeyError-free: ValueError when unknown)."""
        request = self.by_name.pop(name, None)
        if request is None:
            raise ValueError(f"no LoRA adapter named {name!r} is loaded")
        del self.by_id[request.lora_int_id]
        return request

    def get(self, name: str) -> LoRARequest | None:
        return self.by_name.get(name)

    def next_id(self) -> int:
        """An id no registered adapter uses (for adapters loaded by name and path only)."""
        return max(self.by_id, default=0) + 1

    def __iter__(self):
        return iter(list(self.by_name.values()))

    def __len__(self) -> int:
        return len(self.by_name)
