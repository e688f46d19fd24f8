"""Rerank models in models.toml: the ``[models.rerank]`` table is validated, the repository's default
reranker is the packaged chat model's weights scoring by query likelihood, ``prepare`` converts its GGUF
like a chat model's, and in distributed mode the embedding workers serve it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from services.commands.prepare import NOT_NEEDED, PREPARED, cache_state
from services.commands.worker import HOSTED, SERVICES, hosted_tasks
from services.config.models import ModelSpec, RerankOptions, load_model_specs, parse_model_specs
from services.config.settings import HOSTED_BY, REPO_ROOT, Settings, worker_task
from tests.conftest import DEFAULT_CHAT_SOURCE


def _specs(table: str, task: str = "rerank") -> list[ModelSpec]:
    text = f'[[models]]\nname = "r"\ntask = "{task}"\nsource = "{DEFAULT_CHAT_SOURCE}"\n'
    text += f"[models.rerank]\n{table}\n"
    return parse_model_specs(tomllib.loads(text), "models.toml")


def test_the_rerank_table_becomes_the_options() -> None:
    (spec,) = _specs('method = "yes_no"\nmax_input_tokens = 1024')
    assert spec.rerank == RerankOptions("yes_no", 1024)
    (spec,) = parse_model_specs({"models": [{"name": "r", "task": "rerank", "source": "x"}]})
    assert spec.rerank is None  # the defaults: method auto, 512 tokens


@pytest.mark.parametrize(
    ("table", "task", "message"),
    [
        ('method = "pairwise"', "rerank", "unknown rerank method 'pairwise'; known: auto, cross_encoder"),
        ("max_input_tokens = 8", "rerank", "max_input_tokens must be an integer >= 16, got 8"),
        ('max_input_tokens = "512"', "rerank", "max_input_tokens must be an integer >= 16"),
        ("instruction = 'x'", "rerank", r"models\[0\].rerank: unknown key\(s\) instruction"),
        ('method = "auto"', "chat", r"\[models.rerank\] applies to task 'rerank' only"),
    ],
)
def test_bad_rerank_tables_are_refused_by_name(table: str, task: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _specs(table, task)


def test_the_default_reranker_is_the_packaged_chat_model_by_query_likelihood() -> None:
    specs = load_model_specs(REPO_ROOT / "models.toml")
    (rerank,) = [s for s in specs if s.task == "rerank"]
    (chat,) = [s for s in specs if s.task == "chat"]
    assert rerank.source == chat.source == DEFAULT_CHAT_SOURCE
    assert rerank.rerank == RerankOptions("query_likelihood", 512)


def test_prepare_converts_a_gguf_reranker_and_leaves_a_folder_alone(smollm2_folder: Path) -> None:
    cache = Settings.from_env().model_cache_dir
    (spec,) = _specs('method = "query_likelihood"')
    assert cache_state(spec, cache) == PREPARED  # smollm2_folder converted the same file
    folder_spec = ModelSpec("f", "rerank", str(smollm2_folder))
    assert cache_state(folder_spec, cache) == NOT_NEEDED


def test_embedding_workers_serve_the_rerank_models() -> None:
    assert worker_task("rerank") == "embedding" and worker_task("chat") == "chat"
    assert hosted_tasks("embedding") == ("rerank",) and hosted_tasks("chat") == ()
    assert set(HOSTED) == set(HOSTED_BY) and set(HOSTED_BY.values()) <= set(SERVICES)
