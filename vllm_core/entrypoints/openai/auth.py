"""API-key check: ``Authorization: Bearer <key>`` on every endpoint but the open ones.

A pure ASGI middleware (not BaseHTTPMiddleware, which would buffer streaming responses and
hide client disconnects). CORS preflight (OPTIONS) is never refused here. A refused request gets
401 in OpenAI's error shape.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from typing import Any

from vllm_core.entrypoints.openai.errors import error_body


async def send_json(send: Any, status: int, body: dict[str, Any],
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class ApiKeyMiddleware:
    """Refuse requests without the right bearer token, except ``open_paths``."""

    def __init__(self, app: Any, api_key: str, open_paths: Iterable[str] = ("/health",)) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._expected = f"Bearer {api_key}".encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope.get("method") == "OPTIONS"
                or scope.get("path", "") in self.open_paths):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if not secrets.compare_digest(given, self._expected):
            await send_json(send, 401,
                            error_body("Unauthorized: a valid API key is required "
                                       "(Authorization: Bearer <key>)", 401),
                            [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)
