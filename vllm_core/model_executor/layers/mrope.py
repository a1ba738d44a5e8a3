"""Multimodal rotary embedding (M-RoPE, Qwen2-VL / Qwen2.5-VL).

Each token has three positions (temporal, height, width). The ``D / 2`` rotary frequencies of a
head are split into three consecutive sections (``mrope_section``, summing to ``D / 2``): the
frequencies of section ``s`` rotate by position ``s``. Text tokens have three equal positions,
so on text M-RoPE is the ordinary neox rotary embedding.

How it runs through the platform's ordinary rotary kernel (``LayerOps.rotary`` or an attention
backend that fuses rotary): ``prepare(positions)`` turns the step's ``[3, T]`` positions into a
per-token cos/sin table ``[T, D]`` (row ``t`` = ``cat(cos(a_t), sin(a_t))`` with
``a_t[i] = positions[section(i), t] * inv_freq[i]``), stores it as ``cos_sin_cache`` and returns
``arange(T)``: the kernel then looks row ``t`` up for token ``t``. Contract: ``prepare`` is called
once at the start of every forward, before any layer reads ``cos_sin_cache``; the table is only
valid for that forward.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.layers.rotary_embedding import rope_inv_freq


class MRotaryEmbedding(nn.Module):
    """M-RoPE over ``head_size`` channels with ``mrope_section`` (three ints, sum ``D / 2``)."""

    def __init__(self, head_size: int, base: float, mrope_section: list[int],
                 ops: LayerOps) -> None:
        super().__init__()
        if len(mrope_section) != 3 or sum(mrope_section) * 2 != head_size:
            raise ValueError(f"mrope_section {mrope_section} must be three ints summing to "
                             f"head_dim / 2 = {head_size // 2}")
        self.head_size = head_size
        self.rotary_dim = head_size
        self.mrope_section = list(mrope_section)
        self.ops = ops
        inv_freq = rope_inv_freq(head_size, base, None)
        section = torch.repeat_interleave(torch.arange(3), torch.tensor(mrope_section))
        self.register_buffer("inv_freq", inv_freq.to(torch.empty(0).device), persistent=False)
        self.register_buffer("section", section.to(torch.empty(0).device), persistent=False)
        self.register_buffer("cos_sin_cache", torch.zeros(1, head_size), persistent=False)

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        """The cos/sin rows ``[T, D]`` (float32) of positions ``[3, T]`` (or ``[T]``: text)."""
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(3, -1)
        # angles[t, i] = positions[section[i], t] * inv_freq[i]
        angles = positions.index_select(0, self.section).t().float() * self.inv_freq
        return torch.cat((angles.cos(), angles.sin()), dim=-1)

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        """Set this forward's table from ``positions`` [3, T] (or [T]); returns ``arange(T)``,
        the positions to hand the rotary kernel."""
        self.cos_sin_cache = self.table(positions)
        return torch.arange(positions.shape[-1], device=positions.device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q`` / ``k`` of the tokens ``positions`` (``prepare``'s output)."""
        return self.ops.rotary(positions, q, k, self.cos_sin_cache, self.head_size)
