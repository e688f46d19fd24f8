"""Bodies of POST /tokenize and /detokenize, in vLLM's shape: count a prompt's tokens (a text, or chat
messages as the chat template renders them) before sending it, or read token ids back as text."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

from services.gateway.schemas import ChatMessage
from services.gateway.tool_schemas import Tool, ToolChoice


class TokenizeRequest(Struct, kw_only=True):
    model: str | None = None  # a chat or embedding model; the first chat model configured when left out
    prompt: Annotated[str, Meta(description="a text; or send `messages`")] | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1)] | None = None
    add_special_tokens: Annotated[bool, Meta(description="for `prompt`: the tokenizer's BOS and such")] = True
    # For messages, as on /v1/chat/completions: the prompt a chat completion would get.
    tools: list[Tool] | None = None
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: Annotated[bool, Meta(description="each token as its vocabulary spells it")] = False


class TokenizeResponse(Struct, omit_defaults=True):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Struct, kw_only=True):
    tokens: list[int]
    model: str | None = None


class DetokenizeResponse(Struct):
    prompt: str
