"""Architecture name (the HF ``architectures`` entry) -> model class, imported lazily.

Built-in architectures are registered at import; plugins add theirs with ``register_model``
(typically from the ``register_model_architectures`` pluggy hook). Lookups load the general
plugins first (a ``vllm_core.plugins.registry.Registry``: replacing a registered architecture
needs ``override=True``). A class path is
``"package.module.ClassName"`` (or ``"package.module:ClassName"``); the module is imported only
when the architecture is resolved. Registered classes implement
``vllm_core.model_executor.models.interface.CausalLM``.
"""

from __future__ import annotations

from vllm_core.plugins.registry import Registry

MODELS = Registry("model architecture")

_BUILTIN = {
    "LlamaForCausalLM": "vllm_core.model_executor.models.families.LlamaForCausalLM",
    "MistralForCausalLM": "vllm_core.model_executor.models.families.MistralForCausalLM",
    "Qwen2ForCausalLM": "vllm_core.model_executor.models.families.Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "vllm_core.model_executor.models.families.Qwen3ForCausalLM",
    "Phi3ForCausalLM": "vllm_core.model_executor.models.families.Phi3ForCausalLM",
    "Gemma3ForCausalLM": "vllm_core.model_executor.models.gemma3.Gemma3ForCausalLM",
    "MixtralForCausalLM": "vllm_core.model_executor.models.moe.MixtralForCausalLM",
    "Qwen2MoeForCausalLM": "vllm_core.model_executor.models.moe.Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM": "vllm_core.model_executor.models.moe.Qwen3MoeForCausalLM",
    "Qwen2_5_VLForConditionalGeneration":
        "vllm_core.model_executor.models.qwen2_5_vl.Qwen2_5_VLForConditionalGeneration",
}

register_model = MODELS.register


def supported_architectures() -> list[str]:
    """The registered architecture names, sorted."""
    return list(MODELS.items())


def resolve_model_cls(architecture: str) -> type:
    """Import and return the class of ``architecture``; ``ValueError`` naming the supported
    architectures when it is unknown, ``ImportError`` naming the path when it cannot load."""
    known = MODELS.items()
    path = known.get(architecture)
    if path is None:
        raise ValueError(f"model architecture {architecture!r} is not supported; supported: "
                         f"{', '.join(known)}")
    try:
        return MODELS.load(architecture)
    except (ImportError, AttributeError, ValueError) as e:
        raise ImportError(f"cannot import model class {path!r} registered for "
                          f"{architecture!r}: {e}") from e


for _arch, _path in _BUILTIN.items():
    register_model(_arch, _path)
