"""The naive baseline: the same model in plain transformers, one request at a time with ``generate``."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from benchmarks.metrics import RequestResult, RunResult
from benchmarks.noise import CpuMeter
from benchmarks.workload import Prompt
from shared_engine.device import resolve_device, resolve_dtype


def server_device() -> torch.device:
    """What the server's ``device = "auto"`` picks."""
    return resolve_device("auto")


def server_dtype(device: torch.device) -> torch.dtype:
    """What the server's ``dtype = "auto"`` picks: bf16 where the hardware computes it, else float32."""
    return resolve_dtype("auto", device)


class TokenTimer(BaseStreamer):
    """Records when ``generate`` emits each new token (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def _generate_one(model: Any, tokenizer: Any, prompt: Prompt, output_len: int) -> RequestResult:
    start = time.perf_counter()
    messages = [{"role": "user", "content": prompt.text}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    timer = TokenTimer()
    torch.manual_seed(prompt.seed)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            pad_token_id=tokenizer.eos_token_id,
            streamer=timer,
        )
    end = time.perf_counter()
    prompt_len = int(inputs["input_ids"].shape[1])
    times = timer.times
    return RequestResult(
        ok=True,
        ttft=times[0] - start,
        e2e=end - start,
        itl=[b - a for a, b in itertools.pairwise(times)],
        output_tokens=int(out.shape[1]) - prompt_len,
        prompt_tokens=prompt_len,
    )


def run_baseline(folder: Path, prompts: list[Prompt], output_len: int) -> RunResult:
    device = server_device()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=server_dtype(device))
    model = model.to(device).eval()
    _generate_one(model, tokenizer, prompts[0], 8)  # warm-up
    load_before = os.getloadavg()[0]
    meter = CpuMeter([os.getpid()])
    start = time.perf_counter()
    results = [_generate_one(model, tokenizer, p, output_len) for p in prompts]
    wall = time.perf_counter() - start
    return RunResult("naive HF", 1, results, wall, load_before, meter.read())
