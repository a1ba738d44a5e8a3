"""The quantization contract: a ``QuantizationConfig`` per format and its linear methods.

A quantization method is registered by name (``registry.py``; built-ins through the core's own
``register_quantization_methods`` hook, vendors through theirs) and the name maps to a
``QuantizationConfig`` subclass. ``selection.select_quantization`` picks one from the
checkpoint's ``quantization_config`` (or the user's ``--quantization``), builds it with
``from_checkpoint`` / ``for_online``, and refuses in words when it cannot run here
(``unsupported_reasons``). The model asks it for each linear layer's ``LinearMethod``.

Each config declares what it supports (class attributes, shown by ``vllm-core platforms``):
``platforms`` (platform names, ``"*"``: any, through the torch reference), ``activation_dtypes``
(model dtypes it runs with) and ``capabilities`` (free words: "int4", "act_order", ...).

``QuantizedLinearMethod`` is the shared base of the methods: it registers parameters with
their ``ParamSpec`` (so the sharding code can cut them) and lays out the life cycle: the
checkpoint's tensors are loaded as the tool wrote them, then ``process_after_loading``
converts them once into a canonical layout (``quantized_weights``) that the kernels read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from vllm_core.model_executor.layers.weight_method import LinearMethod, ParamSpec

ALL_FLOAT_DTYPES = ("bfloat16", "float16", "float32")


class QuantizationConfig(ABC):
    """One format's settings, parsed from a checkpoint (or chosen for online quantization)."""

    #: the registry name, the ``--quantization`` value and the checkpoint's ``quant_method``
    name: ClassVar[str] = ""
    #: platform names whose kernels (or the torch reference) run it; "*": every platform
    platforms: ClassVar[tuple[str, ...]] = ("*",)
    activation_dtypes: ClassVar[tuple[str, ...]] = ALL_FLOAT_DTYPES
    capabilities: ClassVar[tuple[str, ...]] = ()
    #: True when ``for_online`` can quantize an unquantized checkpoint while loading it
    online: ClassVar[bool] = False
    #: how to make a checkpoint of this format (shown when one is missing)
    how_to_make: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def from_checkpoint(cls, quantization_config: dict[str, Any]) -> QuantizationConfig:
        """Parse the checkpoint's ``quantization_config``; ``ValueError`` in words for a
        variant this method does not load (which field, which values are supported)."""

    @classmethod
    def for_online(cls) -> QuantizationConfig:
        """The config that quantizes an unquantized checkpoint at load (``online``)."""
        raise ValueError(f"{cls.name} needs a checkpoint quantized by its tool "
                         f"({cls.how_to_make or 'see docs/quantization.md'}); this "
                         "checkpoint's config.json has no quantization_config")

    def unsupported_reasons(self, platform: str, dtype: str) -> list[str]:
        """Why this config cannot run on ``platform`` with model dtype ``dtype`` (empty:
        it can)."""
        reasons = []
        if "*" not in self.platforms and platform not in self.platforms:
            reasons.append(f"platform {platform!r} has no kernel for it (supported: "
                           f"{', '.join(self.platforms)})")
        if dtype not in self.activation_dtypes:
            reasons.append(f"dtype {dtype} is not supported (use one of "
                           f"{', '.join(self.activation_dtypes)})")
        return reasons

    @abstractmethod
    def linear_method(self, prefix: str) -> LinearMethod | None:
        """The method of the linear layer ``prefix`` (e.g. ``model.layers.0.self_attn.qkv_proj``),
        or None to keep it unquantized (a layer the checkpoint left in float)."""

    def moe_method(self, prefix: str) -> Any:
        """The ``MoEMethod`` of the stacked experts ``prefix`` (e.g.
        ``model.layers.0.mlp.experts``), or None to keep them in float (the default)."""
        return None

    def summary(self) -> str:
        """One line naming the settings (start-up log)."""
        return self.name


class QuantizedLinearMethod(LinearMethod):
    """Base of the quantized methods: parameters with a ``ParamSpec`` each, created by
    ``add_param``; ``process_after_loading`` builds the kernel layout (``layer.qweights``)."""

    kind: ClassVar[str] = ""        # "wna16", "int8" or "fp8": the LayerOps call used

    def add_param(self, layer: nn.Module, name: str, shape: tuple[int, ...],
                  dtype: torch.dtype, spec: ParamSpec, fill: float | None = None) -> None:
        """Register ``layer.<name>`` (uninitialised unless ``fill``) with its layout."""
        data = torch.empty(shape, dtype=dtype) if fill is None else torch.full(
            shape, fill, dtype=dtype)
        layer.register_parameter(name, nn.Parameter(data, requires_grad=False))
        specs = layer.__dict__.setdefault("_param_specs", {})
        specs[name] = spec

    def add_bias(self, layer: nn.Module, out_features: int, bias: bool) -> None:
        layer.bias = (nn.Parameter(torch.empty(out_features), requires_grad=False)
                      if bias else None)

    def param_spec(self, layer: nn.Module, param_name: str) -> ParamSpec:
        specs = layer.__dict__.get("_param_specs", {})
        if param_name in specs:
            return specs[param_name]
        return super().param_spec(layer, param_name)

    def drop_params(self, layer: nn.Module, *names: str) -> None:
        """Free checkpoint-layout tensors once the kernel layout is built."""
        for name in names:
            if name in layer._parameters:
                del layer._parameters[name]

    def adopt_platform_layout(self, layer: nn.Module) -> None:
        """Replace ``layer.qweights`` by the platform's layout of it
        (``LayerOps.prepare_quantized``); once, after ``process_after_loading``."""
        qw = getattr(layer, "qweights", None)
        if qw is not None:
            layer.qweights = layer.ops.prepare_quantized(self.kind, qw)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None) -> torch.Tensor:
        ops = layer.ops
        fn = {"wna16": ops.wna16_linear, "int8": ops.int8_linear, "fp8": ops.fp8_linear}[self.kind]
        return fn(x, layer.qweights, bias)

    def describe(self, layer: nn.Module) -> str:
        qw = getattr(layer, "qweights", None)
        kernel = layer.ops.quant_kernel_name(self.kind, qw) if qw is not None else "not loaded"
        return f"{self.settings()} -> {kernel}"

    def settings(self) -> str:
        """The method's settings in a few words (for ``describe``)."""
        return self.name


#: fused parameter -> the checkpoint layers it holds (the decoder fuses q/k/v and gate/up)
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def checkpoint_layer_names(prefix: str) -> list[str]:
    """The checkpoint's names of the layer ``prefix`` (``...qkv_proj`` -> its q / k / v)."""
    head, _, leaf = prefix.rpartition(".")
    parts = FUSED_PARTS.get(leaf)
    if parts is None:
        return [prefix]
    return [f"{head}.{p}" if head else p for p in parts]
