"""The one place where exceptions become HTTP responses, in OpenAI's error shape:
``{"error": {"message", "type", "param", "code"}}``; 4xx for the caller's mistakes, 5xx only for ours."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from retrieval.errors import CollectionExists, CollectionNotFound, DocumentNotFound, ObjectNotFound
from services.errors import DeadlineExceeded, ModelNotFound, ServiceUnavailable, Unauthorized
from services.gateway.disconnect import client_left
from services.gateway.schemas import ErrorDetail, ErrorResponse
from shared_engine.errors import (
    ContextLengthExceeded,
    EngineDead,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
)

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
    if key == "file" and message.startswith("Unsupported type"):  # text, or several parts, where a file goes
        return "file: send exactly one file, as a multipart part named `file` with a filename", key
    return (f"{key}: {message}" if key else message), key


# Where Litestar reads a request body (JSON, multipart forms).
_BODY_READERS = frozenset({"litestar._multipart", "litestar.serialization.msgspec_hooks"})


def _unreadable_body(exc: BaseException) -> str | None:
    """Litestar answers a malformed body with a 400 but lets these escape while it reads one: bytes that
    are not UTF-8 (in a JSON body or a multipart text field), a multipart part naming an unknown charset,
    and JSON nested deeper than msgspec's recursion limit. Raised there they are the caller's mistake;
    raised anywhere else they are ours (None)."""
    # An unknown codec raises LookupError itself; its subclasses (KeyError, IndexError) are bugs.
    if not (isinstance(exc, UnicodeDecodeError | RecursionError) or type(exc) is LookupError):
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") not in _BODY_READERS:
        tb = tb.tb_next
    if tb is None:
        return None
    if isinstance(exc, UnicodeDecodeError) and tb.tb_frame.f_globals["__name__"] == "litestar._multipart":
        return (
            f"A multipart field is not valid UTF-8 text ({exc.reason}): a part without a filename is read "
            "as text; send a file as a part with a filename (curl: -F file=@path)."
        )
    if isinstance(exc, UnicodeDecodeError):
        return f"The request body is not valid UTF-8 ({exc.reason})."
    if isinstance(exc, RecursionError):
        return "The JSON body is nested too deeply."
    return f"The request body names an unknown charset ({exc})."


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
        code = getattr(exc, "code", None)  # unsupported_file, invalid_file
    elif isinstance(exc, ModelNotFound):
        status, kind, message, param, code = (
            404,
            "invalid_request_error",
            str(exc),
            exc.param,
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
    elif isinstance(exc, ObjectNotFound):
        status, kind, message, code = 404, "not_found_error", str(exc), exc.code
    elif isinstance(exc, DocumentNotFound):
        status, kind, message, code = 404, "not_found_error", str(exc), "document_not_found"
    elif isinstance(exc, CollectionExists):
        status, kind, message, param, code = 409, "conflict_error", str(exc), "name", "collection_exists"
    elif isinstance(exc, ServiceUnavailable | EngineDead):
        status, kind, message = 503, "service_unavailable_error", str(exc)
    elif isinstance(exc, Overloaded):
        status, kind, message, code = 429, "rate_limit_error", str(exc), "rate_limit_exceeded"
    elif isinstance(exc, Unauthorized):
        status, kind, message, code = 401, "invalid_request_error", str(exc), exc.code
    elif isinstance(exc, DeadlineExceeded):
        status, kind, message, code = 504, "timeout_error", str(exc), "deadline_exceeded"
    elif isinstance(exc, ValidationException):
        status, kind = 400, "invalid_request_error"
        message, param = _validation_detail(exc)
    elif isinstance(exc, HTTPException):
        status, kind, message = exc.status_code, _http_error_type(exc.status_code), str(exc.detail)
    elif (unreadable := _unreadable_body(exc)) is not None:
        status, kind, message = 400, "invalid_request_error", unreadable
    else:
        status, kind, message = 500, "server_error", "The server had an error while processing your request."
    return status, ErrorResponse(ErrorDetail(message=message, type=kind, param=param, code=code))


def exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    status, body = error_body(exc)
    if status >= 500 and not client_left():  # a body cut short by its client raises here too
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    carries_headers = isinstance(exc, HTTPException | Unauthorized | Overloaded)
    headers = getattr(exc, "headers", None) if carries_headers else None
    return Response(body, status_code=status, headers=headers)
