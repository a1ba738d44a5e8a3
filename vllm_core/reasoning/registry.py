"""Reasoning-parser name -> class, imported lazily. Plugins add theirs through the
``register_reasoning_parsers`` pluggy hook (or ``register_reasoning_parser``)."""

from __future__ import annotations

from vllm_core.plugins.loading import import_object

_PARSERS: dict[str, str] = {
    "deepseek_r1": "vllm_core.reasoning.deepseek_r1.DeepSeekR1ReasoningParser",
    "qwen3": "vllm_core.reasoning.qwen3.Qwen3ReasoningParser",
}


def register_reasoning_parser(name: str, class_path: str) -> None:
    """Map ``name`` to ``class_path`` (a ``ReasoningParser`` subclass); later wins."""
    if not name or not isinstance(name, str):
        raise ValueError(f"reasoning parser name must be a non-empty string, got {name!r}")
    _PARSERS[name] = class_path


def reasoning_parser_names() -> list[str]:
    _ensure_plugins()
    return sorted(_PARSERS)


def resolve_reasoning_parser(name: str) -> type:
    """The parser class; ValueError naming the known parsers when ``name`` is unknown."""
    _ensure_plugins()
    path = _PARSERS.get(name)
    if path is None:
        raise ValueError(f"reasoning_parser {name!r} is unknown; available: "
                         f"{', '.join(reasoning_parser_names())}")
    return import_object(path)


def _ensure_plugins() -> None:
    from vllm_core.plugins import get_plugin_manager, load_general_plugins

    get_plugin_manager()
    load_general_plugins()
