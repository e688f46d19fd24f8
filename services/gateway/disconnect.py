"""A client that goes away cancels its request's work, whatever the endpoint: once the request body has
been read, the connection is watched, and a disconnect cancels the handler. Cancelling closes the
engine streams (the engine aborts those requests and frees their KV blocks at its next step), cancels
encoder jobs that have not run yet, and cancels gRPC calls (the workers abort in turn). Streams notice
a disconnect on their own too; this covers the answers that are computed before any byte is sent —
a long completion, a transcription."""

from __future__ import annotations

import asyncio
import contextlib

from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from services.observability import request_context

CLIENT_CLOSED = 499  # the status logs and metrics record for a request whose client left first


def reported_status(status: int) -> int:
    """The status to log and count for the current request: 499 when its client left first; the error's
    status (504, 503) when a deadline or a shutdown cut short an answer whose 200 was already sent."""
    ctx = request_context.current()
    if ctx is None:
        return status
    if ctx.client_gone:
        return CLIENT_CLOSED
    return ctx.cut_status or status


def client_left() -> bool:
    ctx = request_context.current()
    return ctx is not None and ctx.client_gone


def _mark_client_gone() -> None:
    ctx = request_context.current()
    if ctx is not None:
        ctx.client_gone = True


def cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await app(scope, receive, send)
            return
        body_read = asyncio.Event()
        answered = False  # the whole response has been handed to the server

        async def receive_body() -> ReceiveMessage:
            message = await receive()
            # While it sends its body, what reading it raises is no fault of ours. After the answer, the
            # server reports the end of the exchange as a disconnect too (to a streaming response, which
            # listens for one): that client stayed to the end.
            if message["type"] == "http.disconnect" and not answered:
                _mark_client_gone()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read.set()
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal answered
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        handler = asyncio.ensure_future(app(scope, receive_body, send_tracked))
        gone = False

        async def watch() -> None:
            nonlocal gone
            await body_read.wait()
            while not handler.done():
                if (await receive())["type"] == "http.disconnect":
                    break
            if not handler.done() and not answered:
                gone = True
                _mark_client_gone()
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not gone:  # cancelled from outside (a deadline, a shutdown): theirs to handle
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    return middleware
