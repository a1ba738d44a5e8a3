"""StructuredOutputsParams: the constraint one request puts on its output. Torch-free.

Exactly one of ``json``, ``regex``, ``choice``, ``grammar``, ``json_object`` and
``structural_tag`` is set (``__post_init__`` raises ``ValueError`` naming the field otherwise).
``kind_and_spec()`` turns it into the (kind, text) pair that keys the compiled-grammar cache.
``backend`` is filled by the engine's input processing with the backend that will serve the
request (the configured one, or what ``auto`` picked); users leave it None.
``prefix_token_ids``: output tokens already generated under this constraint that end the
request's prompt (beam search's one-token step requests): the matcher starts after them, and a
prefix the grammar rejects fails the request.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any

# The constraint kinds a backend may support.
KINDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


@dataclass
class StructuredOutputsParams:
    json: str | dict[str, Any] | None = None     # a JSON schema (object or its text)
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None                   # EBNF (GBNF) or Lark text
    json_object: bool | None = None              # any JSON object
    structural_tag: str | dict[str, Any] | None = None
    disable_any_whitespace: bool = False         # compact JSON: no free whitespace
    backend: str | None = field(default=None, repr=False)   # set by the engine
    prefix_token_ids: list[int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        set_fields = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(set_fields) != 1:
            raise ValueError(
                f"structured_outputs must set exactly one of {', '.join(KINDS)}; "
                f"got {', '.join(set_fields) if set_fields else 'none'}")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (object or "
                             f"string), got {type(self.json).__name__}")
        if isinstance(self.json, str):
            try:
                parsed = _json.loads(self.json)
            except ValueError as e:
                raise ValueError(f"structured_outputs.json is not valid JSON: {e}") from e
            if not isinstance(parsed, (dict, bool)):
                raise ValueError("structured_outputs.json must be a JSON object (a schema)")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ValueError("structured_outputs.regex must be a non-empty string")
        if self.choice is not None:
            if (not isinstance(self.choice, list) or not self.choice
                    or not all(isinstance(c, str) for c in self.choice)):
                raise ValueError("structured_outputs.choice must be a non-empty list of strings")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar):
            raise ValueError("structured_outputs.grammar must be a non-empty string")
        if self.prefix_token_ids is not None and (
                not isinstance(self.prefix_token_ids, list)
                or not all(isinstance(t, int) and t >= 0 for t in self.prefix_token_ids)):
            raise ValueError("structured_outputs.prefix_token_ids must be a list of token ids")

    @property
    def kind(self) -> str:
        return self.kind_and_spec()[0]

    def kind_and_spec(self) -> tuple[str, str]:
        """(kind, canonical text). ``choice`` becomes an equivalent regex-free list text."""
        if self.json is not None:
            spec = self.json if isinstance(self.json, str) else _json.dumps(self.json)
            return "json", spec
        if self.json_object:
            return "json_object", ""
        if self.regex is not None:
            return "regex", self.regex
        if self.choice is not None:
            return "choice", _json.dumps(self.choice)
        if self.grammar is not None:
            return "grammar", self.grammar
        tag = self.structural_tag
        return "structural_tag", tag if isinstance(tag, str) else _json.dumps(tag)
