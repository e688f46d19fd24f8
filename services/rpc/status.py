"""Errors across the gRPC boundary: a service's exception → a gRPC status (with the exception's kind
and parameter in trailing metadata) → the same exception again on the gateway's side, where the one
HTTP mapping (services.gateway.errors) answers it."""

from __future__ import annotations

import grpc

from pipelines.asr import AudioTooShort, AudioTruncated
from retrieval.errors import (
    CollectionExists,
    CollectionNotFound,
    CollectionOwned,
    DocumentNotFound,
    FileBatchNotFound,
    FileNotFound,
    ObjectNotFound,
    UnreadableDocument,
    UnsupportedFormat,
    VectorStoreExpired,
    VectorStoreFileNotFound,
    VectorStoreNotFound,
)
from services.errors import DeadlineExceeded, ModelNotFound, ServiceUnavailable
from shared_engine.errors import (
    ContextLengthExceeded,
    EngineDead,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
)

KIND_KEY = "mmserve-error-kind"
PARAM_KEY = "mmserve-error-param"
RETRY_AFTER_KEY = "mmserve-retry-after"

Metadata = tuple[tuple[str, str], ...]

# Most specific first: the first class an exception is an instance of names its kind.
_KINDS: list[tuple[str, type[Exception], grpc.StatusCode]] = [
    ("too_large", PayloadTooLarge, grpc.StatusCode.INVALID_ARGUMENT),
    ("context_length", ContextLengthExceeded, grpc.StatusCode.INVALID_ARGUMENT),
    ("unsupported_file", UnsupportedFormat, grpc.StatusCode.INVALID_ARGUMENT),
    ("invalid_file", UnreadableDocument, grpc.StatusCode.INVALID_ARGUMENT),
    ("collection_owned", CollectionOwned, grpc.StatusCode.FAILED_PRECONDITION),
    ("audio_too_short", AudioTooShort, grpc.StatusCode.INVALID_ARGUMENT),
    ("audio_truncated", AudioTruncated, grpc.StatusCode.INVALID_ARGUMENT),
    ("vector_store_expired", VectorStoreExpired, grpc.StatusCode.FAILED_PRECONDITION),
    ("invalid", InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    ("model_not_found", ModelNotFound, grpc.StatusCode.NOT_FOUND),
    ("collection_not_found", CollectionNotFound, grpc.StatusCode.NOT_FOUND),
    ("document_not_found", DocumentNotFound, grpc.StatusCode.NOT_FOUND),
    ("file_not_found", FileNotFound, grpc.StatusCode.NOT_FOUND),
    ("vector_store_not_found", VectorStoreNotFound, grpc.StatusCode.NOT_FOUND),
    ("vector_store_file_not_found", VectorStoreFileNotFound, grpc.StatusCode.NOT_FOUND),
    ("file_batch_not_found", FileBatchNotFound, grpc.StatusCode.NOT_FOUND),
    ("not_found", ObjectNotFound, grpc.StatusCode.NOT_FOUND),
    ("collection_exists", CollectionExists, grpc.StatusCode.ALREADY_EXISTS),
    ("overloaded", Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("unavailable", ServiceUnavailable, grpc.StatusCode.UNAVAILABLE),
    ("engine_dead", EngineDead, grpc.StatusCode.UNAVAILABLE),
]


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, Metadata]:
    """The status, message and trailing metadata that describe ``exc``."""
    param = getattr(exc, "param", None)
    meta: list[tuple[str, str]] = [(PARAM_KEY, param)] if isinstance(param, str) else []
    if isinstance(exc, Overloaded):
        meta.append((RETRY_AFTER_KEY, str(exc.retry_after_s)))
    for kind, cls, code in _KINDS:
        if isinstance(exc, cls):
            return code, str(exc), (*meta, (KIND_KEY, kind))
    return grpc.StatusCode.INTERNAL, "the model service failed while processing the request", ()


def _rebuild(cls: type[Exception], message: str, meta: dict[str, str]) -> Exception:
    """An instance of ``cls`` carrying the worker's message, without re-running its constructor (whose
    arguments stayed on the other side)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.param = meta.get(PARAM_KEY)  # type: ignore[attr-defined]
    if isinstance(exc, Overloaded):
        retry = meta.get(RETRY_AFTER_KEY, "1")
        exc.retry_after_s = max(1, int(retry)) if retry.isdigit() else 1
    return exc


def from_status(code: grpc.StatusCode, details: str, metadata: Metadata, where: str) -> Exception:
    """The exception the gateway raises for a failed call to the ``where`` service."""
    meta = dict(metadata)
    kind, param = meta.get(KIND_KEY), meta.get(PARAM_KEY)
    for name, cls, _ in _KINDS:
        if kind == name:
            return _rebuild(cls, details, meta)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(details, param=param)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the {where} service did not answer within the request's deadline")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED):
        return ServiceUnavailable(f"the {where} service is unavailable: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(f"the {where} service is overloaded: {details}")
    return RuntimeError(f"the {where} service failed: {code.name} {details}")
