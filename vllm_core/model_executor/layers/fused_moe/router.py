"""Top-k expert selection from router logits.

``select_experts`` follows HF's order of operations: probabilities in float32 (softmax over
all experts, or an elementwise sigmoid), ``torch.topk`` (ties resolved as torch does, so the
chosen experts match HF's), then optional renormalisation of the k chosen weights to sum 1.
"""

from __future__ import annotations

import torch

from vllm_core.model_executor.layers.fused_moe.config import Scoring


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool,
                   scoring: Scoring = "softmax") -> tuple[torch.Tensor, torch.Tensor]:
    """``router_logits`` [T, E] -> ``(topk_weights [T, k] float32, topk_ids [T, k] int64)``.

    Weights stay float32 (the expert kernels apply them in float32 before rounding the sum to
    the model dtype); ids are global expert indices in [0, E)."""
    if scoring == "softmax":
        probs = torch.softmax(router_logits.float(), dim=-1)
    elif scoring == "sigmoid":
        probs = torch.sigmoid(router_logits.float())
    else:
        raise ValueError(f"unknown router scoring {scoring!r} (softmax or sigmoid)")
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids
