"""Token counts and token ids back to text, with the tokenizer and chat template the model is served with."""

from __future__ import annotations

from services.gateway.chat import render_prompt
from services.gateway.tokenize_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from services.gateway.tool_calls import plan_tools
from services.registry import EMBEDDING_SERVICES, Chat, Embeddings
from shared_engine.errors import InvalidRequest


def tokenize(service: Chat | Embeddings, body: TokenizeRequest) -> TokenizeResponse:
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequest(
            "send either prompt or messages", param="prompt" if body.prompt is None else "messages"
        )
    if body.messages is not None:
        if isinstance(service, EMBEDDING_SERVICES):
            no_template = f"`{service.name}` is an embedding model, with no chat template: send prompt"
            raise InvalidRequest(no_template, param="messages")
        ids = render_prompt(service, body.messages, body, plan_tools(body))
    else:
        ids = service.text.encode(str(body.prompt), add_special_tokens=body.add_special_tokens)
    pieces = service.text.token_pieces(ids) if body.return_token_strs else None
    return TokenizeResponse(len(ids), service.max_model_len, ids, pieces)


def detokenize(service: Chat | Embeddings, body: DetokenizeRequest) -> DetokenizeResponse:
    if any(not 0 <= token_id < service.vocab_size for token_id in body.tokens):
        raise InvalidRequest(f"token ids are from 0 to {service.vocab_size - 1}", param="tokens")
    return DetokenizeResponse(service.text.decode(body.tokens))
