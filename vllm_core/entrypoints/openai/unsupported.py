"""Request fields a vLLM client trusts but this server cannot honour yet: a clear 400 each.

Accepting such a field and ignoring it (a "silent no-op") returns a plausible 200 that is
wrong, so each is refused naming the field. This is the one place these rules live:

- ``tools`` without ``tool_choice`` (OpenAI's default is then ``"auto"``), or with any
  ``tool_choice`` but ``"none"``;                                       [issue 12 replaces]
- ``guided_*`` / ``structured_outputs`` extras and a non-text ``response_format``;
                                                                          [issue 12 replaces]
- ``best_of`` other than 1 or ``n`` (no server-side ranking of extra candidates);
- ``priority`` other than 0 while the scheduler runs the ``fcfs`` policy (it would be ignored).

When structured outputs and tool calling land (issue 12), ``_reject_tools`` and
``_reject_structured_outputs`` are deleted and their fields handled there; the other two rules
stay.
"""

from __future__ import annotations

from typing import Any

from vllm_core.entrypoints.openai.errors import OpenAIServingError

STRUCTURED_OUTPUT_EXTRAS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar",
                            "guided_decoding_backend", "guided_whitespace_pattern",
                            "structured_outputs")


def reject_silent_no_ops(request: Any, scheduling_policy: str) -> None:
    """Raise a 400 ``OpenAIServingError`` naming the first field that would be ignored."""
    _reject_tools(request)
    _reject_structured_outputs(request)
    _reject_best_of(request)
    _reject_priority(request, scheduling_policy)


def _reject_tools(request: Any) -> None:
    tools = getattr(request, "tools", None)
    if not tools:
        return
    fields_set = request.model_fields_set
    choice = getattr(request, "tool_choice", None)
    if "tool_choice" not in fields_set or choice is None:
        raise OpenAIServingError(
            "tools were given without tool_choice, which means 'auto' (the model may call a "
            "tool); tool calling is not supported by this server yet. Send tool_choice 'none' "
            "to generate plain text, or leave out tools.", 400, "tools")
    if choice != "none":
        raise OpenAIServingError(
            f"tool_choice {choice!r} is not supported by this server yet (tool calling); use "
            "tool_choice 'none' or leave out tools", 400, "tool_choice")


def _reject_structured_outputs(request: Any) -> None:
    extras = request.model_extra or {}
    for name in STRUCTURED_OUTPUT_EXTRAS:
        if extras.get(name) is not None:
            raise OpenAIServingError(
                f"{name} (structured outputs / guided decoding) is not supported by this server "
                "yet; the request was not run", 400, name)
    fmt = getattr(request, "response_format", None) or extras.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        raise OpenAIServingError(
            f"response_format type {fmt.get('type')!r} is not supported by this server yet "
            "(only 'text')", 400, "response_format")


def _reject_best_of(request: Any) -> None:
    best_of = getattr(request, "best_of", None)
    n = getattr(request, "n", 1) or 1
    if best_of is not None and best_of not in (1, n):
        raise OpenAIServingError(
            f"best_of={best_of} (ranking more candidates than are returned) is not supported; "
            f"leave it out or set it to n ({n})", 400, "best_of")


def _reject_priority(request: Any, scheduling_policy: str) -> None:
    priority = getattr(request, "priority", 0) or 0
    if priority != 0 and scheduling_policy != "priority":
        raise OpenAIServingError(
            f"priority={priority} has no effect: the server schedules first-come-first-served; "
            "start it with --scheduling-policy priority to use request priorities", 400,
            "priority")
