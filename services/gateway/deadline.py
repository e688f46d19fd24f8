"""Request deadlines. Every /v1 request has one: the configured default, or the caller's
``X-Request-Timeout`` (seconds) up to the configured maximum. Past it the request's work is cancelled,
which aborts its engine requests (their KV blocks are freed at the next step) and cancels its gRPC
calls, and the caller gets a 504 in OpenAI's error shape; a stream already under way ends with an error
event instead, as streams do for any failure."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Guard, Message, Receive, Scope, Send

from services.errors import DeadlineExceeded
from services.gateway.errors import error_body
from services.gateway.schemas import to_json
from services.gateway.sse import DONE, event
from services.observability import request_context
from shared_engine.errors import InvalidRequest

TIMEOUT_HEADER = b"x-request-timeout"


@dataclass(frozen=True)
class DeadlinePolicy:
    default_s: float = 600.0
    max_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.default_s <= self.max_s:
            raise ValueError(
                f"request timeouts need 0 < default <= max, got default {self.default_s}, max {self.max_s}"
            )

    def timeout_for(self, scope: Scope) -> float:
        raw = next((v for k, v in scope.get("headers", ()) if k == TIMEOUT_HEADER), None)
        if raw is None:
            return self.default_s
        try:
            value = float(raw.decode("latin-1"))
        except ValueError:
            value = math.nan
        if not 0 < value <= self.max_s:  # NaN fails this too
            raise InvalidRequest(
                f"X-Request-Timeout must be a number of seconds in (0, {self.max_s:g}], "
                f"got {raw.decode('latin-1')!r}",
                param="X-Request-Timeout",
            )
        return value


def timeout_header_guard(policy: DeadlinePolicy) -> Guard:
    """Refuse a /v1 request whose X-Request-Timeout is not a valid number of seconds. A guard, so that it
    runs after the API key's: a caller without a key learns nothing about the request."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.url.path.startswith("/v1/"):
            policy.timeout_for(connection.scope)

    return guard


async def send_error(send: Send, exc: Exception) -> None:
    status, body = error_body(exc)
    payload = to_json(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def run_bounded(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    bound: asyncio.Timeout,
    late: Callable[[], Exception],
) -> None:
    """Run a request under ``bound``; if the bound expires, its work is cancelled and the caller gets
    ``late()``: as the whole answer when nothing was sent yet, as a stream's last event when one is under
    way (a body already complete stands). An answer cut after its 200 was sent is logged and counted with
    the error's status."""
    started = streaming = finished = False

    async def tracking_send(message: Message) -> None:
        nonlocal started, streaming, finished
        if message["type"] == "http.response.start":
            started = True
            headers = dict(message.get("headers", ()))
            streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            finished = True
        await send(message)

    try:
        async with bound:
            await app(scope, receive, tracking_send)
    except TimeoutError:
        if not bound.expired():
            raise
        if not started:
            await send_error(send, late())
        elif not finished:
            status, body = error_body(late())
            ctx = request_context.current()
            if ctx is not None:
                ctx.cut_status = status
            if streaming:
                await send({"type": "http.response.body", "body": event(body) + DONE, "more_body": False})


def deadline_middleware(policy: DeadlinePolicy) -> Callable[[ASGIApp], ASGIApp]:
    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
                await app(scope, receive, send)
                return
            try:
                timeout = policy.timeout_for(scope)
            except InvalidRequest:  # refused by timeout_header_guard, after the API key is checked
                timeout = policy.default_s
            ctx = request_context.current()
            if ctx is not None:
                ctx.deadline = time.monotonic() + timeout

            def late() -> Exception:
                return DeadlineExceeded(f"The request did not finish within its deadline of {timeout:g} s.")

            await run_bounded(app, scope, receive, send, asyncio.timeout(timeout), late)

        return middleware

    return wrap
