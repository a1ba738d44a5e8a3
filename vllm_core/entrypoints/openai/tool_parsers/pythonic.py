"""Pythonic format (Llama 3.2 / 4): the output is a Python list of calls,
``[get_weather(city="Paris"), get_time()]``, optionally inside ``<|python_start|>`` ...
``<|python_end|>``. Arguments must be Python literals; they are sent as JSON.

Streaming emits a call's name once its ``(`` appears and its arguments as they are written:
each finished ``key=value`` as JSON, and a string value still being written as its JSON text
so far (no closing quote). What is sent is always a prefix of the finished call's arguments
(``json.dumps`` of the keyword dict); other values (numbers, lists, ...) are sent once a ``,``
ends them, and a partial escape sequence is held back."""

from __future__ import annotations

import ast
import json
import re

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


_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=")
_TRIPLE = ("'" * 3, '"' * 3)


def _value_end(src: str, i: int) -> int:
    """Index of the ``,`` ending the value that starts at ``src[i]`` (top level), or -1."""
    depth = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c in "'\"":
            end = _py_string_end(src, i)
            if end < 0:
                return -1
            i = end
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    return -1


def _partial_string(src: str) -> str | None:
    """The JSON text (no closing quote) of a Python string literal still being written, as far
    as it can be decoded; None if ``src`` does not start one."""
    src = src.lstrip()
    if not src or src[0] not in "'\"" or src.startswith(_TRIPLE):
        return None
    quote = src[0]
    end = _py_string_end(src, 0)
    body = src[1:end - 1] if end > 0 else src[1:]
    for cut in range(len(body), max(len(body) - 12, -1), -1):   # hold back a partial escape
        try:
            value = ast.literal_eval(quote + body[:cut] + quote)
        except (SyntaxError, ValueError):
            continue
        return json.dumps(value, ensure_ascii=False)[:-1] if isinstance(value, str) else None
    return None


def _partial_arguments(src: str) -> str:
    """A JSON prefix of the arguments of an unfinished call; ``src`` follows its ``(``."""
    parts: list[str] = []
    i = 0
    while True:
        i = skip_ws(src, i)
        m = _KEY.match(src, i)
        if m is None:
            break
        start = skip_ws(src, m.end())
        end = _value_end(src, start)
        key = json.dumps(m.group(1), ensure_ascii=False)
        if end < 0:                                  # the value being written
            partial = _partial_string(src[start:])
            if partial is not None:
                parts.append(f"{key}: {partial}")
            break
        try:
            value = ast.literal_eval(src[start:end].strip())
        except (SyntaxError, ValueError):
            break
        parts.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
        i = end + 1
    return "{" + ", ".join(parts)


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
        if calls and calls[-1] is not None and not calls[-1].complete and depth > 0:
            paren = text.index("(", start)
            calls[-1] = PartialCall(calls[-1].name, _partial_arguments(text[paren + 1:]), False)
        return calls, False
