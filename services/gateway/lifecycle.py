"""Graceful shutdown. On SIGTERM the gateway drains: /ready answers 503 (so a load balancer stops
sending work), new /v1 requests are refused with 503, and the requests already running — streams
included — finish, for up to a grace period; then the server stops and the models and the document
store are shut down cleanly. A second signal stops at once."""

from __future__ import annotations

import logging
import time
from typing import Any

import uvicorn
from litestar.types import ASGIApp, Receive, Scope, Send

from services.errors import ServiceUnavailable
from services.gateway.deadline import send_error

logger = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self) -> None:
        self.in_flight = 0
        self.draining_since: float | None = None

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
            try:
                await app(scope, receive, send)
            finally:
                self.in_flight -= 1

        return track


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first SIGTERM/SIGINT drains before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace_s = grace_s

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.lifecycle.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.lifecycle.start_draining()

    async def on_tick(self, counter: int) -> bool:
        since = self.lifecycle.draining_since
        if since is not None:
            if self.lifecycle.in_flight == 0:
                return True
            if time.monotonic() - since > self.grace_s:
                logger.warning(
                    "grace period over: stopping with %d request(s) in flight", self.lifecycle.in_flight
                )
                return True
        return await super().on_tick(counter)
