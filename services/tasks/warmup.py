"""One short request to each model a process runs, before that process reports ready. A model's first
forward pays for one-off work — kernel selection, weight packing, allocator growth, the chat template's
compilation — that no client should wait for."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from shared_engine.async_engine import GenerationRequest
from shared_engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 160, 200)).save(out, format="PNG")
    return out.getvalue()


def _wav(seconds: float = 1.0, sample_rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    sf.write(out, np.zeros(int(seconds * sample_rate), dtype=np.float32), sample_rate, format="WAV")
    return out.getvalue()


async def warm_up(service: Any) -> None:
    """One request through the service's own API, as a client would send it (answers are discarded)."""
    start = time.perf_counter()
    task = service.task
    if task == "chat":
        ids = service.encode_chat([{"role": "user", "content": "Hello!"}])
        params = SamplingParams(max_tokens=2, temperature=0.0)
        async for _ in service.generate([GenerationRequest(f"warmup-{service.name}", ids, params)]):
            pass
    elif task == "embedding":
        await service.embed(service.tokenize(["warm up"], truncate=True))
    elif task == "vision":
        await service.classify([_png()], 1)
    elif task == "asr":
        await service.transcribe(
            f"warmup-{service.name}", _wav(), task="transcribe", language=None, prompt=None, temperature=0.0
        )
    elif task == "tts":
        await service.speech("Hello.", None, 1.0, "wav")
    elif task == "rerank":
        await service.rerank("warm up", ["A passage to warm up with."])
    else:
        raise ValueError(f"no warm-up for task {task!r}")
    logger.info("warmed up %s (%s) in %.2f s", service.name, task, time.perf_counter() - start)


async def warm_up_all(services: Iterable[Any]) -> None:
    """One after another: on a CPU they would only queue for the same cores."""
    for service in services:
        await warm_up(service)
