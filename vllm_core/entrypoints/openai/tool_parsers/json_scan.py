"""A tiny incremental JSON scanner for tool calls that are still being generated.

It finds where values start and end in raw text without parsing them, so a tool call's
``arguments`` can be streamed as the exact raw text the model wrote: the raw text of an
unfinished value only ever grows, which makes the streamed argument deltas append-only and their
concatenation the final arguments JSON. Functions return -1 for "not finished in this text".
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_WS = " \t\r\n"


@dataclass(slots=True)
class PartialCall:
    """A tool call as far as the text goes: ``arguments`` is the raw JSON text written so far
    (complete iff ``complete``)."""

    name: str | None
    arguments: str
    complete: bool


def skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def string_end(text: str, i: int) -> int:
    """``text[i] == '"'``: index after the closing quote, or -1."""
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return -1


def value_end(text: str, i: int) -> int:
    """Index after the JSON value starting at ``i`` (object, array, string, scalar), or -1."""
    n = len(text)
    if i >= n:
        return -1
    c = text[i]
    if c == '"':
        return string_end(text, i)
    if c in "{[":
        depth = 0
        j = i
        while j < n:
            c = text[j]
            if c == '"':
                j = string_end(text, j)
                if j < 0:
                    return -1
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return -1
    j = i
    while j < n and text[j] not in ",}] \t\r\n":
        j += 1
    return j if j < n else -1          # a scalar at the end of the text may still grow


def scan_call_object(text: str, i: int, name_keys: tuple[str, ...] = ("name",),
                     args_keys: tuple[str, ...] = ("arguments", "parameters")
                     ) -> tuple[PartialCall, int]:
    """Scan the call object starting at ``text[i] == '{'``: (call so far, end index or -1).

    The name is known once its string is complete; arguments are the raw text of the first
    ``args_keys`` value (an object); ``complete`` once the whole call object closed."""
    call = PartialCall(None, "", False)
    n = len(text)
    j = skip_ws(text, i + 1)
    while j < n:
        if text[j] == "}":
            call.complete = True
            if not call.arguments:
                call.arguments = "{}"
            return call, j + 1
        if text[j] == ",":
            j = skip_ws(text, j + 1)
            continue
        if text[j] != '"':
            return call, -1                      # malformed: stop here
        key_end = string_end(text, j)
        if key_end < 0:
            return call, -1
        key = json.loads(text[j:key_end])
        j = skip_ws(text, key_end)
        if j >= n or text[j] != ":":
            return call, -1
        v = skip_ws(text, j + 1)
        end = value_end(text, v)
        if key in args_keys and not call.arguments:
            call.arguments = text[v:end] if end >= 0 else text[v:]
        elif key in name_keys and end >= 0 and call.name is None:
            try:
                name = json.loads(text[v:end])
            except ValueError:
                name = None
            call.name = name if isinstance(name, str) else None
        if end < 0:
            return call, -1
        j = skip_ws(text, end)
    return call, -1


def scan_call_array(text: str, i: int, **keys: tuple[str, ...]) -> tuple[list[PartialCall], int]:
    """Scan ``[ {call}, {call} ... ]`` from ``text[i] == '['``: (calls, end index or -1)."""
    calls: list[PartialCall] = []
    j = skip_ws(text, i + 1)
    n = len(text)
    while j < n:
        c = text[j]
        if c == "]":
            return calls, j + 1
        if c == ",":
            j = skip_ws(text, j + 1)
            continue
        if c != "{":
            return calls, -1
        call, end = scan_call_object(text, j, **keys)
        calls.append(call)
        if end < 0:
            return calls, -1
        j = skip_ws(text, end)
    return calls, -1
