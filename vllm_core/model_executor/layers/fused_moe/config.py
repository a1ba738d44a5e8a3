"""The mixture-of-experts facts of a model, read from its HF ``config.json``.

One ``MoEConfig`` covers Mixtral (``num_local_experts``, every layer sparse, softmax top-k
renormalised), Qwen2-MoE (``num_experts``, optional renormalisation, a shared expert whose
output is scaled by ``sigmoid(shared_expert_gate(x))``) and Qwen3-MoE (Qwen2-MoE without the
shared expert, top-8 with ``norm_topk_prob``). Which decoder layers are sparse follows HF:
layer ``i`` is sparse iff ``i not in mlp_only_layers`` and ``(i + 1) % decoder_sparse_step ==
0``; the other layers keep a dense MLP of ``intermediate_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vllm_core.config import ModelArchConfig

Scoring = Literal["softmax", "sigmoid"]


@dataclass(frozen=True, slots=True)
class MoEConfig:
    """Router and expert shapes of a sparse MLP block (global sizes, before any sharding)."""

    num_experts: int
    top_k: int
    expert_intermediate_size: int
    renormalize: bool = True             # divide the top-k weights by their sum
    scoring: Scoring = "softmax"         # router probabilities: softmax over experts or sigmoid
    shared_expert_intermediate_size: int = 0   # 0: no shared expert
    decoder_sparse_step: int = 1
    mlp_only_layers: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.top_k} must be in [1, num_experts="
                             f"{self.num_experts}]")
        if self.decoder_sparse_step < 1:
            raise ValueError(f"decoder_sparse_step must be >= 1, got "
                             f"{self.decoder_sparse_step}")

    def is_sparse_layer(self, layer_idx: int) -> bool:
        """True when decoder layer ``layer_idx`` holds experts (HF's rule, module docstring)."""
        return (layer_idx not in self.mlp_only_layers
                and (layer_idx + 1) % self.decoder_sparse_step == 0)


def moe_config_from_arch(arch: ModelArchConfig) -> MoEConfig:
    """The MoE facts of ``arch`` (from ``arch.hf_config``); ValueError names a missing or
    unsupported field."""
    cfg: dict[str, Any] = arch.hf_config
    num_experts = cfg.get("num_local_experts") or cfg.get("num_experts")
    top_k = cfg.get("num_experts_per_tok")
    if not num_experts or not top_k:
        raise ValueError(f"{arch.architecture}: the model config needs num_experts (or "
                         f"num_local_experts) and num_experts_per_tok")
    mixtral = arch.model_type == "mixtral"
    inter = arch.intermediate_size if mixtral else cfg.get("moe_intermediate_size")
    if not inter:
        raise ValueError(f"{arch.architecture}: the model config lacks moe_intermediate_size")
    shared = 0 if mixtral else int(cfg.get("shared_expert_intermediate_size") or 0)
    return MoEConfig(
        num_experts=int(num_experts),
        top_k=int(top_k),
        expert_intermediate_size=int(inter),
        renormalize=True if mixtral else bool(cfg.get("norm_topk_prob", False)),
        scoring="softmax",
        shared_expert_intermediate_size=shared,
        decoder_sparse_step=1 if mixtral else int(cfg.get("decoder_sparse_step") or 1),
        mlp_only_layers=frozenset(int(i) for i in (cfg.get("mlp_only_layers") or [])),
    )


def is_moe_arch(arch: ModelArchConfig) -> bool:
    """True when the config declares routed experts."""
    cfg = arch.hf_config
    return bool(cfg.get("num_local_experts") or cfg.get("num_experts"))


def check_moe_parallel(arch: ModelArchConfig, tp_size: int, expert_parallel: bool) -> None:
    """Refuse, before any worker starts, a TP/EP layout the experts cannot be split into
    (ValueError naming the numbers); ``--enable-expert-parallel`` on a dense model too."""
    if not is_moe_arch(arch):
        if expert_parallel:
            raise ValueError(f"--enable-expert-parallel needs a mixture-of-experts model; "
                             f"{arch.architecture} has no experts")
        return
    from vllm_core.model_executor.layers.fused_moe.layer import ExpertPlacement

    moe = moe_config_from_arch(arch)
    ExpertPlacement.for_rank(moe.num_experts, moe.expert_intermediate_size, tp_size, 0,
                             expert_parallel)
    if moe.shared_expert_intermediate_size % tp_size:
        raise ValueError(f"the shared expert's intermediate size "
                         f"({moe.shared_expert_intermediate_size}) is not divisible by "
                         f"tensor_parallel_size={tp_size}")
