"""Errors of the service layer (the engine's own live in shared_engine.errors)."""

from __future__ import annotations

from shared_engine.errors import EngineError
from shared_engine.errors import ModelNotFound as ModelNotFound  # raised by retrieval too


class ServiceUnavailable(EngineError):
    """The service for a model is loading, stopped, or unreachable (maps to 503)."""


class DeadlineExceeded(EngineError):
    """A call to a model service ran past its deadline (maps to 504)."""


class Unauthorized(EngineError):
    """A request to a protected path without a valid API key (maps to 401)."""

    headers = {"WWW-Authenticate": "Bearer"}

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
