"""Architecture name (the HF ``architectures`` entry) -> model class, imported lazily.

Built-in architectures are registered at import; plugins add theirs with ``register_model``
(typically from the ``register_model_architectures`` pluggy hook). Lookups load the general
plugins first (``vllm_core.plugins.load_general_plugins``, once per process), so an
architecture registered by any installed plugin is visible. A class path is
``"package.module.ClassName"`` (or ``"package.module:ClassName"``); the module is imported only
when the architecture is resolved. Registered classes implement
``vllm_core.model_executor.models.interface.CausalLM``.
"""

from __future__ import annotations

from vllm_core.plugins.loading import import_object

_MODELS: dict[str, str] = {}

_BUILTIN = {
    "LlamaForCausalLM": "vllm_core.model_executor.models.families.LlamaForCausalLM",
    "MistralForCausalLM": "vllm_core.model_executor.models.families.MistralForCausalLM",
    "Qwen2ForCausalLM": "vllm_core.model_executor.models.families.Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "vllm_core.model_executor.models.families.Qwen3ForCausalLM",
}


def register_model(architecture: str, class_path: str) -> None:
    """Map ``architecture`` to ``class_path``; a later registration replaces an earlier one."""
    if not architecture or not isinstance(architecture, str):
        raise ValueError(f"architecture must be a non-empty string, got {architecture!r}")
    if not isinstance(class_path, str) or "." not in class_path.replace(":", "."):
        raise ValueError(f"class_path must look like 'package.module.ClassName', "
                         f"got {class_path!r}")
    _MODELS[architecture] = class_path


def supported_architectures() -> list[str]:
    """The registered architecture names, sorted."""
    _ensure_plugins()
    return sorted(_MODELS)


def resolve_model_cls(architecture: str) -> type:
    """Import and return the class of ``architecture``; ``ValueError`` naming the supported
    architectures when it is unknown, ``ImportError`` naming the path when it cannot load."""
    _ensure_plugins()
    path = _MODELS.get(architecture)
    if path is None:
        raise ValueError(f"model architecture {architecture!r} is not supported; supported: "
                         f"{', '.join(supported_architectures())}")
    try:
        return import_object(path)
    except (ImportError, AttributeError, ValueError) as e:
        raise ImportError(f"cannot import model class {path!r} registered for "
                          f"{architecture!r}: {e}") from e


def _ensure_plugins() -> None:
    from vllm_core.plugins import load_general_plugins

    load_general_plugins()


for _arch, _path in _BUILTIN.items():
    register_model(_arch, _path)
