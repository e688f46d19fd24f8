"""Multi-turn chats over two LLM replicas, routed round-robin and cache-aware (services/rpc/routing.py):
the share of each turn's prompt that the replica it reached had in its prefix cache, and TTFT.

Target: every turn after the first finds ≥ 90% of its prompt cached on average, and none below half.

    .venv/bin/python benchmarks/distributed.py --scenario routing [--chats 6] [--turns 4] [--rounds 2]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks import server

CHAT_MODEL = "smollm2-135m-instruct"
POLICIES = ("round_robin", "cache_aware")
WORDS = (
    "river", "delta", "archive", "shelf", "map", "survey", "harbour", "lighthouse", "ledger", "cargo", "tide",
    "station", "bridge", "canal", "census", "granary", "mill", "market", "quarry", "road", "toll", "ferry",
)  # fmt: skip


def system_prompt(rng: random.Random, words: int) -> str:
    """A long system prompt of its own per chat (instructions and reference facts)."""
    facts = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"You are the archivist of town {rng.randrange(10**6)}. Use only these notes: {facts}"


async def turn(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    body = {
        "model": CHAT_MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, ttft, text, usage = time.perf_counter(), None, [], {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    ttft = ttft or time.perf_counter() - start
                    text.append(choice["delta"]["content"])
            usage = chunk.get("usage") or usage
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"ttft_s": ttft, "text": "".join(text), "prompt_tokens": usage["prompt_tokens"], "cached": cached}


async def conversations(
    url: str, seed: int, chats: int, turns: int, words: int
) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    prompts = [system_prompt(rng, words) for _ in range(chats)]

    async def one(i: int, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        messages = [{"role": "system", "content": prompts[i]}]
        out = []
        for t in range(turns):
            messages.append(
                {"role": "user", "content": f"Question {t}: what do the notes say about item {i}?"}
            )
            record = await turn(client, messages, max_tokens=32)
            messages.append({"role": "assistant", "content": record.pop("text")})
            out.append({"chat": i, "turn": t, **record})
        return out

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return list(await asyncio.gather(*(one(i, client) for i in range(chats))))


def summarize(records: list[list[dict[str, Any]]]) -> dict[str, Any]:
    later = [r for chat in records for r in chat if r["turn"] > 0]
    shares = [r["cached"] / r["prompt_tokens"] for r in later]
    ttfts = sorted(r["ttft_s"] for chat in records for r in chat if r["ttft_s"] is not None)
    return {
        "later_turns": len(later),
        "cached_share_mean": round(statistics.fmean(shares), 4),
        "cached_share_min": round(min(shares), 4),
        "turns_below_half": sum(s < 0.5 for s in shares),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
        "ttft_p99_ms": round(1000 * ttfts[max(0, int(len(ttfts) * 0.99) - 1)], 1),
    }


def only_chat_config(folder: Path) -> Path:
    """models.toml with the chat model alone: the gateways load no other model in-process."""
    blocks = (server.REPO_ROOT / "models.toml").read_text().split("[[models]]")[1:]
    path = folder / "models.toml"
    path.write_text("".join("[[models]]" + b for b in blocks if f'name = "{CHAT_MODEL}"' in b))
    return path


def run(chats: int, turns: int, words: int, rounds: int) -> dict[str, Any]:
    """Two chat workers and one gateway per policy in front of both, used in alternating rounds (a machine
    whose speed drifts slows both alike); every round brings chats of its own (another seed), so no policy
    finds the other's prompts cached."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        config = only_chat_config(Path(tmp))
        env = {"MMSERVE_MODELS_CONFIG": str(config)}
        ports = [server.free_port() for _ in range(2)]
        for port in ports:
            worker = subprocess.Popen(
                [sys.executable, "-m", "services.commands.worker", "--task", "chat", "--port", str(port)],
                cwd=server.REPO_ROOT,
                env={**os.environ, **env, "MMSERVE_LOG_LEVEL": "warning"},
            )
            stack.callback(server.stop, worker)
        endpoints = "chat=" + ",".join(f"127.0.0.1:{p}" for p in ports)
        urls = {}
        for policy in POLICIES:
            gateway_env = {**env, "MMSERVE_ENDPOINTS": endpoints, "MMSERVE_CHAT_ROUTING": policy}
            urls[policy] = stack.enter_context(server.local_server(900, extra_env=gateway_env)).url
        records: dict[str, list[list[dict[str, Any]]]] = {policy: [] for policy in POLICIES}
        for r in range(rounds):
            for i, policy in enumerate(POLICIES):
                print(f"round {r + 1}/{rounds}, {policy}: {chats} chats x {turns} turns ...", flush=True)
                seed = 1000 * r + i
                records[policy] += asyncio.run(conversations(urls[policy], seed, chats, turns, words))
    return {policy: {**summarize(recs), "turns": recs} for policy, recs in records.items()}
