"""Property-based fuzzing of the whole HTTP API against its own OpenAPI schema (schemathesis).

One real server (the session's ``server``: embedded mode, the packaged default models). The schema is
read from ``/schema/openapi.json`` as a client would; for every operation Hypothesis generates requests
that follow the schema (positive) and requests that break it (negative), and every answer must pass:

- ``not_a_server_error``: no 5xx. A 5xx is a server bug; a caller's mistake is a 4xx.
- ``status_code_conformance``: the status is one the operation documents.
- ``content_type_conformance``: the content type is one documented for that status.
- ``response_schema_conformance``: the body matches the documented schema (for ``stream: true``, each
  server-sent event matches the documented event).

Bounded for CI: a fixed number of examples per operation and mode, derandomized (the same requests on
every run), no example database. Generated requests stay cheap: ``max_tokens`` is capped (the server
accepts up to the context window, so the schema has no static maximum) and a chat request with no limit
gets one; a rerank request scores at most 16 documents (the schema allows 1000: minutes of forwards);
everything else is bounded by the schema itself (``n`` ≤ 16, ``top_k``, list lengths).

Most generated requests would name a model or a collection that does not exist, or carry bytes that
are no image or audio, and stop at a 4xx; so three in four are steered to what the server has: a served
model of the right task, the speech model's voice, a collection made for this test with a few
documents, a vector store with a processed file and its batch, a small PNG, a short WAV. Nothing is
excluded: collections, vector stores and files that existed before the test are never written to or
deleted (those cases are skipped), the test's own are never deleted, and everything the test made is
deleted at the end.

Bodies schemathesis never writes (bytes that are not JSON or not UTF-8, JSON nested past the recursion
limit) are fuzzed separately, and the bugs found while fuzzing have regression tests at the end.

Runtime (2 cores, OMP_NUM_THREADS=1): about 1.5 minutes for the file, the server's start included.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import time
import wave
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.gateway.errors import error_body
from services.gateway.rerank_schemas import MAX_DOCUMENTS
from tests.helpers.api import error_of

SCHEMA_PATH = "/schema/openapi.json"
# Per operation and generation mode. MMSERVE_FUZZ_EXAMPLES=500 fuzzes deeper (minutes per operation).
MAX_EXAMPLES = int(os.environ.get("MMSERVE_FUZZ_EXAMPLES", "25"))
MAX_TOKENS = 4  # generated completions are capped to this many tokens
MAX_RERANKED = 16  # generated rerank requests score at most this many documents (more than 1000: a 400)
CALL_TIMEOUT_S = 120.0
FUZZ_COLLECTION = "fuzz-schemathesis"
FUZZ_DOCUMENT = "fuzz-doc"

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# Every operation of the schema; test_every_operation_is_fuzzed fails when a route is added, so that
# its cost under fuzzing is thought about (and it is fuzzed) before it ships.
OPERATIONS = [
    "GET /health",
    "HEAD /health",
    "GET /ready",
    "HEAD /ready",
    "GET /v1/models",
    "GET /v1/models/{model}",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "GET /v1/collections",
    "POST /v1/collections",
    "GET /v1/collections/{name}",
    "DELETE /v1/collections/{name}",
    "POST /v1/collections/{name}/documents",
    "GET /v1/collections/{name}/documents/{doc_id}",
    "DELETE /v1/collections/{name}/documents/{doc_id}",
    "POST /v1/retrieval/query",
    "POST /v1/rag",
    "POST /v1/rerank",
    "POST /v1/vision/classifications",
    "POST /v1/vision/embeddings",
    "POST /v1/audio/speech",
    "POST /v1/audio/transcriptions",
    "POST /v1/audio/translations",
    "POST /v1/files",
    "GET /v1/files",
    "GET /v1/files/{file_id}",
    "DELETE /v1/files/{file_id}",
    "GET /v1/files/{file_id}/content",
    "POST /v1/vector_stores",
    "GET /v1/vector_stores",
    "GET /v1/vector_stores/{store_id}",
    "POST /v1/vector_stores/{store_id}",
    "DELETE /v1/vector_stores/{store_id}",
    "POST /v1/vector_stores/{store_id}/files",
    "GET /v1/vector_stores/{store_id}/files",
    "GET /v1/vector_stores/{store_id}/files/{file_id}",
    "POST /v1/vector_stores/{store_id}/files/{file_id}",
    "DELETE /v1/vector_stores/{store_id}/files/{file_id}",
    "POST /v1/vector_stores/{store_id}/file_batches",
    "GET /v1/vector_stores/{store_id}/file_batches/{batch_id}",
    "POST /v1/vector_stores/{store_id}/file_batches/{batch_id}/cancel",
    "GET /v1/vector_stores/{store_id}/file_batches/{batch_id}/files",
    "POST /v1/vector_stores/{store_id}/search",
    "POST /tokenize",
    "POST /detokenize",
]

# The tasks whose models an operation's `model` field names.
MODEL_TASKS = {
    "/v1/chat/completions": ("chat",),
    "/v1/completions": ("chat",),
    "/v1/rag": ("chat",),
    "/tokenize": ("chat",),
    "/detokenize": ("chat",),
    "/v1/embeddings": ("embedding",),
    "/v1/rerank": ("rerank",),
    "/v1/collections": ("embedding", "vision"),
    "/v1/vision/classifications": ("vision",),
    "/v1/vision/embeddings": ("vision",),
    "/v1/audio/transcriptions": ("asr",),
    "/v1/audio/translations": ("asr",),
    "/v1/audio/speech": ("tts",),
}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 2), "red").save(out, format="PNG")
    return out.getvalue()


PNG = _png()
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def _silence_wav(seconds: float = 0.2, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return out.getvalue()


WAV = _silence_wav()
AUDIO_INPUT = {"/v1/audio/transcriptions", "/v1/audio/translations"}
GENERATING = {"/v1/chat/completions", "/v1/completions", "/v1/rag"}
# Operations that change a collection named in their path.
WRITES_TO_PATH_COLLECTION = {
    "DELETE /v1/collections/{name}",
    "POST /v1/collections/{name}/documents",
    "DELETE /v1/collections/{name}/documents/{doc_id}",
}
FUZZ_FILE_TEXT = b"Python was created by Guido van Rossum. Paris is the capital of France."


@dataclass
class FuzzObjects:
    """The vector store, file and batch steered cases name (never deleted), and what existed before."""

    store: str = ""
    file: str = ""
    batch: str = ""
    protected_stores: set[str] = field(default_factory=set)
    protected_files: set[str] = field(default_factory=set)


@dataclass
class Served:
    """What steered requests may name, and what must not be touched."""

    models: dict[str, list[str]]  # task -> model names
    voices: list[str]
    protected: set[str]  # collections that existed before the test
    # Steered to, never deleted: without them the other operations would only meet 404s.
    fuzz_collection: str = FUZZ_COLLECTION
    fuzz_document: str = FUZZ_DOCUMENT
    objects: FuzzObjects = field(default_factory=FuzzObjects)
    timings: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def models_for(self, path: str) -> list[str]:
        return [m for task in MODEL_TASKS.get(path, ()) for m in self.models.get(task, [])]


def _collection_names(http: httpx.Client) -> set[str]:
    response = http.get("/v1/collections")
    assert response.status_code == 200, response.text
    return {c["name"] for c in response.json()["data"]}


def _ids(http: httpx.Client, path: str) -> set[str]:
    response = http.get(path)
    assert response.status_code == 200, response.text
    return {o["id"] for o in response.json()["data"]}


def _fuzz_objects(http: httpx.Client) -> FuzzObjects:
    """A processed file in a vector store, attached by a batch, besides what was there before."""
    objects = FuzzObjects(
        protected_stores=_ids(http, "/v1/vector_stores?limit=100"), protected_files=_ids(http, "/v1/files")
    )
    uploaded = http.post(
        "/v1/files", files={"file": ("fuzz.txt", FUZZ_FILE_TEXT)}, data={"purpose": "assistants"}
    )
    assert uploaded.status_code == 200, uploaded.text
    objects.file = uploaded.json()["id"]
    store = http.post("/v1/vector_stores", json={"name": "fuzz"})
    assert store.status_code == 200, store.text
    objects.store = store.json()["id"]
    batch = http.post(f"/v1/vector_stores/{objects.store}/file_batches", json={"file_ids": [objects.file]})
    assert batch.status_code == 200, batch.text
    objects.batch = batch.json()["id"]
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while (
        http.get(f"/v1/vector_stores/{objects.store}/file_batches/{objects.batch}").json()["status"]
        != "completed"
    ):
        assert time.monotonic() < deadline, "the fuzz file was not processed"
        time.sleep(0.1)
    return objects


@pytest.fixture(scope="module")
def served(http: httpx.Client) -> Iterator[Served]:
    before = _collection_names(http)
    cards = http.get("/v1/models").json()["data"]
    models: dict[str, list[str]] = {}
    voices: list[str] = []
    for card in cards:
        models.setdefault(card["task"], []).append(card["id"])
        voices += card.get("voices") or []
    if FUZZ_COLLECTION in before:  # left over by an interrupted run
        http.delete(f"/v1/collections/{FUZZ_COLLECTION}")
        before.discard(FUZZ_COLLECTION)
    created = http.post("/v1/collections", json={"name": FUZZ_COLLECTION})
    assert created.status_code == 201, created.text
    documents = [
        {
            "id": FUZZ_DOCUMENT,
            "text": "Python was created by Guido van Rossum.",
            "metadata": {"topic": "code"},
        },
        {"text": "Paris is the capital of France.", "metadata": {"topic": "geo", "year": 2024}},
    ]
    added = http.post(f"/v1/collections/{FUZZ_COLLECTION}/documents", json={"documents": documents})
    assert added.status_code == 200, added.text
    objects = _fuzz_objects(http)
    state = Served(models, voices, protected=before, objects=objects)
    try:
        yield state
    finally:
        for store in _ids(http, "/v1/vector_stores?limit=100") - objects.protected_stores:
            http.delete(f"/v1/vector_stores/{store}")
        for file_id in _ids(http, "/v1/files") - objects.protected_files:
            http.delete(f"/v1/files/{file_id}")
        for name in _collection_names(http) - before:
            http.delete(f"/v1/collections/{name}")
        print("\nfuzzed (seconds, answers by status):")  # shown with `pytest -s`
        for label, seconds in sorted(state.timings.items(), key=lambda kv: -kv[1]):
            print(f"  {seconds:6.1f}  {label}  {dict(sorted(state.statuses[label].items()))}")


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{base_url}{SCHEMA_PATH}")


def _label(case: Case) -> str:
    return f"{case.operation.method.upper()} {case.operation.path}"


def _cap_tokens(body: dict[str, Any]) -> None:
    limits = [body.get(k) for k in ("max_tokens", "max_completion_tokens")]
    if not any(isinstance(v, int) and not isinstance(v, bool) for v in limits):
        body["max_tokens"] = MAX_TOKENS  # absent or null: the server may use the whole context window
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[key] = MAX_TOKENS


def _steer_body(path: str, media_type: str | None, body: dict[str, Any], served: Served, dice: int) -> None:
    models = served.models_for(path)
    if models:
        body["model"] = models[dice // 4 % len(models)]
    if path == "/v1/audio/speech" and served.voices:
        body["voice"] = served.voices[0]
    if "collection" in body:
        body["collection"] = served.fuzz_collection  # of text: queried with text, not an image
        body.pop("image", None)
    documents = body.get("documents")
    for doc in documents if isinstance(documents, list) else []:
        if isinstance(doc, dict):  # into the collection of text: text, not images
            doc.pop("image", None)
            if not (isinstance(doc.get("text"), str) and doc["text"].strip()):
                doc["text"] = "Guido van Rossum created Python."
    if path.startswith("/v1/vision/"):
        if media_type != "application/json":
            body["file"] = PNG
        elif path.endswith("/classifications") or dice % 2:
            body["image"] = PNG_DATA_URL
        else:
            body["image"] = [PNG_DATA_URL] * (1 + dice % 3)
    # Transcribing costs forwards: half the steered cases carry audio that decodes.
    if path in AUDIO_INPUT and dice % 2:
        body["file"] = WAV
        body.pop("language", None)  # detected: a generated one is hardly ever a language


def _steer_objects(label: str, params: dict[str, Any], body: dict[str, Any] | None, o: FuzzObjects) -> None:
    if "store_id" in params:
        params["store_id"] = o.store
    if "batch_id" in params:
        params["batch_id"] = o.batch
    if "file_id" in params and not label.startswith("DELETE"):
        params["file_id"] = o.file
    if body is not None and label == "POST /v1/vector_stores/{store_id}/files":
        body["file_id"] = o.file
    if body is not None and isinstance(body.get("file_ids"), list):
        body["file_ids"] = [o.file]


def _keep_objects(label: str, params: dict[str, Any], o: FuzzObjects) -> None:
    """Skip cases that would change a vector store or file this test does not own, or delete its own."""
    store, file_id = params.get("store_id"), params.get("file_id")
    if store is not None and (label.startswith(("POST", "DELETE"))) and not label.endswith("/search"):
        assume(store not in o.protected_stores)
    if label == "DELETE /v1/vector_stores/{store_id}":
        assume(store != o.store)
    if label == "DELETE /v1/files/{file_id}":
        assume(file_id not in o.protected_files and file_id != o.file)
    if label == "DELETE /v1/vector_stores/{store_id}/files/{file_id}":
        assume(not (store == o.store and file_id == o.file))


def prepare(case: Case, served: Served, dice: int) -> None:
    """Make a generated case cheap and, three times in four (by ``dice``), aimed at what the server
    has; skip (``assume``) cases that would change a collection, vector store or file this test does
    not own."""
    path, label = case.operation.path, _label(case)
    body: dict[str, Any] | None = cast(dict[str, Any], case.body) if isinstance(case.body, dict) else None
    params = case.path_parameters or {}
    if body is not None and path in GENERATING:
        _cap_tokens(body)
    documents = body.get("documents") if body is not None and path == "/v1/rerank" else None
    if isinstance(documents, list) and MAX_RERANKED < len(documents) <= MAX_DOCUMENTS:
        del documents[MAX_RERANKED:]
    if dice % 4:
        if body is not None:
            _steer_body(path, case.media_type, body, served, dice)
        if "name" in params and label != "DELETE /v1/collections/{name}":
            params["name"] = served.fuzz_collection
            if "doc_id" in params and case.operation.method.upper() == "GET":
                params["doc_id"] = served.fuzz_document
        _steer_objects(label, params, body, served.objects)
    _keep_objects(label, params, served.objects)
    if label in WRITES_TO_PATH_COLLECTION:
        assume(params.get("name") not in served.protected)
        if label == "DELETE /v1/collections/{name}":
            assume(params.get("name") != served.fuzz_collection)
        if label == "DELETE /v1/collections/{name}/documents/{doc_id}":
            assume(params.get("doc_id") != served.fuzz_document)


def fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, served: Served, base_url: str
) -> Callable[[], None]:
    @given(case=operation.as_strategy(generation_mode=mode), dice=st.integers(0, 63))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    def run(case: Case, dice: int) -> None:
        prepare(case, served, dice)
        response = case.call(base_url=base_url, timeout=CALL_TIMEOUT_S)
        served.statuses[_label(case)][response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    return run


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    results = list(api_schema.get_all_operations())
    invalid = [result.err() for result in results if not isinstance(result, Ok)]
    assert not invalid, f"operations schemathesis cannot read: {invalid}"
    labels = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in results if isinstance(r, Ok))}
    assert labels == set(OPERATIONS), (
        f"not fuzzed: {sorted(labels - set(OPERATIONS))}; gone: {sorted(set(OPERATIONS) - labels)}"
    )


def test_every_error_response_is_openai_shaped(http: httpx.Client) -> None:
    """Litestar documents a 400 with its own ValidationException body unless told otherwise; this
    server answers every error as ErrorResponse (GET /ready's 503 aside, a status like its 200)."""
    schema = http.get(SCHEMA_PATH).json()
    wrong = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items():
                if status.startswith("2") or (path, status) == ("/ready", "503"):
                    continue
                refs = [m.get("schema", {}).get("$ref") for m in response.get("content", {}).values()]
                if refs != ["#/components/schemas/ErrorResponse"]:
                    wrong.append(f"{method.upper()} {path} {status}: {response}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzz_operation(
    label: str, api_schema: schemathesis.BaseSchema, served: Served, base_url: str
) -> None:
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    started = time.monotonic()
    try:
        fuzz(operation, GenerationMode.POSITIVE, served, base_url)()
        # Unsatisfiable: nothing to break (no body, and path parameters that any string satisfies).
        with contextlib.suppress(Unsatisfiable):
            fuzz(operation, GenerationMode.NEGATIVE, served, base_url)()
    finally:
        served.timings[label] = time.monotonic() - started


# -- bodies schemathesis does not write: bytes that are not JSON, not UTF-8, or nested too deeply ------------

BODY_OPERATIONS = [label for label in OPERATIONS if label.startswith("POST ")]


def nested(depth: int) -> bytes:
    return b'{"model": ' + b"[" * depth + b"]" * depth + b"}"


def multipart(value: bytes, charset: str) -> bytes:
    """A form whose `model` field holds ``value`` (any bytes), declared in ``charset``, and a file."""
    declared = f"Content-Type: text/plain; charset={charset}\r\n".encode() if charset else b""
    return (
        b'--XX\r\nContent-Disposition: form-data; name="model"\r\n' + declared + b"\r\n" + value + b"\r\n"
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nabcd\r\n--XX--\r\n'
    )


JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data; boundary=XX"
raw_bodies = st.one_of(
    st.tuples(st.binary(max_size=64), st.just(JSON_TYPE)),
    st.tuples(st.builds(nested, st.integers(1, 20_000)), st.just(JSON_TYPE)),
    # A JSON string holding bytes that are not UTF-8.
    st.tuples(
        st.binary(min_size=1, max_size=8).map(lambda b: b'{"model": "' + b.replace(b'"', b"") + b'\xff"}'),
        st.just(JSON_TYPE),
    ),
    st.tuples(
        st.builds(multipart, st.binary(max_size=16), st.sampled_from(["", "utf-8", "latin-1", "nope-9"])),
        st.just(MULTIPART_TYPE),
    ),
)


@pytest.mark.parametrize("label", BODY_OPERATIONS)
def test_unreadable_bodies_are_client_errors(label: str, http: httpx.Client, served: Served) -> None:
    """Whatever the bytes, a 4xx in OpenAI's shape (a multipart form that decodes may reach the model:
    it carries no audio or image a model could read, so it still ends in a 4xx)."""
    _, path = label.split(" ", 1)
    path = path.replace("{name}", served.fuzz_collection)

    @given(raw=raw_bodies)
    @settings(max_examples=12, deadline=None, derandomize=True, database=None)
    def run(raw: tuple[bytes, str]) -> None:
        body, content_type = raw
        response = http.post(path, content=body, headers={"content-type": content_type})
        assert 400 <= response.status_code < 500, (body[:100], response.status_code, response.text)
        error_of(response, response.status_code)

    run()


# -- regressions: bugs found while fuzzing ---------------------------------------------------------------


def test_collection_name_with_a_trailing_newline_is_rejected(http: httpx.Client, served: Served) -> None:
    # `re.match` with `$` accepted "name\n" (and stored the index as "name\n.faiss").
    response = http.post("/v1/collections", json={"name": "fuzz-newline\n"})
    assert error_of(response, 400)["param"] == "name"
    response = http.post(
        f"/v1/collections/{FUZZ_COLLECTION}/documents", json={"documents": [{"id": "doc\n", "text": "x"}]}
    )
    assert error_of(response, 400)["param"] == "id"


@pytest.mark.parametrize("path", ["/v1/retrieval/query", "/v1/rag"])
def test_filter_integer_past_64_bits_is_a_400(path: str, http: httpx.Client, served: Served) -> None:
    # SQLite could not bind 2**64 - 1: OverflowError, a 500.
    body = {"collection": served.fuzz_collection, "query": "who made Python?", "filter": {"year": 2**64 - 1}}
    error = error_of(http.post(path, json=body), 400)
    assert error["param"].startswith("filter"), error
    assert "9223372036854775807" in error["message"], error


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/collections/x/documents", "/v1/vision/embeddings"]
)
def test_json_nested_past_the_recursion_limit_is_a_400(path: str, http: httpx.Client) -> None:
    # msgspec raises RecursionError, which Litestar let through: a 500.
    response = http.post(path, content=nested(100_000), headers={"content-type": "application/json"})
    assert "nested too deeply" in error_of(response, 400)["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/audio/speech", "/v1/vision/classifications"])
