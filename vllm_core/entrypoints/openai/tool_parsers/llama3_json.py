"""Llama 3.x JSON format: the output is ``{"name": ..., "parameters": {...}}`` (optionally after
``<|python_tag|>``), several calls separated by ``;``. Output not starting with ``{`` is
content."""

from __future__ import annotations

from vllm_core.entrypoints.openai.tool_parsers.base import ScanResult, ToolParser
from vllm_core.entrypoints.openai.tool_parsers.json_scan import scan_call_object, skip_ws


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    python_tag = "<|python_tag|>"

    def adjust_sampling_fields(self, fields: dict) -> None:
        fields["skip_special_tokens"] = False

    def scan(self, text: str, final: bool) -> ScanResult:
        j = skip_ws(text, 0)
        rest = text[j:]
        if rest.startswith(self.python_tag):
            j = skip_ws(text, j + len(self.python_tag))
        elif not final and self.python_tag.startswith(rest):
            return ScanResult("")                   # may still become the python tag
        if j >= len(text):
            return ScanResult("" if not final else text)
        if text[j] != "{":
            return ScanResult(text)
        result = ScanResult("")
        while j < len(text) and text[j] == "{":
            call, end = scan_call_object(text, j)
            result.calls.append(call)
            if end < 0:
                break
            j = skip_ws(text, end)
            if j < len(text) and text[j] == ";":
                j = skip_ws(text, j + 1)
        if final and not any(c.complete for c in result.calls):
            return ScanResult(text)
        return result
