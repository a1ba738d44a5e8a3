"""The grammar-backend contract: a library that compiles constraints and runs matchers.

A ``StructuredOutputBackend`` is built once per engine for the tokenizer; it can ``check`` a
constraint cheaply (no tokenizer work, used to refuse a request up front with a reason),
``compile`` it (possibly slow; runs on the manager's compile threads, never on the step loop;
the result is immutable and shared by every request with the same key) and make a fresh
``StructuredOutputGrammar`` (a matcher) per request from a compiled grammar.

Bitmask convention (shared by all backends and by ``vllm_core.sampling.structured``): one row
of ``ceil(vocab_size / 32)`` int32 words per request; bit ``t % 32`` of word ``t // 32`` is 1
iff token ``t`` is allowed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class UnsupportedConstraint(ValueError):
    """The backend cannot serve this constraint; the message says why in words."""


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


class StructuredOutputGrammar(ABC):
    """One request's matcher. Invariant: its state reflects exactly the tokens accepted so far
    (minus those rolled back)."""

    @abstractmethod
    def accept_tokens(self, tokens: list[int]) -> bool:
        """Advance over ``tokens``. False if one is not allowed: the state is then as before
        the call (the tokens accepted by this call are rolled back)."""

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        """The longest prefix of ``tokens`` the grammar accepts, leaving the state unchanged
        (for speculative drafts)."""
        accepted: list[int] = []
        for t in tokens:
            if not self.accept_tokens([t]):
                break
            accepted.append(t)
        if accepted:
            self.rollback(len(accepted))
        return accepted

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens (rejected speculative tokens)."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32 CPU tensor)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once the grammar is complete and accepted its stop token (the request ends)."""

    @abstractmethod
    def reset(self) -> None:
        """Back to the start state."""


class StructuredOutputBackend(ABC):
    """A grammar library bound to one tokenizer. ``name`` is what the config selects."""

    name: str = ""
    # fill_bitmask writes every word of the row (else the manager sets the row to -1 first:
    # words past the backend's own vocabulary stay "allowed", as before)
    fills_whole_row: bool = False

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int],
                 disable_any_whitespace: bool = False) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.disable_any_whitespace = disable_any_whitespace

    @staticmethod
    @abstractmethod
    def check(kind: str, spec: str) -> None:
        """Raise ``UnsupportedConstraint`` with the reason when this backend cannot serve it
        (unsupported feature, invalid schema or regex). Cheap; no tokenizer needed."""

    @abstractmethod
    def compile(self, kind: str, spec: str, compact: bool) -> Any:
        """Compile a constraint for this tokenizer (slow; off the step loop). ``compact``:
        no free whitespace in JSON."""

    @abstractmethod
    def make_grammar(self, compiled: Any) -> StructuredOutputGrammar:
        """A fresh matcher at the start state of ``compiled``."""

    def accept_batch(self, grammars: list[StructuredOutputGrammar],
                     tokens: list[int]) -> list[bool]:
        """``grammars[i].accept_tokens([tokens[i]])`` for all i; a backend may do it in
        parallel (xgrammar's batch accept on threads, GIL released)."""
        return [g.accept_tokens([t]) for g, t in zip(grammars, tokens)]

    def fill_bitmasks(self, grammars: list[StructuredOutputGrammar], bitmask: torch.Tensor,
                      rows: list[int]) -> None:
        """``grammars[i].fill_bitmask(bitmask, rows[i])`` for all i; a backend may do it in
        parallel (xgrammar's batch matcher)."""
        for grammar, row in zip(grammars, rows):
            grammar.fill_bitmask(bitmask, row)
