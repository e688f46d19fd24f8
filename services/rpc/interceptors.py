"""The worker side of request ids: each call runs inside a request context carrying the gateway's id
(from the call's metadata), so the worker's log lines name the HTTP request they serve, and one log
line records each call's method, status and duration."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.observability import request_context
from services.rpc.channels import REQUEST_ID_KEY

logger = logging.getLogger("mmserve.rpc")

_QUIET_PREFIX = "/grpc.health."


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and value:
            return value[:128]
    return uuid.uuid4().hex


def _log(method: str, context: grpc.aio.ServicerContext, started: float, failed: bool) -> None:
    code = context.code()
    name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
    level = logging.DEBUG if method.startswith(_QUIET_PREFIX) else logging.INFO
    duration_ms = round(1000 * (time.perf_counter() - started), 1)
    fields = {"rpc": method, "code": name, "duration_ms": duration_ms}
    logger.log(level, "%s %s", method, name, extra=fields)


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        request_id = _request_id(details)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:  # the request stream is passed through like a request
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


# Each call runs in its own task, whose copy of the context ends with it: no reset is needed.


def _unary(inner: Any, method: str, request_id: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request_context.begin(request_id)
        started, failed = time.perf_counter(), True
        try:
            response = await inner(request, context)
            failed = False
            return response
        finally:
            _log(method, context, started, failed)

    return call


def _streaming(inner: Any, method: str, request_id: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        request_context.begin(request_id)
        started, failed = time.perf_counter(), True
        try:
            async for message in inner(request, context):
                yield message
            failed = False
        finally:
            _log(method, context, started, failed)

    return call
