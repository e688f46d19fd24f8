"""What chat and text completions share: sampling parameters from a request body, starting the
choices on the engine as one group, and tallying usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from services.gateway.schemas import (
    PromptLogprob,
    PromptLogprobs,
    PromptTokensDetails,
    SamplingFields,
    StreamOptions,
    Usage,
)
from services.gateway.sse import event
from services.registry import Chat
from shared_engine.async_engine import GenerationRequest, GroupOutputs
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GuidedDecoding
from shared_engine.outputs import RequestOutput, TokenLogprob
from shared_engine.sampling_params import MAX_LOGIT_BIAS, SEED_MAX, SEED_MIN, OutputKind, SamplingParams


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sampling_params(
    body: SamplingFields,
    max_tokens: int,
    logprobs: int | None,
    choice: int,
    service: Chat,
    guided: GuidedDecoding | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    if body.stream and body.prompt_logprobs is not None:
        raise InvalidRequest("prompt_logprobs is not supported with stream", param="prompt_logprobs")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if any(not s for s in stop):
        raise InvalidRequest("stop sequences must be non-empty strings", param="stop")
    logit_bias = _logit_bias(body.logit_bias or {}, service.vocab_size)
    seed = body.seed
    if seed is not None and SEED_MIN <= seed <= SEED_MAX:
        # With n > 1 every choice gets its own stream of random numbers, still reproducible from the
        # seed; past the largest seed the count goes on from the smallest.
        seed = SEED_MIN + (seed + choice - SEED_MIN) % (SEED_MAX - SEED_MIN + 1)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=body.min_tokens or 0,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(body.top_k or 0, 0),
            seed=seed,
            stop=stop,
            stop_token_ids=tuple(body.stop_token_ids or ()),
            ignore_eos=body.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=_most(prompt_logprobs, body.prompt_logprobs),
            output_kind=OutputKind.DELTA if body.stream else OutputKind.FINAL_ONLY,
            guided=guided,
            logit_bias=logit_bias,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            min_p=body.min_p or 0.0,
            allowed_token_ids=None if body.allowed_token_ids is None else tuple(body.allowed_token_ids),
            include_stop_str_in_output=body.include_stop_str_in_output,
            skip_special_tokens=body.skip_special_tokens,
            bad_words_token_ids=bad_words_token_ids(service, body.bad_words or ()),
        )
    except ValueError as exc:
        param = str(exc).split(" ", 1)[0]
        raise InvalidRequest(str(exc), param=param if param.isidentifier() else None) from None


def bad_words_token_ids(service: Chat, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """vLLM's ``bad_words`` as token ids: each word as written and, where the tokenizer spells it at the
    start of a word with a different first token and as many tokens (" word"), that way too."""
    out: list[tuple[int, ...]] = []
    for word in words:
        if not word.strip():
            raise InvalidRequest("bad_words must be words, not empty or blank strings", param="bad_words")
        bare = tuple(service.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(service.encode(" " + word.lstrip(), add_special_tokens=False))
        out.append(bare)
        if spaced[0] != bare[0] and len(spaced) == len(bare):
            out.append(spaced)
    return tuple(out)


def truncated_prompt(service: Chat, body: SamplingFields, prompt_ids: list[int]) -> list[int]:
    """vLLM's ``truncate_prompt_tokens``: only the prompt's last k tokens (-1: the context length)."""
    keep = body.truncate_prompt_tokens
    if keep is None:
        return prompt_ids
    if keep == -1:
        keep = service.max_model_len
    if not 1 <= keep <= service.max_model_len:
        raise InvalidRequest(
            f"truncate_prompt_tokens must be from 1 to the context length ({service.max_model_len}), or -1, "
            f"got {keep}",
            param="truncate_prompt_tokens",
        )
    return prompt_ids[-keep:]


def token_namer(service: Chat, body: SamplingFields) -> Callable[[int], str]:
    """How log-probabilities name a token: its text, or with vLLM's ``return_tokens_as_token_ids``
    ``token_id:<id>`` (for tokens that are no text of their own, such as part of a character)."""
    if body.return_tokens_as_token_ids:
        return lambda token_id: f"token_id:{token_id}"
    return service.token_text


def _most(a: int | None, b: int | None) -> int | None:
    """The engine scores a prompt once for every view of it (echo, ``prompt_logprobs``): the larger ask."""
    return b if a is None else a if b is None else max(a, b)


def prompt_logprobs_view(service: Chat, scored: list[TokenLogprob], num_top: int) -> PromptLogprobs:
    """vLLM's ``prompt_logprobs``: for each prompt token after the first, its own entry and the ``num_top``
    likeliest tokens', keyed by token id."""

    def entry(token_id: int, logprob: float, rank: int | None) -> tuple[str, PromptLogprob]:
        return str(token_id), PromptLogprob(logprob, rank, service.token_text(token_id))

    view: PromptLogprobs = [None]
    for item in scored:
        alternatives = [entry(t, v, i + 1) for i, (t, v) in enumerate(item.top[:num_top])]
        view.append(dict([*alternatives, entry(item.token_id, item.logprob, item.rank)]))
    return view


