"""Files and vector stores in distributed mode: a real retrieval worker (``services.commands.worker --task
retrieval``) behind a real gateway routed to it by MMSERVE_ENDPOINTS, driven over HTTP by the openai SDK.
Uploads cross gRPC as a stream of ≤ 1 MiB messages and contents come back the same way, so a file of a
few MiB goes through several of them each way; errors keep their class, status and OpenAI shape, and the
worker's health service names the vector stores service. Also: OpenAI filters on a collection's query over
gRPC, and the codec's encodings where None means something. Texts are real ones from tests/data."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from retrieval.chunking import ChunkingConfig
from retrieval.errors import (
    CollectionOwned,
    FileBatchNotFound,
    FileNotFound,
    UnreadableDocument,
    UnsupportedFormat,
    VectorStoreFileNotFound,
    VectorStoreNotFound,
)
from retrieval.filters import Comparison, Compound
from retrieval.vector_store_records import VectorStoreFileRecord, VectorStoreRecord
from retrieval.vector_store_types import FileAttachment, SearchOptions
from services.commands.worker import VECTOR_STORES_SERVICE
from services.gateway.errors import error_body
from services.rpc import vector_stores_codec as codec
from services.rpc.channels import Channels
from services.rpc.retrieval_rpc import RemoteCollections
from services.rpc.status import from_status, to_status
from services.rpc.vector_stores_pb2 import ModifyVectorStoreRequest
from tests.helpers.api import error_of
from tests.helpers.model_configs import only_models
from tests.helpers.server import (
    LOOPBACK,
    ServerProcess,
    ServerStartError,
    default_server_env,
    free_port,
    launch,
    start_server,
)
from tests.services.conftest import READY_TIMEOUT_S, REQUEST_TIMEOUT_S, server_env

EMBED_MODEL = "all-minilm-l6-v2"
DOCS = Path(__file__).resolve().parents[1] / "data" / "retrieval" / "docs"
MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The retrieval worker and the gateway, with a data dir of their own and only the embedding model."""
    folder = tmp_path_factory.mktemp("vector-stores-rpc")
    env = {
        **server_env(),
        "MMSERVE_DATA_DIR": str(folder / "data"),
        "MMSERVE_MODELS_CONFIG": str(only_models(folder, EMBED_MODEL)),
    }
    port = free_port()
    args = ("--task", "retrieval", "--host", LOOPBACK, "--port", str(port))
    worker = launch("services.commands.worker", {**default_server_env(port), **env}, port, args=args)
    try:
        try:
            gateway_env = {**env, "MMSERVE_ENDPOINTS": f"retrieval={LOOPBACK}:{port}"}
            gateway = start_server(env=gateway_env, timeout=READY_TIMEOUT_S)
        except ServerStartError as exc:
            pytest.fail(f"{exc}\n{worker.describe_failure('the worker')}", pytrace=False)
        try:
            yield worker, gateway
        finally:
            gateway.stop(remove_logs=True)
    finally:
        worker.stop(remove_logs=True)


@pytest.fixture(scope="module")
def sdk(topology: tuple[ServerProcess, ServerProcess]) -> Iterator[openai.OpenAI]:
    base_url = f"{topology[1].base_url}/v1"
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    try:
        yield client
    finally:
        client.close()


def upload(sdk: openai.OpenAI, name: str, data: bytes) -> str:
    f = sdk.files.create(file=(name, data), purpose="assistants")
    assert (f.filename, f.bytes, f.purpose) == (name, len(data), "assistants")
    return f.id


