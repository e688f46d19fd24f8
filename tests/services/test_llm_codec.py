"""The LLM contract's sampling parameters survive the trip through their gRPC message, output constraint
included (distributed mode compiles and enforces it in the worker)."""

from __future__ import annotations

import pytest

from services.rpc import llm_pb2
from services.rpc.llm_codec import params_from_proto, params_to_proto
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GuidedDecoding, GuidedKind
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
        output_kind=OutputKind.FINAL_ONLY,
        guided=guided,
    )
    wire = llm_pb2.SamplingParams.FromString(params_to_proto(params).SerializeToString())
    assert wire.HasField("guided") == (guided is not None)
    assert params_from_proto(wire) == params


def test_an_unknown_constraint_kind_is_refused() -> None:
    wire = params_to_proto(SamplingParams(guided=GuidedDecoding(GuidedKind.REGEX, "a")))
    wire.guided.kind = "telepathy"
    with pytest.raises(InvalidRequest, match="telepathy"):
        params_from_proto(wire)
