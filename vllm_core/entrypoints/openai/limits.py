"""Bounds on what one request may ask of the server, and the checks that enforce them.

``ServerLimits`` is read once from the ``serve`` flags (``from_args``) and passed down; nothing
here reads the environment. The checks raise ``OpenAIServingError`` (400 / 413) naming the
field, so bad input is refused before any work is queued:

- the request body is at most ``max_request_body_bytes`` (413, checked while the body arrives,
  by ``BodySizeLimitMiddleware``, before FastAPI parses it);
- every string of the request is valid Unicode text (a lone surrogate such as ``"\\ud800"``,
  which JSON can carry but UTF-8 cannot, is a 400 naming the field) - ``check_text``;
- ``n`` (choices per prompt) is at most ``max_n`` - ``check_n``.

Validation messages echo at most ``max_echo_chars`` characters of a bad value
(``errors.short_repr``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from vllm_core.entrypoints.openai.auth import send_json
from vllm_core.entrypoints.openai.errors import OpenAIServingError, error_body

DEFAULT_MAX_REQUEST_BODY_BYTES = 16 << 20
DEFAULT_MAX_N = 128            # OpenAI's own upper bound for n


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-request bounds of the server (``--max-request-body-bytes``, ``--max-n``)."""

    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    max_n: int = DEFAULT_MAX_N

    def __post_init__(self) -> None:
        if self.max_request_body_bytes < 1024:
            raise ValueError(f"--max-request-body-bytes must be >= 1024, got "
                             f"{self.max_request_body_bytes}")
        if self.max_n < 1:
            raise ValueError(f"--max-n must be >= 1, got {self.max_n}")

    @classmethod
    def from_args(cls, args: Any) -> ServerLimits:
        """From the parsed ``serve`` namespace (missing or None attributes: the defaults)."""
        body = getattr(args, "max_request_body_bytes", None)
        max_n = getattr(args, "max_n", None)
        return cls(max_request_body_bytes=DEFAULT_MAX_REQUEST_BODY_BYTES if body is None
                   else int(body), max_n=DEFAULT_MAX_N if max_n is None else int(max_n))


# ---------------------------------------------------------------- request content


def _lone_surrogate_at(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone surrogate), else None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _walk(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """Every string inside ``value`` (pydantic models, dicts, lists) with its field path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name), f"{path}.{name}" if path else name)
        for name, extra in (value.model_extra or {}).items():
            yield from _walk(extra, f"{path}.{name}" if path else str(name))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield from _walk(key, path)
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        if value and isinstance(value[0], int) and not isinstance(value[0], bool):
            return                                  # token ids: nothing textual inside
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}.{i}")


def check_text(request: BaseModel) -> None:
    """400 naming the field when any string of ``request`` holds a lone surrogate."""
    for path, text in _walk(request, ""):
        index = _lone_surrogate_at(text)
        if index is not None:
            raise OpenAIServingError(
                f"{path} is not valid Unicode text: it contains a lone surrogate "
                f"(U+{ord(text[index]):04X}) at character {index}", 400, path)


def check_n(request: BaseModel, limits: ServerLimits) -> None:
    """400 when the request asks for more than ``limits.max_n`` choices per prompt."""
    n = getattr(request, "n", None)
    if isinstance(n, int) and n > limits.max_n:
        raise OpenAIServingError(
            f"n must be at most {limits.max_n} (the server's --max-n), got {n}", 400, "n")


def check_request(request: BaseModel, limits: ServerLimits) -> None:
    """All content checks of this module, in order."""
    check_text(request)
    check_n(request, limits)


# ---------------------------------------------------------------- body size


DRAIN_LIMIT_FACTOR = 4


async def _drain(receive: Any, limit: int) -> None:
    """Read and drop what the client is still uploading (up to ``limit`` bytes) before an early
    answer: once the answer is complete the server stops reading and closes, and closing a
    socket with unread data resets the connection, so a client still sending would lose the
    answer (seen as a flaky 413 test)."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with a 413 in OpenAI's error shape.

    A declared ``Content-Length`` over the limit is refused without parsing the body (what the
    client sends is read and dropped first, up to ``DRAIN_LIMIT_FACTOR`` times the limit, so
    the answer is not lost to a connection reset); a body
    without one (chunked) is counted as it arrives and refused once it passes the limit. Pure
    ASGI, so streaming responses are not buffered.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> dict[str, Any]:
        return error_body(f"The request body is larger than the server's limit of "
                          f"{self.max_bytes} bytes (--max-request-body-bytes)", 413)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None:
            if declared > self.max_bytes:
                await _drain(receive, DRAIN_LIMIT_FACTOR * self.max_bytes)
                await send_json(send, 413, self._too_large(), [(b"connection", b"close")])
                return
            await self.app(scope, receive, send)
            return
        # No declared length: read the body here (bounded), then replay it to the app.
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_LIMIT_FACTOR * self.max_bytes)
                await send_json(send, 413, self._too_large(), [(b"connection", b"close")])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks),
                                        "more_body": False}], receive), send)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Any:
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
