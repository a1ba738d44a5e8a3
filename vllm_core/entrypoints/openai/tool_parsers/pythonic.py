"""Pythonic format (Llama 3.2 / 4): the output is a Python list of calls,
``[get_weather(city="Paris"), get_time()]``, optionally inside ``<|python_start|>`` ...
``<|python_end|>``. Arguments must be Python literals; they are sent as JSON.

Streaming emits a call's name once its ``(`` appears and its arguments once the call closes
(a partial Python expression has no JSON prefix to send)."""

from __future__ import annotations

import ast
import json

from vllm_core.entrypoints.openai.tool_parsers.base import ScanResult, ToolParser
from vllm_core.entrypoints.openai.tool_parsers.json_scan import PartialCall, skip_ws


def _py_string_end(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    return -1


def _call_from_source(source: str) -> PartialCall | None:
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
        return None
    name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
    try:
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except ValueError:
        return None
    if node.args or len(args) != len(node.keywords):
        return None
    return PartialCall(name, json.dumps(args, ensure_ascii=False), True)


class PythonicToolParser(ToolParser):
    name = "pythonic"
    start_tag = "<|python_start|>"
    end_tag = "<|python_end|>"

    def scan(self, text: str, final: bool) -> ScanResult:
        j = skip_ws(text, 0)
        rest = text[j:]
        if rest.startswith(self.start_tag):
            j = skip_ws(text, j + len(self.start_tag))
        elif not final and (self.start_tag.startswith(rest) or rest == ""):
            return ScanResult("")
        if j >= len(text) or text[j] != "[":
            return ScanResult(text)
        calls, closed = self._scan_list(text, j)
        if final and (not closed or any(c is None for c in calls)):
            return ScanResult(text)
        return ScanResult("", [c for c in calls if c is not None])

    def _scan_list(self, text: str, i: int) -> tuple[list[PartialCall | None], bool]:
        """Calls of the list starting at ``text[i] == '['`` (None: an unparsable call)."""
        calls: list[PartialCall | None] = []
        depth = 0
        start = i + 1
        j = i + 1
        n = len(text)
        while j < n:
            c = text[j]
            if c in "'\"":
                end = _py_string_end(text, j)
                if end < 0:
                    break
                j = end
                continue
            if c in "([{":
                if depth == 0 and c == "(":
                    name = text[start:j].strip().lstrip(",").strip()
                    calls.append(PartialCall(name or None, "", False))
                depth += 1
            elif c in ")]}":
                if depth == 0 and c == "]":
                    return calls, True
                depth -= 1
                if depth == 0 and c == ")":
                    parsed = _call_from_source(text[start:j + 1].strip().lstrip(",").strip())
                    calls[-1] = parsed
                    start = j + 1
            j += 1
        return calls, False
