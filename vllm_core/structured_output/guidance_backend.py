"""The llguidance backend: Lark-based grammars, the widest JSON-schema coverage.

Constraints become one llguidance grammar text (``LLMatcher.grammar_from_*``); a per-request
``LLMatcher`` fills the bitmask straight into the shared int32 rows.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from vllm_core.structured_output.backend import (
    StructuredOutputBackend,
    StructuredOutputGrammar,
    UnsupportedConstraint,
)


def grammar_text(kind: str, spec: str, compact: bool) -> str:
    """The llguidance grammar (JSON text) for one constraint."""
    import llguidance as llg

    ws = {"whitespace_flexible": not compact}
    if kind == "json":
        return llg.LLMatcher.grammar_from_json_schema(spec, defaults=ws)
    if kind == "json_object":
        return llg.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=ws)
    if kind == "regex":
        return llg.LLMatcher.grammar_from_regex(spec)
    if kind == "choice":
        choices = json.loads(spec)
        return llg.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices))
    if kind == "grammar":
        from llguidance.gbnf_to_lark import any_to_lark

        lark = any_to_lark(spec)
        return llg.LLMatcher.grammar_from_lark(lark)
    raise UnsupportedConstraint(f"llguidance has no constraint kind {kind!r} here")


class GuidanceGrammar(StructuredOutputGrammar):
    """llguidance stops as soon as nothing but eos can follow (``is_terminated`` is then
    already True); the eos itself is accepted as a no-op."""

    def __init__(self, matcher: Any, eos_token_ids: list[int]) -> None:
        self.matcher = matcher
        self.eos_token_ids = frozenset(eos_token_ids)

    def accept_tokens(self, tokens: list[int]) -> bool:
        consumed = 0
        for t in tokens:
            t = int(t)
            if self.matcher.is_stopped():
                if t in self.eos_token_ids:
                    continue
            elif self.matcher.try_consume_tokens([t]) == 1:
                consumed += 1
                continue
            if consumed:
                self.matcher.rollback(consumed)
            return False
        return True

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        n = self.matcher.validate_tokens([int(t) for t in tokens])
        return list(tokens[:n])

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0:
            self.matcher.rollback(num_tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        width = bitmask.shape[1]
        ptr = bitmask.data_ptr() + row * width * 4
        self.matcher.unsafe_compute_mask_ptr(ptr, width * 4)

    def is_terminated(self) -> bool:
        return self.matcher.is_stopped()

    def reset(self) -> None:
        self.matcher.reset()


class GuidanceBackend(StructuredOutputBackend):
    name = "guidance"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int],
                 disable_any_whitespace: bool = False) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids, disable_any_whitespace)
        import llguidance as llg
        import llguidance.hf

        self._llg = llg
        self.ll_tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids or None)

    @staticmethod
    def check(kind: str, spec: str) -> None:
        try:
            text = grammar_text(kind, spec, compact=False)
        except UnsupportedConstraint:
            raise
        except Exception as e:
            raise UnsupportedConstraint(f"llguidance rejected the {kind}: {e}") from e
        import llguidance as llg

        error = llg.LLMatcher.validate_grammar(text)
        if error:
            raise UnsupportedConstraint(f"llguidance rejected the {kind}: {error.strip()}")
        _, warnings = llg.LLMatcher.validate_grammar_with_warnings(text)
        unenforced = [w for w in warnings if "Unimplemented" in w]
        if unenforced:
            raise UnsupportedConstraint(f"llguidance does not enforce: {'; '.join(unenforced)}")

    def compile(self, kind: str, spec: str, compact: bool) -> Any:
        text = grammar_text(kind, spec, compact or self.disable_any_whitespace)
        matcher = self._llg.LLMatcher(self.ll_tokenizer, text)
        if matcher.is_error():
            raise UnsupportedConstraint(f"llguidance: {matcher.get_error()}")
        return text

    def make_grammar(self, compiled: Any) -> StructuredOutputGrammar:
        return GuidanceGrammar(self._llg.LLMatcher(self.ll_tokenizer, compiled),
                               self.eos_token_ids)
