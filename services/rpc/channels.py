"""Connections from the gateway to one task's workers: one channel per replica address (every address a
``dns:///`` name resolves to, see replicas.py), the replica for each call picked by routing.py (chat by
cached prefix, the rest round-robin), a deadline on every call, the next replica tried when one is
unavailable, and gRPC statuses turned back into the service layer's exceptions."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.errors import ServiceUnavailable
from services.observability import request_context
from services.rpc import models_pb2, models_pb2_grpc
from services.rpc.replicas import Replicas
from services.rpc.routing import Router
from services.rpc.status import from_status

MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    # A worker that comes back is used again within seconds (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


REQUEST_ID_KEY = "x-request-id"


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The HTTP request's id travels with every call it makes, so the worker's logs carry it too."""
    ctx = request_context.current()
    return ((REQUEST_ID_KEY, ctx.request_id),) if ctx is not None else ()


class Channels:
    def __init__(
        self, task: str, targets: Sequence[str], timeout_s: float, router: Router | None = None
    ) -> None:
        if not targets:
            raise ValueError(f"no addresses for the {task} service")
        self.task = task
        self.targets = tuple(targets)
        self.replicas = Replicas(targets)
        self.router = router or Router()
        self.timeout_s = timeout_s
        self.in_flight: Counter[str] = Counter()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _order(self, token_ids: Sequence[int] | None) -> list[str]:
        return self.router.order(await self.replicas.addresses(), self.in_flight, token_ids)

    def _channel(self, target: str) -> grpc.aio.Channel:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # an aio channel belongs to the loop that made it
            self._channels, self._loop = {}, loop
        if target not in self._channels:
            self._channels[target] = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        return self._channels[target]

    def _timeout(self) -> float:
        """The call's deadline: the configured one, or what is left of the request's, if sooner."""
        ctx = request_context.current()
        remaining = ctx.remaining_s if ctx is not None else None
        return self.timeout_s if remaining is None else max(0.001, min(self.timeout_s, remaining))

    async def call(self, stub_class: Callable[[grpc.aio.Channel], Any], method: str, request: Any) -> Any:
        """One unary call; an address that is down hands the call to the next one."""
        order = await self._order(None)
        for attempt, target in enumerate(order):
            rpc = getattr(stub_class(self._channel(target)), method)
            self.in_flight[target] += 1
            try:
                return await rpc(request, timeout=self._timeout(), metadata=outgoing_metadata())
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < len(order):
                    continue
                metadata = tuple((str(k), str(v)) for k, v in (exc.trailing_metadata() or ()))
                raise from_status(exc.code(), exc.details() or "", metadata, self.task) from None
            finally:
                self.in_flight[target] -= 1
        raise AssertionError("unreachable")

    async def send_stream(
        self, stub_class: Callable[[grpc.aio.Channel], Any], method: str, requests: AsyncIterator[Any]
    ) -> Any:
        """One client-streaming call. Requests already sent cannot be sent again: the call goes to one
        address, and an unavailable one fails it."""
        target = (await self._order(None))[0]
        rpc = getattr(stub_class(self._channel(target)), method)
        self.in_flight[target] += 1
        try:
            return await rpc(requests, timeout=self._timeout(), metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            metadata = tuple((str(k), str(v)) for k, v in (exc.trailing_metadata() or ()))
            raise from_status(exc.code(), exc.details() or "", metadata, self.task) from None
        finally:
            self.in_flight[target] -= 1

    async def stream(
        self,
        stub_class: Callable[[grpc.aio.Channel], Any],
        method: str,
        request: Any,
        prompt_token_ids: Sequence[int] | None = None,
    ) -> AsyncGenerator[Any, None]:
        """A server-streaming call, routed by ``prompt_token_ids`` where given. Until its first message
        arrives the call may move to the next address (nothing was produced yet, so nothing is lost or
        repeated); after that, a failure ends the stream. Closing the iterator cancels the call, which
        aborts the worker's request."""
        order = await self._order(prompt_token_ids)
        for attempt, target in enumerate(order):
            call = getattr(stub_class(self._channel(target)), method)(
                request, timeout=self._timeout(), metadata=outgoing_metadata()
            )
            self.in_flight[target] += 1
            started = False
            try:
                async for message in call:
                    started = True
                    yield message
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE and not started and attempt + 1 < len(order):
                    continue
                metadata = tuple((str(k), str(v)) for k, v in (exc.trailing_metadata() or ()))
                raise from_status(code, exc.details() or "", metadata, self.task) from None
            finally:
                self.in_flight[target] -= 1
                call.cancel()  # a no-op once the call has finished

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels = {}


def list_models(targets: Sequence[str], timeout_s: float) -> list[Any]:
    """The models a task's workers serve, waiting (up to ``timeout_s``) until one has loaded them
    (its health service says SERVING)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(targets[0], options=CHANNEL_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailable(
                    f"no worker at {', '.join(targets)} became ready in {timeout_s:.0f} s"
                )
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=left, wait_for_ready=True)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.5)
        response = models_pb2_grpc.ModelsStub(channel).List(models_pb2.ListModelsRequest(), timeout=timeout_s)
        return list(response.models)