def test_json_that_is_not_utf8_is_a_400(path: str, http: httpx.Client) -> None:
    # UnicodeDecodeError from Litestar's JSON decoding: a 500.
    response = http.post(path, content=b'{"model": "\xff"}', headers={"content-type": "application/json"})
    assert "UTF-8" in error_of(response, 400)["message"]


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/vision/classifications"])
@pytest.mark.parametrize(
    ("charset", "value", "says"),
    [
        ("", b"\xff\xfe", "UTF-8"),  # UnicodeDecodeError in Litestar's multipart parser: a 500
        ("nope-9", b"abc", "charset"),  # LookupError (unknown codec): a 500
    ],
)
def test_unreadable_multipart_text_field_is_a_400(
    path: str, charset: str, value: bytes, says: str, http: httpx.Client
) -> None:
    response = http.post(path, content=multipart(value, charset), headers={"content-type": MULTIPART_TYPE})
    assert says in error_of(response, 400)["message"]


def test_decode_errors_outside_body_parsing_stay_server_errors() -> None:
    # Only errors raised while Litestar reads the body are the caller's; the same errors anywhere else
    # are bugs of ours and stay 500s.
    for exc in (
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        RecursionError(),
        LookupError(),
    ):
        try:
            raise exc
        except Exception as raised:
            assert error_body(raised)[0] == 500
