"""HTTP routes. Handlers only pick the service and hand over; the work is in chat.py/completions.py."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Response, get, head, post
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from services.errors import ModelNotFound
from services.gateway import chat, completions, embeddings, tokenization
from services.gateway.api_docs import EVENT_STREAM, SERVICE_ERRORS, errors, operation, sse_events
from services.gateway.lifecycle import Lifecycle
from services.gateway.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelList,
)
from services.gateway.sse import sse_response
from services.gateway.tokenize_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from services.registry import ModelRegistry
from services.rpc.clients import RemoteTTSService
from services.tasks.tts import TTSService
from shared_engine.offload import off_the_loop_if_large, text_size

Registry = NamedDependency[ModelRegistry]


# `stream: true` answers with server-sent events instead of the JSON document.
_CHUNK = "a JSON chunk (`chat.completion.chunk` or `text_completion`), or [DONE]"
_STREAMED = operation(success={EVENT_STREAM: sse_events(_CHUNK)})
_ERRORS = errors(400, 404, 413, *SERVICE_ERRORS)
_OK = "The completion; with `stream: true`, server-sent events"
_READY = ResponseSpec(
    dict[str, str],
    description="A model is loading (`loading`) or failed (`failed`), or the server drains (`draining`)",
    generate_examples=False,
)


def _card(registry: ModelRegistry, name: str) -> ModelCard:
    spec = registry.specs[name]
    service = registry.services.get(name)
    max_len = service.max_model_len if service else None
    voices = service.voices if isinstance(service, TTSService | RemoteTTSService) else None
    return ModelCard(name, spec.task, registry.created, max_model_len=max_len, voices=voices)


def _respond(result: Any) -> Any:
    return result if isinstance(result, ChatCompletion | Completion) else sse_response(result)


class HealthController(Controller):
    """Liveness and readiness, for GET and for HEAD (uptime monitors and some load balancers probe so)."""

    tags = ["health"]

    @get("/health", summary="Liveness")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @head("/health", summary="Liveness, without a body", media_type=MediaType.TEXT)
    async def health_head(self) -> Response[None]:
        return Response(None)

    @get("/ready", summary="200 when every configured model is loaded, else 503", responses={503: _READY})
    async def ready(
        self, registry: Registry, lifecycle: NamedDependency[Lifecycle]
    ) -> Response[dict[str, str]]:
        status, state = _readiness(registry, lifecycle)
        return Response({"status": state}, status_code=status)

    @head(
        "/ready",
        summary="Readiness, without a body: 200 or 503",
        media_type=MediaType.TEXT,
        responses={503: ResponseSpec(None, description="Loading, failed, or shutting down")},
    )
    async def ready_head(self, registry: Registry, lifecycle: NamedDependency[Lifecycle]) -> Response[None]:
        return Response(None, status_code=_readiness(registry, lifecycle)[0])


def _readiness(registry: ModelRegistry, lifecycle: Lifecycle) -> tuple[int, str]:
    if lifecycle.draining:
        return 503, "draining"
    if registry.ready:
        return 200, "ready"
    return 503, "failed" if registry.failed else "loading"


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]

    @get("/models", summary="Served models, each with its task", responses=errors())
    async def models(self, registry: Registry) -> ModelList:
        return ModelList(data=[_card(registry, name) for name in registry.specs])

    @get("/models/{model:path}", summary="One served model, as the list shows it", responses=errors(400, 404))
    async def model(self, model: FromPath[str], registry: Registry) -> ModelCard:
        model = model.removeprefix("/")  # a path parameter starts with the slash before it
        if model not in registry.specs:
            raise ModelNotFound(model)
        return _card(registry, model)

    @post(
        "/chat/completions",
        status_code=200,
        summary="Chat completion (OpenAI-compatible; stream=true answers with server-sent events)",
        responses={200: ResponseSpec(ChatCompletion, description=_OK, generate_examples=False), **_ERRORS},
        operation_class=_STREAMED,
    )
    async def chat_completions(
        self, data: JSONBody[ChatCompletionRequest], registry: Registry
    ) -> ChatCompletion | Stream:
        return _respond(await chat.create(registry.chat(data.model), data))

    @post(
        "/completions",
        status_code=200,
        summary="Text completion (OpenAI-compatible; stream=true answers with server-sent events)",
        responses={200: ResponseSpec(Completion, description=_OK, generate_examples=False), **_ERRORS},
        operation_class=_STREAMED,
    )
    async def completions(self, data: JSONBody[CompletionRequest], registry: Registry) -> Completion | Stream:
        return _respond(await completions.create(registry.chat(data.model), data))

    @post(
        "/embeddings",
        status_code=200,
        summary="Embeddings (OpenAI-compatible); inputs from concurrent requests are micro-batched",
        responses=_ERRORS,
    )
    async def create_embeddings(self, data: JSONBody[EmbeddingRequest], registry: Registry) -> EmbeddingList:
        return await embeddings.create(registry.embedding(data.model), data)


class TokenizerController(Controller):
    """vLLM's (and TGI's, SGLang's) tokenizer routes, at the root as there; behind the API keys like /v1."""

    tags = ["tokenizer"]

    @post(
        "/tokenize",
        status_code=200,
        summary="Count a prompt's tokens (text or chat messages)",
        responses=_ERRORS,
    )
    async def tokenize(self, data: JSONBody[TokenizeRequest], registry: Registry) -> TokenizeResponse:
        service = registry.text_model(data.model or registry.default_model("chat"))
        size = text_size(data.prompt) + text_size(msgspec.to_builtins(data.messages))
        return await off_the_loop_if_large(size, lambda: tokenization.tokenize(service, data))

    @post("/detokenize", status_code=200, summary="Token ids back to text", responses=_ERRORS)
    async def detokenize(self, data: JSONBody[DetokenizeRequest], registry: Registry) -> DetokenizeResponse:
        service = registry.text_model(data.model or registry.default_model("chat"))
        return tokenization.detokenize(service, data)
