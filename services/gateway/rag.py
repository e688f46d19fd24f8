"""POST /v1/rag: retrieve passages from a collection, answer with the chat model, cite what was used.

The flow lives in the gateway: it calls the retrieval service and the chat service, which never call
each other."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace

from retrieval.fusion import QueryOptions
from retrieval.search import SearchResult
from services.errors import ServiceUnavailable
from services.gateway import reranking
from services.gateway.generation import ChoiceSpec, new_id, start_choices
from services.gateway.retrieval_schemas import Citation, RagRequest, RagResponse
from services.gateway.schemas import PromptTokensDetails, Usage
from services.gateway.sse import event
from services.registry import Chat, ModelRegistry, Reranker
from shared_engine.async_engine import GroupOutputs
from shared_engine.errors import InvalidRequest
from shared_engine.outputs import RequestOutput
from shared_engine.sampling_params import OutputKind, SamplingParams

SYSTEM_PROMPT = (
    "Answer the question using only the numbered context passages. Cite the passages you use like [1]. "
    "If the passages do not contain the answer, say that you do not know."
)
CITATION = re.compile(r"\[(\d+)\]")


async def retrieve(
    registry: ModelRegistry, body: RagRequest, reranker: Reranker | None = None
) -> list[SearchResult]:
    """The ``top_k`` passages of the context: distinct documents first (each one's best passage, in the
    documents' order), then the next-best passages of the same documents while there is room — so one
    long document cannot crowd out the others, and a collection of few documents still fills the context.
    With a ``reranker``, the documents are the ``top_k`` best of more candidates by its score of their
    best passage, and every passage carries its score."""
    options = QueryOptions(body.mode, "document", passages=body.top_k)
    depth = body.top_k if reranker is None else reranking.candidates(body.top_k)
    try:
        docs = await registry.collections.query(
            body.collection, body.query, depth, body.filter, None, options
        )
    except InvalidRequest as exc:
        if exc.param != "image":
            raise
        # A collection of images asks for an image query, which RAG cannot send.
        raise InvalidRequest(
            f"collection {body.collection!r} holds images: RAG answers from a collection of text",
            param="collection",
        ) from None
    if reranker is None:
        return context_passages(docs, body.top_k)
    docs = await reranking.rerank_results(reranker, body.query, docs, body.top_k)
    return await reranking.rescore(reranker, body.query, context_passages(docs, body.top_k), docs)


def context_passages(docs: list[SearchResult], limit: int) -> list[SearchResult]:
    """Round robin over documents' passages (best first), at most ``limit`` of them."""
    lists = [
        [SearchResult(d.document_id, p.chunk_id, p.text, p.score, d.metadata) for p in d.passages] or [d]
        for d in docs
    ]
    chosen: list[SearchResult] = []
    for depth in range(max((len(x) for x in lists), default=0)):
        chosen += [x[depth] for x in lists if depth < len(x)]
    return chosen[:limit]


def build_messages(query: str, hits: list[SearchResult]) -> list[dict[str, str]]:
    context = "\n\n".join(f"[{i}] {h.text}" for i, h in enumerate(hits, start=1))
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {query}"},
    ]


def fit_context(
    service: Chat, body: RagRequest, hits: list[SearchResult]
) -> tuple[list[int], list[SearchResult]]:
    """The prompt, and the passages in it: the best of ``hits`` that leave the answer its ``max_tokens``,
    the first cut short when it alone does not fit. Chunks are sized in the embedding model's tokens,
    which do not bound the chat model's: a 40,000-letter word is one [UNK] to the one, thousands of
    tokens to the other."""
    room = service.max_model_len - body.max_tokens
    kept = list(hits)
    for _ in range(4):  # a passage's tokens alone are close to, not exactly, what it adds to the prompt
        prompt = service.encode_chat(build_messages(body.query, kept))
        over = len(prompt) - room
        if over <= 0 or not kept:
            return prompt, kept
        while len(kept) > 1 and over > 0:
            over -= len(service.encode(kept.pop().text, add_special_tokens=False))
        if over > 0:
            ids = service.encode(kept[0].text, add_special_tokens=False)
            keep = len(ids) - over - 4
            if keep < 1:
                bare = service.encode_chat(build_messages(body.query, []))
                # A 400 naming the query where the question alone does not fit; else max_tokens is at fault.
                service.resolve_max_tokens(body.max_tokens, len(bare), "query")
                raise InvalidRequest(
                    f"max_tokens {body.max_tokens} leaves no room for a passage of context: the model "
                    f"reads {service.max_model_len} tokens, the question and instructions take {len(bare)}",
                    param="max_tokens",
                )
            kept[0] = replace(kept[0], text=service.decode(ids[:keep]))
    return service.encode_chat(build_messages(body.query, kept)), kept


