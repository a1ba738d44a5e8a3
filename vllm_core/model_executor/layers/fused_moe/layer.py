"""``FusedMoE``: the experts of a sparse MLP block, stacked, routed and (optionally) sharded.

Sharding (``ExpertPlacement``), over the tensor-parallel group:
- tensor parallel (default): every rank holds every expert, with its ``1/tp`` slice of each
  expert's intermediate dimension (gate/up rows, down columns), like the dense MLP;
- expert parallel (``ParallelContext.enable_expert_parallel``, EP size = TP size): rank ``r``
  holds the whole of experts ``[r * E/ep, (r + 1) * E/ep)``.
In both cases the hidden state entering the block is replicated over the TP ranks, so the
dispatch needs no communication: each rank computes its experts' (or slices') contribution
for the tokens routed to them, and one all-reduce combines the partial sums (the
all-gather + reduce-scatter form, with the all-gather free because the input is replicated).

Load accounting: ``expert_counts`` (a device buffer, [E] int64, global expert ids) counts the
(token, expert) pairs routed since the last ``take_expert_counts``, without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vllm_core.distributed.parallel_context import ParallelContext, single_rank_context
from vllm_core.model_executor.layers.fused_moe.config import Scoring
from vllm_core.model_executor.layers.fused_moe.method import MoEMethod, UnquantizedMoEMethod
from vllm_core.model_executor.layers.fused_moe.router import select_experts
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.weight_source import (
    WeightSource,
    read_full,
    read_slice,
    source_shape,
)

EXPERT_PROJECTIONS = ("gate", "up", "down")


@dataclass(frozen=True, slots=True)
class ExpertPlacement:
    """Which experts, and which slice of their intermediate dimension, this rank holds."""

    num_experts: int            # global
    first_expert: int           # global id of local expert 0
    num_local_experts: int
    intermediate_size: int      # global, per expert
    inter_start: int            # first intermediate feature held here
    inter_local: int
    expert_parallel: bool

    @classmethod
    def for_rank(cls, num_experts: int, intermediate_size: int, tp_size: int, tp_rank: int,
                 expert_parallel: bool) -> ExpertPlacement:
        """The placement of TP rank ``tp_rank``; ValueError when the sizes do not divide."""
        if expert_parallel:
            if num_experts % tp_size:
                raise ValueError(f"--enable-expert-parallel: the model's {num_experts} experts "
                                 f"are not divisible by the expert-parallel size {tp_size} "
                                 f"(= tensor_parallel_size)")
            local = num_experts // tp_size
            return cls(num_experts, tp_rank * local, local, intermediate_size, 0,
                       intermediate_size, True)
        if intermediate_size % tp_size:
            raise ValueError(f"the experts' intermediate size ({intermediate_size}) is not "
                             f"divisible by tensor_parallel_size={tp_size}; try "
                             f"--enable-expert-parallel")
        local = intermediate_size // tp_size
        return cls(num_experts, 0, num_experts, intermediate_size, tp_rank * local, local,
                   False)

    def local_index(self, expert: int) -> int | None:
        """The local index of global expert ``expert``, None when another rank holds it."""
        local = expert - self.first_expert
        return local if 0 <= local < self.num_local_experts else None


class FusedMoE(nn.Module):
    """Router top-k + stacked experts; ``forward(x, router_logits)`` returns the combined
    (all-reduced) output of the experts, [T, H] in ``x.dtype``."""

    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool, scoring: Scoring, ops: LayerOps,
                 parallel: ParallelContext | None = None,
                 method: MoEMethod | None = None) -> None:
        super().__init__()
        parallel = parallel or single_rank_context()
        self.ops = ops
        self.tp = parallel.tp
        self.top_k, self.renormalize, self.scoring = top_k, renormalize, scoring
        self.hidden_size = hidden_size
        self.placement = ExpertPlacement.for_rank(
            num_experts, intermediate_size, parallel.tp_size, parallel.tp_rank,
            parallel.enable_expert_parallel)
        p = self.placement
        self.method = method or UnquantizedMoEMethod()
        self.method.create_weights(self, p.num_local_experts, hidden_size, p.inter_local)
        expert_map = torch.full((num_experts,), -1, dtype=torch.int64)
        expert_map[p.first_expert:p.first_expert + p.num_local_experts] = torch.arange(
            p.num_local_experts)
        self.register_buffer("expert_map", expert_map, persistent=False)
        self.register_buffer("expert_counts", torch.zeros(num_experts, dtype=torch.int64),
                             persistent=False)

    def load_expert(self, expert: int, projection: str, source: WeightSource,
                    leaf: str = "weight") -> bool:
        """Read this rank's slice of global expert ``expert``'s checkpoint tensor ``leaf`` of
        ``projection``: the ``weight`` (gate / up: [I, H]; down: [H, I]) or, for a quantized
        method, its ``weight_scale`` (one value, or one per output channel). False (nothing
        read) when another rank holds the expert."""
        p = self.placement
        if not 0 <= expert < p.num_experts:
            raise ValueError(f"expert {expert} is outside the model's {p.num_experts} experts")
        local = p.local_index(expert)
        if local is None:
            return False
        if projection not in EXPERT_PROJECTIONS:
            raise ValueError(f"unknown expert projection {projection!r}")
        if leaf == "weight_scale":
            self._load_expert_scale(local, projection, source)
            return True
        shape = source_shape(source)
        want = (p.intermediate_size, self.hidden_size) if projection in ("gate", "up") else \
            (self.hidden_size, p.intermediate_size)
        if shape != want:
            raise ValueError(f"has shape {shape}, expected {want}")
        if self.method.reads_sources:            # it reads its slice of the source itself
            self.method.load_expert_source(self, projection, local, source, p.inter_start,
                                           p.inter_local)
            return True
        if projection in ("gate", "up"):
            offset = 0 if projection == "gate" else p.inter_local
            self.method.load_expert(self, "w13_weight", local,
                                    slice(offset, offset + p.inter_local),
                                    read_slice(source, 0, p.inter_start, p.inter_local))
        else:
            self.method.load_expert(self, "w2_weight", local, None,
                                    read_slice(source, 1, p.inter_start, p.inter_local))
        return True

    def _load_expert_scale(self, local: int, projection: str, source: WeightSource) -> None:
        """A ``weight_scale`` (per tensor: one value; per channel: [N] or [N, 1]) into the
        method's scales; gate / up channels are cut to this rank's intermediate slice."""
        p = self.placement
        load = getattr(self.method, "load_expert_scale", None)
        if load is None:
            raise ValueError(f"is a weight scale, but the experts' method "
                             f"{type(self.method).__name__} has none")
        numel = 1
        for d in source_shape(source):
            numel *= d
        if projection == "down":
            load(self, "w2_weight", local, None, read_full(source))
            return
        offset = 0 if projection == "gate" else p.inter_local
        rows = slice(offset, offset + p.inter_local)
        tensor = read_full(source).reshape(-1)
        if numel == p.intermediate_size:
            tensor = tensor[p.inter_start:p.inter_start + p.inter_local]
        load(self, "w13_weight", local, rows, tensor)

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(router_logits, self.top_k, self.renormalize,
                                      self.scoring)
        self.expert_counts.scatter_add_(0, ids.reshape(-1), torch.ones_like(ids.reshape(-1)))
        if self.placement.expert_parallel:
            ids = self.expert_map[ids]
        out = self.method.apply(self, x, weights, ids)
        return self.tp.all_reduce(out) if self.tp.world_size > 1 else out

    def take_expert_counts(self) -> torch.Tensor:
        """The routed (token, expert) counts per global expert since the last call (a copy),
        and reset them."""
        counts = self.expert_counts.clone()
        self.expert_counts.zero_()
        return counts

    def extra_repr(self) -> str:
        p = self.placement
        mode = "ep" if p.expert_parallel else "tp"
        return (f"experts={p.num_local_experts}/{p.num_experts} (from {p.first_expert}), "
                f"top_k={self.top_k}, hidden={self.hidden_size}, "
                f"inter={p.inter_local}/{p.intermediate_size}, {mode}={self.tp.world_size}")
