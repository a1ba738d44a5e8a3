"""Reasoning parsers (``--reasoning-parser``): split ``<think>`` sections from the answer.

Used by the server (``reasoning_content``) and by the engine (a request's grammar starts once
the reasoning section has ended)."""

from vllm_core.reasoning.base import ReasoningParser, ReasoningStream
from vllm_core.reasoning.registry import (
    reasoning_parser_names,
    register_reasoning_parser,
    resolve_reasoning_parser,
)

__all__ = ["ReasoningParser", "ReasoningStream", "reasoning_parser_names",
           "register_reasoning_parser", "resolve_reasoning_parser"]
