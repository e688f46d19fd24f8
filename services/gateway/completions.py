"""POST /v1/completions: one or more prompts (text or token ids) → choices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.gateway.constraints import output_constraint
from services.gateway.generation import (
    ChoiceSpec,
    ChunkWriter,
    UsageTally,
    collect,
    new_id,
    now,
    sampling_params,
    start_choices,
    wants_usage,
)
from services.gateway.schemas import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from services.registry import Chat
from shared_engine.async_engine import GroupOutputs
from shared_engine.errors import InvalidRequest
from shared_engine.outputs import TokenLogprob


def prompt_token_lists(service: Chat, prompt: str | list[Any]) -> list[list[int]]:
    """Normalise OpenAI's four prompt forms (text, texts, token ids, lists of token ids)."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif not prompt:
        raise InvalidRequest("prompt must not be an empty list", param="prompt")
    elif all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    elif all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        prompts = list(prompt)
    else:
        raise InvalidRequest(
            "prompt must be a string, a list of strings, a list of token ids, or a list of token-id lists",
            param="prompt",
        )
    out = []
    vocab = service.vocab_size
    for i, p in enumerate(prompts):
        ids = service.encode(p) if isinstance(p, str) else list(p)
        if not ids:
            raise InvalidRequest(f"prompt {i} is empty", param="prompt")
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequest(
                f"prompt {i} has token ids outside the vocabulary [0, {vocab})", param="prompt"
            )
        out.append(ids)
    return out


def _logprobs(service: Chat, items: list[TokenLogprob], start_offset: int) -> CompletionLogprobs:
    tokens, values, offsets, tops = [], [], [], []
    offset = start_offset
    for lp in items:
        text = service.token_text(lp.token_id)
        tokens.append(text)
        values.append(lp.logprob)
        offsets.append(offset)
        offset += len(text)
        tops.append({service.token_text(t): v for t, v in lp.top})
    return CompletionLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets)


async def create(service: Chat, body: CompletionRequest) -> Completion | AsyncIterator[bytes]:
    if body.suffix:
        raise InvalidRequest("suffix is not supported by this server", param="suffix")
    guided, _ = output_constraint(body)
    prompts = prompt_token_lists(service, body.prompt)
    choices = []
    for ids in prompts:
        max_tokens = service.resolve_max_tokens(body.max_tokens, len(ids), "prompt")
        for j in range(body.n):
            choices.append(
                ChoiceSpec(
                    ids, sampling_params(body, max_tokens, body.logprobs, j, service.vocab_size, guided)
                )
            )
    request_id = new_id("cmpl")
    outputs = await start_choices(service, request_id, choices)
    echoes = [service.decode(c.prompt_ids) if body.echo else "" for c in choices]
    if body.stream:
        chunk = ChunkWriter(request_id, "text_completion", body.model, wants_usage(body))
        return _stream(service, body, chunk, outputs, echoes)

    results, usage = await collect(outputs, len(choices), lambda i: i // body.n)
    return Completion(
        id=request_id,
        created=now(),
        model=body.model,
        choices=[
            CompletionChoice(
                index=i,
                text=echoes[i] + "".join(r.text),
                logprobs=_logprobs(service, r.logprobs, len(echoes[i]))
                if body.logprobs is not None
                else None,
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
        usage=usage,
    )


async def _stream(
    service: Chat,
    body: CompletionRequest,
    chunk: ChunkWriter,
    outputs: GroupOutputs,
    echoes: list[str],
) -> AsyncIterator[bytes]:
    offsets = [len(e) for e in echoes]
    for i, echo in enumerate(echoes):
        if echo:
            yield chunk([{"index": i, "text": echo, "logprobs": None, "finish_reason": None}])
    tally = UsageTally()
    async for i, out in outputs:
        tally.add(i // body.n, i, out)
        lp = _logprobs(service, out.logprobs, offsets[i]) if body.logprobs is not None else None
        if lp is not None and lp.tokens:  # by the tokens' text: stop strings hold some of it back
            offsets[i] = lp.text_offset[-1] + len(lp.tokens[-1])
        if out.text or out.finish_reason is not None or lp is not None:
            reason = out.finish_reason.value if out.finish_reason else None
            yield chunk([{"index": i, "text": out.text, "logprobs": lp, "finish_reason": reason}])
    if chunk.include_usage:
        yield chunk([], tally.usage())
