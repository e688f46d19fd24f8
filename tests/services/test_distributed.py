"""The distributed mode end to end: real ``services.commands.worker`` processes on loopback (two chat
replicas, one worker each for embeddings, vision and speech synthesis) behind a real
``services.commands.serve`` gateway routed to them by ``MMSERVE_ENDPOINTS``; speech recognition runs in
the gateway itself. Every model is the real one.

What is checked: each API answers through gRPC as it does in-process, and the errors keep their HTTP
status and OpenAI shape across the boundary; a chat replica killed while streams are in flight (requests
that had not received anything move to the other replica; only streams it had already started may end
with an error event); the only vision worker killed (vision answers 503, every other service keeps
answering, and a worker restarted on the same port is used again without restarting the gateway); a
gateway whose calls have a short deadline (504, and the worker drops the request); a client that goes away
mid-stream (the worker stops generating); a restarted chat replica that is still loading its model.

Whether a worker is busy is read from its CPU time (``/proc/<pid>/stat``): an idle worker uses none,
one that generates tokens about a core.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from skimage import data as samples

from pipelines.embedding import EmbeddingPipeline, EmbeddingPipelineConfig
from services.commands.probe import grpc_serving
from services.config.models import load_model_specs
from services.rpc import llm_pb2_grpc, tts_pb2, tts_pb2_grpc
from services.rpc.channels import Channels
from services.rpc.llm_codec import requests_to_proto
from shared_engine.async_engine import GenerationRequest
from shared_engine.sampling_params import SamplingParams
from tests.helpers.api import error_of
from tests.helpers.server import (
    DEFAULT_MODELS_CONFIG,
    LOOPBACK,
    ServerProcess,
    ServerStartError,
    default_server_env,
    free_port,
    launch,
    start_server,
)
from tests.helpers.transcripts import wer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for CPU time")

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
VISION_MODEL = "efficientnet-lite0"
TTS_MODEL = "piper-joe"
ASR_MODEL = "whisper-tiny.en"  # in the gateway: no worker for speech recognition
MAX_MODEL_LEN = 8192  # models.toml, chat model
EMBED_DIMENSIONS = 384
CATS = {281, 282, 283, 284, 285}  # ImageNet-1k: tabby, tiger cat, Persian, Siamese, Egyptian cat
MAX_PIXELS = 40_000_000  # MMSERVE_MAX_IMAGE_PIXELS' default

# name → task; two chat replicas so that one can fail
WORKERS = {"chat-a": "chat", "chat-b": "chat", "embedding": "embedding", "vision": "vision", "tts": "tts"}
CHAT_REPLICAS = ("chat-a", "chat-b")

THREADS = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
WORKER_START_S = 240.0  # several workers load at once on a small, busy machine
GATEWAY_START_S = 180.0
REQUEST_TIMEOUT_S = 300.0
IDLE_WINDOW_S = 1.5  # CPU time is sampled over this long to tell a busy worker from an idle one
IDLE_CPU_S = 0.15  # at most this much CPU in a window: idle (one that generates uses ~1 s/s)
SPOKEN = "Hello from the speech service."
# Piper voices it with fresh noise each time and tiny.en once heard "below" for "hello" (one word of five):
# a misheard word passes, a transcript of other or no speech does not.
MAX_SPOKEN_WER = 0.4
# Asked so that the model is sure of its first token (see FRANCE_QUESTION in test_openai_api.py).
PARIS_QUESTION = [{"role": "user", "content": "Name the capital of France."}]


# -- processes ---------------------------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0], utime [11], stime [12]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def worker_env(port: int) -> dict[str, str]:
    env = default_server_env(port, log_level="info")
    env.update(THREADS)
    return env


def launch_worker(task: str, port: int) -> ServerProcess:
    return launch_worker_with(task, port, ())


def launch_worker_with(task: str, port: int, extra: tuple[str, ...]) -> ServerProcess:
    args = ("--task", task, "--host", LOOPBACK, "--port", str(port), *extra)
    return launch("services.commands.worker", worker_env(port), port, args=args)


def health_status(address: str) -> int | None:
    """The worker's overall health status, or None when nothing answers there."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
        except grpc.RpcError:
            return None
        return int(reply.status)