def _logit_bias(given: dict[str, float], vocab_size: int) -> tuple[tuple[int, float], ...]:
    bias: dict[int, float] = {}
    for key, value in given.items():
        token_id = int(key) if key.strip().lstrip("-").isdigit() else None
        if token_id is None or not 0 <= token_id < vocab_size:
            raise InvalidRequest(
                f"logit_bias keys are token ids in [0, {vocab_size}), got {key!r}", param="logit_bias"
            )
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise InvalidRequest(
                f"logit_bias values are between {-MAX_LOGIT_BIAS:g} and {MAX_LOGIT_BIAS:g}, got {value}",
                param="logit_bias",
            )
        bias[token_id] = value
    return tuple(sorted(bias.items()))


@dataclass
class ChoiceSpec:
    prompt_ids: list[int]
    params: SamplingParams


async def start_choices(service: Chat, request_id: str, choices: list[ChoiceSpec]) -> GroupOutputs:
    """Submit the choices as one group (scheduled together, so a seeded repeat draws the same
    tokens) and wait for the first output, so that a request the engine refuses is answered with a
    4xx before any byte of a stream is sent. Outputs come tagged with the choice's position."""
    requests = [GenerationRequest(f"{request_id}-{i}", c.prompt_ids, c.params) for i, c in enumerate(choices)]
    outputs = service.generate(requests)
    try:
        first = await anext(outputs)
    except BaseException:
        await outputs.aclose()
        raise
    return _prepend(first, outputs)


async def _prepend(first: tuple[int, RequestOutput], rest: GroupOutputs) -> GroupOutputs:
    async with aclosing(rest):
        yield first
        async for item in rest:
            yield item


@dataclass
class ChoiceResult:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None

    def add(self, out: RequestOutput) -> None:
        self.text.append(out.text)
        self.token_ids.extend(out.token_ids)
        self.logprobs.extend(out.logprobs)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason.value


@dataclass
class UsageTally:
    """Prompt tokens count once per distinct prompt (n choices of one prompt share it). Without
    ``counts_output`` the tokens generated count as none (they were not returned)."""

    counts_output: bool = True
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    cached_tokens: dict[int, int] = field(default_factory=dict)
    completion_tokens: dict[int, int] = field(default_factory=dict)

    def add(self, prompt_index: int, choice: int, out: RequestOutput) -> None:
        self.prompt_tokens[prompt_index] = out.num_prompt_tokens
        self.cached_tokens[prompt_index] = max(self.cached_tokens.get(prompt_index, 0), out.num_cached_tokens)
        self.completion_tokens[choice] = out.num_output_tokens if self.counts_output else 0

    def so_far(self, prompt_index: int, choice: int) -> Usage:
        """One choice's usage up to now: its prompt (known before any output) and its tokens yet."""
        prompt = self.prompt_tokens[prompt_index]
        completion = self.completion_tokens.get(choice, 0)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def usage(self) -> Usage:
        prompt = sum(self.prompt_tokens.values())
        completion = sum(self.completion_tokens.values())
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(self.cached_tokens.values())),
        )


async def collect(
    outputs: GroupOutputs, n: int, prompt_of: Callable[[int], int], tally: UsageTally | None = None
) -> tuple[list[ChoiceResult], Usage]:
    """Run the ``n`` choices to the end (non-streaming responses)."""
    results = [ChoiceResult() for _ in range(n)]
    tally = tally or UsageTally()
    async for i, out in outputs:
        results[i].add(out)
        tally.add(prompt_of(i), i, out)
    return results, tally.usage()


@dataclass
class ChunkWriter:
    """Frames streamed chunks of one response: same id, object, model and creation time each time;
    ``usage`` is present only when the client asked for it: null until the last chunk, or with
    ``continuous_usage`` the usage so far of the chunk's choice."""

    request_id: str
    object: str
    model: str
    include_usage: bool
    continuous_usage: bool = False
    created: int = field(default_factory=now)

    def __call__(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self.request_id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = usage
        return event(payload)

    def running(self, tally: UsageTally, prompt_index: int, choice: int) -> Usage | None:
        return tally.so_far(prompt_index, choice) if self.continuous_usage else None


def chunk_writer(request_id: str, object: str, body: SamplingFields) -> ChunkWriter:
    options = body.stream_options or StreamOptions()
    continuous = options.include_usage and options.continuous_usage_stats
    return ChunkWriter(request_id, object, body.model, options.include_usage, continuous)