def test_file_search_through_the_worker(sdk: openai.OpenAI) -> None:
    texts = {stem: (DOCS / f"{stem}.txt").read_bytes() for stem in ("tqdm", "idna")}
    ids = {stem: upload(sdk, f"{stem}.txt", data) for stem, data in texts.items()}
    store = sdk.vector_stores.create(name="packages", metadata={"kind": "descriptions"})
    assert store.metadata == {"kind": "descriptions"} and store.expires_after is None
    for stem, file_id in ids.items():
        attached = sdk.vector_stores.files.create_and_poll(
            file_id, vector_store_id=store.id, attributes={"package": stem, "stars": 5}, poll_interval_ms=200
        )
        assert attached.status == "completed", attached.last_error
        assert attached.attributes == {"package": stem, "stars": 5}
    assert sdk.vector_stores.retrieve(store.id).file_counts.completed == 2

    only_idna = {"type": "eq", "key": "package", "value": "idna"}
    page = sdk.vector_stores.search(store.id, query="a progress bar for loops", filters=only_idna)
    assert [r.file_id for r in page.data] == [ids["idna"]]
    page = sdk.vector_stores.search(
        store.id, query="a progress bar for loops", filters={"type": "gte", "key": "stars", "value": 5}
    )
    assert page.data[0].file_id == ids["tqdm"] and page.data[0].filename == "tqdm.txt"
    assert page.data[0].attributes == {"package": "tqdm", "stars": 5}
    assert all(0.0 <= r.score <= 1.0 and r.content[0].text for r in page.data)
    assert sdk.files.content(ids["tqdm"]).read() == texts["tqdm"]

    # the expiry's three states: set, left as it is, cleared
    days = {"anchor": "last_active_at", "days": 7}
    expiring = sdk.vector_stores.update(store.id, expires_after=days)  # type: ignore[arg-type]
    assert expiring.expires_after is not None and expiring.expires_after.days == 7
    renamed = sdk.vector_stores.update(store.id, name="renamed")
    assert renamed.name == "renamed" and renamed.expires_after is not None and renamed.expires_after.days == 7
    assert sdk.vector_stores.update(store.id, expires_after=None).expires_after is None

    batch = sdk.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[ids["tqdm"]], poll_interval_ms=200
    )
    assert batch.status == "completed" and batch.file_counts.completed == 1
    batch_files = sdk.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)
    assert [f.id for f in batch_files.data] == [ids["tqdm"]]

    assert sdk.vector_stores.delete(store.id).deleted
    for file_id in ids.values():
        assert sdk.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.vector_stores.retrieve(store.id)