def wait_serving(worker: ServerProcess, timeout: float = WORKER_START_S) -> None:
    """Until the worker's health service says SERVING (what ``services.commands.probe grpc://…`` asks)."""
    deadline = time.monotonic() + timeout
    while not grpc_serving(f"{LOOPBACK}:{worker.port}"):
        if worker.proc.poll() is not None:
            raise ServerStartError(worker.describe_failure("the worker exited before it was serving"))
        if time.monotonic() > deadline:
            raise ServerStartError(
                worker.describe_failure(f"the worker was not serving after {timeout:.0f} s")
            )
        time.sleep(0.25)


def port_clash(worker: ServerProcess) -> bool:
    text = worker.stderr_tail().lower()
    return worker.proc.poll() is not None and ("address already in use" in text or "failed to bind" in text)


@dataclass
class Topology:
    """The worker processes (by name), the gateway in front of them, and every process ever started here
    (so that all of them are stopped at the end, replaced ones included)."""

    workers: dict[str, ServerProcess] = field(default_factory=dict)
    gateway: ServerProcess | None = None
    started: list[ServerProcess] = field(default_factory=list)

    def address(self, name: str) -> str:
        return f"{LOOPBACK}:{self.workers[name].port}"

    def endpoints(self) -> str:
        by_task: dict[str, list[str]] = {}
        for name, task in WORKERS.items():
            by_task.setdefault(task, []).append(self.address(name))
        return ";".join(f"{task}={','.join(addresses)}" for task, addresses in by_task.items())

    def start_workers(self) -> None:
        for name, task in WORKERS.items():
            self.workers[name] = self._launch(task, free_port())
        for name, task in WORKERS.items():
            for attempt in range(3):  # another process may take a free port before the worker binds it
                try:
                    wait_serving(self.workers[name])
                    break
                except ServerStartError:
                    if attempt == 2 or not port_clash(self.workers[name]):
                        raise
                    self.workers[name] = self._launch(task, free_port())

    def _launch(self, task: str, port: int) -> ServerProcess:
        worker = launch_worker(task, port)
        self.started.append(worker)
        return worker

    def pid(self, name: str) -> int:
        return self.workers[name].proc.pid

    def kill(self, name: str) -> None:
        """SIGKILL: no draining, no goodbye to the gateway."""
        proc = self.workers[name].proc
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def restart(self, name: str) -> ServerProcess:
        """A new worker for the same task on the same port (not waited for)."""
        old = self.workers[name]
        if old.proc.poll() is None:
            self.kill(name)
        self.workers[name] = self._launch(WORKERS[name], old.port)
        return self.workers[name]

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (SIGKILL after a while)."""
        procs = ([self.gateway] if self.gateway is not None else []) + self.started[::-1]
        for server in procs:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in procs:
            server.stop(timeout=15.0, remove_logs=True)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    topo = Topology()
    try:
        try:
            topo.start_workers()
            env = {"MMSERVE_ENDPOINTS": topo.endpoints(), **THREADS}
            topo.gateway = start_server("services.commands.serve", env=env, timeout=GATEWAY_START_S)
        except ServerStartError as exc:
            pytest.fail(f"the distributed topology did not start:\n{exc}", pytrace=False)
        yield topo
    finally:
        topo.stop()


@pytest.fixture(scope="module")
def gateway(topology: Topology) -> ServerProcess:
    assert topology.gateway is not None
    return topology.gateway


@pytest.fixture(scope="module")
def http(gateway: ServerProcess) -> Iterator[httpx.Client]:
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)
    with httpx.Client(base_url=gateway.base_url, timeout=timeout) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(gateway: ServerProcess) -> Iterator[openai.OpenAI]:
    # No retries: a retried 5xx would hide exactly what these tests look for.
    client = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )
    try:
        yield client
    finally:
        client.close()


# -- requests ----------------------------------------------------------------------------------------------


def chat_body(max_tokens: int = 32, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": PARIS_QUESTION,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    body.update(extra)
    return body


def unshared_prompt(i: int, question: str) -> list[dict[str, str]]:
    """Messages whose first tokens no other request has: no replica has them cached, so the gateway
    places them by load (the chat template's default system prompt would be a prefix they all share)."""
    return [
        {"role": "system", "content": f"{i} {i} You answer briefly."},
        {"role": "user", "content": question},
    ]


def chat(http: httpx.Client, max_tokens: int = 32, **extra: Any) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json=chat_body(max_tokens, **extra))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def paris_answer(http: httpx.Client) -> str:
    answer = chat(http)
    content: str = answer["choices"][0]["message"]["content"]
    assert "Paris" in content, answer
    return content


