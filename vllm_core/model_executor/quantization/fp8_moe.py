"""FP8 experts (W8A8 float8_e4m3fn): the ``MoEMethod`` of ``--quantization fp8`` and of FP8
MoE checkpoints, with the canonical layout the kernels read and its reference.

Layout (``Fp8MoEWeight``): ``w13`` float8 [E, 2I, H] (rows ``[gate | up]``) with float32
``w13_scale`` [E, 2I] (one scale per expert and output channel), ``w2`` float8 [E, H, I]
with ``w2_scale`` [E, H]. A per-tensor checkpoint scale (one per expert and projection) is
broadcast over that projection's channels, so gate and up keep their own scales.

Computation (``fp8_fused_moe_reference``, and every kernel of ``LayerOps.fused_moe_fp8``):
the ``LayerOps.fused_moe`` contract with both GEMM inputs quantized dynamically per row
(``quantize_per_token``: scale ``max|row| / 448``): the token rows of ``x`` before gate-up,
and the activation rows ``silu(gate) * up`` (in the model dtype) before down; each product is
``(a_q . w_q) * s_a * s_w``, rounded to the model dtype like the unquantized path.

Checkpoints: ``quant_method: fp8`` (per-tensor ``weight_scale`` per expert projection) and
compressed-tensors FP8 (``weight_scale`` per channel [N, 1] or per tensor) with *dynamic*
activations; static expert ``input_scale`` is refused. ``--quantization fp8`` on a float
checkpoint quantizes each expert's rows at load (per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vllm_core.model_executor.layers.fused_moe.method import MoEMethod
from vllm_core.model_executor.quantization.quantized_weights import FP8_MAX, quantize_per_token

_SCALE_OF = {"w13_weight": "w13_weight_scale", "w2_weight": "w2_weight_scale"}


@dataclass(slots=True)
class Fp8MoEWeight:
    """Stacked FP8 experts (module docstring)."""

    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor


def quantize_experts(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float [E, N, K] -> (float8 [E, N, K], float32 [E, N]) per expert and output channel
    (``max|row| / 448``, at least 1e-12 / 448)."""
    wf = w.float()
    scale = wf.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX
    q = (wf / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_fused_moe_reference(x: torch.Tensor, w: Fp8MoEWeight, topk_weights: torch.Tensor,
                            topk_ids: torch.Tensor) -> torch.Tensor:
    """The module's computation in torch, one product per used expert (any device)."""
    t, h = x.shape
    out = torch.zeros(t, h, dtype=torch.float32, device=x.device)
    if t == 0:
        return out.to(x.dtype)
    xq, sx = quantize_per_token(x, FP8_MAX, None, torch.float8_e4m3fn)
    x_deq = xq.float() * sx                                              # [T, H]
    inter_size = w.w13.shape[1] // 2
    for e in torch.unique(topk_ids[topk_ids >= 0]).tolist():
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        w13 = w.w13[e].float() * w.w13_scale[e].view(-1, 1)
        gate_up = (x_deq[tok] @ w13.t()).to(x.dtype)
        act = (F.silu(gate_up[:, :inter_size]) * gate_up[:, inter_size:]).to(x.dtype)
        aq, sa = quantize_per_token(act, FP8_MAX, None, torch.float8_e4m3fn)
        w2 = w.w2[e].float() * w.w2_scale[e].view(-1, 1)
        y = ((aq.float() * sa) @ w2.t()).to(x.dtype).float()
        out.index_add_(0, tok, y * topk_weights[tok, slot].float().unsqueeze(1))
    return out.to(x.dtype)


class Fp8MoEMethod(MoEMethod):
    """FP8 experts; ``online``: float checkpoint weights quantized after loading, else the
    checkpoint's float8 weights and their ``weight_scale`` (per tensor or per channel)."""

    def __init__(self, online: bool) -> None:
        self.online = online

    def create_weights(self, layer: nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size: int) -> None:
        dtype = None if self.online else torch.float8_e4m3fn
        layer.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size,
                                                    hidden_size, dtype=dtype),
                                        requires_grad=False)
        layer.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size,
                                                   intermediate_size, dtype=dtype),
                                       requires_grad=False)
        if not self.online:
            layer.w13_weight_scale = nn.Parameter(
                torch.ones(num_experts, 2 * intermediate_size, dtype=torch.float32),
                requires_grad=False)
            layer.w2_weight_scale = nn.Parameter(
                torch.ones(num_experts, hidden_size, dtype=torch.float32), requires_grad=False)

    def load_expert_scale(self, layer: nn.Module, param_name: str, expert: int,
                          rows: slice | None, tensor: torch.Tensor) -> None:
        """One expert projection's ``weight_scale``: one value (per tensor) or one per output
        channel ([N] / [N, 1], already this rank's rows), into ``rows`` of the scale of
        ``param_name`` (w13_weight / w2_weight)."""
        if self.online:
            raise ValueError("is an FP8 scale, but the experts are quantized online from float")
        dest = getattr(layer, _SCALE_OF[param_name]).data[expert]
        if rows is not None:
            dest = dest[rows]
        flat = tensor.reshape(-1).float()
        if flat.numel() not in (1, dest.numel()):
            raise ValueError(f"has {flat.numel()} scales, expected 1 (per tensor) or "
                             f"{dest.numel()} (per channel)")
        dest.copy_(flat.expand(dest.numel()))

    @torch.no_grad()
    def process_after_loading(self, layer: nn.Module) -> None:
        if self.online:
            w13, s13 = quantize_experts(layer.w13_weight.data)
            w2, s2 = quantize_experts(layer.w2_weight.data)
        else:
            w13, s13 = layer.w13_weight.data, layer.w13_weight_scale.data
            w2, s2 = layer.w2_weight.data, layer.w2_weight_scale.data
            del layer.w13_weight_scale, layer.w2_weight_scale
        del layer.w13_weight, layer.w2_weight
        layer.qweights = Fp8MoEWeight(w13, s13, w2, s2)

    def apply(self, layer: nn.Module, x: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
        return layer.ops.fused_moe_fp8(x, layer.qweights, topk_weights, topk_ids)

    def describe(self) -> str:
        return ("fp8 experts (online: per-channel weights, dynamic per-token activations)"
                if self.online else "fp8 experts (checkpoint scales, dynamic activations)")
