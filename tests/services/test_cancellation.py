"""A client that leaves mid-stream, mid-completion or mid-transcription: its engine request is aborted
at once and its KV blocks freed, as the engine's own gauges on /metrics show (embedded mode, where
the gateway's /metrics carries the engine's)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.helpers.espeak_audio import synthesize_espeak
from tests.helpers.prometheus import Sample, scrape, total
from tests.helpers.server import ServerProcess
from tests.services.conftest import DISTRIBUTED

pytestmark = pytest.mark.skipif(DISTRIBUTED, reason="engine gauges are on the workers' /metrics")

ASR_MODEL = "whisper-tiny.en"
LONG_CHAT = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 3000,
             "ignore_eos": True, "temperature": 0}  # fmt: skip


def _engine(http: httpx.Client, model: str) -> tuple[float, float, float]:
    samples: list[Sample] = scrape("/metrics", http)
    return (
        total(samples, "mmserve:num_requests_running", model_name=model),
        total(samples, "mmserve:kv_cache_usage_perc", model_name=model),
        total(samples, "mmserve:generation_tokens_total", model_name=model),
    )


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _stops_at_once(http: httpx.Client, model: str) -> None:
    """Nothing runs, no KV block is held, and no token is generated after the abort."""
    _wait(lambda: _engine(http, model)[0] == 0, 2.0, f"{model}: the aborted request still runs")
    _, kv, generated = _engine(http, model)
    assert kv == 0.0, f"{model}: KV blocks still held ({kv:.3%})"
    time.sleep(0.5)
    assert _engine(http, model)[2] == generated, f"{model}: tokens were generated after the abort"


def test_leaving_a_stream_aborts_it_and_frees_its_blocks(http: httpx.Client, model_id: str) -> None:
    body = {**LONG_CHAT, "model": model_id, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = (line for line in response.iter_lines() if line.startswith("data: "))
        for _ in range(5):
            next(events)
        running, kv, _ = _engine(http, model_id)
        assert running == 1 and kv > 0
    _stops_at_once(http, model_id)


def _in_background(call: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(httpx.TimeoutException):  # the client giving up is the point
            call()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_leaving_before_a_completion_is_sent_aborts_it(
    base_url: str, http: httpx.Client, model_id: str
) -> None:
    def impatient() -> object:  # waits 2 s for an answer that needs minutes, then hangs up
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(2.0, connect=10.0)) as client:
            return client.post("/v1/chat/completions", json={**LONG_CHAT, "model": model_id})

    caller = _in_background(impatient)
    _wait(lambda: _engine(http, model_id)[0] == 1, 10.0, "the completion never started")
    caller.join(30)
    _stops_at_once(http, model_id)


def test_leaving_mid_transcription_aborts_it(base_url: str, http: httpx.Client) -> None:
    samples, rate = synthesize_espeak(" ".join(["The quick brown fox jumps over the lazy dog."] * 40))
    audio = np.concatenate([samples] * 2)
    assert len(audio) / rate > 60, "needs several 30-second windows"
    wav = io.BytesIO()
    sf.write(wav, audio, rate, format="WAV", subtype="PCM_16")

    def impatient() -> object:
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(3.0, connect=10.0)) as client:
            files = {"file": ("long.wav", wav.getvalue(), "audio/wav")}
            return client.post("/v1/audio/transcriptions", data={"model": ASR_MODEL}, files=files)

    caller = _in_background(impatient)
    _wait(lambda: _engine(http, ASR_MODEL)[0] >= 1, 20.0, "the transcription never reached the decoder")
    caller.join(30)
    _stops_at_once(http, ASR_MODEL)


def test_leaving_mid_upload_is_the_clients_doing_not_a_server_error(
    server: ServerProcess, http: httpx.Client
) -> None:
    """A multipart upload whose client hangs up half way: counted and logged as 499 (client closed), never
    as a 500 with an error traceback."""

    def requests_by_status() -> dict[str, float]:
        samples = scrape("/metrics", http)
        return {s: total(samples, "mmserve:requests_total", task="asr", status=s) for s in ("499", "500")}

    before = requests_by_status()
    boundary = "cut-short"
    head = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{ASR_MODEL}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + b"RIFF"
        + bytes(500)
    )
    request = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request + head)
        time.sleep(0.5)
    _wait(lambda: requests_by_status()["499"] == before["499"] + 1, 10.0, "the upload was not counted as 499")
    assert requests_by_status()["500"] == before["500"]
    assert "client disconnected prematurely" not in server.stderr_tail(100_000)
