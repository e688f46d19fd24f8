"""POST /v1/rerank, and ``"rerank": true`` on retrieval queries and RAG, against the session's real server
(the repository's models.toml: the default reranker is the packaged SmolLM2 scoring by query
likelihood). In the API suites: `make test` runs it again through the gRPC topology, where the embedding
worker serves the reranker. Texts are paragraphs of the licences in /usr/share/common-licenses and
questions each answered by one of them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.gateway.rerank_schemas import MAX_DOCUMENTS
from tests.helpers.api import error_of
from tests.helpers.licenses import QUESTIONS, answer, paragraphs

RERANKER = "smollm2-135m-rerank"


def texts() -> list[str]:
    """The questions' answers first (answer i at index i), then other paragraphs of the GPL."""
    return [answer(name, anchor) for _, name, anchor in QUESTIONS] + paragraphs("GPL-3")[10:17]


def rerank(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture(scope="module")
def collection(http: httpx.Client) -> Iterator[str]:
    name = f"rerank-{uuid.uuid4().hex[:8]}"
    assert http.post("/v1/collections", json={"name": name}).status_code == 201
    docs = [{"id": f"p{i}", "text": t} for i, t in enumerate(texts())]
    added = http.post(f"/v1/collections/{name}/documents", json={"documents": docs})
    assert added.status_code == 200, added.text
    yield name
    http.delete(f"/v1/collections/{name}")


def test_the_reranker_is_listed_with_its_task(http: httpx.Client) -> None:
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert cards[RERANKER]["task"] == "rerank"
    assert cards[RERANKER]["max_model_len"] == 512


def test_rerank_orders_documents_best_first_in_cohere_shape(http: httpx.Client) -> None:
    docs: list[Any] = texts()
    docs[1] = {"text": docs[1]}  # strings and {"text"} objects mix
    body = rerank(http, query=QUESTIONS[1][0], documents=docs)
    assert set(body) == {"id", "object", "model", "results", "usage"}
    assert body["model"] == RERANKER and body["object"] == "rerank" and body["id"].startswith("rerank-")
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(docs)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert results[0]["index"] == 1
    assert all(r["document"] == {"text": texts()[r["index"]]} for r in results)
    assert body["usage"]["total_tokens"] > sum(len(t.split()) for t in texts())


def test_top_n_keeps_the_best_and_return_documents_false_leaves_them_out(http: httpx.Client) -> None:
    full = rerank(http, query=QUESTIONS[0][0], documents=texts()[:6], model=RERANKER)["results"]
    best = rerank(http, query=QUESTIONS[0][0], documents=texts()[:6], top_n=2, return_documents=False)
    assert [r["index"] for r in best["results"]] == [r["index"] for r in full[:2]]
    assert best["results"][0]["index"] == 0
    assert all(set(r) == {"index", "relevance_score"} for r in best["results"])
    assert len(rerank(http, query="warranty", documents=texts()[:3], top_n=10)["results"]) == 3


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"query": "", "documents": ["a"]}, 400, "query", "query must not be empty"),
        ({"query": "   ", "documents": ["a"]}, 400, "query", "query must not be empty"),
        ({"query": "q", "documents": []}, 400, "documents", "at least one document"),
        ({"query": "q", "documents": ["a"] * (MAX_DOCUMENTS + 1)}, 400, "documents", "at most 1000"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n", "top_n must be at least 1"),
        ({"query": "q", "documents": [1, 2]}, 400, "documents[0]", None),
        ({"documents": ["a"]}, 400, "query", None),
        ({"query": "q", "documents": ["a"], "model": "no-such-model"}, 404, "model", "no-such-model"),
        ({"query": "q", "documents": ["a"], "model": "all-minilm-l6-v2"}, 404, "model", "not a rerank model"),
        ({"query": "q " * 600, "documents": ["a"]}, 400, "query", "leaves no room"),
    ],
)
def test_rerank_errors(
    http: httpx.Client, body: dict[str, Any], status: int, param: str, message: str | None
) -> None:
    error = error_of(http.post("/v1/rerank", json=body), status)
    assert error["param"] == param, error
    assert message is None or message in error["message"], error
    if status == 404:
        assert error["code"] == "model_not_found"


@pytest.mark.parametrize("index", [0, 3])
def test_retrieval_query_reranked_returns_top_k_by_the_rerankers_score(
    http: httpx.Client, collection: str, index: int
) -> None:
    question = QUESTIONS[index][0]
    body = {"collection": collection, "query": question, "top_k": 3, "rerank": True}
    response = http.post("/v1/retrieval/query", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and results[0]["document_id"] == f"p{index}"
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    # The score is the reranker's relevance of the result's text, as /v1/rerank gives it (up to bf16
    # rounding, which differs by a few percent with the batch a pair is scored in).
    direct = rerank(http, query=question, documents=[r["text"] for r in results])["results"]
    by_index = {r["index"]: r["relevance_score"] for r in direct}
    assert scores == pytest.approx([by_index[i] for i in range(3)], rel=0.1)


def test_rag_reranked_cites_the_answer_first_with_reranker_scores(
    http: httpx.Client, collection: str
) -> None:
    question = QUESTIONS[1][0]
    body = {"collection": collection, "query": question, "top_k": 2, "rerank": True, "max_tokens": 8}
    response = http.post("/v1/rag", json=body)
    assert response.status_code == 200, response.text
    citations = response.json()["citations"]
    assert citations and citations[0]["document_id"] == "p1"
    direct = rerank(http, query=question, documents=[c["text"] for c in citations])["results"]
    by_index = {r["index"]: r["relevance_score"] for r in direct}
    assert [c["score"] for c in citations] == pytest.approx(
        [by_index[i] for i in range(len(citations))], rel=0.1
    )


@pytest.mark.parametrize(
    ("path", "extra", "status", "param"),
    [
        ("/v1/retrieval/query", {"rerank": True, "rerank_model": "no-such-model"}, 404, "rerank_model"),
        ("/v1/retrieval/query", {"rerank_model": RERANKER}, 400, "rerank_model"),
        ("/v1/retrieval/query", {"rerank": True, "image": "aGVsbG8="}, 400, "rerank"),
        ("/v1/rag", {"rerank": True, "rerank_model": "all-minilm-l6-v2"}, 404, "rerank_model"),
        ("/v1/rag", {"rerank_model": RERANKER}, 400, "rerank_model"),
    ],
)
def test_rerank_options_errors(
    http: httpx.Client, collection: str, path: str, extra: dict[str, Any], status: int, param: str
) -> None:
    body = {"collection": collection, "query": QUESTIONS[0][0], **extra}
    assert error_of(http.post(path, json=body), status)["param"] == param
