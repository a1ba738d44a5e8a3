"""Qwen3: reasoning only when the output opens with ``<think>`` (``enable_thinking=False``
puts an empty think block in the prompt, and the output is then all content)."""

from __future__ import annotations

from vllm_core.reasoning.base import ThinkTagParser


class Qwen3ReasoningParser(ThinkTagParser):
    name = "qwen3"
    start_required = True
