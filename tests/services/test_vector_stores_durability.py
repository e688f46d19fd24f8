"""Distributed mode, the retrieval worker SIGKILLed while files stream in and attached files are being
processed: after a restart on the same data dir, every upload the gateway acknowledged is there byte for
byte, every acknowledged attachment ends `completed` (work left in progress is picked up again), nothing
unacknowledged is half there, and search finds the documents."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.model_configs import only_models
from tests.helpers.server import LOOPBACK, ServerProcess, default_server_env, free_port, launch, start_server
from tests.services.conftest import READY_TIMEOUT_S, server_env

DOCS = Path(__file__).resolve().parents[1] / "data" / "retrieval" / "docs"
TEXTS = sorted(DOCS.glob("*.txt"))


def start_worker(port: int, env: dict[str, str]) -> ServerProcess:
    args = ("--task", "retrieval", "--host", LOOPBACK, "--port", str(port))
    return launch("services.commands.worker", {**default_server_env(port), **env}, port, args=args)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[dict[str, str], int, Path]]:
    env = {
        **server_env(),
        "MMSERVE_DATA_DIR": str(tmp_path / "data"),
        "MMSERVE_MODELS_CONFIG": str(only_models(tmp_path, "all-minilm-l6-v2")),
    }
    yield env, free_port(), tmp_path / "data"


def until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_sigkill_loses_no_acknowledged_file_or_document(setup: tuple[dict[str, str], int, Path]) -> None:
    env, port, data_dir = setup
    worker = start_worker(port, env)
    gateway = start_server(
        env={**env, "MMSERVE_ENDPOINTS": f"retrieval={LOOPBACK}:{port}"}, timeout=READY_TIMEOUT_S
    )
    acked: dict[str, str] = {}  # file id → sha256 of what was sent
    attached: list[str] = []
    try:
        with httpx.Client(base_url=gateway.base_url, timeout=120) as http:
            store = http.post("/v1/vector_stores", json={"name": "crash"}).json()["id"]
            enough = threading.Event()

            def writer() -> None:
                with httpx.Client(base_url=gateway.base_url, timeout=120) as c:
                    for i in range(10_000):
                        path = TEXTS[i % len(TEXTS)]
                        data = path.read_bytes() + f"\ncopy {i}\n".encode()
                        try:
                            r = c.post(
                                "/v1/files",
                                files={"file": (f"{i}-{path.name}", data)},
                                data={"purpose": "assistants"},
                            )
                            if r.status_code != 200:
                                return
                            file_id = r.json()["id"]
                            acked[file_id] = hashlib.sha256(data).hexdigest()
                            r = c.post(f"/v1/vector_stores/{store}/files", json={"file_id": file_id})
                            if r.status_code != 200:
                                return
                            attached.append(file_id)
                        except httpx.TransportError:
                            return
                        if len(attached) >= 16:
                            enough.set()

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            assert enough.wait(300), worker.describe_failure("the worker did not take 16 files")
            os.kill(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(30)
            thread.join(120)
            assert not thread.is_alive()
            worker.stop(remove_logs=True)

            worker = start_worker(port, env)
            until(
                lambda: http.get("/v1/files").status_code == 200,
                READY_TIMEOUT_S,
                "the worker did not come back",
            )
            listed = {f["id"] for f in http.get("/v1/files").json()["data"]}
            assert set(acked) <= listed
            assert len(listed - set(acked)) <= 1  # at most the one committed as the worker died, unanswered
            on_disk = {p.name for p in (data_dir / "retrieval" / "files").iterdir()}
            assert on_disk == listed  # no half-written upload left behind
            for file_id, digest in acked.items():
                assert hashlib.sha256(http.get(f"/v1/files/{file_id}/content").content).hexdigest() == digest

            def all_done() -> bool:
                files = http.get(f"/v1/vector_stores/{store}/files", params={"limit": 100}).json()["data"]
                return all(f["status"] != "in_progress" for f in files)

            until(all_done, 600, "files left in progress were not processed after the restart")
            files = {
                f["id"]: f
                for f in http.get(f"/v1/vector_stores/{store}/files", params={"limit": 100}).json()["data"]
            }
            assert set(attached) <= set(files)
            assert all(files[f]["status"] == "completed" for f in attached), [files[f] for f in attached]
            hits = http.post(
                f"/v1/vector_stores/{store}/search", json={"query": "a progress bar for loops"}
            ).json()
            assert hits["data"] and "tqdm" in hits["data"][0]["filename"]
    finally:
        gateway.stop(remove_logs=True)
        worker.stop(remove_logs=True)


def test_embedded_server_resumes_files_left_in_progress_at_start(
    setup: tuple[dict[str, str], int, Path],
) -> None:
    """Embedded mode, the server SIGKILLed while a batch of files is processed: after the restart the files
    are processed again without anyone listing or retrieving them, so a client that only searches finds
    them."""
    env, _, _ = setup
    server = start_server(env=env, timeout=READY_TIMEOUT_S)
    markers = [f"zqxmarker{i}" for i in range(8)]
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            store = http.post("/v1/vector_stores", json={"name": "resume"}).json()["id"]
            ids = []
            for i, marker in enumerate(markers):
                text = TEXTS[i % len(TEXTS)].read_bytes() * 8 + f"\nThe code word is {marker}.\n".encode()
                upload = http.post(
                    "/v1/files", files={"file": (f"{i}.txt", text)}, data={"purpose": "assistants"}
                )
                ids.append(upload.json()["id"])
            batch = http.post(f"/v1/vector_stores/{store}/file_batches", json={"file_ids": ids})
            assert batch.status_code == 200, batch.text
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(30)
        server.stop(remove_logs=True)
        server = start_server(env=env, timeout=READY_TIMEOUT_S)
        with httpx.Client(base_url=server.base_url, timeout=120) as http:

            def found(marker: str) -> bool:
                hits = http.post(f"/v1/vector_stores/{store}/search", json={"query": marker}).json()["data"]
                return any(marker in part["text"] for hit in hits for part in hit["content"])

            until(lambda: all(found(m) for m in markers), 300, "files left in progress were not processed")
    finally:
        server.stop(remove_logs=True)
