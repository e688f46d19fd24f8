"""POST /v1/completions: one or more prompts (text or token ids) → choices."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.gateway.constraints import output_constraint
from services.gateway.generation import (
    ChoiceSpec,
    ChunkWriter,
    UsageTally,
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
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    PromptLogprobs,
)
from services.registry import Chat
from shared_engine.async_engine import GroupOutputs
from shared_engine.errors import ContextLengthExceeded, InvalidRequest
from shared_engine.offload import off_the_loop_if_large, text_size
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


class TextOffsets:
    """Where each token starts in a choice's text, in characters: the tokens that spell one character
    between them (byte tokens) all start where that character does."""

    def __init__(self, start: int) -> None:
        self.at = start
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def take(self, raw: bytes) -> int:
        pending, _ = self._decoder.getstate()
        if pending and raw and not 0x80 <= raw[0] <= 0xBF:  # they never complete: U+FFFD before this token
            self.at += len(pending.decode(errors="replace"))
            self._decoder.reset()
        at = self.at
        self.at += len(self._decoder.decode(raw))
        return at


def _logprobs(
    service: Chat,
    name: Callable[[int], str],
    generated: list[TokenLogprob],
    offsets: TextOffsets,
    num_top: int,
    prompt: tuple[list[int], list[TokenLogprob]] | None = None,
) -> CompletionLogprobs:
    """The generated tokens' entries, placed by ``offsets``, each with its ``num_top`` likeliest tokens;
    with an echoed ``prompt`` (its ids and scores), the prompt's entries first, from offset 0."""
    entries: list[tuple[int, float | None, dict[str, float] | None, TextOffsets]] = []
    if prompt is not None:
        ids, scored = prompt
        from_start = TextOffsets(0)
        entries.append((ids[0], None, None, from_start))  # nothing before it predicts it
        entries += [(s.token_id, s.logprob, _top(name, s, num_top), from_start) for s in scored]
    entries += [(g.token_id, g.logprob, _top(name, g, num_top), offsets) for g in generated]
    return CompletionLogprobs(
        tokens=[name(token_id) for token_id, _, _, _ in entries],
        token_logprobs=[value for _, value, _, _ in entries],
        top_logprobs=[top for _, _, top, _ in entries],
        text_offset=[placed.take(service.token_bytes(token_id)) for token_id, _, _, placed in entries],
    )


def _top(name: Callable[[int], str], item: TokenLogprob, num_top: int) -> dict[str, float]:
    """The most likely tokens and the token itself (up to logprobs + 1 entries, as OpenAI's API gives)."""
    top = {name(t): v for t, v in item.top[:num_top]}
    return top | {name(item.token_id): item.logprob}


