"""Environment variables of the portable Triton kernels, read here and nowhere else in the
package (the core's are in ``vllm_core.envs``)."""

from __future__ import annotations

from vllm_core.envs import get


def moe_tile_config_file() -> str | None:
    """VLLM_MOE_TILE_CONFIG: a JSON file of fused-MoE tile configurations written by
    ``benchmarks/moe_tile_sweep.py --write`` (merged over the built-in table; unset: none)."""
    return get("VLLM_MOE_TILE_CONFIG")
