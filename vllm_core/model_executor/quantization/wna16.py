"""The shared part of the int4 / int8 weight-only methods (GPTQ, AWQ, compressed-tensors
W4A16): dummy weights, the ``QuantizedLinearMethod`` plumbing, and the conversion result.

Subclasses create their checkpoint's tensors in ``create_weights`` and turn them into a
``WNA16Weight`` (``quantized_weights``) in ``to_wna16``; this base stores it as
``layer.qweights`` and frees the checkpoint-layout tensors it no longer needs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from vllm_core.model_executor.quantization.base import QuantizedLinearMethod
from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight

G_IDX_NAMES = ("g_idx", "weight_g_idx")


class WNA16Method(QuantizedLinearMethod):
    """Weight-only int4 / int8 with group scales and zero points."""

    kind: ClassVar[str] = "wna16"

    def __init__(self, bits: int, group_size: int, symmetric: bool, act_order: bool) -> None:
        self.bits = bits
        self.group_size = group_size          # -1: one group over all input features
        self.symmetric = symmetric
        self.act_order = act_order

    @property
    def pack(self) -> int:
        return 32 // self.bits

    def groups_for(self, in_features: int) -> tuple[int, int]:
        """``(group_size, number of groups)`` for ``in_features`` inputs (checked to divide)."""
        gs = in_features if self.group_size == -1 else self.group_size
        if in_features % self.pack:
            raise ValueError(f"{self.name}: {in_features} input features are not a multiple "
                             f"of the {self.pack} values packed per int32")
        return gs, -(-in_features // gs)

    def full_in_features(self, layer: nn.Module, in_features: int) -> int:
        """The input features of the whole (unsharded) layer: a row-parallel layer's
        ``in_features`` is the full size, its ``create_weights`` argument the local one."""
        return int(getattr(layer, "in_features", in_features) or in_features)

    def settings(self) -> str:
        gs = "per-channel" if self.group_size == -1 else f"group {self.group_size}"
        sym = "sym" if self.symmetric else "asym"
        order = ", act-order" if self.act_order else ""
        return f"{self.name} int{self.bits} {gs} {sym}{order}"

    def load_rows(self, layer: nn.Module, param_name: str, rows: slice | None,
                  tensor: torch.Tensor) -> None:
        """As the base, except that the act-order ``g_idx`` of a fused layer is read once per
        part (q, k, v) and must be the same for all (it follows the shared input)."""
        if param_name in G_IDX_NAMES:
            seen = layer.__dict__.setdefault("_g_idx_loaded", set())
            if seen:
                param = getattr(layer, param_name).data
                if not torch.equal(param, tensor.to(device=param.device, dtype=torch.int32)):
                    raise ValueError("differs from the g_idx of the other projections fused "
                                     "with it (act-order with different column orders for "
                                     "q/k/v or gate/up is not supported)")
                return
            seen.add(param_name)
        super().load_rows(layer, param_name, rows, tensor)

    @torch.no_grad()
    def process_after_loading(self, layer: nn.Module) -> None:
        qw = self.to_wna16(layer)
        if qw.g_idx is not None:
            groups = qw.scales.shape[0]
            g = qw.g_idx
            if g.numel() != qw.in_features or int(g.min()) < 0 or int(g.max()) >= groups:
                raise ValueError(f"{self.name}: g_idx of {type(layer).__name__} holds groups "
                                 f"outside [0, {groups}) (corrupted checkpoint)")
            trivial = torch.arange(qw.in_features, device=g.device) // qw.group_size
            if torch.equal(g.long(), trivial):
                qw.g_idx = None           # no act-order after all: the kernels skip the gather
        layer.qweights = qw

    def to_wna16(self, layer: nn.Module) -> WNA16Weight:
        """The kernel layout of the loaded checkpoint tensors (frees those not reused)."""
        raise NotImplementedError

    @torch.no_grad()
    def initialize_dummy(self, layer: nn.Module, generator: torch.Generator) -> bool:
        """Random packed words, scales around 1e-4, zero points in range, g_idx trivial:
        weights of the same magnitude as the loader's dummy floats."""
        for name, param in layer.named_parameters(recurse=False):
            dev = param.device
            if name in G_IDX_NAMES:
                gs = param.numel() if self.group_size == -1 else self.group_size
                param.copy_(torch.arange(param.numel(), device=dev) // gs)
            elif param.dtype == torch.int32:
                param.copy_(torch.randint(-2**31, 2**31 - 1, param.shape, generator=generator,
                                          device=dev, dtype=torch.int64).to(torch.int32))
            elif param.is_floating_point():
                lo, hi = (1e-4, 2e-4) if "scale" in name else (-1e-3, 1e-3)
                param.uniform_(lo, hi, generator=generator)
            else:
                param.zero_()
        return True
