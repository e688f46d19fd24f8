"""Probing a running ``llama-server``'s OpenAI-compatible API for the fields ``benchmarks.load`` relies
on (usage in the last streamed chunk, ``ignore_eos``, seeds, the model name), with its own request
bodies: the ``check`` action of benchmarks/llama_cpp.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import httpx

from benchmarks import load
from benchmarks.llama_cpp_server import request_overrides
from benchmarks.metrics import RequestResult
from benchmarks.workload import Prompt

Chunks = list[dict[str, Any]]


def check_compatibility(
    base_url: str, model: str = "smollm2-135m-instruct", max_tokens: int = 32
) -> dict[str, Any]:
    """Probe the OpenAI-style fields ``benchmarks.load`` relies on, with its own request bodies."""
    prompt = Prompt(index=0, text="Say hello and then stop.", seed=1234)
    body = load.request_body(model, prompt, max_tokens, request_overrides())
    chunks = _raw_stream(base_url, body)
    same_seed = _text_of(_raw_stream(base_url, body))
    other_seed = _text_of(_raw_stream(base_url, {**body, "seed": 4321}))
    without_usage = _raw_stream(base_url, {**body, "stream_options": {"include_usage": False}})
    # A prompt the model answers in a few tokens, with room for many more: EOS ends it unless ignored.
    short_len = 4 * max_tokens
    messages = [{"role": "user", "content": "Reply with the single word: yes"}]
    short = {**body, "messages": messages, "max_tokens": short_len}
    eos_allowed = _raw_stream(base_url, {**short, "ignore_eos": False, "temperature": 0.0})
    eos_ignored = _raw_stream(base_url, {**short, "ignore_eos": True, "temperature": 0.0})
    odd_model = _raw_stream(base_url, {**body, "model": "no-such-model"})
    result = asyncio.run(_via_client(base_url, model, prompt, max_tokens))
    return {
        **_stream_fields(chunks, max_tokens),
        "same_seed_same_text": _text_of(chunks) == same_seed,
        "other_seed_other_text": _text_of(chunks) != other_seed,
        "first_chunk_choices": chunks[0].get("choices") if chunks else None,
        "usage_without_include_usage": [c.get("usage") for c in without_usage if c.get("usage")],
        "last_chunk_keys_without_include_usage": sorted(without_usage[-1]) if without_usage else None,
        "short_answer_max_tokens": short_len,
        "short_answer_eos_allowed": _usage_and_finish(eos_allowed),
        "short_answer_eos_ignored": _usage_and_finish(eos_ignored),
        "model_echoed": chunks[-1].get("model") if chunks else None,
        "unknown_model_accepted": bool(odd_model),
        "unknown_model_echoed": odd_model[-1].get("model") if odd_model else None,
        "send_request": {
            "ok": result.ok,
            "error": result.error,
            "output_tokens": result.output_tokens,
            "prompt_tokens": result.prompt_tokens,
            "ttft_s": round(result.ttft, 4),
            "itl_count": len(result.itl),
        },
        "sample_text": _text_of(chunks)[:120],
    }


def _stream_fields(chunks: Chunks, max_tokens: int) -> dict[str, Any]:
    """What one streamed answer with ``include_usage`` looks like: its chunks, usage and timings."""
    usage_chunks = [c for c in chunks if c.get("usage")]
    last = chunks[-1] if chunks else {}
    return {
        "chunks": len(chunks),
        "content_chunks": sum(1 for c in chunks if load._has_content(c)),
        "usage_chunks": len(usage_chunks),
        "usage": usage_chunks[-1]["usage"] if usage_chunks else None,
        "usage_chunk_is_last": bool(usage_chunks) and usage_chunks[-1] is last,
        "usage_chunk_choices": usage_chunks[-1].get("choices") if usage_chunks else None,
        "last_chunk_keys": sorted(last),
        "timings": last.get("timings"),
        "finish_reasons": [c.get("finish_reason") for ch in chunks for c in ch.get("choices") or []][-1:],
        "ignore_eos_exact": bool(usage_chunks)
        and usage_chunks[-1]["usage"]["completion_tokens"] == max_tokens,
    }


def _raw_stream(base_url: str, body: Mapping[str, Any]) -> Chunks:
    """The parsed ``data:`` chunks of one streamed chat completion."""
    chunks = []
    with (
        httpx.Client(timeout=300.0) as client,
        client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r,
    ):
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:300]}")
        for line in r.iter_lines():
            if line.startswith("data:") and (data := line[5:].strip()) != "[DONE]":
                chunks.append(json.loads(data))
    return chunks


def _text_of(chunks: Chunks) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or "" for ch in chunks for c in ch.get("choices") or []
    )


async def _via_client(base_url: str, model: str, prompt: Prompt, max_tokens: int) -> RequestResult:
    """The same request as the benchmark sends it, through ``benchmarks.load.send_request``."""
    async with httpx.AsyncClient(timeout=300.0) as client:
        return await load.send_request(client, base_url, model, prompt, max_tokens, request_overrides())


def _usage_and_finish(chunks: Chunks) -> dict[str, Any]:
    usage: dict[str, Any] = next((c["usage"] for c in reversed(chunks) if c.get("usage")), {})
    reasons = [
        c.get("finish_reason") for ch in chunks for c in ch.get("choices") or [] if c.get("finish_reason")
    ]
    return {"completion_tokens": usage.get("completion_tokens"), "finish_reason": reasons[-1:] or None}