def test_a_file_of_several_messages_goes_and_comes_back_whole(sdk: openai.OpenAI) -> None:
    text = (DOCS / "python-license.txt").read_bytes()
    data = text * (2 * MESSAGE_BYTES // len(text) + 2) + text[: len(text) // 3]
    assert len(data) > 2 * MESSAGE_BYTES + 1
    file_id = upload(sdk, "python-license.txt", data)
    assert sdk.files.retrieve(file_id).bytes == len(data)
    back = sdk.files.content(file_id).read()
    assert len(back) == len(data) and hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert sdk.files.delete(file_id).deleted
    assert file_id not in {f.id for f in sdk.files.list()}


def test_not_found_keeps_its_shape_and_status(
    sdk: openai.OpenAI, topology: tuple[ServerProcess, ...]
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.files.retrieve("file-missing")
    assert caught.value.status_code == 404 and caught.value.code == "file_not_found"
    with httpx.Client(base_url=topology[1].base_url, timeout=30.0) as http:
        for path, code in [
            ("/v1/files/file-missing/content", "file_not_found"),
            ("/v1/vector_stores/vs_missing", "vector_store_not_found"),
        ]:
            error = error_of(http.get(path), 404)
            assert error["code"] == code and error["type"] == "not_found_error"
            assert "missing" in error["message"]
        upload = http.post("/v1/files", files={"file": ("a.exe", b"MZ")}, data={"purpose": "assistants"})
        error = error_of(upload, 400)
        assert error["code"] == "unsupported_file"


def test_openai_filters_cross_grpc_for_collections(
    sdk: openai.OpenAI, topology: tuple[ServerProcess, ServerProcess]
) -> None:
    worker, gateway = topology
    with httpx.Client(base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        assert http.post("/v1/collections", json={"name": "filtered"}).status_code == 201
        docs = [
            {"id": stem, "text": (DOCS / f"{stem}.txt").read_text(), "metadata": {"year": year}}
            for stem, year in [("tqdm", 2013), ("idna", 2013), ("pytest", 2004), ("numpy", 2006)]
        ]
        assert http.post("/v1/collections/filtered/documents", json={"documents": docs}).status_code == 200

    async def query(where: object) -> set[str]:
        remote = RemoteCollections(Channels("retrieval", [f"{LOOPBACK}:{worker.port}"], 60.0))
        try:
            hits = await remote.query("filtered", "software", 10, where)  # type: ignore[arg-type]
        finally:
            await remote.channels.close()
        return {h.document_id for h in hits}

    newer = Compound("or", (Comparison("year", "gt", 2010), Comparison("year", "eq", 2004)))
    assert asyncio.run(query(newer)) == {"tqdm", "idna", "pytest"}
    assert asyncio.run(query(Comparison("year", "in", (2006,)))) == {"numpy"}
    assert asyncio.run(query({"year": 2004})) == {"pytest"}  # the plain equality object, as before


def test_the_worker_reports_the_vector_stores_service_healthy(topology: tuple[ServerProcess, ...]) -> None:
    with grpc.insecure_channel(f"{LOOPBACK}:{topology[0].port}") as channel:
        request = health_pb2.HealthCheckRequest(service=VECTOR_STORES_SERVICE)
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10.0)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFound("file-1"),
        VectorStoreNotFound("vs_1"),
        VectorStoreFileNotFound("file-1", "vector store vs_1"),
        FileBatchNotFound("vsfb_1", "vector store vs_1"),
        UnsupportedFormat("`a.exe` is not a supported file type", param="file"),
        UnreadableDocument("`a.pdf` is encrypted", param="file"),
        CollectionOwned("vs_1", "vector store", "/v1/vector_stores"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_come_back_as_the_same_class(exc: Exception) -> None:
    back = from_status(*to_status(exc), "retrieval")
    assert type(back) is type(exc)
    assert error_body(back)[0] == error_body(exc)[0]
    assert error_body(back)[1].error == error_body(exc)[1].error


# -- the codec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires", "expiry"), [(7, "EXPIRY_SET"), (None, "EXPIRY_CLEARED"), (False, "EXPIRY_UNCHANGED")]
)
def test_modify_expires_has_three_states(expires: int | bool | None, expiry: str) -> None:
    request = codec.modify_request("vs_1", None, None, expires)
    back = ModifyVectorStoreRequest.FromString(request.SerializeToString())
    assert ModifyVectorStoreRequest.Expiry.Name(back.expiry) == expiry
    assert codec.modify_expires(back) == expires
    assert not back.HasField("name") and not back.HasField("metadata_json")


def test_records_keep_their_nones_and_types() -> None:
    store = VectorStoreRecord("vs_1", "n", {"a": "b"}, None, 10, 11)
    assert codec.store_record(codec.store_message(store)) == store
    attributes = {"n": 1.5, "b": True}
    attached = VectorStoreFileRecord(
        "vs_1", "f", "failed", "invalid_file", "empty", attributes, 64, 16, None, 0, 12
    )
    assert codec.attached_record(codec.attached_message(attached)) == attached
    a = FileAttachment("file-1", {"x": 1}, ChunkingConfig(100, 10))
    assert codec.attachment(codec.attachment_message(a)) == a
    assert codec.attachment(codec.attachment_message(FileAttachment("file-2"))) == FileAttachment("file-2")
    options = SearchOptions(3, Compound("and", (Comparison("k", "nin", ("a", "b")),)), "none", 0.25)
    assert codec.search_options(codec.search_request("vs_1", ["q"], options)) == options
    assert codec.search_options(codec.search_request("vs_1", ["q"], SearchOptions())) == SearchOptions()
