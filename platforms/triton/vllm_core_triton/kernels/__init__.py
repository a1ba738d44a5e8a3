"""Portable Triton kernels (pure Triton, no vendor intrinsics: CUDA, ROCm and XPU can share them).

Importing this package imports Triton; callers that must work without it import lazily.
"""

from vllm_core_triton.kernels.activation import silu_and_mul
from vllm_core_triton.kernels.paged_attention import (
    AttentionLaunch,
    device_parallelism,
    paged_attention,
    plan_launch,
)
from vllm_core_triton.kernels.reshape_and_cache import reshape_and_cache
from vllm_core_triton.kernels.rms_norm import fused_add_rms_norm, rms_norm
from vllm_core_triton.kernels.rotary import rotary_embedding

__all__ = [
    "AttentionLaunch",
    "device_parallelism",
    "fused_add_rms_norm",
    "paged_attention",
    "plan_launch",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
]
