"""Every HTTP request gets an id (the caller's ``X-Request-ID`` when it sends a usable one), returned in
the response's ``x-request-id`` header, stamped on every log line written while serving it, passed
on to the gRPC workers, and one access-log line when the response is complete (a stream's end)."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.disconnect import reported_status
from services.observability import request_context

logger = logging.getLogger("mmserve.access")

REQUEST_ID_HEADER = b"x-request-id"
_USABLE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# Probes and scrapes are logged at DEBUG so that they don't drown the requests.
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _USABLE_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = request_context.begin(request_id)
        status = 500  # what the client sees if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            ctx = request_context.current()
            _log_access(scope, reported_status(status), round(1000 * ctx.elapsed_s, 1) if ctx else None)
            request_context.end(token)

    return middleware


async def log_unrouted(message: Message, scope: Scope) -> None:
    """``before_send`` hook: a request that matched no route (404, 405) never reaches the middleware
    above; it gets its id and its access line here."""
    if message["type"] != "http.response.start" or "route_handler" in scope:
        return
    request_id = request_id_from(scope)
    message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
    _log_access(scope, int(message["status"]), None, request_id=request_id)


def _log_access(scope: Scope, status: int, duration_ms: float | None, **extra: Any) -> None:
    path = str(scope.get("path", ""))
    fields: dict[str, Any] = {
        "method": scope.get("method"),
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        **extra,
    }
    client = scope.get("client")
    if client:
        fields["client"] = f"{client[0]}:{client[1]}"
    level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
    logger.log(level, "%s %s %d", fields["method"], path, status, extra=fields)
