"""Mixture-of-experts layers: config, router, the ``FusedMoE`` layer, its weight methods and
the portable torch computation (``docs/moe.md``)."""

from vllm_core.model_executor.layers.fused_moe.config import MoEConfig, moe_config_from_arch
from vllm_core.model_executor.layers.fused_moe.layer import ExpertPlacement, FusedMoE
from vllm_core.model_executor.layers.fused_moe.method import MoEMethod, UnquantizedMoEMethod
from vllm_core.model_executor.layers.fused_moe.router import select_experts

__all__ = ["MoEConfig", "moe_config_from_arch", "ExpertPlacement", "FusedMoE", "MoEMethod",
           "UnquantizedMoEMethod", "select_experts"]
