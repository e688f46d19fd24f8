"""Streamed chat completions: one ``chat.completion.chunk`` per increment of each choice; with tools in
play, the text goes through the tool-call parser and calls stream as OpenAI's ``delta.tool_calls``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from services.gateway.generation import ChunkWriter, UsageTally, token_namer
from services.gateway.schemas import ChatCompletionRequest, ChatLogprobs, ChatTokenLogprob, TopLogprob
from services.gateway.tool_calls import ToolPlan
from services.gateway.tool_parser import ToolCallParser
from services.registry import Chat
from shared_engine.async_engine import GroupOutputs
from shared_engine.outputs import RequestOutput, TokenLogprob


def chat_logprobs(service: Chat, items: list[TokenLogprob], name: Callable[[int], str]) -> ChatLogprobs:
    """The tokens' entries, each named by ``name`` (``generation.token_namer``) with its real bytes."""

    def entry(token_id: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=name(token_id), logprob=logprob, bytes=list(service.token_bytes(token_id)))

    content = []
    for lp in items:
        chosen = entry(lp.token_id, lp.logprob)
        top = [entry(t, v) for t, v in lp.top]
        content.append(ChatTokenLogprob(chosen.token, chosen.logprob, chosen.bytes, top))
    return ChatLogprobs(content=content)


def _deltas(out: RequestOutput, parser: ToolCallParser | None) -> list[dict[str, Any]]:
    """The deltas one engine output makes: its text, or with tools the content and call pieces."""
    if parser is None:
        return [{"content": out.text}] if out.text else []
    pieces = parser.feed(out.text, final=out.finish_reason is not None)
    deltas: list[dict[str, Any]] = [{"content": pieces.content}] if pieces.content else []
    deltas += [{"tool_calls": [call.to_openai()]} for call in pieces.calls]
    return deltas


def _finish_reason(out: RequestOutput, parser: ToolCallParser | None, named: bool) -> str:
    assert out.finish_reason is not None
    reason = out.finish_reason.value
    if (
        parser is not None
        and not named
        and parser.num_calls
        and reason == "stop"
        and parser.num_complete == parser.num_calls
    ):
        return "tool_calls"
    return reason


async def stream_chat(
    service: Chat,
    body: ChatCompletionRequest,
    chunk: ChunkWriter,
    outputs: GroupOutputs,
    plan: ToolPlan,
    prompt_tokens: int,
) -> AsyncIterator[bytes]:
    parsers = [ToolCallParser(plan.calls_or_answer) if plan.active else None for _ in range(body.num_choices)]
    tally = UsageTally(prompt_tokens={0: prompt_tokens})
    for i in range(body.num_choices):
        role = {"role": "assistant", "content": None if plan.active else ""}
        yield chunk(
            [{"index": i, "delta": role, "logprobs": None, "finish_reason": None}], chunk.running(tally, 0, i)
        )
    name = token_namer(service, body)
    async for i, out in outputs:
        tally.add(0, i, out)
        usage = chunk.running(tally, 0, i)
        lp = chat_logprobs(service, out.logprobs, name) if body.logprobs and out.logprobs else None
        deltas = _deltas(out, parsers[i]) or ([{}] if lp else [])
        for n, delta in enumerate(deltas):
            yield chunk(
                [{"index": i, "delta": delta, "logprobs": lp if n == 0 else None, "finish_reason": None}],
                usage,
            )
        if out.finish_reason is not None:
            reason = _finish_reason(out, parsers[i], plan.named)
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}], usage)
    if chunk.include_usage:
        yield chunk([], tally.usage())
