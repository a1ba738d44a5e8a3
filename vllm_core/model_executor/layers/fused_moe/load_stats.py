"""Per-step expert load of a mixture-of-experts model, for the metrics.

Every ``FusedMoE`` layer counts the (token, expert) pairs its router sends to each global
expert in a device buffer. After a step's forward, ``ExpertLoadTracker.snapshot`` sums them
over the layers of this rank's stage, groups them by the expert-parallel rank holding each
expert (one group without expert parallelism), resets the buffers and starts an asynchronous
copy to host memory; the runner reads the host copy once the step's completion event has
fired (so no extra device sync). Routing is replicated over the TP ranks, so any rank sees the
whole step's load; with pipeline parallelism a stage sees only its own layers.

``load_imbalance(load)`` is ``max / mean`` over the ranks (1.0 = perfectly balanced).
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_core.model_executor.layers.fused_moe.layer import FusedMoE


class ExpertLoadTracker:
    """Sums and snapshots the routed-pair counters of a model's ``FusedMoE`` layers."""

    def __init__(self, layers: list[FusedMoE], pin_memory: bool = False) -> None:
        if not layers:
            raise ValueError("ExpertLoadTracker needs at least one FusedMoE layer")
        p = layers[0].placement
        self.layers = layers
        self.num_ranks = p.num_experts // p.num_local_experts if p.expert_parallel else 1
        device = layers[0].expert_counts.device
        self.rank_of_expert = torch.arange(p.num_experts, device=device) // (
            p.num_experts // self.num_ranks)
        self.pin_memory = pin_memory       # host snapshots in pinned memory (accelerators)

    @classmethod
    def for_model(cls, model: nn.Module, pin_memory: bool = False
                  ) -> ExpertLoadTracker | None:
        """A tracker of ``model``'s MoE layers, None for a dense model."""
        layers = [m for m in model.modules() if isinstance(m, FusedMoE)]
        return cls(layers, pin_memory) if layers else None

    def snapshot(self) -> torch.Tensor:
        """Routed pairs per EP rank since the last snapshot: a host int64 tensor whose copy
        completes with the work queued so far (read it after the step's event)."""
        counts = self.layers[0].expert_counts.clone()
        for layer in self.layers[1:]:
            counts += layer.expert_counts
        for layer in self.layers:
            layer.expert_counts.zero_()
        per_rank = torch.zeros(self.num_ranks, dtype=torch.int64, device=counts.device)
        per_rank.index_add_(0, self.rank_of_expert, counts)
        host = torch.empty(self.num_ranks, dtype=torch.int64, pin_memory=self.pin_memory)
        return host.copy_(per_rank, non_blocking=True)


def load_imbalance(load: list[int]) -> float:
    """``max / mean`` of per-rank loads (1.0 when balanced or empty)."""
    total = sum(load)
    if not load or total == 0:
        return 1.0
    return max(load) * len(load) / total
