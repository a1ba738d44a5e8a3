"""Elementwise layer kernels behind one replaceable object.

Models never call these functions directly: every layer receives a ``LayerOps`` instance at
construction and calls its methods, so a platform plugin (for example CUDA with Triton kernels)
substitutes its own implementations by handing its subclass to ``get_model(..., ops=...)``,
without monkeypatching. ``TorchLayerOps`` is the portable default and the numerical reference:
it follows HuggingFace transformers' order of operations (norms in float32, then cast back) so
that logits match HF bit-for-bit in float32 and closely in bfloat16.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vllm_core.model_executor.quantization.quantized_weights import (
    Fp8Weight,
    Int8Weight,
    WNA16Weight,
    fp8_linear_reference,
    int8_linear_reference,
    wna16_linear_reference,
)


class LayerOps:
    """The contract of the elementwise kernels. Subclass and override any method.

    Shapes: ``x`` is ``[..., hidden]``; ``w`` is ``[hidden]``. All methods are pure functions of
    their inputs except where stated; outputs have the dtype of ``x``.
    """

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        """``w * (x / sqrt(mean(x**2) + eps))``, the statistics in float32, the product taken
        after casting the normalised value back to ``x.dtype`` (HF order)."""
        raise NotImplementedError

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual' = x + residual`` (in ``x.dtype``); returns ``(rms_norm(residual'),
        residual')``. Implementations may update ``x`` and ``residual`` in place."""
        raise NotImplementedError

    def rotary(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               cos_sin_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Neox-style rotary embedding (rotate halves) of the first ``rot_dim`` channels.

        positions [T] int; q [T, num_heads, head_size]; k [T, num_kv_heads, head_size];
        cos_sin_cache [max_positions, rot_dim] float32, row p = cat(cos(p * inv_freq),
        sin(p * inv_freq)). Returns the rotated (q, k), possibly the same tensors updated in
        place. Channels beyond ``rot_dim`` pass through unchanged.
        """
        raise NotImplementedError

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., 2 * d] -> silu(x[..., :d]) * x[..., d:], shape [..., d]."""
        raise NotImplementedError

    def linear(self, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ weight.T + bias`` for x [T, in], weight [out, in]. Row i of the result must
        depend only on row i of ``x`` (batch invariance), whatever T is."""
        return F.linear(x, weight, bias)

    def silu_and_mul_linear(self, x: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
        """``linear(silu_and_mul(x), weight, bias)``: a gated MLP's activation and down
        projection, x [T, 2 * d] -> [T, out]. A platform may fuse the two."""
        return self.linear(self.silu_and_mul(x), weight, bias)

    def fused_moe(self, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """The experts of a sparse MLP block: x [T, H], w13 [E, 2I, H] (rows [gate | up]),
        w2 [E, H, I], topk_weights [T, k] float32, topk_ids [T, k] (local expert ids, -1:
        not on this rank) -> sum over k of weight * expert(x), [T, H] in x.dtype (full
        contract in ``layers/fused_moe/torch_moe.py``). Default: the vectorised torch forms."""
        from vllm_core.model_executor.layers.fused_moe.torch_moe import torch_fused_moe

        return torch_fused_moe(x, w13, w2, topk_weights, topk_ids)

    def fused_moe_fp8(self, x: torch.Tensor, w: Any, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor) -> torch.Tensor:
        """``fused_moe`` with FP8 experts (``w``: an ``Fp8MoEWeight``) and both GEMM inputs
        quantized per row (contract: ``quantization/fp8_moe.py``). Default: the reference."""
        from vllm_core.model_executor.quantization.fp8_moe import fp8_fused_moe_reference

        return fp8_fused_moe_reference(x, w, topk_weights, topk_ids)

    # quantized linears (layouts: ``model_executor/quantization/quantized_weights.py``); the
    # defaults are the de-quantize-then-matmul references, correct on any device.
    def wna16_linear(self, x: torch.Tensor, w: WNA16Weight,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ dequantize(w).T + bias`` for int4 / int8 weights with group scales and zero
        points (x [T, K] float, result in ``x.dtype``)."""
        return wna16_linear_reference(x, w, bias)

    def int8_linear(self, x: torch.Tensor, w: Int8Weight,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """W8A8 INT8: ``x`` quantized per token (or with the static scale), integer matmul,
        scaled back to ``x.dtype``."""
        return int8_linear_reference(x, w, bias)

    def fp8_linear(self, x: torch.Tensor, w: Fp8Weight,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """FP8 weights (per-channel / per-tensor scales: W8A8 with float8 activations;
        block scales: activations stay in ``x.dtype``)."""
        return fp8_linear_reference(x, w, bias)

    def prepare_quantized(self, kind: str, w: Any) -> Any:
        """The layout this platform's ``wna16_linear`` / ``int8_linear`` / ``fp8_linear``
        (``kind`` "wna16", "int8", "fp8") wants for weight ``w``, built from the method's
        layout once per layer after loading (API 2.7). What it returns replaces ``w``: it is
        what the linear call and ``quant_kernel_name`` receive from then on, so a platform
        that repacks must accept its own layout in every call (and give the reference's
        result). Default: ``w`` unchanged."""
        return w

    def quant_kernel_name(self, kind: str, w: object) -> str:
        """The kernel ``wna16_linear`` / ``int8_linear`` / ``fp8_linear`` (``kind`` "wna16",
        "int8", "fp8") runs for weight ``w``, for the start-up log."""
        return "torch reference (de-quantize + matmul)"

    def lora_kernels(self) -> Any | None:
        """The batched LoRA shrink/expand kernels of this platform (``vllm_core.lora.batch.
        LoRAKernels``), or None to use the core's torch paths (API 2.2)."""
        return None


class TorchLayerOps(LayerOps):
    """Vectorised torch implementations (any device, any float dtype)."""

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        variance = xf.pow(2).mean(dim=-1, keepdim=True)
        return w * (xf * torch.rsqrt(variance + eps)).to(x.dtype)

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x + residual
        return self.rms_norm(residual, w, eps), residual

    def rotary(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               cos_sin_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rot_dim = cos_sin_cache.shape[-1]
        cos, sin = cos_sin_cache.index_select(0, positions).chunk(2, dim=-1)
        cos = torch.cat((cos, cos), dim=-1).unsqueeze(-2).to(q.dtype)   # [T, 1, rot_dim]
        sin = torch.cat((sin, sin), dim=-1).unsqueeze(-2).to(q.dtype)
        return _apply_neox(q, cos, sin, rot_dim), _apply_neox(k, cos, sin, rot_dim)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


def _apply_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                rot_dim: int) -> torch.Tensor:
    x_rot = x[..., :rot_dim]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    if rot_dim == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., rot_dim:]), dim=-1)
