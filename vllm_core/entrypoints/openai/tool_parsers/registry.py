"""Tool-parser name -> class, imported lazily (``--tool-call-parser``). Plugins add theirs
through the ``register_tool_parsers`` pluggy hook (or ``register_tool_parser``)."""

from __future__ import annotations

from vllm_core.plugins.loading import import_object

_P = "vllm_core.entrypoints.openai.tool_parsers"
_PARSERS: dict[str, str] = {
    "hermes": f"{_P}.hermes.HermesToolParser",
    "llama3_json": f"{_P}.llama3_json.Llama3JsonToolParser",
    "mistral": f"{_P}.mistral.MistralToolParser",
    "pythonic": f"{_P}.pythonic.PythonicToolParser",
}


def register_tool_parser(name: str, class_path: str) -> None:
    """Map ``name`` to ``class_path`` (a ``ToolParser`` subclass); later wins."""
    if not name or not isinstance(name, str):
        raise ValueError(f"tool parser name must be a non-empty string, got {name!r}")
    _PARSERS[name] = class_path


def tool_parser_names() -> list[str]:
    _ensure_plugins()
    return sorted(_PARSERS)


def resolve_tool_parser(name: str) -> type:
    """The parser class; ValueError naming the known parsers when ``name`` is unknown."""
    _ensure_plugins()
    path = _PARSERS.get(name)
    if path is None:
        raise ValueError(f"tool_call_parser {name!r} is unknown; available: "
                         f"{', '.join(tool_parser_names())}")
    return import_object(path)


def _ensure_plugins() -> None:
    from vllm_core.plugins import get_plugin_manager, load_general_plugins

    get_plugin_manager()
    load_general_plugins()
