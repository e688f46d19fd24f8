"""POST /v1/chat/completions: messages → prompt → choices → a completion or a chunk stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

from pipelines.llm import TemplateOptions
from services.gateway.chat_stream import chat_logprobs, stream_chat
from services.gateway.constraints import output_constraint
from services.gateway.generation import (
    ChoiceResult,
    ChoiceSpec,
    chunk_writer,
    collect,
    new_id,
    now,
    prompt_logprobs_view,
    sampling_params,
    start_choices,
    token_namer,
    truncated_prompt,
)
from services.gateway.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
)
from services.gateway.tool_calls import ToolPlan, plan_tools
from services.gateway.tool_parser import parse_all
from services.gateway.tool_schemas import FunctionCall, ToolCall
from services.registry import Chat
from shared_engine.errors import InvalidRequest
from shared_engine.offload import off_the_loop_if_large, text_size


def _text(m: ChatMessage, i: int) -> str:
    if not isinstance(m.content, list):
        return m.content or ""
    parts = []
    for part in m.content:
        if part.type != "text":
            raise InvalidRequest(
                f"messages[{i}]: content part of type {part.type!r} is not supported by a text model",
                param="messages",
            )
        if part.text is None:
            raise InvalidRequest(f"messages[{i}]: a content part of type 'text' needs text", param="messages")
        parts.append(part.text)
    return "".join(parts)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        # OpenAI's developer messages are the system prompt of models before them, as vLLM reads them.
        role = "system" if m.role == "developer" else m.role
        entry: dict[str, Any] = {"role": role, "content": _text(m, i)}
        if m.role == "tool":
            if not m.tool_call_id:
                raise InvalidRequest(f"messages[{i}]: a tool message needs tool_call_id", param="messages")
            entry["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            if m.role != "assistant":
                raise InvalidRequest(
                    f"messages[{i}]: only assistant messages carry tool_calls", param="messages"
                )
            entry["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in m.tool_calls
            ]
        out.append(entry)
    return out


def _message(result: ChoiceResult, plan: ToolPlan) -> tuple[AssistantMessage, str | None]:
    """The assistant message of one choice and its finish reason (``tool_calls`` when it called, unless
    ``tool_choice`` named the function)."""
    text = "".join(result.text)
    if not plan.active:
        return AssistantMessage(role="assistant", content=text), result.finish_reason
    parsed = parse_all(text, plan.calls_or_answer)
    if not parsed.calls:  # the content as streamed: without a call's markup cut off unfinished
        return AssistantMessage(role="assistant", content=parsed.content or None), result.finish_reason
    calls = [
        ToolCall(id=c.id or "", function=FunctionCall(name=c.name or "", arguments=c.arguments))
        for c in parsed.calls
    ]
    ended = not plan.named and result.finish_reason == "stop" and parsed.num_complete == len(calls)
    message = AssistantMessage(role="assistant", content=parsed.content.strip() or None, tool_calls=calls)
    return message, "tool_calls" if ended else result.finish_reason


class RendersPrompt(Protocol):
    """A body's chat-template fields: a chat completion's, or /tokenize's for the same prompt."""

    @property
    def add_generation_prompt(self) -> bool: ...
    @property
    def continue_final_message(self) -> bool: ...
    @property
    def chat_template_kwargs(self) -> dict[str, Any] | None: ...


def render_prompt(
    service: Chat, messages: list[ChatMessage], body: RendersPrompt, plan: ToolPlan
) -> list[int]:
    """The prompt's token ids: the messages (and the planned tools) through the chat template."""
    template = TemplateOptions(
        body.add_generation_prompt, body.continue_final_message, body.chat_template_kwargs or {}
    )
    return service.encode_chat(message_dicts(messages), plan.tools or None, template)


async def create(service: Chat, body: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[bytes]:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    answer, _ = output_constraint(body)
    plan = plan_tools(body, answer)
    prompt_ids = await off_the_loop_if_large(
        text_size(msgspec.to_builtins(body.messages)),
        lambda: truncated_prompt(service, body, render_prompt(service, body.messages, body, plan)),
    )
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = service.resolve_max_tokens(requested, len(prompt_ids), "messages")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    guided = plan.guided if plan.active else answer
    choices = [
        ChoiceSpec(prompt_ids, sampling_params(body, max_tokens, logprobs, i, service, guided))
        for i in range(body.num_choices)
    ]
    request_id = new_id("chatcmpl")
    outputs = await start_choices(service, request_id, choices)
    if body.stream:
        chunk = chunk_writer(request_id, "chat.completion.chunk", body)
        return stream_chat(service, body, chunk, outputs, plan, len(prompt_ids))

    results, usage = await collect(outputs, body.num_choices, lambda i: 0)
    out = []
    for i, r in enumerate(results):
        message, reason = _message(r, plan)
        lp = chat_logprobs(service, r.logprobs, token_namer(service, body)) if body.logprobs else None
        out.append(ChatChoice(index=i, message=message, logprobs=lp, finish_reason=reason))
    scored = results[0].prompt_logprobs  # the n choices share their prompt
    prompt_lp = None
    if body.prompt_logprobs is not None and scored is not None:
        prompt_lp = prompt_logprobs_view(service, scored, body.prompt_logprobs)
    return ChatCompletion(
        id=request_id, created=now(), model=body.model, choices=out, usage=usage, prompt_logprobs=prompt_lp
    )
