"""Speculative decoding from models.toml: the ``[models.speculative]`` table is validated, and a chat
model configured with a draft model loads it, decodes with it and counts its guesses in /metrics."""

from __future__ import annotations

import asyncio
import tomllib

import pytest
from prometheus_client import REGISTRY

from services.config.models import parse_model_specs
from services.config.settings import Settings
from services.observability.metrics import EngineMetrics
from services.tasks.llm import LLMService
from shared_engine.async_engine import GenerationRequest
from shared_engine.sampling_params import OutputKind, SamplingParams
from tests.conftest import DEFAULT_CHAT_SOURCE


def _specs(speculative: str, task: str = "chat") -> list:  # type: ignore[type-arg]
    text = f'[[models]]\nname = "m"\ntask = "{task}"\nsource = "{DEFAULT_CHAT_SOURCE}"\n'
    text += f"[models.speculative]\n{speculative}\n"
    return parse_model_specs(tomllib.loads(text), "models.toml")


def test_the_speculative_table_becomes_the_engine_config() -> None:
    (spec,) = _specs('method = "ngram"\nnum_speculative_tokens = 3\ndisable_by_batch_size = 8')
    config = spec.engine.to_engine_config(spec.speculative).speculative
    assert config is not None
    assert (config.method, config.num_speculative_tokens, config.disable_by_batch_size) == ("ngram", 3, 8)
    (spec,) = _specs(f'method = "draft_model"\nmodel = "{DEFAULT_CHAT_SOURCE}"')
    assert spec.sources == (DEFAULT_CHAT_SOURCE, DEFAULT_CHAT_SOURCE)  # the draft is checked like the model


@pytest.mark.parametrize(
    ("table", "task", "message"),
    [
        ('method = "draft_model"', "chat", "method 'draft_model' needs model = <source>"),
        ('method = "ngram"\nmodel = "x"', "chat", "method 'draft_model' needs model = <source>"),
        ('method = "eagle"', "chat", "speculative method must be one of"),
        ("num_speculative_tokens = 0", "chat", "num_speculative_tokens must be from 1 to 16"),
        ("lookahead = 3", "chat", r"models\[0\].speculative: unknown key\(s\) lookahead"),
        ('method = "ngram"', "embedding", "speculative decoding applies to task 'chat' only"),
    ],
)
def test_bad_speculative_tables_are_refused_by_name(table: str, task: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _specs(table, task)


def _counter(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(f"mmserve:{name}_total", {"model_name": model}) or 0.0


def test_a_draft_model_from_the_config_decodes_and_is_counted() -> None:
    (spec,) = _specs(f'method = "draft_model"\nmodel = "{DEFAULT_CHAT_SOURCE}"\nnum_speculative_tokens = 3')
    name = "spec-draft-test"
    spec = type(spec)(**{**spec.__dict__, "name": name})
    service = LLMService(spec, Settings.from_env(), EngineMetrics(name))
    try:
        prompt = service.text.encode("Count with me: one, two, three, four, five, six, seven, eight,")
        params = SamplingParams(
            max_tokens=12, temperature=0, ignore_eos=True, output_kind=OutputKind.FINAL_ONLY
        )

        async def run() -> list[int]:
            outputs = service.generate([GenerationRequest("r1", prompt, params)])
            return [t async for _, out in outputs for t in out.token_ids]

        tokens = asyncio.run(run())
        assert len(tokens) == 12
        stats = service.stats()
        assert stats.spec_num_draft_tokens > 0
        # The draft is the model itself, so nearly every guess holds.
        assert stats.spec_acceptance_rate > 0.8, stats
        assert _counter("spec_decode_num_draft_tokens", name) == stats.spec_num_draft_tokens
        assert _counter("spec_decode_num_accepted_tokens", name) == stats.spec_num_accepted_tokens
        assert _counter("spec_decode_num_drafts", name) == stats.spec_num_drafts
    finally:
        service.shutdown()
