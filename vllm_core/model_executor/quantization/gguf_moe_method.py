"""The routed experts of a GGUF file kept quantized (``GGUFConfig.moe_method``).

A mixture-of-experts GGUF stores each projection's experts as one stacked tensor of a block
type (Q4_K, Q6_K, ...). Instead of de-quantizing them into float ``[E, 2I, H]`` / ``[E, H, I]``
(4-8x the file's bytes: a Qwen3-30B-A3B Q4_K_M file's 29 B expert weights would take 116 GB
in float32, and ~12 minutes of the ``gguf`` package's de-quantization), each expert's blocks
are converted into the ``WNA16Weight`` layout (``gguf_blocks``: exact up to float32 rounding of
the zero points) and stacked per layer:

- ``w13_qweight`` int32 ``[E, H / p13, 2I]`` (outputs ``[gate | up]``), ``w13_scales`` /
  ``w13_zeros`` ``[E, H / g13, 2I]``;
- ``w2_qweight`` int32 ``[E, I / p2, H]``, ``w2_scales`` / ``w2_zeros`` ``[E, I / g2, H]``;

``p = 32 / bits`` values per word; the bits and group of gate / up are common (the larger
storage bits and the smaller group of the two types, as for fused dense layers), down has its
own (Q4_K_M files store it as Q6_K: 8-bit storage, group 16). A tensor-parallel rank holds its
intermediate slice: rows of gate / up, and of down the input columns, which must fall on group
boundaries (a clear error otherwise; expert parallelism keeps experts whole). The computation
is ``torch_moe.expert_loop_moe``: one iteration per used expert, its two products through the
platform's ``LayerOps.wna16_linear`` (the CPU's C++ kernel reads the packed words directly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vllm_core.model_executor.layers.fused_moe.method import MoEMethod
from vllm_core.model_executor.layers.fused_moe.torch_moe import expert_loop_moe
from vllm_core.model_executor.layers.ops import LayerOps
from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight


@dataclass(frozen=True, slots=True)
class GGUFExpertPlan:
    """Storage of one layer's experts: ``(bits, group)`` of gate / up and of down, and the
    GGML types (gate, up, down) for the log."""

    gate_up: tuple[int, int]
    down: tuple[int, int]
    types: tuple[str, str, str]


class GGUFMoEMethod(MoEMethod):
    """Experts kept as GGUF integers in the ``WNA16Weight`` layout (module docstring)."""

    reads_sources = True

    def __init__(self, plan: GGUFExpertPlan) -> None:
        self.plan = plan

    def create_weights(self, layer: nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size: int) -> None:
        dtype = torch.get_default_dtype()
        for name, (bits, group), k, n in (
                ("w13", self.plan.gate_up, hidden_size, 2 * intermediate_size),
                ("w2", self.plan.down, intermediate_size, hidden_size)):
            if k % group or k % (32 // bits):
                raise ValueError(f"gguf experts: {k} (rank-local) inputs of {name} are not a "
                                 f"multiple of the group size {group}; use "
                                 "--enable-expert-parallel (whole experts per rank) or "
                                 "--gguf-dequantize")
            setattr(layer, f"{name}_qweight", nn.Parameter(
                torch.empty(num_experts, k * bits // 32, n, dtype=torch.int32),
                requires_grad=False))
            for part in ("scales", "zeros"):
                setattr(layer, f"{name}_{part}", nn.Parameter(
                    torch.empty(num_experts, k // group, n, dtype=dtype), requires_grad=False))

    def load_expert_source(self, layer: nn.Module, projection: str, expert: int,
                           source: object, inter_start: int, inter_local: int) -> None:
        read = getattr(source, "read_quantized", None)
        if read is None:
            raise ValueError("is not kept quantized by the loader (GGUF experts need their "
                             "blocks: load the .gguf file itself, or --gguf-dequantize)")
        if projection in ("gate", "up"):
            w = read(inter_start, inter_local)
            cols = slice(0, inter_local) if projection == "gate" else \
                slice(inter_local, 2 * inter_local)
            self._copy(layer, "w13", expert, w, cols)
            return
        w = read(0, layer.hidden_size)
        bits, group = self.plan.down
        if inter_start % group or inter_local % group:
            raise ValueError(f"down: the rank's intermediate slice [{inter_start}, "
                             f"{inter_start + inter_local}) does not fall on the GGUF group "
                             f"size {group}; use --enable-expert-parallel")
        p = 32 // bits
        w = WNA16Weight(w.qweight[inter_start // p:(inter_start + inter_local) // p],
                        w.scales[inter_start // group:(inter_start + inter_local) // group],
                        w.zeros[inter_start // group:(inter_start + inter_local) // group],
                        None, w.bits, w.group_size, inter_local, w.out_features)
        self._copy(layer, "w2", expert, w, slice(None))

    @staticmethod
    def _copy(layer: nn.Module, name: str, expert: int, w: WNA16Weight, cols: slice) -> None:
        for part, src in (("qweight", w.qweight), ("scales", w.scales), ("zeros", w.zeros)):
            dest = getattr(layer, f"{name}_{part}").data[expert][:, cols]
            if tuple(dest.shape) != tuple(src.shape):
                raise ValueError(f"{name}_{part}: GGUF blocks give {tuple(src.shape)}, the "
                                 f"layer holds {tuple(dest.shape)} (config and file disagree)")
            dest.copy_(src)

    def process_after_loading(self, layer: nn.Module) -> None:
        """Per-expert ``WNA16Weight`` views of the stacked tensors (what ``apply`` passes to
        the kernel; no copy)."""
        def views(name: str, bits: int, group: int) -> list[WNA16Weight]:
            q, s, z = (getattr(layer, f"{name}_{part}").data
                       for part in ("qweight", "scales", "zeros"))
            k, n = q.shape[1] * (32 // bits), q.shape[2]
            return [WNA16Weight(q[e], s[e], z[e], None, bits, group, k, n)
                    for e in range(q.shape[0])]

        layer.w13_experts = views("w13", *self.plan.gate_up)
        layer.w2_experts = views("w2", *self.plan.down)

    def apply(self, layer: nn.Module, x: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
        ops: LayerOps = layer.ops
        w13, w2 = layer.w13_experts, layer.w2_experts
        return expert_loop_moe(x, topk_weights, topk_ids, len(w13),
                               lambda e, rows: ops.wna16_linear(rows, w13[e]),
                               lambda e, rows: ops.wna16_linear(rows, w2[e]))

    def describe(self) -> str:
        gate, up, down = self.plan.types
        return (f"gguf experts kept quantized: gate/up {gate}/{up} as int{self.plan.gate_up[0]} "
                f"group {self.plan.gate_up[1]}, down {down} as int{self.plan.down[0]} group "
                f"{self.plan.down[1]}")
