"""One request's structured-output state: its grammar (compiling, then a matcher) and the
reasoning gate. Torch-free; owned by the scheduler once the request is added.

Life cycle: created with the compile future (``StructuredOutputManager.submit``); the scheduler
keeps the request in WAITING_FOR_GRAMMAR until ``is_ready()`` (the future is done: the matcher is
built here, or ``error`` is set); from then on ``accept`` advances the matcher with each token the
request outputs. With a reasoning gate, tokens up to and including the end of the reasoning
section are not fed to the matcher and the grammar is not ``active`` (no bitmask row) until then.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from vllm_core.structured_output.backend import StructuredOutputGrammar


@dataclass(slots=True)
class ReasoningGate:
    """Detects the end of a reasoning section in a token stream, on the decoded text.

    Token ids are not enough: ``"</think>"`` tokenizes differently after a space or newline.
    ``feed`` decodes only a short tail of the output (``window`` tokens, enough to hold the tag
    however it was split) per token, until the tag has been seen; afterwards it is a no-op.
    """

    end_tag: str
    decode: Callable[[list[int]], str]
    window: int
    ended: bool = False
    _tail: list[int] = field(default_factory=list)

    @classmethod
    def for_prompt(cls, prompt_ids: list[int], start_tag: str, end_tag: str,
                   decode: Callable[[list[int]], str], window: int) -> ReasoningGate:
        """The gate after the prompt: ended when the prompt's text closes its last reasoning
        section (an empty think block put there by the chat template)."""
        gate = cls(end_tag, decode, window)
        text = decode(list(prompt_ids[-4 * window:]))
        last_end = text.rfind(end_tag)
        gate.ended = last_end >= 0 and last_end > text.rfind(start_tag)
        return gate

    def feed(self, token: int) -> None:
        if self.ended:
            return
        self._tail.append(token)
        if len(self._tail) > self.window:
            del self._tail[0]
        if self.end_tag in self.decode(self._tail):
            self.ended = True


@dataclass(slots=True, eq=False)
class StructuredOutputRequest:
    key: tuple
    future: Future
    make_grammar: Callable[[Any], StructuredOutputGrammar]
    gate: ReasoningGate | None = None
    prefix: tuple[int, ...] = ()          # output tokens the matcher starts after
    grammar: StructuredOutputGrammar | None = None
    error: str | None = None
    num_rejected: int = 0
    # (token, accepted): the next output token, already fed to the matcher by a batch
    # (``StructuredOutputManager.advance``); ``accept`` of that token only reads the result
    preaccepted: tuple[int, bool] | None = None

    def is_ready(self) -> bool:
        """True once the grammar compiled (matcher built) or failed (``error`` set)."""
        if self.grammar is not None or self.error is not None:
            return True
        if not self.future.done():
            return False
        try:
            self.grammar = self.make_grammar(self.future.result())
        except Exception as e:  # noqa: BLE001 - reported to the client as the finish reason
            self.error = f"grammar compilation failed: {e}"
            return True
        for i, token in enumerate(self.prefix):
            if not self.accept(token):
                self.error = (f"the grammar rejects token {token} at position {i} of "
                              f"structured_outputs.prefix_token_ids")
                break
        return True

    @property
    def active(self) -> bool:
        """Whether the grammar constrains the next token (compiled, reasoning over)."""
        return self.grammar is not None and (self.gate is None or self.gate.ended)

    def accept(self, token: int) -> bool:
        """Advance over one output token. False if the grammar rejected it (state kept)."""
        if self.grammar is None:
            return True
        if self.gate is not None and not self.gate.ended:
            self.gate.feed(token)           # the tag's own tokens are not the grammar's
            return True
        pre, self.preaccepted = self.preaccepted, None
        if pre is not None and pre[0] == token:
            accepted = pre[1]
        else:
            accepted = self.grammar.accept_tokens([token])
        if accepted:
            return True
        self.num_rejected += 1
        return False

    def is_terminated(self) -> bool:
        return self.active and self.grammar.is_terminated()
