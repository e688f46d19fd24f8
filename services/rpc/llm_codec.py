"""Sampling parameters and engine outputs to and from their gRPC messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.rpc import llm_pb2
from shared_engine.async_engine import GenerationRequest
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GuidedDecoding, GuidedKind
from shared_engine.outputs import FinishReason, RequestMetrics, RequestOutput, TokenLogprob
from shared_engine.sampling_params import OutputKind, SamplingParams


def params_to_proto(p: SamplingParams) -> Any:
    return llm_pb2.SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        seed=None if p.seed is None else str(p.seed),
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        logprobs=p.logprobs,
        prompt_logprobs=p.prompt_logprobs,
        skip_special_tokens=p.skip_special_tokens,
        final_only=p.output_kind == OutputKind.FINAL_ONLY,
        guided=None
        if p.guided is None
        else llm_pb2.GuidedDecoding(kind=p.guided.kind.value, spec=p.guided.spec),
        logit_bias=dict(p.logit_bias),
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        repetition_penalty=None if p.repetition_penalty == 1.0 else p.repetition_penalty,
        min_p=p.min_p,
        min_tokens=p.min_tokens,
        allowed_token_ids=list(p.allowed_token_ids or ()),
        include_stop_str_in_output=p.include_stop_str_in_output,
        bad_words=[llm_pb2.TokenIds(ids=word) for word in p.bad_words_token_ids],
    )


def _guided_from_proto(m: Any) -> GuidedDecoding | None:
    if not m.HasField("guided"):
        return None
    try:
        kind = GuidedKind(m.guided.kind)
    except ValueError:
        raise InvalidRequest(f"unknown output constraint kind {m.guided.kind!r}") from None
    return GuidedDecoding(kind, m.guided.spec)


def params_from_proto(m: Any) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=m.max_tokens,
            temperature=m.temperature,
            top_p=m.top_p,
            top_k=m.top_k,
            seed=int(m.seed) if m.HasField("seed") else None,
            stop=tuple(m.stop),
            stop_token_ids=tuple(m.stop_token_ids),
            ignore_eos=m.ignore_eos,
            logprobs=m.logprobs if m.HasField("logprobs") else None,
            prompt_logprobs=m.prompt_logprobs if m.HasField("prompt_logprobs") else None,
            skip_special_tokens=m.skip_special_tokens,
            output_kind=OutputKind.FINAL_ONLY if m.final_only else OutputKind.DELTA,
            guided=_guided_from_proto(m),
            logit_bias=tuple(sorted(m.logit_bias.items())),
            presence_penalty=m.presence_penalty,
            frequency_penalty=m.frequency_penalty,
            repetition_penalty=m.repetition_penalty if m.HasField("repetition_penalty") else 1.0,
            min_p=m.min_p,
            min_tokens=m.min_tokens,
            allowed_token_ids=tuple(m.allowed_token_ids) or None,
            include_stop_str_in_output=m.include_stop_str_in_output,
            bad_words_token_ids=tuple(tuple(word.ids) for word in m.bad_words),
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def requests_to_proto(model: str, requests: Sequence[GenerationRequest]) -> Any:
    return llm_pb2.GenerateRequest(
        model=model,
        requests=[
            llm_pb2.Request(
                request_id=r.request_id, prompt_token_ids=r.prompt_token_ids, params=params_to_proto(r.params)
            )
            for r in requests
        ],
    )


def requests_from_proto(m: Any) -> list[GenerationRequest]:
    return [
        GenerationRequest(r.request_id, list(r.prompt_token_ids), params_from_proto(r.params))
        for r in m.requests
    ]


def metrics_to_proto(m: RequestMetrics) -> Any:
    return llm_pb2.RequestMetrics(
        queue_s=m.queue_s, ttft_s=m.ttft_s, e2e_s=m.e2e_s, inference_s=m.inference_s
    )


def metrics_from_proto(m: Any, out: Any) -> RequestMetrics:
    return RequestMetrics(
        queue_s=m.queue_s,
        ttft_s=m.ttft_s if m.HasField("ttft_s") else None,
        e2e_s=m.e2e_s,
        inference_s=m.inference_s,
        num_prompt_tokens=out.num_prompt_tokens,
        num_output_tokens=out.num_output_tokens,
        num_cached_tokens=out.num_cached_tokens,
    )


def output_to_proto(index: int, out: RequestOutput) -> Any:
    return llm_pb2.GenerateOutput(
        index=index,
        text=out.text,
        token_ids=out.token_ids,
        num_prompt_tokens=out.num_prompt_tokens,
        num_output_tokens=out.num_output_tokens,
        num_cached_tokens=out.num_cached_tokens,
        logprobs=_logprobs_to_proto(out.logprobs),
        finish_reason=out.finish_reason.value if out.finish_reason else "",
        metrics=metrics_to_proto(out.metrics) if out.metrics is not None else None,
        prompt_logprobs=None
        if out.prompt_logprobs is None
        else llm_pb2.PromptLogprobs(tokens=_logprobs_to_proto(out.prompt_logprobs)),
    )


def _logprobs_to_proto(items: Sequence[TokenLogprob]) -> list[Any]:
    return [
        llm_pb2.TokenLogprob(
            token_id=lp.token_id,
            logprob=lp.logprob,
            top_token_ids=[t for t, _ in lp.top],
            top_logprobs=[v for _, v in lp.top],
            rank=lp.rank,
        )
        for lp in items
    ]


def _logprobs_from_proto(items: Sequence[Any]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            lp.token_id,
            lp.logprob,
            tuple(zip(lp.top_token_ids, lp.top_logprobs, strict=True)),
            lp.rank if lp.HasField("rank") else None,
        )
        for lp in items
    ]


def output_from_proto(m: Any, request_ids: Sequence[str]) -> tuple[int, RequestOutput]:
    """The output and its request's position in the call."""
    if not 0 <= m.index < len(request_ids):
        raise ValueError(f"the worker answered for request {m.index} of {len(request_ids)}")
    return m.index, RequestOutput(
        request_id=request_ids[m.index],
        text=m.text,
        token_ids=list(m.token_ids),
        num_prompt_tokens=m.num_prompt_tokens,
        num_output_tokens=m.num_output_tokens,
        num_cached_tokens=m.num_cached_tokens,
        logprobs=_logprobs_from_proto(m.logprobs),
        finish_reason=FinishReason(m.finish_reason) if m.finish_reason else None,
        metrics=metrics_from_proto(m.metrics, m) if m.HasField("metrics") else None,
        prompt_logprobs=_logprobs_from_proto(m.prompt_logprobs.tokens)
        if m.HasField("prompt_logprobs")
        else None,
    )
