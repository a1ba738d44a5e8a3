"""ReasoningParser: split a model's output into ``reasoning_content`` and ``content``.

A parser is defined by its tags and by ``split(text, final)``, a pure function of the whole
output text. Streaming re-splits the accumulated text on every delta and sends only what grew,
so chunk boundaries never matter; ``split`` with ``final=False`` holds back a tail that could
still become a tag (``"</thi"``) so that what was sent is never taken back.

Contract of ``split(text, final=False)``: for a text ``t`` and any extension ``t + s``, the
reasoning and content of ``t`` are prefixes of those of ``t + s`` (append-only streaming).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


def partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of ``tag`` that ``text`` ends with (0 if none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningParser(ABC):
    """Subclasses set ``start_tag`` / ``end_tag`` and implement ``split``."""

    name: str = ""
    start_tag: str = "<think>"
    end_tag: str = "</think>"

    def __init__(self, tokenizer: object | None = None) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def split(self, text: str, final: bool) -> tuple[str, str]:
        """(reasoning, content) of ``text``; see the module contract for ``final=False``."""

    def extract_reasoning(self, text: str) -> tuple[str | None, str | None]:
        """The non-streamed split; an empty part is None."""
        reasoning, content = self.split(text, final=True)
        return reasoning or None, content or None

    def stream(self) -> ReasoningStream:
        """A stateful splitter for one streamed choice."""
        return ReasoningStream(self)


@dataclass
class ReasoningStream:
    """Feeds deltas, returns (reasoning delta, content delta); ``finish`` flushes held text."""

    parser: ReasoningParser
    text: str = ""
    sent_reasoning: int = 0
    sent_content: int = 0

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        self.text += delta
        reasoning, content = self.parser.split(self.text, final)
        r, c = reasoning[self.sent_reasoning:], content[self.sent_content:]
        self.sent_reasoning = max(self.sent_reasoning, len(reasoning))
        self.sent_content = max(self.sent_content, len(content))
        return r, c

    def finish(self) -> tuple[str, str]:
        return self.feed("", final=True)


class ThinkTagParser(ReasoningParser):
    """Reasoning is the text before ``end_tag`` (a leading ``start_tag`` is dropped).

    ``start_required``: when True, output that does not open with ``start_tag`` is all content
    (the model chose not to think); when False, the chat template opened the section and the
    output is reasoning until ``end_tag`` (all reasoning if it never comes).
    """

    start_required: bool = False

    def split(self, text: str, final: bool) -> tuple[str, str]:
        start, end = self.start_tag, self.end_tag
        body = text.lstrip() if self.start_required else text
        if body.startswith(start):
            body = body[len(start):]
        elif not final and start.startswith(body):
            return "", ""                           # could still become the start tag
        elif self.start_required:
            return "", text
        idx = body.find(end)
        if idx >= 0:
            return body[:idx], body[idx + len(end):]
        if final:
            return body, ""
        return body[:len(body) - partial_tag_suffix(body, end)], ""
