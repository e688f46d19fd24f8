"""What the OpenAPI schema says beyond what Litestar infers from a handler's signature.

- Error responses: every status a route can answer with, each with OpenAI's error body
  (``ErrorResponse``). Litestar would otherwise document a 400 with its own ValidationException body,
  which this server never sends (``services.gateway.errors`` answers every error in OpenAI's shape).
- Success responses that are not one JSON document: the server-sent events of ``stream: true``, audio
  bytes, plain-text transcripts.
- Request bodies a handler reads itself: the vision endpoints take JSON or a multipart form.

``operation(...)`` returns an ``Operation`` subclass for a route's ``operation_class``: Litestar builds
the operation as usual, then the subclass adds or replaces what is listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)

from services.gateway.schemas import ErrorResponse

JSON = "application/json"
EVENT_STREAM = "text/event-stream"

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid parameters, wrong types, malformed JSON or X-Request-Timeout; `param` names the culprit",
    401: "No API key, or a wrong one (only when the server is started with MMSERVE_API_KEYS)",
    404: "Unknown model (code `model_not_found`)",
    409: "Conflict",
    413: "The request body, an image or an audio upload is past the server's limits",
    429: "More queued than the model takes (Retry-After says when to try again)",
    503: "The server is shutting down, or the model is still loading, failed, or its worker is down",
    504: "The request's deadline (X-Request-Timeout, or the server's default) passed",
}

# What every /v1 route can answer whatever it does: a bad X-Request-Timeout, no key, a shutdown under
# way, its deadline passed.
EVERY_ROUTE = (400, 401, 503, 504)

# What every route that calls a service (a model, the collections) can answer besides its own errors:
# in distributed mode the service is a worker that may be overloaded, down or late.
SERVICE_ERRORS = (429, 503, 504)


def errors(*codes: int, **descriptions: str) -> dict[int, ResponseSpec]:
    """``responses=`` for a /v1 route: each status with the ErrorResponse body, those of
    ``EVERY_ROUTE`` included. ``descriptions`` overrides the default text of a status, keyed
    ``e404="Unknown collection"``."""
    out: dict[int, ResponseSpec] = {}
    for code in sorted({*EVERY_ROUTE, *codes}):
        text = descriptions.get(f"e{code}", ERROR_DESCRIPTIONS[code])
        out[code] = ResponseSpec(data_container=ErrorResponse, description=text, generate_examples=False)
    return out


def component(name: str) -> Reference:
    """A schema Litestar registers anyway (a handler's body or return type)."""
    return Reference(ref=f"#/components/schemas/{name}")


def inline(struct: type[msgspec.Struct]) -> Schema:
    """The JSON schema of a msgspec Struct with no nested Structs, for a body Litestar does not see (a
    handler that reads the request itself). Litestar serialises the mapping as it is."""
    (_,), components = msgspec.json.schema_components([struct], ref_template="#/components/schemas/{name}")
    return cast(Schema, components[struct.__name__])


def binary(description: str | None = None) -> Schema:
    return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description=description)


def sse_events(description: str) -> Schema:
    """One server-sent event (an OpenAPI 3.1 `text/event-stream` schema describes each event)."""
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["data"],
        properties={"data": Schema(type=OpenAPIType.STRING, description=description)},
        description="One server-sent event; the stream ends with `data: [DONE]`",
    )


def operation(
    *,
    success: Mapping[str, Schema | Reference] | None = None,
    replace_success: bool = False,
    request: Mapping[str, Schema | Reference] | None = None,
) -> type[Operation]:
    """An ``operation_class`` that adds ``success`` (media type → schema) to the success response's
    content, or puts it instead (``replace_success``), and documents ``request`` as the request body."""

    @dataclass
    class Documented(Operation):
        def __post_init__(self) -> None:
            if success:
                ok = next(
                    (r for code, r in (self.responses or {}).items() if code.startswith("2")),
                    None,
                )
                assert isinstance(ok, OpenAPIResponse), "the route documents no success response"
                content = {} if replace_success else dict(ok.content or {})
                content.update({media: OpenAPIMediaType(schema=schema) for media, schema in success.items()})
                ok.content = content
            if request:
                self.request_body = RequestBody(
                    content={media: OpenAPIMediaType(schema=schema) for media, schema in request.items()},
                    required=True,
                )

    return Documented


def multipart(properties: dict[str, Schema | Reference], required: list[str]) -> Schema:
    return Schema(type=OpenAPIType.OBJECT, properties=properties, required=required)
