"""POST /v1/rerank (thin handler over services.gateway.reranking)."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from services.gateway import reranking
from services.gateway.api_docs import SERVICE_ERRORS, errors
from services.gateway.rerank_schemas import RerankRequest, RerankResponse
from services.registry import ModelRegistry

Registry = NamedDependency[ModelRegistry]


class RerankController(Controller):
    path = "/v1/rerank"
    tags = ["retrieval"]

    @post(
        "/",
        status_code=200,
        summary="Score documents against a query with a rerank model, best first (Cohere/Jina shape)",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404="Unknown rerank model"),
    )
    async def rerank(self, data: JSONBody[RerankRequest], registry: Registry) -> RerankResponse:
        return await reranking.create(registry, data)
