"""Domain errors of the engine and pipelines. Each boundary (HTTP, gRPC) translates them once."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequest(EngineError, ValueError):
    """The caller asked for something that can never succeed (maps to 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def about_item(exc: InvalidRequest, item: str) -> InvalidRequest:
    """``exc`` with its message naming the item of a list it is about (``item``: "image 2")."""
    exc.args = (f"{item}: {exc.args[0]}", *exc.args[1:])
    return exc


class ContextLengthExceeded(InvalidRequest):
    def __init__(
        self, prompt_tokens: int, max_tokens: int, max_model_len: int, prompt_field: str = "prompt"
    ) -> None:
        message = (
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_field}, "
            f"{max_tokens} in the completion). Please reduce the length of the {prompt_field} or completion."
        )
        if max_tokens == 0:  # a prompt scored alone is computed as for one token more
            message = (
                f"This model's maximum context length is {max_model_len} tokens, and a {prompt_field} "
                f"returned alone (max_tokens 0) may hold {max_model_len - 1}. However, it has "
                f"{prompt_tokens} tokens. Please reduce the length of the {prompt_field}."
            )
        super().__init__(message, param=prompt_field)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class DuplicateRequest(InvalidRequest):
    pass


class EngineDead(EngineError):
    """The engine loop stopped; no request can be served (maps to 503)."""


class Overloaded(EngineError):
    """Work refused because the queue in front of a model is full (maps to 429). ``retry_after_s`` is
    the caller's cue for when to try again (the Retry-After header)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class PayloadTooLarge(InvalidRequest):
    """An input past a size limit (pixels, bytes): answered 413 rather than 400."""


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
