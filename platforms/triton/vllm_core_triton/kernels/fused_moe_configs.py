"""Tile sizes of the fused-MoE kernels, per problem shape.

``MOE_TILE_CONFIGS`` maps ``(experts, hidden, intermediate, dtype name)`` (rank-local shapes)
to ``[(max_rows, config), ...]`` sorted by ``max_rows``: the first entry whose ``max_rows`` is
at least the batch's ``tokens * top_k`` rows applies (the last one beyond). Entries come from
``benchmarks/moe_tile_sweep.py`` on the GPU; a shape without entries gets ``default_config``:
small ``BLOCK_M`` for decode (few rows per expert), larger for prefill. A sweep's output file
(``--write``) named by ``VLLM_MOE_TILE_CONFIG`` is merged over the table on first use
(``{"E,H,I,dtype": [[max_rows, {config fields}], ...]}``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from vllm_core_triton import envs


@dataclass(frozen=True, slots=True)
class MoETileConfig:
    """One launch configuration of both kernels (``BLOCK_M`` is shared: it is the padding
    of the row layout)."""

    block_m: int = 16
    block_n_gate_up: int = 64
    block_n_down: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2


MOE_TILE_CONFIGS: dict[tuple[int, int, int, str], list[tuple[int, MoETileConfig]]] = {
    # Qwen3-30B-A3B experts, one H200 (moe_tile_sweep.py --wide, 2026-12-01): 1.13x / 1.08x /
    # 1.12x the default at 256 / 1024 / 8192 tokens
    (128, 2048, 768, "bfloat16"): [
        (2048, MoETileConfig(block_m=32, block_n_gate_up=64, block_n_down=64, block_k=128,
                             num_warps=4, num_stages=3)),
        (8192, MoETileConfig(block_m=64, block_n_gate_up=64, block_n_down=64, block_k=64,
                             num_warps=4, num_stages=3)),
        (65536, MoETileConfig(block_m=128, block_n_gate_up=128, block_n_down=128, block_k=64,
                              num_warps=8, num_stages=3)),
    ],
}


def default_config(num_rows: int, num_experts: int) -> MoETileConfig:
    """The fallback by average rows per expert."""
    per_expert = num_rows / max(num_experts, 1)
    if per_expert <= 4:
        return MoETileConfig(block_m=16, block_n_gate_up=64, block_n_down=64, block_k=128,
                             num_warps=4, num_stages=3)
    if per_expert <= 32:
        return MoETileConfig(block_m=32, block_n_gate_up=64, block_n_down=128, block_k=64,
                             num_warps=4, num_stages=3)
    return MoETileConfig(block_m=64, block_n_gate_up=128, block_n_down=128, block_k=64,
                         num_warps=8, num_stages=3)


def moe_tile_config(num_rows: int, num_experts: int, hidden: int, intermediate: int,
                    dtype: torch.dtype) -> MoETileConfig:
    """The swept entry of this shape for ``num_rows`` rows, else ``default_config``."""
    _merge_config_file(envs.moe_tile_config_file())
    entries = MOE_TILE_CONFIGS.get((num_experts, hidden, intermediate,
                                    str(dtype).removeprefix("torch.")))
    if not entries:
        return default_config(num_rows, num_experts)
    for max_rows, cfg in entries:
        if num_rows <= max_rows:
            return cfg
    return entries[-1][1]


def parse_tile_configs(data: dict) -> dict[tuple[int, int, int, str], list[tuple[int,
                                                                              MoETileConfig]]]:
    """The table form of a sweep file's JSON object (format in the module docstring)."""
    out = {}
    for key, entries in data.items():
        e, h, i, dtype = key.split(",")
        out[(int(e), int(h), int(i), dtype)] = sorted(
            (int(rows), MoETileConfig(**cfg)) for rows, cfg in entries)
    return out


@functools.cache
def _merge_config_file(path: str | None) -> None:
    """Merge the sweep file at ``path`` into ``MOE_TILE_CONFIGS`` (once per path); ValueError
    naming the file when it cannot be read."""
    if path is None:
        return
    try:
        with open(path, encoding="utf-8") as f:
            MOE_TILE_CONFIGS.update(parse_tile_configs(json.load(f)))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"VLLM_MOE_TILE_CONFIG={path}: not a tile configuration file: "
                         f"{e}") from e
