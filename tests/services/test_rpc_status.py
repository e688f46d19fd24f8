"""Errors survive the gRPC boundary: a worker's exception → status + trailing metadata → the same
exception in the gateway → the same HTTP answer as in embedded mode."""

from __future__ import annotations

import grpc
import pytest

from retrieval.errors import CollectionExists, CollectionNotFound, DocumentNotFound
from services.errors import DeadlineExceeded, ModelNotFound, ServiceUnavailable
from services.gateway.errors import error_body
from services.rpc.status import from_status, to_status
from shared_engine.errors import (
    ContextLengthExceeded,
    EngineDead,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
)

CASES: list[tuple[Exception, grpc.StatusCode]] = [
    (InvalidRequest("top_k must be at least 1", param="top_k"), grpc.StatusCode.INVALID_ARGUMENT),
    (PayloadTooLarge("64000000 pixels, more than 40000000", param="image"), grpc.StatusCode.INVALID_ARGUMENT),
    (ContextLengthExceeded(9000, 16, 8192, "messages"), grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound("nope", "vision"), grpc.StatusCode.NOT_FOUND),
    (CollectionNotFound("docs"), grpc.StatusCode.NOT_FOUND),
    (DocumentNotFound("docs", "a"), grpc.StatusCode.NOT_FOUND),
    (CollectionExists("docs"), grpc.StatusCode.ALREADY_EXISTS),
    (Overloaded("the queue is full", retry_after_s=7), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ServiceUnavailable("model `x` is still loading"), grpc.StatusCode.UNAVAILABLE),
    (EngineDead("the LLM engine stopped"), grpc.StatusCode.UNAVAILABLE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "code"), CASES, ids=lambda c: type(c).__name__ if isinstance(c, Exception) else ""
)
def test_round_trip_keeps_the_http_answer(exc: Exception, code: grpc.StatusCode) -> None:
    status, message, metadata = to_status(exc)
    assert status == code
    back = from_status(status, message, metadata, "vision")
    expected_status, expected_body = error_body(exc)
    got_status, got_body = error_body(back)
    assert got_status == expected_status
    assert got_body.error.message == expected_body.error.message
    assert got_body.error.code == expected_body.error.code
    assert got_body.error.param == expected_body.error.param


def test_transport_failures_become_503_and_504() -> None:
    down = from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", (), "vision")
    assert isinstance(down, ServiceUnavailable) and "vision" in str(down)
    assert error_body(down)[0] == 503
    late = from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", (), "chat")
    assert isinstance(late, DeadlineExceeded)
    assert error_body(late)[0] == 504
    assert error_body(late)[1].error.code == "deadline_exceeded"


def test_unexpected_failures_do_not_leak_details() -> None:
    status, message, metadata = to_status(RuntimeError("secret path /srv/x failed"))
    assert status == grpc.StatusCode.INTERNAL
    assert "secret" not in message and metadata == ()
    assert error_body(from_status(status, message, metadata, "tts"))[0] == 500


def test_retry_after_crosses_the_boundary() -> None:
    status, message, metadata = to_status(Overloaded("256 requests are waiting", retry_after_s=12))
    back = from_status(status, message, metadata, "chat")
    assert isinstance(back, Overloaded) and back.retry_after_s == 12
    assert back.headers == {"Retry-After": "12"}
    assert error_body(back)[1].error.code == "rate_limit_exceeded"
    plain = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many", (), "chat")
    assert isinstance(plain, Overloaded) and plain.retry_after_s == 1
