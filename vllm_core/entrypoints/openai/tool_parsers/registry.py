"""Tool-parser name -> class, imported lazily (``--tool-call-parser``; a
``vllm_core.plugins.registry.Registry``: its re-registration rule and plugin loading apply).
Plugins add theirs through the ``register_tool_parsers`` pluggy hook (or
``register_tool_parser``)."""

from __future__ import annotations

from vllm_core.plugins.registry import Registry

_P = "vllm_core.entrypoints.openai.tool_parsers"
PARSERS = Registry("tool parser")
for _name, _cls in (("hermes", "hermes.HermesToolParser"),
                    ("llama3_json", "llama3_json.Llama3JsonToolParser"),
                    ("mistral", "mistral.MistralToolParser"),
                    ("pythonic", "pythonic.PythonicToolParser")):
    PARSERS.register(_name, f"{_P}.{_cls}")
register_tool_parser = PARSERS.register


def tool_parser_names() -> list[str]:
    return list(PARSERS.items())


def resolve_tool_parser(name: str) -> type:
    """The parser class; ValueError naming the known parsers when ``name`` is unknown."""
    known = PARSERS.items()
    if name not in known:
        raise ValueError(f"tool_call_parser {name!r} is unknown; available: {', '.join(known)}")
    return PARSERS.load(name)
