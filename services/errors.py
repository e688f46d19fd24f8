"""Errors of the service layer (the engine's own live in shared_engine.errors)."""

from __future__ import annotations

from shared_engine.errors import EngineError


class ModelNotFound(EngineError):
    """No such model (of that task); ``param`` is the request field that named it."""

    def __init__(self, model: str, task: str | None = None, param: str = "model") -> None:
        article = "an" if task and task[0] in "aeiou" else "a"
        what = f"{article} {task} model" if task else "a model"
        if model:
            super().__init__(f"The model `{model}` does not exist or is not {what} served here.")
        else:  # none named, and none of the task configured to stand in
            kind = f"{task} model" if task else "model"
            super().__init__(f"No {kind} is served here to answer this request; none is configured.")
        self.model = model
        self.param = param


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
