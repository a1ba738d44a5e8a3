"""FP8 (e4m3) checkpoints (``quant_method: "fp8"``) and online FP8 (``--quantization fp8``).

Checkpoints, as written by AutoFP8 / vLLM's FP8 export and by model authors (Qwen, DeepSeek
block FP8), per linear layer:

- per-tensor: ``weight`` float8_e4m3fn ``[N, K]``, ``weight_scale`` one float (``W = weight *
  weight_scale``), and with ``activation_scheme: "static"`` an ``input_scale`` (one float);
  ``"dynamic"``: activations are quantized per token at run time;
- block-scaled (``weight_block_size: [bn, bk]``): ``weight_scale_inv`` float32
  ``[ceil(N / bn), ceil(K / bk)]``, ``W[n, k] = weight[n, k] * weight_scale_inv[n // bn,
  k // bk]`` (activations stay in the model dtype here; see ``quantized_weights``).

Layers named in ``ignored_layers`` / ``modules_to_not_convert`` stay in float. Online
quantization of a float checkpoint: per output channel, activations dynamic per token.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vllm_core.model_executor.layers.weight_method import LinearMethod
from vllm_core.model_executor.quantization.base import QuantizationConfig
from vllm_core.model_executor.quantization.fp8_moe import Fp8MoEMethod
from vllm_core.model_executor.quantization.scaled import ScaledW8A8Method


class Fp8Config(QuantizationConfig):
    name: ClassVar[str] = "fp8"
    capabilities: ClassVar[tuple[str, ...]] = ("fp8-e4m3", "per-tensor", "per-channel",
                                               "block scales", "static or dynamic "
                                               "activations")
    online: ClassVar[bool] = True
    how_to_make: ClassVar[str] = "llm-compressor (scheme FP8 / FP8_DYNAMIC, written as " \
                                 "compressed-tensors) or --quantization fp8 at load"

    def __init__(self, strategy: str, static_input: bool,
                 block_size: tuple[int, int] | None = None,
                 ignored: tuple[str, ...] = ()) -> None:
        self.strategy = strategy              # "tensor", "block" or "online"
        self.static_input = static_input
        self.block_size = block_size
        self.ignored = ignored

    @classmethod
    def from_checkpoint(cls, qc: dict[str, Any]) -> Fp8Config:
        fmt = str(qc.get("fmt", "e4m3"))
        if fmt != "e4m3":
            raise ValueError(f"FP8 checkpoints in {fmt!r} are not supported (e4m3 is)")
        scheme = str(qc.get("activation_scheme", "dynamic"))
        if scheme not in ("static", "dynamic"):
            raise ValueError(f"FP8 activation_scheme {scheme!r} is not supported (static, "
                             "dynamic)")
        ignored = tuple(qc.get("ignored_layers") or qc.get("modules_to_not_convert") or ())
        block = qc.get("weight_block_size")
        if block is not None:
            if len(block) != 2 or min(int(b) for b in block) <= 0:
                raise ValueError(f"FP8 weight_block_size must be two positive sizes, got "
                                 f"{block!r}")
            if scheme == "static":
                raise ValueError("FP8 block-scaled checkpoints with static activation "
                                 "scales are not supported")
            return cls("block", False, (int(block[0]), int(block[1])), ignored)
        return cls("tensor", scheme == "static", None, ignored)

    @classmethod
    def for_online(cls) -> Fp8Config:
        return cls("online", False)

    def linear_method(self, prefix: str) -> LinearMethod | None:
        if any(i and (prefix == i or prefix.endswith("." + i) or i in prefix)
               for i in self.ignored):
            return None
        scale = "weight_scale_inv" if self.strategy == "block" else "weight_scale"
        return ScaledW8A8Method("fp8", self.strategy, self.static_input, self.block_size,
                                scale, name="fp8")

    def moe_method(self, prefix: str) -> Fp8MoEMethod | None:
        """FP8 experts (``fp8_moe.py``): online, or per-tensor checkpoint scales with dynamic
        activations; block-scaled and static-activation expert checkpoints are refused."""
        if any(i and (prefix == i or prefix.endswith("." + i) or i in prefix)
               for i in self.ignored):
            return None
        if self.strategy == "block" or self.static_input:
            raise ValueError("FP8 experts with block scales or static activation scales are "
                             "not supported (per-tensor / per-channel weights with dynamic "
                             "activations, or --quantization fp8 of a float checkpoint, are)")
        return Fp8MoEMethod(online=self.strategy == "online")

    def summary(self) -> str:
        if self.strategy == "online":
            return "fp8 (online: per-channel weights, dynamic per-token activations)"
        if self.strategy == "block":
            return f"fp8 block {self.block_size[0]}x{self.block_size[1]}"
        return f"fp8 per-tensor, {'static' if self.static_input else 'dynamic'} activations"