def jpeg(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(getattr(samples, name)())[..., :3]).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def classify(http: httpx.Client, raw: bytes, top_k: int = 3, **form: str) -> httpx.Response:
    fields = {"top_k": str(top_k), **form}
    return http.post(
        "/v1/vision/classifications", files={"file": ("photo", raw, "application/octet-stream")}, data=fields
    )


def assert_cat(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == VISION_MODEL
    assert len(body["data"]) == 3
    assert {label["index"] for label in body["data"]} & CATS, body


def embed(http: httpx.Client, texts: list[str]) -> list[np.ndarray]:
    response = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == EMBED_MODEL
    assert [item["index"] for item in body["data"]] == list(range(len(texts)))
    return [np.asarray(item["embedding"], dtype=np.float32) for item in body["data"]]


def speak_and_transcribe(http: httpx.Client) -> str:
    """Speech from the synthesis worker, transcribed by the gateway's own recognizer."""
    speech = http.post(
        "/v1/audio/speech",
        json={
            "model": TTS_MODEL,
            "voice": "joe",
            "input": SPOKEN,
            "response_format": "wav",
        },
    )
    assert speech.status_code == 200, speech.text
    assert speech.headers["content-type"] == "audio/wav" and speech.content[:4] == b"RIFF"
    text = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("hello.wav", speech.content, "application/octet-stream")},
        data={"model": ASR_MODEL, "response_format": "json"},
    )
    assert text.status_code == 200, text.text
    transcript: str = text.json()["text"]
    assert wer(SPOKEN, transcript) <= MAX_SPOKEN_WER, transcript
    return transcript


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def one_bit_png(width: int, height: int) -> bytes:
    """A black 1-bit greyscale PNG built without holding its pixels (zlib shrinks the rows ~1000x)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    stream = zlib.compressobj(9)
    pixels = b"".join(stream.compress(row) for _ in range(height)) + stream.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


@dataclass
class StreamRecord:
    """What the client saw of one streamed chat completion, with monotonic timestamps."""

    status: int = 0
    content: str = ""
    first_content_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    error_at: float | None = None
    done: bool = False
    ended_at: float = 0.0


def read_stream(base_url: str, body: dict[str, Any]) -> StreamRecord:
    """POST a streamed chat completion and parse its server-sent events until ``[DONE]``."""
    record = StreamRecord()
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        record.status = response.status_code
        if response.status_code != 200:
            response.read()
            record.error = {"status": response.status_code, "body": response.text}
        else:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line.removeprefix("data: ")
                if payload == "[DONE]":
                    record.done = True
                    break
                event = json.loads(payload)
                if "error" in event:
                    record.error, record.error_at = event["error"], time.monotonic()
                    continue
                if event.get("usage"):
                    record.usage = event["usage"]
                for choice in event["choices"]:
                    if choice["delta"].get("content"):
                        if record.first_content_at is None:
                            record.first_content_at = time.monotonic()
                        record.content += choice["delta"]["content"]
                    if choice.get("finish_reason"):
                        record.finish_reason = choice["finish_reason"]
    record.ended_at = time.monotonic()
    return record


def assert_complete(record: StreamRecord, max_tokens: int) -> None:
    assert record.status == 200 and record.error is None, record
    assert record.done and record.finish_reason == "length" and record.content, record
    assert record.usage is not None and record.usage["completion_tokens"] == max_tokens, record


def cpu_of(topology: Topology, names: tuple[str, ...]) -> dict[str, float]:
    return {name: cpu_seconds(topology.pid(name)) for name in names}


def wait_idle(topology: Topology, names: tuple[str, ...], timeout: float) -> dict[str, float]:
    """Until every named worker uses at most IDLE_CPU_S over an IDLE_WINDOW_S window; the last window's
    CPU use per worker (fails the test at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_of(topology, names)
        time.sleep(IDLE_WINDOW_S)
        used = {name: cpu - before[name] for name, cpu in cpu_of(topology, names).items()}
        if all(v <= IDLE_CPU_S for v in used.values()):
            return used
        assert time.monotonic() < deadline, (
            f"workers still busy after {timeout:.0f} s: CPU s per window {used}"
        )


def generate_directly(address: str, max_tokens: int = 8) -> list[Any]:
    """A short greedy request straight to one chat worker over gRPC, bypassing the gateway."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    request = requests_to_proto(
        CHAT_MODEL, [GenerationRequest(f"direct-{time.monotonic_ns()}", [504] * 10, params)]
    )
    with grpc.insecure_channel(address) as channel:
        return list(llm_pb2_grpc.LLMStub(channel).Generate(request, timeout=120.0))


# -- every API through the workers ----------------------------------------------------------------------


def test_models_list_every_model_with_its_task(http: httpx.Client) -> None:
    expected = {spec.name: spec.task for spec in load_model_specs(DEFAULT_MODELS_CONFIG)}
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    cards = {card["id"]: card for card in response.json()["data"]}
    assert {name: card["task"] for name, card in cards.items()} == expected
    assert cards[CHAT_MODEL]["max_model_len"] == MAX_MODEL_LEN  # reported by the chat worker
    assert cards[EMBED_MODEL]["max_model_len"] == 256
    assert cards[TTS_MODEL]["voices"] == ["joe"]  # reported by the synthesis worker
    assert http.get("/ready").status_code == 200


def test_chat_completion(http: httpx.Client) -> None:
    answer = chat(http)
    assert answer["object"] == "chat.completion" and answer["model"] == CHAT_MODEL
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"], answer
    assert choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 32
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streamed_chat_with_the_sdk(http: httpx.Client, sdk: openai.OpenAI) -> None:
    expected = paris_answer(http)
    stream = sdk.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": PARIS_QUESTION[0]["content"]}],
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: list[str] = []
    finish, usage = None, None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert len([p for p in parts if p]) > 1, parts  # token by token, not one lump
    assert "".join(parts) == expected  # greedy: the same answer as the non-streamed one
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_completions(sdk: openai.OpenAI) -> None:
    result = sdk.completions.create(
        model=CHAT_MODEL, prompt=["The capital of France is", "1, 2, 3,"], max_tokens=8, temperature=0
    )
    assert [c.index for c in result.choices] == [0, 1]
    assert "Paris" in result.choices[0].text, result
    assert "4" in result.choices[1].text, result
    assert result.usage is not None and result.usage.completion_tokens <= 16


def test_embeddings_match_the_in_process_model(http: httpx.Client) -> None:
    texts = [
        "a cat is sitting on the sofa",
        "a kitten rests on a couch",
        "the stock market fell sharply today",
    ]
    remote = embed(http, texts)
    for vector in remote:
        assert vector.shape == (EMBED_DIMENSIONS,) and np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    cat, kitten, stocks = remote
    assert float(cat @ kitten) > float(cat @ stocks) + 0.2

    spec = next(s for s in load_model_specs(DEFAULT_MODELS_CONFIG) if s.name == EMBED_MODEL)
    local = EmbeddingPipeline(
        EmbeddingPipelineConfig(name=spec.name, source=spec.source, dtype=spec.dtype, device=spec.device)
    )
    try:
        for text, vector in zip(texts, remote, strict=True):
            (ids,) = local.tokenize([text])
            (expected,) = local.encode_batch([ids])
            expected = expected / np.linalg.norm(expected)
            np.testing.assert_allclose(vector, expected, atol=2e-5)
    finally:
        local.shutdown()


def test_vision_classifies_the_cat(http: httpx.Client) -> None:
    assert_cat(classify(http, jpeg("chelsea")))
    as_json = http.post(
        "/v1/vision/classifications",
        json={"image": base64.b64encode(jpeg("chelsea")).decode(), "model": VISION_MODEL, "top_k": 3},
    )
    assert_cat(as_json)


@pytest.mark.parametrize(("fmt", "rate"), [("wav", 22_050), ("opus", 24_000)])
def test_the_synthesis_worker_states_the_rate_of_the_audio_it_sends(
    topology: Topology, http: httpx.Client, fmt: str, rate: int
) -> None:
    """Opus takes only some rates: the worker's reply and the gateway's X-Sample-Rate name the one sent."""
    request = tts_pb2.SynthesizeRequest(model=TTS_MODEL, input="Hello there.", speed=1.0, response_format=fmt)
    with grpc.insecure_channel(topology.address("tts")) as channel:
        reply = tts_pb2_grpc.SpeechSynthesisStub(channel).Synthesize(request, timeout=60.0)
    assert reply.sample_rate == rate == sf.info(io.BytesIO(reply.audio)).samplerate
    spoken = http.post(
        "/v1/audio/speech", json={"model": TTS_MODEL, "input": "Hello.", "response_format": fmt}
    )
    assert spoken.status_code == 200 and spoken.headers["x-sample-rate"] == str(rate)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": PARIS_QUESTION, "max_tokens": 4}),
        ("/v1/completions", {"prompt": "hello", "max_tokens": 4}),
        ("/v1/embeddings", {"input": "hello"}),
        ("/v1/vision/classifications", {"image": "aGVsbG8="}),
        ("/v1/audio/speech", {"input": "hello", "voice": "joe"}),
    ],
)
def test_unknown_model_is_404(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    error = error_of(http.post(path, json={"model": "no-such-model", **body}), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model"), error
    assert "no-such-model" in error["message"]


def test_worker_errors_keep_their_status(http: httpx.Client) -> None:
    # decoded by the vision worker: its InvalidRequest comes back as a 400 naming the parameter
    error = error_of(classify(http, b"this is not an image"), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", "image"), error
    error = error_of(classify(http, jpeg("chelsea")[:2000]), 400)
    assert error["param"] == "image" and "truncated" in error["message"], error

    # a decompression bomb: the worker refuses it from its header, before decoding (413)
    bomb = one_bit_png(8000, 8000)
    assert len(bomb) < 100_000
    error = error_of(classify(http, bomb), 413)
    assert (error["type"], error["param"]) == ("request_too_large", "image"), error
    assert str(MAX_PIXELS) in error["message"], error

    # prompt + max_tokens past the context window of the worker's model
    response = http.post("/v1/chat/completions", json=chat_body(MAX_MODEL_LEN + 100))
    error = error_of(response, 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages"), error
    assert str(MAX_MODEL_LEN) in error["message"]

    # an embedding input past the model's window
    response = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "word " * 400})
    assert error_of(response, 400)["type"] == "invalid_request_error"

    assert_cat(classify(http, jpeg("chelsea")))  # the worker still answers


# -- the only vision worker goes away, and comes back ---------------------------------------------------


def test_vision_worker_down_then_back(topology: Topology, http: httpx.Client) -> None:
    cat = jpeg("chelsea")
    assert_cat(classify(http, cat))
    topology.kill("vision")

    error = error_of(classify(http, cat), 503)
    assert error["type"] == "service_unavailable_error", error
    assert "vision" in error["message"] and "unavailable" in error["message"], error
    error = error_of(http.post("/v1/vision/embeddings", json={"image": base64.b64encode(cat).decode()}), 503)
    assert error["type"] == "service_unavailable_error", error

    # every other service still answers: chat and embeddings (workers), speech (worker + gateway)
    paris_answer(http)
    assert len(embed(http, ["still here"])) == 1
    speak_and_transcribe(http)
    assert http.get("/health").status_code == 200

    worker = topology.restart("vision")
    wait_serving(worker)
    deadline = time.monotonic() + 30.0
    while True:
        response = classify(http, cat)
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text  # until the gateway reconnects: 503, nothing else
        assert time.monotonic() < deadline, (
            f"vision still unavailable 30 s after its worker came back: {response.text}"
        )
        time.sleep(0.25)
    assert_cat(response)


# -- a deadline on calls to workers --------------------------------------------------------------------


def test_deadline_exceeded_is_504_and_the_worker_drops_the_request(
    topology: Topology, http: httpx.Client, tmp_path: Path
) -> None:
    # A second gateway on the same chat workers, serving only the chat model, whose calls may last 0.5 s.
    spec = next(s for s in load_model_specs(DEFAULT_MODELS_CONFIG) if s.name == CHAT_MODEL)
    config = tmp_path / "models.toml"
    config.write_text(f'[[models]]\nname = "{spec.name}"\ntask = "chat"\nsource = "{spec.source}"\n')
    env = {
        "MMSERVE_ENDPOINTS": f"chat={topology.address('chat-a')},{topology.address('chat-b')}",
        "MMSERVE_MODELS_CONFIG": str(config),
        "MMSERVE_RPC_TIMEOUT_S": "0.5",
        **THREADS,
    }
    hasty = start_server("services.commands.serve", env=env, timeout=120.0)
    try:
        with httpx.Client(base_url=hasty.base_url, timeout=REQUEST_TIMEOUT_S) as client:
            started = time.monotonic()
            # 2000 tokens: a minute or more here, so a worker still generating it could not look idle
            response = client.post("/v1/chat/completions", json=chat_body(2000, ignore_eos=True))
            elapsed = time.monotonic() - started
            error = error_of(response, 504)
            assert (error["type"], error["code"]) == ("timeout_error", "deadline_exceeded"), error
            assert "chat" in error["message"], error
            assert elapsed < 30.0, elapsed
        # The deadline cancelled the call, and with it the request in the worker's engine (checked while
        # this gateway still runs: its going away would close its calls too).
        wait_idle(topology, CHAT_REPLICAS, timeout=15.0)
    finally:
        hasty.stop(remove_logs=True)
    for _ in CHAT_REPLICAS:  # both replicas (round robin) still serve through the normal gateway
        paris_answer(http)


# -- a client that goes away ----------------------------------------------------------------------------


def test_client_disconnect_stops_the_worker(topology: Topology, http: httpx.Client) -> None:
    wait_idle(topology, CHAT_REPLICAS, timeout=30.0)
    max_tokens = 7000  # over 30 s of decoding even at 200 tokens/s; the chat model's context is 8192
    body = chat_body(
        max_tokens,
        messages=[{"role": "user", "content": "Write a very long story."}],
        ignore_eos=True,
        stream=True,
    )
    before = cpu_of(topology, CHAT_REPLICAS)
    chunks = 0
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = time.monotonic()
        for line in lines:
            if not line.startswith("data: {"):
                continue
            if any(choice["delta"].get("content") for choice in json.loads(line[6:])["choices"]):
                chunks += 1
                if chunks == 1:
                    first = time.monotonic()
                if chunks >= 20 and time.monotonic() - first > 2.0:
                    break
        rate = (chunks - 1) / (time.monotonic() - first)
        during = cpu_of(topology, CHAT_REPLICAS)
    # leaving the block closed the connection, thousands of tokens before the end
    busy = [name for name in CHAT_REPLICAS if during[name] - before[name] > 0.2]
    assert len(busy) == 1, (before, during)
    left_s = (max_tokens - chunks) / rate
    if left_s < 4 * IDLE_WINDOW_S:
        pytest.skip(f"at {rate:.0f} tokens/s the request would end by itself too soon to tell")

    # Idle in well under the time the request still had to run: it was stopped, not finished.
    wait_idle(topology, CHAT_REPLICAS, timeout=min(15.0, left_s / 2))
    outputs = generate_directly(topology.address(busy[0]))
    assert outputs and outputs[-1].finish_reason == "length" and outputs[-1].num_output_tokens == 8


# -- a chat replica dies with requests in flight --------------------------------------------------------


def test_chat_replica_failover(topology: Topology, gateway: ServerProcess) -> None:
    wait_idle(topology, CHAT_REPLICAS, timeout=30.0)
    victim, survivor = CHAT_REPLICAS
    max_tokens, count = 40, 12
    bodies = [
        chat_body(
            max_tokens,
            messages=unshared_prompt(i, "Write a poem about the sea."),
            ignore_eos=True,
            stream=True,
            stream_options={"include_usage": True},
        )
        for i in range(count)
    ]
    victim_pid = topology.pid(victim)
    idle_cpu = cpu_seconds(victim_pid)
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(read_stream, gateway.base_url, body) for body in bodies]
        # Kill the replica as soon as it works on its share of the requests (prompts no replica has
        # cached are spread by load: half of them).
        deadline = time.monotonic() + 60.0
        while cpu_seconds(victim_pid) - idle_cpu < 0.02:
            assert time.monotonic() < deadline, "the replica never started on its requests"
            time.sleep(0.005)
        topology.kill(victim)
        killed_at = time.monotonic()
        records = [f.result() for f in futures]

    # A chunk the gateway already had from the killed replica may reach the client a little after the kill.
    grace = 3.0
    summary = [
        (
            r.status,
            r.finish_reason,
            None if r.first_content_at is None else round(r.first_content_at - killed_at, 2),
            round(r.ended_at - killed_at, 2),
            r.error,
        )
        for r in records
    ]
    assert sum(r.ended_at > killed_at for r in records) >= count // 2, summary  # in flight at the kill
    assert all(r.status == 200 for r in records), summary  # none answered with a failure
    failed = [r for r in records if r.error is not None]
    for record in failed:  # only a stream the killed replica had already started may break
        assert record.first_content_at is not None and record.content, summary
        assert record.error_at is not None and record.first_content_at < record.error_at, summary
        assert record.first_content_at <= killed_at + grace, summary
        error = record.error or {}
        assert error["type"] == "service_unavailable_error" and "chat" in error["message"], summary
        assert record.done, summary
    for record in records:
        if record.error is None:
            assert_complete(record, max_tokens)
    assert len(failed) <= count // 2, summary  # the killed replica had half of them
    waiting = [r for r in records if r.first_content_at is None or r.first_content_at > killed_at]
    assert [r for r in waiting if r.error is None], summary  # requests with nothing yet came through whole

    # Everything now goes to the survivor.
    with ThreadPoolExecutor(max_workers=6) as pool:
        after = list(pool.map(lambda body: read_stream(gateway.base_url, body), bodies[:6]))
    for record in after:
        assert_complete(record, max_tokens)
    assert topology.workers[survivor].proc.poll() is None


# -- a chat replica restarts ------------------------------------------------------------------------------


def _restart_and_catch_loading(topology: Topology, name: str) -> ServerProcess:
    """Restart the replica and return as soon as it listens but is still loading (NOT_SERVING)."""
    worker = topology.restart(name)
    address = topology.address(name)
    deadline = time.monotonic() + WORKER_START_S
    while (status := health_status(address)) != health_pb2.HealthCheckResponse.NOT_SERVING:
        if status == health_pb2.HealthCheckResponse.SERVING:
            pytest.skip("the restarted replica loaded before the test could call it")
        assert worker.proc.poll() is None, worker.describe_failure("the restarted worker exited")
        assert time.monotonic() < deadline, "the restarted worker never listened"
        time.sleep(0.02)
    return worker


def test_call_to_a_loading_replica_moves_to_a_serving_one(topology: Topology) -> None:
    victim, survivor = CHAT_REPLICAS
    assert grpc_serving(topology.address(survivor))
    _restart_and_catch_loading(topology, victim)
    params = SamplingParams(max_tokens=4, temperature=0.0)
    request = requests_to_proto(CHAT_MODEL, [GenerationRequest("loading-replica", [504] * 10, params)])

    async def generate() -> list[Any]:
        # the gateway's own client for the chat task, the loading replica first in its turn
        channels = Channels("chat", [topology.address(victim), topology.address(survivor)], 60.0)
        try:
            return [m async for m in channels.stream(llm_pb2_grpc.LLMStub, "Generate", request)]
        finally:
            await channels.close()

    try:
        outputs = asyncio.run(generate())
    finally:
        still_loading = health_status(topology.address(victim)) == health_pb2.HealthCheckResponse.NOT_SERVING
    if not still_loading:
        pytest.skip("the restarted replica finished loading during the call")
    assert outputs and outputs[-1].finish_reason == "length"


def test_restarted_replica_is_used_again(topology: Topology, gateway: ServerProcess) -> None:
    victim, _ = CHAT_REPLICAS
    worker = topology.workers[victim]
    if worker.proc.poll() is not None or health_status(topology.address(victim)) is None:
        worker = topology.restart(victim)
    wait_serving(worker)
    wait_idle(topology, CHAT_REPLICAS, timeout=30.0)
    before = cpu_seconds(worker.proc.pid)
    for i in range(10):  # new prefixes on idle replicas alternate, once the gateway has reconnected to it
        messages = unshared_prompt(100 + i, "What is the capital of France?")
        body = chat_body(
            16, messages=messages, ignore_eos=True, stream=True, stream_options={"include_usage": True}
        )
        assert_complete(read_stream(gateway.base_url, body), 16)
        if cpu_seconds(worker.proc.pid) - before > 0.05:
            break
    else:
        pytest.fail("the gateway did not send the restarted replica any of 10 requests")


# -- chats routed by their cached prefix -------------------------------------------------------------------


def test_turns_of_a_chat_find_their_prefix_cached_on_the_replica_they_reach(
    topology: Topology, gateway: ServerProcess
) -> None:
    """Four conversations, each with its own long system prompt, take three turns each at once. The
    gateway sends every turn to the replica that served the turns before, so each later turn finds its
    whole earlier conversation in that replica's prefix cache (round-robin would find none half the time)."""
    wait_idle(topology, CHAT_REPLICAS, timeout=30.0)
    facts = " ".join(f"Fact {k}: the archive's shelf {k} holds maps of the river delta." for k in range(40))

    def conversation(i: int) -> list[float]:
        messages = [{"role": "system", "content": f"Assistant {i}. {facts}"}]
        shares = []
        with httpx.Client(base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S) as client:
            for turn in range(3):
                messages.append({"role": "user", "content": f"Question {turn}: which shelf holds map {i}?"})
                response = client.post("/v1/chat/completions", json=chat_body(12, messages=messages))
                assert response.status_code == 200, response.text
                answer = response.json()
                usage = answer["usage"]
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                shares.append(cached / usage["prompt_tokens"])
                messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
        return shares

    with ThreadPoolExecutor(max_workers=4) as pool:
        shares = list(pool.map(conversation, range(4)))
    later = [share for chat in shares for share in chat[1:]]
    assert min(later) >= 0.8, shares


# -- cores -------------------------------------------------------------------------------------------------


def test_a_worker_given_cores_runs_every_thread_on_them() -> None:
    """``worker --cpus``, what the topology gives each of several chat replicas: every thread of the worker
    (those its imports started included) may run on the given core only, and it serves."""
    core = max(os.sched_getaffinity(0))
    worker = launch_worker_with("embedding", free_port(), ("--cpus", str(core)))
    try:
        wait_serving(worker)
        tasks = Path(f"/proc/{worker.proc.pid}/task")
        allowed = {}
        for task in tasks.iterdir():
            status = (task / "status").read_text()
            allowed[task.name] = next(
                line.split(":", 1)[1].strip()
                for line in status.splitlines()
                if line.startswith("Cpus_allowed_list")
            )
        assert len(allowed) > 1 and set(allowed.values()) == {str(core)}, allowed
    finally:
        worker.stop(timeout=15.0, remove_logs=True)


def test_a_worker_refuses_cores_it_may_not_use() -> None:
    unusable = max(os.sched_getaffinity(0)) + 1
    worker = launch_worker_with("embedding", free_port(), ("--cpus", f"0,{unusable}"))
    try:
        assert worker.proc.wait(timeout=120) == 2
        assert f"CPUs {unusable} are not available to this process" in worker.stderr_tail()
    finally:
        worker.stop(timeout=15.0, remove_logs=True)
    garbled = launch_worker_with("embedding", free_port(), ("--cpus", "3-1"))
    try:
        assert garbled.proc.wait(timeout=120) == 2
        assert "not a CPU list: '3-1' (3-1 runs backwards)" in garbled.stderr_tail()
    finally:
        garbled.stop(timeout=15.0, remove_logs=True)
