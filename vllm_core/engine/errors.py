"""Errors of the engine as a whole (shared by the in-process and the multi-process paths)."""

from __future__ import annotations


class EngineDeadError(RuntimeError):
    """The engine (its loop thread, or its engine core process) stopped after an internal
    error or a crash; it serves nothing more and the server must restart. The server answers
    503 to requests that meet it."""