async def create(service: Chat, body: CompletionRequest) -> Completion | AsyncIterator[bytes]:
    if body.suffix:
        raise InvalidRequest("suffix is not supported by this server", param="suffix")
    prompt_only = body.max_tokens == 0
    if prompt_only and not body.echo:
        raise InvalidRequest("max_tokens 0 asks for the prompt back: it needs echo=true", param="max_tokens")
    if prompt_only and body.min_tokens:
        raise InvalidRequest("min_tokens cannot exceed max_tokens (0)", param="min_tokens")
    guided, _ = output_constraint(body)
    prompts = await off_the_loop_if_large(
        text_size(body.prompt), lambda: prompt_token_lists(service, body.prompt)
    )
    scores = body.logprobs if body.echo else None  # the prompt's log-probabilities, echoed with it
    choices = []
    for ids in (truncated_prompt(service, body, p) for p in prompts):
        if prompt_only and len(ids) >= service.max_model_len:
            raise ContextLengthExceeded(len(ids), 0, service.max_model_len)
        # A prompt alone is computed as for one token, which is then dropped.
        max_tokens = service.resolve_max_tokens(1 if prompt_only else body.max_tokens, len(ids), "prompt")
        for j in range(body.num_choices):
            params = sampling_params(body, max_tokens, body.logprobs, j, service, guided, scores)
            choices.append(ChoiceSpec(ids, params))
    request_id = new_id("cmpl")
    outputs = await start_choices(service, request_id, choices)
    echo = Echo(service, body, [c.prompt_ids for c in choices], prompt_only)
    if body.stream:
        chunk = chunk_writer(request_id, "text_completion", body)
        return _stream(service, body, chunk, outputs, echo)

    tally = UsageTally(not prompt_only)
    results, usage = await collect(outputs, len(choices), lambda i: i // body.num_choices, tally)
    return Completion(
        id=request_id,
        created=now(),
        model=body.model,
        choices=[
            CompletionChoice(
                index=i,
                text=echo.text[i] + echo.generated("".join(r.text)),
                logprobs=echo.logprobs(i, r.logprobs, r.prompt_logprobs),
                finish_reason=echo.finish_reason(r.finish_reason),
                prompt_logprobs=echo.prompt_logprobs(i, r.prompt_logprobs),
            )
            for i, r in enumerate(results)
        ],
        usage=usage,
    )


class Echo:
    """What a completion's choices show of their prompt (``echo``) and of what the engine generated (all
    of it, or with ``prompt_only`` nothing)."""

    def __init__(
        self, service: Chat, body: CompletionRequest, prompts: list[list[int]], prompt_only: bool
    ) -> None:
        self.service = service
        self.name = token_namer(service, body)
        self.prompts = prompts
        self.wants_logprobs = body.logprobs is not None
        self.num_top = body.logprobs or 0
        self.num_prompt_top = body.prompt_logprobs
        self.prompt_only = prompt_only
        self.text = [service.decode(ids) if body.echo else "" for ids in prompts]
        self.scored = body.echo and self.wants_logprobs

    def generated(self, text: str) -> str:
        return "" if self.prompt_only else text

    def finish_reason(self, engines: str | None) -> str | None:
        """The engine's, or for a prompt alone "length": the token that ended it is not the answer's."""
        return "length" if self.prompt_only and engines is not None else engines

    def logprobs(
        self,
        i: int,
        generated: list[TokenLogprob],
        prompt_scores: list[TokenLogprob] | None,
        offsets: TextOffsets | None = None,
    ) -> CompletionLogprobs | None:
        """Choice ``i``'s entries: its prompt's when ``prompt_scores`` came (echo), its generated tokens'
        placed by ``offsets`` (by default from where the echoed prompt ends)."""
        if not self.wants_logprobs:
            return None
        prompt = (self.prompts[i], prompt_scores) if self.scored and prompt_scores is not None else None
        offsets = offsets or TextOffsets(len(self.text[i]))
        generated = [] if self.prompt_only else generated
        return _logprobs(self.service, self.name, generated, offsets, self.num_top, prompt)

    def prompt_logprobs(self, i: int, prompt_scores: list[TokenLogprob] | None) -> PromptLogprobs | None:
        """Choice ``i``'s prompt scores as vLLM's ``prompt_logprobs`` shows them, when asked for."""
        if self.num_prompt_top is None or prompt_scores is None:
            return None
        return prompt_logprobs_view(self.service, prompt_scores, self.num_prompt_top)


async def _stream(
    service: Chat,
    body: CompletionRequest,
    chunk: ChunkWriter,
    outputs: GroupOutputs,
    echo: Echo,
) -> AsyncIterator[bytes]:
    # By the tokens, not the text sent: stop strings hold some text back while they might match.
    offsets = [TextOffsets(len(e)) for e in echo.text]
    echoed = [not e for e in echo.text]
    tally = UsageTally(not echo.prompt_only)
    async for i, out in outputs:
        tally.add(i // body.num_choices, i, out)
        usage = chunk.running(tally, i // body.num_choices, i)
        if not echoed[i]:  # the prompt, scored if asked, before the first text generated
            echoed[i] = True
            lp = echo.logprobs(i, [], out.prompt_logprobs)
            yield chunk([{"index": i, "text": echo.text[i], "logprobs": lp, "finish_reason": None}], usage)
        lp = echo.logprobs(i, out.logprobs, None, offsets[i])
        text = echo.generated(out.text)
        if text or out.finish_reason is not None or (lp is not None and lp.tokens):
            reason = echo.finish_reason(out.finish_reason.value if out.finish_reason else None)
            yield chunk([{"index": i, "text": text, "logprobs": lp, "finish_reason": reason}], usage)
    if chunk.include_usage:
        yield chunk([], tally.usage())