def citations(hits: list[SearchResult]) -> list[Citation]:
    return [Citation(i, h.document_id, h.chunk_id, h.text, h.score) for i, h in enumerate(hits, start=1)]


def cited(answer: str, all_citations: list[Citation]) -> list[Citation]:
    """The passages the answer refers to as [n]; all of them when it names none (they were its context)."""
    used = {int(n) for n in CITATION.findall(answer)}
    chosen = [c for c in all_citations if c.index in used]
    return chosen or all_citations


def _usage(out: RequestOutput | None) -> Usage:
    if out is None:
        return Usage(0, 0, 0, PromptTokensDetails(0))
    return Usage(
        out.num_prompt_tokens,
        out.num_output_tokens,
        out.num_prompt_tokens + out.num_output_tokens,
        PromptTokensDetails(out.num_cached_tokens),
    )


def nothing_found(collection: str) -> str:
    return (
        f"Nothing in the collection `{collection}` matches this question, so I cannot answer it from there."
    )


async def _generate(service: Chat, body: RagRequest, prompt: list[int]) -> GroupOutputs:
    """Submit the prompt and wait for its first output, so an engine refusal is a 4xx before any
    byte of a stream is sent; the returned iterator starts with that first output."""
    max_tokens = service.resolve_max_tokens(body.max_tokens, len(prompt), "query")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        output_kind=OutputKind.DELTA if body.stream else OutputKind.FINAL_ONLY,
    )
    return await start_choices(service, new_id("rag"), [ChoiceSpec(prompt, params)])


def _chat_service(registry: ModelRegistry, model: str | None) -> Chat:
    if model is not None:
        return registry.chat(model)
    names = [s.name for s in registry.specs.values() if s.task == "chat"]
    if not names:
        raise ServiceUnavailable("RAG needs a chat model; none is configured")
    return registry.chat(names[0])


async def answer(registry: ModelRegistry, body: RagRequest) -> RagResponse | AsyncIterator[bytes]:
    service = _chat_service(registry, body.model)
    reranker = reranking.requested(registry, body.rerank, body.rerank_model)
    prompt, hits = fit_context(service, body, await retrieve(registry, body, reranker))
    outputs = await _generate(service, body, prompt) if hits else None
    if body.stream:
        return _stream(body, hits, outputs)
    if outputs is None:
        return RagResponse(nothing_found(body.collection), [], _usage(None), service.name)
    text, last = [], None
    async for _, out in outputs:
        text.append(out.text)
        last = out
    reply = "".join(text).strip()
    return RagResponse(reply, cited(reply, citations(hits)), _usage(last), service.name)


async def _stream(
    body: RagRequest, hits: list[SearchResult], outputs: GroupOutputs | None
) -> AsyncIterator[bytes]:
    everything = citations(hits)
    yield event({"object": "rag.citations", "citations": everything})
    if outputs is None:
        yield event({"object": "rag.delta", "delta": nothing_found(body.collection)})
        yield event({"object": "rag.done", "citations": [], "usage": _usage(None)})
        return
    text, last = [], None
    async for _, out in outputs:
        text.append(out.text)
        last = out
        if out.text:
            yield event({"object": "rag.delta", "delta": out.text})
    yield event({"object": "rag.done", "citations": cited("".join(text), everything), "usage": _usage(last)})
