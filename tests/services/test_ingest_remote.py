"""``mmserve ingest PATH --url``: a folder sent through a running server's Files and Vector Stores API
(a real server with an API key, on its own data dir), with a damaged PDF among real documents; a second
run skips what is there, a changed file is replaced, a wrong key fails cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.model_configs import only_models
from tests.helpers.server import REPO_ROOT, ServerProcess, running_server
from tests.services.conftest import READY_TIMEOUT_S, server_env

DATA = Path(__file__).resolve().parents[1] / "data"
KEY = "ingest-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("ingest-remote")
    env = {
        **server_env(),
        "MMSERVE_DATA_DIR": str(folder / "data"),
        "MMSERVE_MODELS_CONFIG": str(only_models(folder, "all-minilm-l6-v2")),
        "MMSERVE_API_KEYS": KEY,
    }
    with running_server(env=env, timeout=READY_TIMEOUT_S) as proc:
        yield proc


def ingest(server: ServerProcess, folder: Path, key: str = KEY) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "services.commands.ingest", str(folder), "--collection", "handbook"]
    args += ["--url", server.base_url, "--api-key", key]
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def files_of(server: ServerProcess, store_id: str) -> dict[str, dict[str, object]]:
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.base_url}/v1/vector_stores/{store_id}/files"
    data = httpx.get(url, params={"limit": 100}, headers=headers, timeout=60).json()["data"]
    return {f["attributes"]["path"]: f for f in data}


def test_ingest_through_the_api_resumes_and_reports_failures(server: ServerProcess, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(DATA / "retrieval" / "docs", corpus / "packages")
    shutil.copy(DATA / "documents" / "shared-mime-info-spec.pdf", corpus / "spec.pdf")
    pdf = (DATA / "documents" / "shared-mime-info-spec.pdf").read_bytes()
    (corpus / "broken.pdf").write_bytes(pdf[: len(pdf) // 4])
    count = len(list((corpus / "packages").glob("*.txt"))) + 2

    first = ingest(server, corpus)
    assert first.returncode == 1, first.stderr  # the broken PDF failed
    assert "failed: broken.pdf: failed:" in first.stderr
    summary = first.stdout.strip().splitlines()[-1]
    assert f"{count} file(s) sent, 0 unchanged, 1 failed" in summary, first.stdout
    store_id = summary.split("(")[1].split(")")[0]
    files = files_of(server, store_id)
    assert len(files) == count
    assert files["broken.pdf"]["status"] == "failed"
    assert all(f["status"] == "completed" for p, f in files.items() if p != "broken.pdf")

    (corpus / "broken.pdf").unlink()
    (corpus / "packages" / "numpy.txt").write_text("NumPy: the fundamental package for arrays in Python.\n")
    second = ingest(server, corpus)
    assert second.returncode == 0, second.stderr
    assert f"1 file(s) sent, {count - 2} unchanged, 0 failed" in second.stdout
    headers = {"Authorization": f"Bearer {KEY}"}
    hits = httpx.post(
        f"{server.base_url}/v1/vector_stores/{store_id}/search",
        json={"query": "fundamental package for arrays", "max_num_results": 1},
        headers=headers,
        timeout=60,
    ).json()["data"]
    assert hits[0]["attributes"]["path"] == "packages/numpy.txt"
    assert "arrays in Python" in json.dumps(hits[0]["content"])

    refused = ingest(server, corpus, key="wrong")
    assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
