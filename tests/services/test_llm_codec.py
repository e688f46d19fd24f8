"""The LLM contract's sampling parameters survive the trip through their gRPC message, output constraint
included (distributed mode compiles and enforces it in the worker)."""

from __future__ import annotations

import pytest

from services.rpc import llm_pb2
from services.rpc.llm_codec import (
    output_from_proto,
    output_to_proto,
    params_from_proto,
    params_to_proto,
    requests_from_proto,
    requests_to_proto,
)
from shared_engine.async_engine import GenerationRequest
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GuidedDecoding, GuidedKind
from shared_engine.outputs import FinishReason, RequestOutput, TokenLogprob
from shared_engine.sampling_params import OutputKind, SamplingParams


@pytest.mark.parametrize(
    "guided",
    [
        None,
        GuidedDecoding.json_schema({"type": "object", "properties": {"ü": {"const": "東京"}}}),
        GuidedDecoding(GuidedKind.JSON_OBJECT),
        GuidedDecoding(GuidedKind.REGEX, r"[0-9]{3}"),
        GuidedDecoding.choice(["yes", "no"]),
        GuidedDecoding(
            GuidedKind.STRUCTURAL_TAG, '{"type": "structural_tag", "format": {"type": "any_text"}}'
        ),
    ],
)
def test_sampling_params_round_trip(guided: GuidedDecoding | None) -> None:
    params = SamplingParams(
        max_tokens=7,
        temperature=0.5,
        seed=2**64 - 1,
        logprobs=2,
        prompt_logprobs=0,
        output_kind=OutputKind.FINAL_ONLY,
        guided=guided,
        logit_bias=((5, -100.0), (42, 2.5)),
    )
    wire = llm_pb2.SamplingParams.FromString(params_to_proto(params).SerializeToString())
    assert wire.HasField("guided") == (guided is not None)
    assert params_from_proto(wire) == params


@pytest.mark.parametrize(
    "penalties",
    [
        {},
        {"presence_penalty": -1.5, "frequency_penalty": 0.25, "repetition_penalty": 1.2, "min_p": 0.05},
        {"repetition_penalty": 0.5, "min_tokens": 3},
        {"allowed_token_ids": (5, 2, 9), "include_stop_str_in_output": True, "skip_special_tokens": False},
        {"bad_words_token_ids": ((7042,), (3575, 282))},
    ],
)
def test_penalties_min_p_and_min_tokens_round_trip(penalties: dict[str, float]) -> None:
    params = SamplingParams(temperature=0.7, **penalties)  # type: ignore[arg-type]
    wire = llm_pb2.SamplingParams.FromString(params_to_proto(params).SerializeToString())
    assert params_from_proto(wire) == params


def test_an_unknown_constraint_kind_is_refused() -> None:
    wire = params_to_proto(SamplingParams(guided=GuidedDecoding(GuidedKind.REGEX, "a")))
    wire.guided.kind = "telepathy"
    with pytest.raises(InvalidRequest, match="telepathy"):
        params_from_proto(wire)


def test_a_group_of_requests_round_trips_and_outputs_name_their_request() -> None:
    requests = [
        GenerationRequest("cmpl-1-0", [1, 2, 3], SamplingParams(seed=7, max_tokens=4)),
        GenerationRequest("cmpl-1-1", [1, 2, 3], SamplingParams(seed=8, max_tokens=4)),
    ]
    wire = llm_pb2.GenerateRequest.FromString(requests_to_proto("m", requests).SerializeToString())
    assert wire.model == "m" and requests_from_proto(wire) == requests
    out = RequestOutput("worker-side-id", "hi", [5], 3, 1, finish_reason=FinishReason.LENGTH)
    message = llm_pb2.GenerateOutput.FromString(output_to_proto(1, out).SerializeToString())
    index, back = output_from_proto(message, [r.request_id for r in requests])
    assert index == 1 and back.request_id == "cmpl-1-1" and back.token_ids == [5]
    assert back.finish_reason == FinishReason.LENGTH
    with pytest.raises(ValueError, match="request 1 of 1"):
        output_from_proto(message, ["only-one"])


@pytest.mark.parametrize(
    "prompt_logprobs",
    [None, [], [TokenLogprob(4, -0.5, ((4, -0.5), (9, -1.25)), rank=1), TokenLogprob(2, -3.0, rank=7)]],
)
def test_prompt_logprobs_round_trip(prompt_logprobs: list[TokenLogprob] | None) -> None:
    """Absent, present and empty (a one-token prompt), or present: each arrives as it left."""
    out = RequestOutput(
        "r", "a", [7], 3, 1, logprobs=[TokenLogprob(7, -0.1)], prompt_logprobs=prompt_logprobs
    )
    message = llm_pb2.GenerateOutput.FromString(output_to_proto(0, out).SerializeToString())
    _, back = output_from_proto(message, ["r"])
    assert back.prompt_logprobs == prompt_logprobs and back.logprobs == out.logprobs
