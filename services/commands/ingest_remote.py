"""``mmserve ingest PATH --url URL --collection NAME``: send a folder of documents to a running server
through its Files and Vector Stores API, with progress bars, resuming where an earlier run stopped.

The vector store named NAME (or whose id is NAME) is used, or created. Each file is uploaded and
attached with its relative path and content hash as attributes; a later run skips files whose hash is
already there (completed or still in progress), replaces changed ones and retries failed ones. The
server extracts, chunks and embeds; this command waits until every file it sent is processed and
reports the ones that failed, with the server's reason.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

POLL_S = 0.5
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


class IngestError(Exception):
    """The server refused a call: its status and OpenAI error message."""


@dataclass(frozen=True)
class Outcome:
    store_id: str
    sent: int
    unchanged: int
    failed: dict[str, str]  # relative path → the server's reason


class Api:
    def __init__(self, url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=TIMEOUT)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise IngestError(f"{method} {path}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise IngestError(f"{method} {path}: {response.status_code} {message}")
        return response.json()

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of an OpenAI cursor list."""
        query = {**params, "limit": 100, "order": "asc"}
        while True:
            page = self.call("GET", path, params=query)
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            query["after"] = page["data"][-1]["id"]

    def close(self) -> None:
        self.http.close()


def find_store(api: Api, name: str) -> str:
    """The id of the vector store with this id or name, created if there is none."""
    for store in api.pages("/v1/vector_stores"):
        if name in (store["id"], store["name"]):
            return str(store["id"])
    return str(api.call("POST", "/v1/vector_stores", json={"name": name})["id"])


def ingest_remote(api: Api, name: str, root: Path, files: list[Path]) -> Outcome:
    store_id = find_store(api, name)
    attached = {
        f["attributes"].get("path"): f
        for f in api.pages(f"/v1/vector_stores/{store_id}/files")
        if f["attributes"]
    }
    waiting: dict[str, str] = {}  # file id → relative path
    sent = unchanged = 0
    for path in tqdm(files, desc=f"upload → {name}", unit="file"):
        rel = (path.relative_to(root) if root.is_dir() else Path(path.name)).as_posix()
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        old = attached.get(rel)
        if old is not None and old["attributes"].get("sha256") == digest and old["status"] != "failed":
            unchanged += 1
            if old["status"] == "in_progress":
                waiting[old["id"]] = rel
            continue
        if old is not None:  # changed, or failed before: replace it
            api.call("DELETE", f"/v1/vector_stores/{store_id}/files/{old['id']}")
            api.call("DELETE", f"/v1/files/{old['id']}")
        uploaded = api.call(
            "POST", "/v1/files", files={"file": (path.name, data)}, data={"purpose": "assistants"}
        )
        body = {"file_id": uploaded["id"], "attributes": {"path": rel, "sha256": digest}}
        api.call("POST", f"/v1/vector_stores/{store_id}/files", json=body)
        waiting[uploaded["id"]] = rel
        sent += 1
    return Outcome(store_id, sent, unchanged, wait(api, store_id, waiting))


def wait(api: Api, store_id: str, waiting: dict[str, str]) -> dict[str, str]:
    """Wait until the server has processed every file in ``waiting``; the failures with their reasons."""
    failed: dict[str, str] = {}
    pending = dict(waiting)
    with tqdm(total=len(pending), desc="processing", unit="file") as bar:
        while pending:
            for file_id, rel in list(pending.items()):
                f = api.call("GET", f"/v1/vector_stores/{store_id}/files/{file_id}")
                if f["status"] == "in_progress":
                    continue
                if f["status"] != "completed":
                    error = f.get("last_error") or {}
                    failed[rel] = f"{f['status']}: {error.get('message', 'no reason given')}"
                del pending[file_id]
                bar.update(1)
            if pending:
                time.sleep(POLL_S)
    return failed


def run(url: str, api_key: str | None, name: str, root: Path, files: list[Path]) -> int:
    api = Api(url, api_key)
    try:
        outcome = ingest_remote(api, name, root, files)
    except IngestError as exc:
        print(f"ingest failed: {exc}", file=sys.stderr)
        return 1
    finally:
        api.close()
    for rel, reason in sorted(outcome.failed.items()):
        print(f"failed: {rel}: {reason}", file=sys.stderr)
    print(
        f"{name} ({outcome.store_id}): {outcome.sent} file(s) sent, {outcome.unchanged} unchanged, "
        f"{len(outcome.failed)} failed"
    )
    return 1 if outcome.failed else 0
