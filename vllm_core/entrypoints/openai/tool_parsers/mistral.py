"""Mistral format: ``[TOOL_CALLS]`` then a JSON array of ``{"name", "arguments"}`` objects, or
(tokenizer v11+) ``[TOOL_CALLS]name[ARGS]{...}`` repeated. Content is the text before the
marker. Call ids are 9 alphanumeric characters, as Mistral's templates require."""

from __future__ import annotations

import re

from vllm_core.entrypoints.openai.tool_parsers.base import (
    ScanResult,
    ToolParser,
    random_mistral_id,
)
from vllm_core.entrypoints.openai.tool_parsers.json_scan import (
    PartialCall,
    scan_call_array,
    scan_call_object,
    skip_ws,
    value_end,
)
from vllm_core.reasoning.base import partial_tag_suffix

_NAME = re.compile(r"[A-Za-z0-9_\-.]+")


class MistralToolParser(ToolParser):
    name = "mistral"
    marker = "[TOOL_CALLS]"
    args_marker = "[ARGS]"

    def new_call_id(self) -> str:
        return random_mistral_id()

    def adjust_sampling_fields(self, fields: dict) -> None:
        fields["skip_special_tokens"] = False     # [TOOL_CALLS] is a special token

    def scan(self, text: str, final: bool) -> ScanResult:
        idx = text.find(self.marker)
        if idx < 0:
            hold = 0 if final else partial_tag_suffix(text, self.marker)
            return ScanResult(text[:len(text) - hold])
        result = ScanResult(text[:idx])
        j = skip_ws(text, idx + len(self.marker))
        if j >= len(text):
            return result
        if text[j] == "[":
            result.calls, _ = scan_call_array(text, j)
        elif text[j] == "{":
            call, _ = scan_call_object(text, j)
            result.calls.append(call)
        else:
            result.calls = self._scan_v11(text, idx)
        return result

    def _scan_v11(self, text: str, idx: int) -> list[PartialCall]:
        """``[TOOL_CALLS]name[ARGS]{...}`` blocks."""
        calls: list[PartialCall] = []
        pos = idx
        while pos >= 0:
            j = pos + len(self.marker)
            a = text.find(self.args_marker, j)
            if a < 0:
                break
            name = text[j:a].strip()
            if not _NAME.fullmatch(name):
                break
            v = skip_ws(text, a + len(self.args_marker))
            end = value_end(text, v)
            calls.append(PartialCall(name, text[v:end] if end >= 0 else text[v:], end >= 0))
            if end < 0:
                break
            pos = text.find(self.marker, end)
        return calls
