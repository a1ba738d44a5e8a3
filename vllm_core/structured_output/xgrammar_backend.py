"""The xgrammar backend (the default): compiled grammars with a per-request ``GrammarMatcher``.

xgrammar silently ignores a few JSON-schema keywords; ``check`` refuses schemas that use them
(so ``auto`` can hand those requests to llguidance instead of answering unconstrained).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from vllm_core.structured_output.backend import (
    StructuredOutputBackend,
    StructuredOutputGrammar,
    UnsupportedConstraint,
)

# Keywords xgrammar does not enforce, by the type they belong to.
_UNENFORCED = {
    "multipleOf": "multipleOf", "uniqueItems": "uniqueItems", "contains": "contains",
    "minContains": "minContains", "maxContains": "maxContains",
    "patternProperties": "patternProperties", "propertyNames": "propertyNames",
    "dependentSchemas": "dependentSchemas", "if": "if/then/else", "not": "not",
}


BATCH_FILL_MIN_ROWS = 8       # below this, filling row by row is as fast


def _unenforced_keyword(schema: Any, path: str = "$") -> str | None:
    """The first keyword xgrammar would ignore, as ``'keyword' at path``, or None."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in _UNENFORCED and key not in ("properties", "$defs", "definitions"):
                if not (key == "uniqueItems" and value is False):
                    return f"{_UNENFORCED[key]!r} at {path}"
            if key in ("properties", "$defs", "definitions", "dependentSchemas") \
                    and isinstance(value, dict):
                for name, sub in value.items():
                    found = _unenforced_keyword(sub, f"{path}.{key}.{name}")
                    if found:
                        return found
            elif isinstance(value, (dict, list)):
                found = _unenforced_keyword(value, f"{path}.{key}")
                if found:
                    return found
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found = _unenforced_keyword(sub, f"{path}[{i}]")
            if found:
                return found
    return None


def choice_to_ebnf(choices: list[str]) -> str:
    """``root ::= "a" | "b"`` with each choice as an escaped string literal."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


class XgrammarGrammar(StructuredOutputGrammar):
    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.num_accepted = 0

    def accept_tokens(self, tokens: list[int]) -> bool:
        done = 0
        for t in tokens:
            if not self.matcher.accept_token(int(t)):
                if done:
                    self.matcher.rollback(done)
                return False
            done += 1
        self.num_accepted += done
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0:
            self.matcher.rollback(num_tokens)
            self.num_accepted -= num_tokens

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()

    def reset(self) -> None:
        self.matcher.reset()
        self.num_accepted = 0


class XgrammarBackend(StructuredOutputBackend):
    name = "xgrammar"
    fills_whole_row = True          # its TokenizerInfo has the model's full vocab_size

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int],
                 disable_any_whitespace: bool = False, max_threads: int = 2,
                 fill_threads: int = 0) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids, disable_any_whitespace)
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=eos_token_ids or None)
        self._xgr = xgr
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads)
        # xgrammar's own threads, GIL released ("auto": half the hardware threads)
        self._batch = xgr.BatchGrammarMatcher(max_threads=fill_threads or "auto")
        self._accept_threads = fill_threads or max(1, (os.cpu_count() or 2) // 2)
        self._accept_pool: ThreadPoolExecutor | None = None

    @staticmethod
    def check(kind: str, spec: str) -> None:
        import xgrammar as xgr

        try:
            if kind == "json":
                schema = json.loads(spec)
                bad = _unenforced_keyword(schema)
                if bad:
                    raise UnsupportedConstraint(f"xgrammar does not enforce the JSON-schema "
                                                f"keyword {bad}")
                xgr.Grammar.from_json_schema(spec)
            elif kind == "regex":
                xgr.Grammar.from_regex(spec)
            elif kind == "grammar":
                _grammar_from_text(xgr, spec)
            elif kind == "structural_tag":
                xgr.Grammar.from_structural_tag(spec)
            elif kind not in ("json_object", "choice"):
                raise UnsupportedConstraint(f"xgrammar has no constraint kind {kind!r}")
        except UnsupportedConstraint:
            raise
        except Exception as e:  # xgrammar raises RuntimeError/ValueError on a bad spec
            raise UnsupportedConstraint(f"xgrammar rejected the {kind}: {e}") from e

    def compile(self, kind: str, spec: str, compact: bool) -> Any:
        c = self.compiler
        any_ws = not (compact or self.disable_any_whitespace)
        seps = None if any_ws else (",", ":")          # compact: no whitespace at all
        if kind == "json":
            return c.compile_json_schema(spec, any_whitespace=any_ws, separators=seps)
        if kind == "json_object":
            return c.compile_json_schema('{"type": "object"}', any_whitespace=any_ws,
                                         separators=seps)
        if kind == "regex":
            return c.compile_regex(spec)
        if kind == "choice":
            return c.compile_grammar(choice_to_ebnf(json.loads(spec)))
        if kind == "grammar":
            return c.compile_grammar(_grammar_from_text(self._xgr, spec))
        if kind == "structural_tag":
            return c.compile_structural_tag(spec)
        raise UnsupportedConstraint(f"xgrammar has no constraint kind {kind!r}")

    def make_grammar(self, compiled: Any) -> StructuredOutputGrammar:
        return XgrammarGrammar(self._xgr.GrammarMatcher(compiled))

    def fill_bitmasks(self, grammars: list[StructuredOutputGrammar], bitmask: torch.Tensor,
                      rows: list[int]) -> None:
        """All rows at once on xgrammar's thread pool (large batches)."""
        if len(grammars) < BATCH_FILL_MIN_ROWS:
            super().fill_bitmasks(grammars, bitmask, rows)
            return
        self._batch.batch_fill_next_token_bitmask([g.matcher for g in grammars], bitmask,
                                                  indices=list(rows))


    def accept_batch(self, grammars: list[StructuredOutputGrammar],
                     tokens: list[int]) -> list[bool]:
        """xgrammar's batch accept, split in chunks over threads (each call releases the GIL;
        a matcher is touched by one thread). A rejected token leaves its matcher as it was."""
        if len(grammars) < BATCH_FILL_MIN_ROWS:
            return super().accept_batch(grammars, tokens)
        accept = self._xgr.BatchGrammarMatcher.batch_accept_token
        matchers = [g.matcher for g in grammars]
        tokens = [int(t) for t in tokens]
        chunks = min(self._accept_threads, len(matchers) // BATCH_FILL_MIN_ROWS)
        if chunks <= 1:
            results = list(accept(matchers, tokens))
        else:
            if self._accept_pool is None:
                self._accept_pool = ThreadPoolExecutor(self._accept_threads,
                                                       thread_name_prefix="grammar-accept")
            bounds = [len(matchers) * k // chunks for k in range(chunks + 1)]
            futures = [self._accept_pool.submit(accept, matchers[a:b], tokens[a:b])
                       for a, b in zip(bounds, bounds[1:])]
            results = [ok for f in futures for ok in f.result()]
        for g, ok in zip(grammars, results):
            if ok:
                g.num_accepted += 1
        return results


def _grammar_from_text(xgr: Any, text: str) -> Any:
    """EBNF (GBNF) first; Lark (``start: ...``) when EBNF parsing fails."""
    try:
        return xgr.Grammar.from_ebnf(text)
    except Exception as ebnf_error:
        try:
            return xgr.Grammar.from_lark(text)
        except Exception:
            raise ebnf_error from None
