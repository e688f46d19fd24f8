"""Readiness: loading, loaded, failed to load, and a service whose engine died."""

from __future__ import annotations

from litestar.testing import TestClient

from services.config.models import ModelSpec, load_model_specs
from services.config.settings import Settings
from services.gateway.app import create_app
from services.registry import ModelRegistry
from services.tasks.llm import LLMService


def _spec() -> ModelSpec:
    return load_model_specs(Settings.from_env().models_config)[0]


def test_ready_turns_from_loading_to_ready_to_failed_when_the_engine_dies() -> None:
    settings = Settings.from_env()
    registry = ModelRegistry([_spec()], lambda spec: LLMService(spec, settings))
    with TestClient(create_app(registry, load_in_background=False)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert (ready.status_code, ready.json()["status"]) == (503, "loading")
        # Uptime monitors and some load balancers probe with HEAD: the same status, no body.
        assert [(r.status_code, r.content) for r in (client.head("/health"), client.head("/ready"))] == [
            (200, b""),
            (503, b""),
        ]

        registry.load_all()
        assert client.get("/ready").status_code == 200
        assert client.head("/ready").status_code == 200

        registry.services[_spec().name].pipeline.engine.shutdown()  # the engine thread is gone
        ready = client.get("/ready")
        assert (ready.status_code, ready.json()["status"]) == (503, "failed")
        assert client.head("/ready").status_code == 503
        chat = client.post(
            "/v1/chat/completions",
            json={"model": _spec().name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert chat.status_code == 503
        assert chat.json()["error"]["type"] == "service_unavailable_error"


def test_a_model_that_fails_to_load_makes_ready_fail_with_a_reason() -> None:
    def broken(spec: ModelSpec) -> LLMService:
        raise FileNotFoundError(f"model source {spec.source!r} does not exist")

    registry = ModelRegistry([_spec()], broken)
    registry.load_all()
    assert registry.failed and not registry.ready
    with TestClient(create_app(registry, load_in_background=False)) as client:
        ready = client.get("/ready")
        assert (ready.status_code, ready.json()["status"]) == (503, "failed")
        chat = client.post(
            "/v1/chat/completions",
            json={"model": _spec().name, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 503
        assert "failed to load" in chat.json()["error"]["message"]
        assert "does not exist" in chat.json()["error"]["message"]


def test_a_task_with_no_model_configured_says_so() -> None:
    """A request that names no model, for a task none is configured for: not "the model `` does not
    exist", but that none is served."""
    registry = ModelRegistry([_spec()], lambda spec: LLMService(spec, Settings.from_env()))
    with TestClient(create_app(registry, load_in_background=False)) as client:
        for path, body, task in (
            ("/v1/audio/speech", {"input": "hi"}, "tts"),
            ("/v1/vision/classifications", {"image": "aGVsbG8="}, "vision"),
        ):
            error = client.post(path, json=body).json()["error"]
            assert (
                error["message"]
                == f"No {task} model is served here to answer this request; none is configured."
            )
            assert (error["param"], error["code"]) == ("model", "model_not_found")
