"""Hermes / Qwen format: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.

Content is the text before the first block; text after the calls is dropped."""

from __future__ import annotations

from vllm_core.entrypoints.openai.tool_parsers.base import ScanResult, ToolParser
from vllm_core.entrypoints.openai.tool_parsers.json_scan import scan_call_object, skip_ws
from vllm_core.reasoning.base import partial_tag_suffix


class HermesToolParser(ToolParser):
    name = "hermes"
    start_tag = "<tool_call>"

    def adjust_sampling_fields(self, fields: dict) -> None:
        fields["skip_special_tokens"] = False     # <tool_call> may be a special token

    def scan(self, text: str, final: bool) -> ScanResult:
        start = self.start_tag
        idx = text.find(start)
        if idx < 0:
            hold = 0 if final else partial_tag_suffix(text, start)
            return ScanResult(text[:len(text) - hold])
        result = ScanResult(text[:idx])
        pos = idx
        while pos >= 0:
            j = skip_ws(text, pos + len(start))
            if j >= len(text) or text[j] != "{":
                break
            call, end = scan_call_object(text, j)
            result.calls.append(call)
            if end < 0:
                break
            pos = text.find(start, end)
        return result
