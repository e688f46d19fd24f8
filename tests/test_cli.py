"""The ``mmserve`` command line, run as users run it: in subprocesses (``python -m services.commands.cli``
and the installed console scripts), with a real server for ``serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from retrieval.store import DocumentStore
from services.commands import cli, cli_handlers
from services.commands.prepare import NOT_NEEDED, NOT_PREPARED, PREPARED, cache_state
from services.config.models import load_model_specs
from services.config.settings import Settings
from tests.helpers.model_configs import only_models
from tests.helpers.server import free_port, launch, running_server

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_CONFIG = REPO_ROOT / "models.toml"
BIN = Path(sys.executable).parent
DEFAULT_MODELS = {
    "smollm2-135m-instruct": "chat",
    "all-minilm-l6-v2": "embedding",
    "smollm2-135m-rerank": "rerank",
    "efficientnet-lite0": "vision",
    "whisper-tiny.en": "asr",
    "whisper-base": "asr",
    "piper-joe": "tts",
}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **extra}


def mmserve(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", *map(str, args)],
        cwd=REPO_ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_console_scripts_are_installed() -> None:
    script = BIN / "mmserve"
    assert script.is_file(), f"{script} is missing: reinstall the package (pip install -e .)"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"mmserve {cli._version()}"
    assert cli._version()[0].isdigit()
    legacy = subprocess.run([BIN / "mmserve-ingest", "--help"], capture_output=True, text=True, timeout=60)
    assert legacy.returncode == 0, legacy.stderr
    assert "--collection" in legacy.stdout


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ((), ("serve", "ingest", "models", "bench", "--version", "examples:")),
        (
            ("serve",),
            (
                "--host",
                "--port",
                "--distributed",
                "--replicas",
                "--models-config",
                "--data-dir",
                "--log-level",
            ),
        ),
        (("ingest",), ("path", "--collection", "--index", "--models-config", "--data-dir")),
        (("models",), ("list", "prepare")),
        (("models", "list"), ("--models-config", "--data-dir")),
        (("models", "prepare"), ("NAME", "--models-config", "--data-dir")),
        (("bench",), ("NAME", "ARGS", *cli.BENCHMARKS)),
    ],
)
def test_help_explains_each_option(command: tuple[str, ...], mentions: tuple[str, ...]) -> None:
    result = mmserve(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: mmserve {' '.join(command)}".rstrip())
    for word in mentions:
        assert word in result.stdout, f"{word!r} not in the help of {command}"
    assert "example" in result.stdout


def test_without_a_command_prints_help_and_fails() -> None:
    for command in ((), ("models",)):
        result = mmserve(*command)
        assert result.returncode == 2
        assert "usage: mmserve" in result.stderr


def test_models_prepare_then_list() -> None:
    prepared = mmserve("models", "prepare", "smollm2-135m-instruct", "--models-config", MODELS_CONFIG)
    assert prepared.returncode == 0, prepared.stderr
    assert prepared.stdout.startswith("smollm2-135m-instruct: ")
    folder = Path(prepared.stdout.split(": ", 1)[1].strip())
    assert (folder / "config.json").is_file()

    listed = mmserve("models", "list", "--models-config", MODELS_CONFIG)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "TASK", "SOURCE", "PREPARED"]
    table = {row.split()[0]: row.split(maxsplit=3) for row in rows}
    assert {name: cells[1] for name, cells in table.items()} == DEFAULT_MODELS
    assert table["smollm2-135m-instruct"][3] == PREPARED
    assert table["smollm2-135m-rerank"][3] == PREPARED  # the same GGUF, converted once
    assert table["piper-joe"][3] == NOT_NEEDED


def test_models_prepare_rejects_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # in-process: no setting option, so no environment change
        cli.main(["models", "prepare", "no-such-model"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model(s) no-such-model" in err
    assert "smollm2-135m-instruct" in err  # the names it knows


def test_cache_state_of_an_empty_cache(tmp_path: Path) -> None:
    specs = {s.name: s for s in load_model_specs(MODELS_CONFIG)}
    assert cache_state(specs["smollm2-135m-instruct"], tmp_path) == NOT_PREPARED
    assert cache_state(specs["whisper-base"], tmp_path) == NOT_PREPARED
    assert cache_state(specs["all-minilm-l6-v2"], tmp_path) == NOT_NEEDED


def test_ingest_reports_files_and_skips_them_the_second_time(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.txt").write_text("Paris is the capital of France.")
    (docs / "b.txt").write_text("Python was created by Guido van Rossum.")

    first = mmserve(
        "ingest", docs, "--collection", "notes", "--data-dir", data, "--models-config", MODELS_CONFIG
    )
    assert first.returncode == 0, first.stderr
    assert "notes: 2 file(s) added or replaced, 0 unchanged or empty" in first.stdout
    assert "ingest → notes" in first.stderr  # the progress bar
    assert (data / "retrieval").is_dir()

    # The same store through the environment and the older entry point.
    env = _env(MMSERVE_DATA_DIR=str(data), MMSERVE_MODELS_CONFIG=str(MODELS_CONFIG))
    second = subprocess.run(
        [sys.executable, "-m", "services.commands.ingest", docs, "--collection", "notes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr
    assert "notes: 0 file(s) added or replaced, 2 unchanged or empty" in second.stdout


def test_ingest_of_a_missing_path_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", str(tmp_path / "nowhere"), "--collection", "notes"])
    assert exit_info.value.code == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_ingest_refuses_a_vector_stores_collection(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.txt").write_text("Paris is the capital of France.")
    config = only_models(tmp_path, "all-minilm-l6-v2")
    env = {"OMP_NUM_THREADS": "1", "MMSERVE_DATA_DIR": str(data), "MMSERVE_MODELS_CONFIG": str(config)}
    with running_server(env=env) as server:
        created = httpx.post(f"{server.base_url}/v1/vector_stores", json={"name": "handbook"}, timeout=60)
        assert created.status_code == 200, created.text
    store_id = created.json()["id"]

    refused = mmserve("ingest", docs, "--collection", store_id, "--data-dir", data, "--models-config", config)
    assert refused.returncode == 2, refused.stderr
    assert f"collection `{store_id}` belongs to vector store `{store_id}`" in refused.stderr
    assert "/v1/vector_stores" in refused.stderr and "--url" in refused.stderr
    store = DocumentStore(data / "retrieval" / "store.sqlite3")
    try:
        assert store.count_documents(store_id) == 0
    finally:
        store.close()


def test_serve_starts_answers_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    # PORT in the environment names another port: the option must win. The converted models come from
    # the shared cache (prepared once), so nothing is written under data/models.
    env = _env(
        PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        MMSERVE_MODEL_CACHE_DIR=str(Settings.from_env().model_cache_dir),
    )
    args = ("serve", "--port", str(port), "--data-dir", str(data), "--models-config", str(MODELS_CONFIG))
    server = launch("services.commands.cli", env, port, args=(*args, "--log-level", "warning"))
    try:
        server.wait_ready("/ready", timeout=180)
        models = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()
        assert {m["id"] for m in models["data"]} == set(DEFAULT_MODELS)
        assert (data / "retrieval").is_dir()  # the store went to --data-dir
        assert not (data / "models").exists()  # the models came from MMSERVE_MODEL_CACHE_DIR
    finally:
        code = server.stop(timeout=30)
    assert code == 0, server.describe_failure("SIGTERM did not stop the server cleanly")


def test_serve_rejects_bad_options() -> None:
    replicas = mmserve("serve", "--replicas", "chat=2")
    assert replicas.returncode == 2
    assert "--replicas needs --distributed" in replicas.stderr
    port = mmserve("serve", "--port", "70000")
    assert port.returncode == 2
    assert "PORT must be between 1 and 65535" in port.stderr


def test_bench_passes_arguments_to_the_script() -> None:
    result = mmserve("bench", "vision", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: vision.py")


def test_bench_rejects_an_unknown_name() -> None:
    result = mmserve("bench", "nope")
    assert result.returncode == 2
    assert "invalid choice: 'nope'" in result.stderr
    assert "serving" in result.stderr


def test_bench_without_a_checkout_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_handlers, "BENCHMARKS_DIR", tmp_path / "benchmarks")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "serving"])
    assert exit_info.value.code == 2
    assert "run from a source checkout" in capsys.readouterr().err
