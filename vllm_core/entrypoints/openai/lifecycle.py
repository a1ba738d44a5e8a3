"""Graceful shutdown: count in-flight requests; on SIGTERM refuse new ones and drain.

On the first SIGTERM the server enters *draining*: new requests get 503 (the listening socket
stays open so that clients get an answer, not a refused connection), ``/health`` answers 503,
and in-flight requests run to completion. When none is left, uvicorn's normal shutdown runs:
the lifespan shutdown stops the engine, and the process exits with status 0.

When ``shutdown_timeout`` seconds pass first, every request still in flight is cancelled (which
aborts it in the engine) and answered in-band: one that has sent nothing yet gets a JSON 503
``ServiceUnavailableError``; a stream that has started gets an SSE error event followed by
``data: [DONE]``. No traceback is logged for these. SIGINT (Ctrl-C), or a second SIGTERM, exits
at once as uvicorn does.

When the engine dies (a worker process ended, a step failed, the engine core process exited),
a watchdog (``make_server``) has
the server answer 503 for a moment, then exit with status 1 (``run_server``'s return value).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from vllm_core.entrypoints.openai.auth import send_json
from vllm_core.entrypoints.openai.errors import error_body
from vllm_core.logger import init_logger

logger = init_logger(__name__)

# Paths that neither count as in-flight work nor are refused while draining.
UNCOUNTED_PATHS = frozenset({"/health", "/metrics", "/version", "/ping"})

SHUTDOWN_MESSAGE = ("The server is shutting down: the request did not finish within "
                    "--shutdown-timeout and was cancelled")


@dataclass
class ServerState:
    """Drain state shared by the middleware and the server. ``tasks`` are the in-flight
    requests' handler tasks (cancelled by ``expire``)."""

    draining: bool = False
    inflight: int = 0
    expired: bool = False
    tasks: set[asyncio.Task] = field(default_factory=set)

    def expire(self) -> None:
        """The drain deadline passed: cancel every request still in flight."""
        self.expired = True
        for task in list(self.tasks):
            task.cancel()


class _ResponseTracker:
    """Wraps ``send`` to remember how far the response got."""

    __slots__ = ("send", "started", "streaming", "finished")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.started = self.streaming = self.finished = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.streaming = any(k.lower() == b"content-type"
                                 and v.startswith(b"text/event-stream")
                                 for k, v in message.get("headers", ()))
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self.send(message)

    async def end_with_shutdown_error(self) -> None:
        """Finish the response of a request cancelled by the drain deadline."""
        if self.finished:
            return
        body = error_body(SHUTDOWN_MESSAGE, 503)
        with contextlib.suppress(Exception):      # the client may be gone already
            if not self.started:
                await send_json(self.send, 503, body, [(b"connection", b"close")])
            elif self.streaming:
                payload = f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode()
                await self.send({"type": "http.response.body", "body": payload,
                                 "more_body": False})
            else:
                await self.send({"type": "http.response.body", "body": b"",
                                 "more_body": False})


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
        tracker = _ResponseTracker(send)
        task = asyncio.ensure_future(self.app(scope, receive, tracker))
        self.state.tasks.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if not (self.state.expired and task.cancelled()):
                raise
            await tracker.end_with_shutdown_error()
        finally:
            self.state.tasks.discard(task)
            self.state.inflight -= 1


ENGINE_WATCH_INTERVAL_S = 0.5
ENGINE_DEAD_GRACE_S = 5.0       # at most this long for the requests in flight to be answered
ENGINE_DEAD_LINGER_S = 2.0      # at least this long answering 503 (health probes see it)


def make_server(config: Any, state: ServerState, shutdown_timeout: float,
                engine: Any = None) -> Any:
    """A ``uvicorn.Server`` whose first SIGTERM drains in-flight requests before exiting.

    With ``engine``, a watchdog awaits ``engine.check_health()`` every
    ``ENGINE_WATCH_INTERVAL_S``; once it fails (a worker process died, the engine thread
    failed) the server lets the requests in flight receive their 503 (up to
    ``ENGINE_DEAD_GRACE_S``) and answers new ones and ``/health`` 503 (at least
    ``ENGINE_DEAD_LINGER_S``), then exits with ``exit_code`` 1 instead of hanging or serving
    errors forever."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        _loop: asyncio.AbstractEventLoop | None = None
        exit_code: int = 0

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            watch = asyncio.create_task(self._watch_engine()) if engine is not None else None
            try:
                await super().serve(sockets)
            finally:
                if watch is not None:
                    watch.cancel()

        async def _watch_engine(self) -> None:
            while True:
                await asyncio.sleep(ENGINE_WATCH_INTERVAL_S)
                if self.should_exit or state.draining:     # a normal shutdown stops the engine
                    return
                try:
                    await engine.check_health()
                except Exception as e:  # noqa: BLE001 - any failure: the engine is gone
                    if self.should_exit or state.draining:
                        return
                    logger.error("the engine stopped (%s): answering 503, exiting with "
                                 "status 1", e)
                    self.exit_code = 1
                    start = time.monotonic()
                    while ((state.inflight > 0 and time.monotonic() < start + ENGINE_DEAD_GRACE_S)
                           or time.monotonic() < start + ENGINE_DEAD_LINGER_S):
                        await asyncio.sleep(0.05)
                    self.should_exit = True
                    return

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
                logger.warning("shutdown timeout: cancelling %d request(s); each gets a 503 "
                               "(streams: an error event, then [DONE])", state.inflight)
                state.expire()
                settle = time.monotonic() + 5.0
                while state.inflight > 0 and time.monotonic() < settle:
                    await asyncio.sleep(0.02)
            self.should_exit = True

    return DrainingServer(config)
