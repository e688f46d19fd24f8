"""The one place where exceptions become HTTP responses, in OpenAI's error shape:
``{"error": {"message", "type", "param", "code"}}``; 4xx for the caller's mistakes, 5xx only for ours."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from retrieval.errors import CollectionExists, CollectionNotFound, DocumentNotFound
from services.errors import DeadlineExceeded, ModelNotFound, Overloaded, ServiceUnavailable
from services.gateway.schemas import ErrorDetail, ErrorResponse
from shared_engine.errors import ContextLengthExceeded, EngineDead, InvalidRequest, PayloadTooLarge

logger = logging.getLogger(__name__)


_FIELD = re.compile(r"(?:field `|at `\$\.)([A-Za-z_][A-Za-z0-9_]*)")


def _validation_detail(exc: ValidationException) -> tuple[str, str | None]:
    """Litestar reports msgspec's message and, as key, the handler argument ("data") or the field."""
    extra: Any = exc.extra
    if not (isinstance(extra, list) and extra and isinstance(extra[0], dict)):
        return str(exc.detail), None
    message = str(extra[0].get("message", exc.detail))
    key = extra[0].get("key")
    if key == "data" and message == "'data'":  # Litestar's wording for a missing body
        return "The request body is missing: send a JSON object.", None
    if key in (None, "data"):
        found = _FIELD.search(message)
        key = found.group(1) if found else None
    return (f"{key}: {message}" if key else message), key


def _http_error_type(status: int) -> str:
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(exc: BaseException) -> tuple[int, ErrorResponse]:
    status: int
    param: str | None = None
    code: str | None = None
    if isinstance(exc, ContextLengthExceeded):
        status, kind, message, param, code = (
            400,
            "invalid_request_error",
            str(exc),
            exc.param,
            "context_length_exceeded",
        )
    elif isinstance(exc, PayloadTooLarge):
        status, kind, message, param = 413, "request_too_large", str(exc), exc.param
    elif isinstance(exc, InvalidRequest):
        status, kind, message, param = 400, "invalid_request_error", str(exc), exc.param
    elif isinstance(exc, ModelNotFound):
        status, kind, message, param, code = (
            404,
            "invalid_request_error",
            str(exc),
            "model",
            "model_not_found",
        )
    elif isinstance(exc, CollectionNotFound):
        status, kind, message, param, code = (
            404,
            "not_found_error",
            str(exc),
            "collection",
            "collection_not_found",
        )
    elif isinstance(exc, DocumentNotFound):
        status, kind, message, code = 404, "not_found_error", str(exc), "document_not_found"
    elif isinstance(exc, CollectionExists):
        status, kind, message, param, code = 409, "conflict_error", str(exc), "name", "collection_exists"
    elif isinstance(exc, ServiceUnavailable | EngineDead):
        status, kind, message = 503, "service_unavailable_error", str(exc)
    elif isinstance(exc, Overloaded):
        status, kind, message = 429, "rate_limit_error", str(exc)
    elif isinstance(exc, DeadlineExceeded):
        status, kind, message, code = 504, "timeout_error", str(exc), "deadline_exceeded"
    elif isinstance(exc, ValidationException):
        status, kind = 400, "invalid_request_error"
        message, param = _validation_detail(exc)
    elif isinstance(exc, HTTPException):
        status, kind, message = exc.status_code, _http_error_type(exc.status_code), str(exc.detail)
    else:
        status, kind, message = 500, "server_error", "The server had an error while processing your request."
    return status, ErrorResponse(ErrorDetail(message=message, type=kind, param=param, code=code))


def exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    status, body = error_body(exc)
    if status >= 500:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    headers = getattr(exc, "headers", None) if isinstance(exc, HTTPException) else None
    return Response(body, status_code=status, headers=headers)
