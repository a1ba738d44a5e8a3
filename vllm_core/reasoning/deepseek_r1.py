"""DeepSeek-R1: the template opens ``<think>``; everything before ``</think>`` is reasoning."""

from __future__ import annotations

from vllm_core.reasoning.base import ThinkTagParser


class DeepSeekR1ReasoningParser(ThinkTagParser):
    name = "deepseek_r1"
    start_required = False
