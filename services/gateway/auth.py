"""Optional API keys. When any are configured, every /v1 route, /tokenize and /detokenize (and /metrics,
if so configured) need ``Authorization: Bearer <key>`` naming one of them; /health, /ready, the playground
and the OpenAPI schema stay open."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from services.errors import Unauthorized

PROTECTED_PREFIX = "/v1/"
PROTECTED_PATHS = frozenset({"/tokenize", "/detokenize"})


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[str, ...] = ()
    protect_metrics: bool = False

    def __post_init__(self) -> None:
        if any(not k or k != k.strip() or " " in k for k in self.keys):
            raise ValueError("API keys must be non-empty and contain no spaces")

    def required_for(self, path: str) -> bool:
        if not self.keys:
            return False
        return (
            path.startswith(PROTECTED_PREFIX)
            or path.rstrip("/") in PROTECTED_PATHS
            or (self.protect_metrics and path == "/metrics")
        )

    def check(self, authorization: str | None) -> None:
        if not authorization:
            raise Unauthorized(
                "You didn't provide an API key. Send it in the Authorization header: "
                "'Authorization: Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        scheme, _, key = authorization.partition(" ")
        # Every key is compared, in constant time, so that timing tells nothing about which one is near.
        matches = [hmac.compare_digest(key.strip().encode(), k.encode()) for k in self.keys]
        if scheme.lower() != "bearer" or not any(matches):
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")


def api_key_guard(api_keys: ApiKeys) -> Guard:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        # A browser's CORS preflight never carries credentials; it only asks what a route allows.
        if connection.scope.get("method") == "OPTIONS":
            return
        if api_keys.required_for(connection.url.path):
            api_keys.check(connection.headers.get("authorization"))

    return guard
