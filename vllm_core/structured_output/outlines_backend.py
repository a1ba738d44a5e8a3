"""The outlines-core backend: regular constraints (regex, choice, JSON schema as a regex) compiled
into a token-level automaton (``outlines_core.Index``) walked by a per-request ``Guide``.

It cannot express recursive structure: ``json_object``, EBNF/Lark grammars and recursive schemas
are refused with that reason (``auto`` never picks this backend; select it explicitly).
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

_REGEX_META = set("\\.+*?()|[]{}^$#&-~")
MAX_ROLLBACK_TOKENS = 64


def escape_regex(text: str) -> str:
    """Escape regex metacharacters only (Rust's regex syntax refuses escaped plain letters)."""
    return "".join("\\" + c if c in _REGEX_META else c for c in text)


def to_regex(kind: str, spec: str, compact: bool) -> str:
    from outlines_core.json_schema import build_regex_from_schema

    if kind == "regex":
        return spec
    if kind == "choice":
        return "(" + "|".join(escape_regex(c) for c in json.loads(spec)) + ")"
    if kind == "json":
        return build_regex_from_schema(spec, r"[ ]?" if compact else None)
    raise UnsupportedConstraint(
        f"outlines-core serves regular constraints only (regex, choice, JSON schema); "
        f"{kind!r} needs a context-free grammar: use the xgrammar or guidance backend")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte map (inverse of ``bytes_to_unicode``)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def build_vocabulary(tokenizer: Any, eos_token_id: int) -> Any:
    """An ``outlines_core.Vocabulary`` of token bytes -> ids (special tokens left out)."""
    from outlines_core import Vocabulary

    decoder = _byte_decoder()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    mapping: dict[bytes, list[int]] = {}
    for token, tid in tokenizer.get_vocab().items():
        if tid in special or tid == eos_token_id:
            continue
        if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            data = bytes([int(token[3:5], 16)])          # sentencepiece byte fallback
        elif all(c in decoder for c in token):
            data = bytes(decoder[c] for c in token)      # byte-level BPE
        else:
            data = token.replace("\u2581", " ").encode("utf-8")
        mapping.setdefault(data, []).append(tid)
    return Vocabulary(eos_token_id, mapping)


class OutlinesGrammar(StructuredOutputGrammar):
    def __init__(self, guide: Any, eos_token_id: int) -> None:
        self.guide = guide
        self.eos_token_id = eos_token_id
        self._terminated = False
        self._history: list[bool] = []       # whether each accepted token terminated

    def accept_tokens(self, tokens: list[int]) -> bool:
        done = 0
        for t in tokens:
            t = int(t)
            if t == self.eos_token_id:
                ok = not self._terminated and self.guide.is_finished()
            else:
                ok = not self._terminated and self.guide.accepts_tokens([t])
            if not ok:
                self.rollback(done)
                return False
            if t == self.eos_token_id:
                self._terminated = True
            else:
                self.guide.advance(t, return_tokens=False)
            self._history.append(self._terminated)
            done += 1
        return True

    def rollback(self, num_tokens: int) -> None:
        for _ in range(num_tokens):
            was_eos = self._history.pop()
            if was_eos and not (self._history and self._history[-1]):
                self._terminated = False
            else:
                self.guide.rollback_state(1)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        row_view = bitmask[row]
        self.guide.write_mask_into(row_view.data_ptr(), row_view.numel(), 4)

    def is_terminated(self) -> bool:
        return self._terminated

    def reset(self) -> None:
        self.guide.reset()
        self._terminated = False
        self._history.clear()


class OutlinesBackend(StructuredOutputBackend):
    name = "outlines"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int],
                 disable_any_whitespace: bool = False) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids, disable_any_whitespace)
        if not eos_token_ids:
            raise ValueError("the outlines backend needs the model's eos token id")
        self.eos_token_id = eos_token_ids[0]
        self.vocabulary = build_vocabulary(tokenizer, self.eos_token_id)

    @staticmethod
    def check(kind: str, spec: str) -> None:
        import re

        try:
            pattern = to_regex(kind, spec, compact=False)
        except UnsupportedConstraint:
            raise
        except Exception as e:
            raise UnsupportedConstraint(f"outlines-core rejected the {kind}: {e}") from e
        try:
            re.compile(pattern)
        except re.error as e:
            raise UnsupportedConstraint(f"outlines-core rejected the {kind}: {e}") from e

    def compile(self, kind: str, spec: str, compact: bool) -> Any:
        from outlines_core import Index

        return Index(to_regex(kind, spec, compact or self.disable_any_whitespace),
                     self.vocabulary)

    def make_grammar(self, compiled: Any) -> StructuredOutputGrammar:
        from outlines_core import Guide

        return OutlinesGrammar(Guide(compiled, max_rollback=MAX_ROLLBACK_TOKENS),
                               self.eos_token_id)
