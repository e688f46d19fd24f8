"""Graceful shutdown. On SIGTERM the gateway drains: /ready answers 503 (so a load balancer stops
sending work), new /v1 requests are refused with 503, and the requests already running — streams
included — finish, for up to a grace period; then the server stops and the models and the document
store are shut down cleanly. A second signal stops at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import uvicorn
from litestar.types import ASGIApp, Receive, Scope, Send

from services.errors import ServiceUnavailable
from services.gateway.deadline import run_bounded, send_error

logger = logging.getLogger(__name__)

CUT_WAIT_S = 5.0  # how long requests cut at the end of the grace get to send their errors


class Lifecycle:
    def __init__(self) -> None:
        self.in_flight = 0
        self.draining_since: float | None = None
        self._bounds: set[asyncio.Timeout] = set()  # one per request in flight, to cut it short

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def start_draining(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()
            logger.info("draining: %d request(s) in flight; refusing new ones", self.in_flight)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def track(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
                await app(scope, receive, send)
                return
            if self.draining:
                await send_error(send, ServiceUnavailable("The server is shutting down; retry on another."))
                return
            self.in_flight += 1
            bound = asyncio.timeout(None)
            self._bounds.add(bound)
            try:
                await run_bounded(app, scope, receive, send, bound, _cut_short)
            finally:
                self._bounds.discard(bound)
                self.in_flight -= 1

        return track

    def cut_in_flight(self) -> None:
        """End every request still running now: its work is cancelled (engine requests aborted) and its
        caller gets a 503, or a stream its error event."""
        now = asyncio.get_running_loop().time()
        for bound in self._bounds:
            with contextlib.suppress(RuntimeError):  # not entered yet: it ends with its request
                bound.reschedule(now)


def _cut_short() -> Exception:
    return ServiceUnavailable("The server shut down before this request finished; retry it.")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first SIGTERM/SIGINT drains before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace_s = grace_s
        self.stop_now = False  # a second signal came
        self.cut_at: float | None = None  # when the requests still in flight were cut

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.lifecycle.draining:  # a second signal: stop now
            self.stop_now = True
            return
        self.lifecycle.start_draining()

    async def on_tick(self, counter: int) -> bool:
        since = self.lifecycle.draining_since
        if since is not None:
            if self.lifecycle.in_flight == 0:
                return True
            waited = time.monotonic() - since
            if (waited > self.grace_s or self.stop_now) and self.cut_at is None:
                logger.warning("stopping: cutting %d request(s) still in flight", self.lifecycle.in_flight)
                self.lifecycle.cut_in_flight()
                self.cut_at = time.monotonic()
            if self.cut_at is not None and time.monotonic() - self.cut_at > CUT_WAIT_S:
                return True  # what did not end when cut is left to uvicorn's own shutdown
        return await super().on_tick(counter)
