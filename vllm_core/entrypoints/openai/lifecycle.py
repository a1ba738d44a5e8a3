"""Graceful shutdown: count in-flight requests; on SIGTERM refuse new ones and drain.

On the first SIGTERM the server enters *draining*: new requests get 503 (the listening socket
stays open so that clients get an answer, not a refused connection), ``/health`` answers 503,
and in-flight requests run to completion. When none is left, or after ``shutdown_timeout``
seconds, uvicorn's normal shutdown runs: remaining requests are cancelled (which aborts them in
the engine), the lifespan shutdown stops the engine, and the process exits with status 0.
SIGINT (Ctrl-C), or a second SIGTERM, exits at once as uvicorn does.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Any

from vllm_core.entrypoints.openai.auth import send_json
from vllm_core.entrypoints.openai.errors import error_body
from vllm_core.logger import init_logger

logger = init_logger(__name__)

# Paths that neither count as in-flight work nor are refused while draining.
UNCOUNTED_PATHS = frozenset({"/health", "/metrics", "/version", "/ping"})


@dataclass
class ServerState:
    draining: bool = False
    inflight: int = 0


class InflightMiddleware:
    """Counts in-flight requests (streams included, until their last byte) and refuses new ones
    with 503 while draining."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            await send_json(send, 503, error_body("The server is shutting down", 503),
                            [(b"connection", b"close")])
            return
        self.state.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.inflight -= 1


def make_server(config: Any, state: ServerState, shutdown_timeout: float) -> Any:
    """A ``uvicorn.Server`` whose first SIGTERM drains in-flight requests before exiting."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        _loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            loop = self._loop
            if (sig == signal.SIGTERM and loop is not None and not state.draining
                    and not self.should_exit):
                state.draining = True
                logger.info("SIGTERM: refusing new requests, draining %d in flight "
                            "(up to %.0f s)", state.inflight, shutdown_timeout)
                loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))
                return
            super().handle_exit(sig, frame)

        async def _drain(self) -> None:
            deadline = time.monotonic() + shutdown_timeout
            while state.inflight > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if state.inflight:
                logger.warning("shutdown timeout: cancelling %d request(s)", state.inflight)
            self.should_exit = True

    return DrainingServer(config)
