"""LoRA wrappers around the base linear layers (design.md section 9: the adapter concern).

A wrapper never touches the base layer's weights: it calls the base layer (whatever its weight
method, quantized or not, and its sharding) and adds ``B(A(x))`` of each token's adapter to
the output, reading the step's ``LoRABatch``. Stacked adapter weights live in ``S`` device
slots (``set_slot``); the scaling is already folded into ``B``.

Tensor parallelism: a column-parallel base (fused QKV, gate-up) keeps the whole input, so
``A`` is whole and ``B`` keeps this rank's output rows of each shard (column split). A
row-parallel base (o, down) sees this rank's slice of the input, so ``A`` keeps this rank's
input columns (row-parallel split) and ``B`` is whole; ``B(A_local(x_local))`` is a partial
sum like the base output, so it is added *before* the all-reduce (exact, no extra collective).
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_core.lora.batch import LoRABatch
from vllm_core.lora.peft_adapter import LoRAWeights
from vllm_core.model_executor.layers.parallel_linear import (
    ColumnParallelLinear,
    RowParallelLinear,
)


class LoRALinearBase(nn.Module):
    """Common slot storage: ``lora_a`` [S, n * R, in_local], ``lora_b`` [out_local, S, R]
    (see ``lora.batch`` for the layout); ``shard_names[i]`` uses shrink columns
    ``i*R .. (i+1)*R`` and output rows ``out_rows[i]``."""

    def __init__(self, base: nn.Module, batch: LoRABatch, max_rank: int, in_local: int,
                 out_local: int, shard_names: list[str], out_rows: list[slice]) -> None:
        super().__init__()
        self.base = base
        self.batch = batch
        self.max_rank = max_rank
        self.shard_names = shard_names
        self.shards = [(rows, i) for i, rows in enumerate(out_rows)]
        s, n = batch.num_slots, len(shard_names)
        kw = dict(dtype=batch.dtype, device=batch.device)
        self.register_buffer("lora_a", torch.zeros(s, n * max_rank, in_local, **kw),
                             persistent=False)
        self.register_buffer("lora_b", torch.zeros(out_local, s, max_rank, **kw),
                             persistent=False)

    # -- slots ---------------------------------------------------------------------------
    def local_a(self, shard: str, a: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full ``A`` [r, in]."""
        return a

    def local_b(self, shard: str, b: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full ``B`` [out, r]."""
        return b

    def set_slot(self, slot: int, weights: dict[str, LoRAWeights] | None) -> None:
        """Write an adapter's weights of this layer into ``slot`` (None or missing shards:
        zeros, i.e. the base layer). Copies are issued on the current stream."""
        r_cap = self.max_rank
        self.lora_a[slot].zero_()
        self.lora_b[:, slot].zero_()
        for i, name in enumerate(self.shard_names):
            w = (weights or {}).get(name)
            if w is None:
                continue
            a, b = self.local_a(name, w.a), self.local_b(name, w.b)
            r = a.shape[0]
            self.lora_a[slot, i * r_cap:i * r_cap + r].copy_(a, non_blocking=True)
            self.lora_b[self.shards[i][0], slot, :r].copy_(b, non_blocking=True)

    def add_lora(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.batch.add_lora(y, x, self.lora_a, self.lora_b, self.shards, self.max_rank)


class ColumnParallelLinearWithLoRA(LoRALinearBase):
    """LoRA around a ``ColumnParallelLinear`` (fused QKV or gate-up: one A/B per shard)."""

    def __init__(self, base: ColumnParallelLinear, batch: LoRABatch, max_rank: int) -> None:
        names = list(base.shards)
        super().__init__(base, batch, max_rank, base.in_features, base.out_features, names,
                         [base.shard_rows(n) for n in names])

    def local_b(self, shard: str, b: torch.Tensor) -> torch.Tensor:
        s = self.base.shards[shard]
        return b[s.source_start:s.source_start + s.local_size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_lora(self.base(x), x)


class RowParallelLinearWithLoRA(LoRALinearBase):
    """LoRA around a ``RowParallelLinear`` (o and down projections)."""

    def __init__(self, base: RowParallelLinear, batch: LoRABatch, max_rank: int) -> None:
        super().__init__(base, batch, max_rank, base.local_in, base.out_features, ["in"],
                         [slice(0, base.out_features)])

    def local_a(self, shard: str, a: torch.Tensor) -> torch.Tensor:
        base = self.base
        return a[:, base.in_start:base.in_start + base.local_in]

    def _forward_local(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        tp = base.tp
        y = base.method.apply(base, x, base.bias if tp.world_size == 1 else None)
        y = self.add_lora(y, x)
        if tp.world_size > 1:
            y = tp.all_reduce(y)
            if base.bias is not None:
                y = y + base.bias
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_local(x)

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """The gated MLP's down projection: the adapter needs the activation itself, so the
        activation is not fused into the matmul here."""
        return self._forward_local(self.base.ops.silu_and_mul(x))


_WRAPPERS = {"qkv_proj": (ColumnParallelLinear, ColumnParallelLinearWithLoRA),
             "gate_up_proj": (ColumnParallelLinear, ColumnParallelLinearWithLoRA),
             "o_proj": (RowParallelLinear, RowParallelLinearWithLoRA),
             "down_proj": (RowParallelLinear, RowParallelLinearWithLoRA)}


def wrap_with_lora(model: nn.Module, batch: LoRABatch, max_rank: int
                   ) -> dict[str, LoRALinearBase]:
    """Replace the q/k/v/o/gate/up/down linears of ``model`` (after its weights are loaded)
    by LoRA wrappers reading ``batch``; returns them by module path (the keys of
    ``LoRAAdapter.modules``). ValueError when the model has none of them."""
    wrapped: dict[str, LoRALinearBase] = {}
    for name, module in list(model.named_modules()):
        parent_name, _, leaf = name.rpartition(".")
        kinds = _WRAPPERS.get(leaf)
        if kinds is None or not isinstance(module, kinds[0]):
            continue
        wrapper = kinds[1](module, batch, max_rank)
        setattr(model.get_submodule(parent_name), leaf, wrapper)
        wrapped[name] = wrapper
    if not wrapped:
        raise ValueError(f"{type(model).__name__} has no projection LoRA can adapt "
                         f"({', '.join(_WRAPPERS)})")
    return wrapped
