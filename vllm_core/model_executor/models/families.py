"""The registered Llama-family architectures: one shared decoder under five HF names.

Their differences are carried by ``ModelArchConfig`` (see ``decoder.py``); the subclasses exist
so that each HF architecture name resolves to a class of the same name.
"""

from __future__ import annotations

from vllm_core.model_executor.models.decoder import DecoderForCausalLM


class LlamaForCausalLM(DecoderForCausalLM):
    """Llama 1/2/3.x (rope_scaling: llama3, linear), SmolLM2 and other Llama-shaped models."""


class MistralForCausalLM(DecoderForCausalLM):
    """Mistral: the Llama decoder, optionally with a sliding attention window."""


class Qwen2ForCausalLM(DecoderForCausalLM):
    """Qwen2 / Qwen2.5: biases on the q/k/v projections."""


class Qwen3ForCausalLM(DecoderForCausalLM):
    """Qwen3 (dense): per-head RMSNorm on q and k, explicit head_dim."""


class Phi3ForCausalLM(DecoderForCausalLM):
    """Phi-3 / Phi-3.5-mini / Phi-4-mini: q/k/v and gate/up stored fused in the checkpoint,
    LongRoPE ("su") scaling, partial rotary (Phi-4-mini), optional sliding window."""
