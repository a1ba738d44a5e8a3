"""Multi-LoRA serving: PEFT adapters loaded from disk, stacked per layer in device slots, and
applied per token around any base linear layer (see docs/lora.md)."""

from vllm_core.lora.request import LoRARequest

__all__ = ["LoRARequest"]
