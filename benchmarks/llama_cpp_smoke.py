"""A smoke run against ``llama-server``: concurrent streamed requests, with prompts cut by the GGUF's own
tokenizer (the server's /tokenize), summarized as the serving benchmark does: the ``smoke`` action of
benchmarks/llama_cpp.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import load
from benchmarks.llama_cpp_server import llama_server, request_overrides
from benchmarks.metrics import summarize
from benchmarks.workload import build_prompts, corpus_words, default_corpus

MODEL = "smollm2-135m-instruct"


def smoke(
    gguf: Path, concurrency: int = 8, output_len: int = 128, input_len: int = 40, threads: int | None = None
) -> dict[str, Any]:
    """``concurrency`` streamed requests of ``output_len`` tokens at once against ``-np <concurrency>``,
    with prompts cut by the GGUF's own tokenizer (the server's /tokenize), summarized as the benchmark
    does."""
    words = corpus_words(default_corpus())
    tag = f"llama-cpp-smoke:{time.time_ns()}"  # fresh prefixes: nothing to reuse from a prompt cache
    with llama_server(gguf, parallel=concurrency, threads=threads, alias=MODEL) as srv:
        tokenizer = ServerTokenizer(srv.url)
        prompts = build_prompts(words, tokenizer, concurrency, input_len, 0, tag)
        warm = build_prompts(words, tokenizer, 1, input_len, 0, f"{tag}:warm")[0]
        load.warm_up(srv.url, MODEL, warm, request_overrides())
        run = load.run_level(
            srv, MODEL, prompts, concurrency, output_len, name="llama.cpp", overrides=request_overrides()
        )
    return summarize(run, output_len)


class ServerTokenizer:
    """``benchmarks.workload.Tokenizer`` over llama-server's /tokenize and /detokenize: the GGUF's own
    vocabulary, for building prompts without the Hugging Face folder."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def encode(self, text: str, *args: Any, add_special_tokens: bool = False, **kwargs: Any) -> list[int]:
        body = {"content": text, "add_special": add_special_tokens}
        r = httpx.post(f"{self.base_url}/tokenize", json=body, timeout=60.0)
        r.raise_for_status()
        return [int(t) for t in r.json()["tokens"]]

    def decode(self, token_ids: Any, *args: Any, **kwargs: Any) -> str:
        r = httpx.post(f"{self.base_url}/detokenize", json={"tokens": list(token_ids)}, timeout=60.0)
        r.raise_for_status()
        return str(r.json()["content"])
