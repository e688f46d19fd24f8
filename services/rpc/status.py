"""Errors across the gRPC boundary: a service's exception → a gRPC status (with the details the
gateway needs in trailing metadata) → the same exception again on the gateway's side, where the one
HTTP mapping (services.gateway.errors) answers it."""

from __future__ import annotations

import grpc

from retrieval.errors import CollectionExists, CollectionNotFound, DocumentNotFound
from services.errors import DeadlineExceeded, ModelNotFound, ServiceUnavailable
from shared_engine.errors import EngineDead, InvalidRequest, PayloadTooLarge

KIND_KEY = "mmserve-error-kind"
PARAM_KEY = "mmserve-error-param"

Metadata = tuple[tuple[str, str], ...]


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, Metadata]:
    """The status, message and trailing metadata that describe ``exc``."""
    param = getattr(exc, "param", None)
    meta: list[tuple[str, str]] = [(PARAM_KEY, param)] if isinstance(param, str) else []
    kinds: list[tuple[tuple[type[BaseException], ...], grpc.StatusCode, str]] = [
        ((PayloadTooLarge,), grpc.StatusCode.INVALID_ARGUMENT, "too_large"),
        ((InvalidRequest,), grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
        ((ModelNotFound,), grpc.StatusCode.NOT_FOUND, "model_not_found"),
        ((CollectionNotFound, DocumentNotFound), grpc.StatusCode.NOT_FOUND, "not_found"),
        ((CollectionExists,), grpc.StatusCode.ALREADY_EXISTS, "exists"),
        ((ServiceUnavailable, EngineDead), grpc.StatusCode.UNAVAILABLE, "unavailable"),
    ]
    for cls, code, kind in kinds:
        if isinstance(exc, cls):
            return code, str(exc), (*meta, (KIND_KEY, kind))
    return grpc.StatusCode.INTERNAL, "the model service failed while processing the request", ()


def from_status(code: grpc.StatusCode, details: str, metadata: Metadata, where: str) -> Exception:
    """The exception the gateway raises for a failed call to ``where`` (a task or address)."""
    meta = dict(metadata)
    kind, param = meta.get(KIND_KEY), meta.get(PARAM_KEY)
    if kind == "too_large":
        return PayloadTooLarge(details, param=param)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(details, param=param)
    if kind == "model_not_found":
        missing = ModelNotFound(details.split("`")[1] if details.count("`") >= 2 else "")
        missing.args = (details,)  # the worker's wording, which names the task
        return missing
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the {where} service did not answer within the request's deadline")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return ServiceUnavailable(f"the {where} service is unavailable: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServiceUnavailable(f"the {where} service is overloaded: {details}")
    return RuntimeError(f"the {where} service failed: {code.name} {details}")
