"""Request fields a vLLM client trusts but this server cannot honour yet: a clear 400 each.

Accepting such a field and ignoring it (a "silent no-op") returns a plausible 200 that is
wrong, so each is refused naming the field. This is the one place these rules live:

- ``best_of`` other than 1 or ``n`` (no server-side ranking of extra candidates);
- ``priority`` other than 0 while the scheduler runs the ``fcfs`` policy (it would be ignored).

(``tools`` / ``tool_choice``, ``response_format``, ``guided_*`` and ``structured_outputs`` are
honoured by the structured-output and tool-calling code; ``tools`` without ``tool_choice`` on a
server without auto tool choice is refused there.)
"""

from __future__ import annotations

from typing import Any

from vllm_core.entrypoints.openai.errors import OpenAIServingError


def reject_silent_no_ops(request: Any, scheduling_policy: str) -> None:
    """Raise a 400 ``OpenAIServingError`` naming the first field that would be ignored."""
    _reject_best_of(request)
    _reject_priority(request, scheduling_policy)


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
