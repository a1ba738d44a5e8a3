"""ToolParser: find the tool calls in a model's output, whole or streamed.

A parser implements ``scan(text, final)``, a pure function of the whole output text that returns
the plain content and the calls found so far (``PartialCall``: name once complete, arguments as
the raw JSON text written so far). Both the non-streamed ``extract_tool_calls`` and the streamed
``ToolCallStream`` are built on it, so they agree, and chunk boundaries never matter: the stream
re-scans the accumulated text and sends only what grew.

Contract of ``scan(text, final=False)``: for any extension ``text + s``, the content is a prefix
of the extension's content, and each call's name (once set) and arguments are prefixes of the
extension's (so deltas are append-only). It holds back a tail that could still start a tool-call
marker. ``final=True`` is the end of the output: nothing is held back.
"""

from __future__ import annotations

import json
import secrets
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from vllm_core.entrypoints.openai.tool_parsers.json_scan import PartialCall


def random_tool_call_id() -> str:
    return f"chatcmpl-tool-{secrets.token_hex(12)}"


def random_mistral_id() -> str:
    """Mistral's templates require 9 alphanumeric characters."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


@dataclass(slots=True)
class ScanResult:
    content: str
    calls: list[PartialCall] = field(default_factory=list)


@dataclass(slots=True)
class ToolCall:
    """A complete call. ``arguments`` is JSON text (OpenAI's format)."""

    name: str
    arguments: str
    id: str = field(default_factory=random_tool_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None


@dataclass(slots=True)
class ToolCallDelta:
    """One streamed piece of call ``index``: the first carries ``id`` and ``name``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        if self.arguments or self.name is None:
            function["arguments"] = self.arguments
        elif self.id is not None:
            function["arguments"] = ""
        out["function"] = function
        return out


def normalize_arguments(raw: str) -> str:
    """Compact canonical JSON of the arguments when they parse (else the raw text)."""
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False)
    except ValueError:
        return raw


class ToolParser(ABC):
    """Subclasses set ``name`` and implement ``scan``."""

    name: str = ""

    def __init__(self, tokenizer: Any | None = None) -> None:
        self.tokenizer = tokenizer

    def new_call_id(self) -> str:
        return random_tool_call_id()

    def adjust_sampling_fields(self, fields: dict[str, Any]) -> None:
        """Change the request's sampling fields if the parser needs to (e.g. keep the special
        tokens that mark a tool call). Default: nothing."""

    @abstractmethod
    def scan(self, text: str, final: bool) -> ScanResult:
        """See the module contract."""

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        """The calls of a finished output (only complete, named ones); when there are none,
        the whole text is content."""
        result = self.scan(text, final=True)
        calls = [ToolCall(c.name, normalize_arguments(c.arguments), self.new_call_id())
                 for c in result.calls if c.complete and c.name]
        if not calls:
            return ExtractedToolCalls(False, [], text)
        return ExtractedToolCalls(True, calls, result.content or None)

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self)


@dataclass
class ToolCallStream:
    """Per streamed choice: ``feed(delta)`` -> (content delta, tool-call deltas)."""

    parser: ToolParser
    text: str = ""
    sent_content: int = 0
    ids: list[str] = field(default_factory=list)
    sent_args: list[int] = field(default_factory=list)

    @property
    def tools_called(self) -> bool:
        return bool(self.ids)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += delta
        result = self.parser.scan(self.text, final)
        content = result.content[self.sent_content:]
        self.sent_content = max(self.sent_content, len(result.content))
        deltas: list[ToolCallDelta] = []
        for i, call in enumerate(result.calls):
            if i >= len(self.ids):
                if call.name is None:
                    break
                self.ids.append(self.parser.new_call_id())
                self.sent_args.append(0)
                deltas.append(ToolCallDelta(i, self.ids[i], call.name))
            new_args = call.arguments[self.sent_args[i]:]
            if new_args:
                self.sent_args[i] = len(call.arguments)
                if deltas and deltas[-1].index == i and not deltas[-1].arguments:
                    deltas[-1].arguments = new_args
                else:
                    deltas.append(ToolCallDelta(i, arguments=new_args))
        return content, deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return self.feed("", final=True)
