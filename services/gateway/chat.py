"""POST /v1/chat/completions: messages → prompt → choices → a completion or a chunk stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.gateway.generation import (
    ChoiceSpec,
    ChunkWriter,
    UsageTally,
    collect,
    merge,
    new_id,
    now,
    sampling_params,
    start_choices,
    wants_usage,
)
from services.gateway.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    TopLogprob,
)
from services.registry import Chat
from shared_engine.errors import InvalidRequest
from shared_engine.outputs import RequestOutput, TokenLogprob


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            parts = []
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise InvalidRequest(
                        f"messages[{i}]: content part of type {part.type!r} is not supported by a text model",
                        param="messages",
                    )
                parts.append(part.text)
            content = "".join(parts)
        else:
            content = m.content or ""
        out.append({"role": m.role, "content": content})
    return out


def _logprobs(service: Chat, items: list[TokenLogprob]) -> ChatLogprobs:
    def entry(token_id: int, logprob: float) -> TopLogprob:
        text = service.token_text(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    content = []
    for lp in items:
        chosen = entry(lp.token_id, lp.logprob)
        top = [entry(t, v) for t, v in lp.top]
        content.append(ChatTokenLogprob(chosen.token, chosen.logprob, chosen.bytes, top))
    return ChatLogprobs(content=content)


async def create(service: Chat, body: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[bytes]:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    prompt_ids = service.encode_chat(message_dicts(body.messages))
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = service.resolve_max_tokens(requested, len(prompt_ids), "messages")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    choices = [
        ChoiceSpec(i, prompt_ids, sampling_params(body, max_tokens, logprobs, i)) for i in range(body.n)
    ]
    request_id = new_id("chatcmpl")
    streams = await start_choices(service, request_id, choices)
    if body.stream:
        chunk = ChunkWriter(request_id, "chat.completion.chunk", body.model, wants_usage(body))
        return _stream(service, body, chunk, streams)

    results, usage = await collect(streams, lambda i: 0)
    return ChatCompletion(
        id=request_id,
        created=now(),
        model=body.model,
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(role="assistant", content="".join(r.text)),
                logprobs=_logprobs(service, r.logprobs) if body.logprobs else None,
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
        usage=usage,
    )


async def _stream(
    service: Chat,
    body: ChatCompletionRequest,
    chunk: ChunkWriter,
    streams: list[AsyncIterator[RequestOutput]],
) -> AsyncIterator[bytes]:
    for i in range(len(streams)):
        role = {"role": "assistant", "content": ""}
        yield chunk([{"index": i, "delta": role, "logprobs": None, "finish_reason": None}])
    tally = UsageTally()
    async for i, out in merge(streams):
        tally.add(0, i, out)
        if out.text or (body.logprobs and out.logprobs):
            lp = _logprobs(service, out.logprobs) if body.logprobs else None
            yield chunk([{"index": i, "delta": {"content": out.text}, "logprobs": lp, "finish_reason": None}])
        if out.finish_reason is not None:
            yield chunk(
                [{"index": i, "delta": {}, "logprobs": None, "finish_reason": out.finish_reason.value}]
            )
    if chunk.include_usage:
        yield chunk([], tally.usage())
