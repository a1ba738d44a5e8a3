"""Reasoning-parser name -> class, imported lazily (a ``vllm_core.plugins.registry.Registry``:
its re-registration rule and plugin loading apply). Plugins add theirs through the
``register_reasoning_parsers`` pluggy hook (or ``register_reasoning_parser``)."""

from __future__ import annotations

from vllm_core.plugins.registry import Registry

PARSERS = Registry("reasoning parser")
PARSERS.register("deepseek_r1", "vllm_core.reasoning.deepseek_r1.DeepSeekR1ReasoningParser")
PARSERS.register("qwen3", "vllm_core.reasoning.qwen3.Qwen3ReasoningParser")
register_reasoning_parser = PARSERS.register


def reasoning_parser_names() -> list[str]:
    return list(PARSERS.items())


def resolve_reasoning_parser(name: str) -> type:
    """The parser class; ValueError naming the known parsers when ``name`` is unknown."""
    known = PARSERS.items()
    if name not in known:
        raise ValueError(f"reasoning_parser {name!r} is unknown; available: {', '.join(known)}")
    return PARSERS.load(name)
