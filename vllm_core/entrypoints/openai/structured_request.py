"""The structured-output fields of a request -> ``StructuredOutputsParams``.

Accepted spellings (at most one per request; two give a 400 naming the second):
- ``response_format``: ``{"type": "text"}`` (none), ``{"type": "json_object"}``,
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``,
  ``{"type": "structural_tag", "format": {...}}`` (or the older ``structures`` + ``triggers``);
- vLLM's ``structured_outputs``: ``{"json" | "regex" | "choice" | "grammar" | "json_object" |
  "structural_tag": ..., "disable_any_whitespace": bool}``;
- vLLM's older ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar``.

Errors are ``OpenAIServingError`` 400 whose ``param`` is the field the client used.
"""

from __future__ import annotations

import json
from typing import Any

from vllm_core.entrypoints.openai.errors import OpenAIServingError
from vllm_core.structured_output.params import StructuredOutputsParams

GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}


def _legacy_structural_tag(fmt: dict[str, Any]) -> dict[str, Any]:
    """``structures`` + ``triggers`` (vLLM's first format) -> xgrammar's ``format`` form."""
    tags = [{"begin": s["begin"], "end": s["end"],
             "content": {"type": "json_schema", "json_schema": s.get("schema", {})}}
            for s in fmt.get("structures", [])]
    return {"type": "structural_tag",
            "format": {"type": "triggered_tags", "triggers": fmt.get("triggers", []),
                       "tags": tags}}


def from_response_format(rf: dict[str, Any]) -> StructuredOutputsParams | None:
    kind = rf.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ValueError("response_format.json_schema must be an object with a 'schema'")
        schema = spec["schema"]
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema must be a JSON object")
        return StructuredOutputsParams(json=schema)
    if kind == "structural_tag":
        tag = rf if "format" in rf else _legacy_structural_tag(rf)
        return StructuredOutputsParams(structural_tag=json.dumps(tag))
    raise ValueError(f"response_format.type must be text, json_object, json_schema or "
                     f"structural_tag, got {kind!r}")


def structured_outputs_from_request(req: Any) -> tuple[StructuredOutputsParams | None, str]:
    """(params or None, the request field they came from)."""
    found: list[tuple[StructuredOutputsParams, str]] = []

    def add(field: str, build: Any) -> None:
        try:
            params = build()
        except (ValueError, TypeError) as e:
            raise OpenAIServingError(f"{field}: {e}", 400, field) from e
        if params is None:
            return
        if found:
            raise OpenAIServingError(
                f"{field} and {found[0][1]} both constrain the output; use one", 400, field)
        found.append((params, field))

    rf = getattr(req, "response_format", None)
    if rf is not None:
        add("response_format", lambda: from_response_format(rf))
    so = getattr(req, "structured_outputs", None)
    if so is not None:
        def build_so() -> StructuredOutputsParams:
            if not isinstance(so, dict):
                raise ValueError("must be an object")
            unknown = set(so) - set(StructuredOutputsParams.__dataclass_fields__) - {"backend"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            return StructuredOutputsParams(**{k: v for k, v in so.items() if k != "backend"})
        add("structured_outputs", build_so)
    for field, kind in GUIDED_FIELDS.items():
        value = getattr(req, field, None)
        if value is not None:
            add(field, lambda kind=kind, value=value: StructuredOutputsParams(**{kind: value}))
    return found[0] if found else (None, "")
