"""One request per task through the gateway, and what makes its answer right: the calls
deploy/compose_smoke.py sends after `up`, after scaling chat, and with a worker stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smoke_http import Gateway, Reply, data_url, png, silence

# The compose service of each worker task (compose.yaml).
SERVICE_TASK = {"llm": "chat", "embedding": "embedding", "vision": "vision", "asr": "asr", "tts": "tts",
                "retrieval": "retrieval"}  # fmt: skip
DOCUMENT = "The compose smoke test stores this sentence about a lighthouse keeper named Ada."


class StepFailed(Exception):
    """A step's request answered something other than what the step expects."""


@dataclass
class Session:
    """What the requests share: the gateway, the served models by task, and what earlier steps made."""

    gateway: Gateway
    models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    collection: str = "smoke"
    wav: bytes | None = None  # the speech step's output, transcribed by the transcription step

    def model(self, task: str) -> dict[str, Any]:
        if not self.models.get(task):
            raise StepFailed(f"/v1/models lists no {task} model")
        return self.models[task][0]


def expect(reply: Reply, *statuses: int) -> Any:
    if reply.status not in statuses:
        raise StepFailed(reply.describe())
    return reply.json() if "json" in reply.content_type else reply.body


def load_models(s: Session) -> str:
    listed = expect(s.gateway.get("/v1/models"), 200)["data"]
    s.models = {}
    for model in listed:
        s.models.setdefault(model.get("task", "?"), []).append(model)
    return ", ".join(f"{task}: {' '.join(m['id'] for m in ms)}" for task, ms in sorted(s.models.items()))


def chat(s: Session, system: str | None = None) -> Reply:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": "What is the capital of France?"})
    payload = {"model": s.model("chat")["id"], "messages": messages, "max_tokens": 12, "temperature": 0}
    return s.gateway.post_json("/v1/chat/completions", payload)


def check_chat(reply: Reply) -> str:
    content = expect(reply, 200)["choices"][0]["message"]["content"]
    if not isinstance(content, str) or not content.strip():
        raise StepFailed(f"empty completion: {reply.describe()}")
    return f"{content.strip()[:60]!r}"


def embeddings(s: Session) -> Reply:
    payload = {"model": s.model("embedding")["id"], "input": ["a cat on the sofa", "a kitten on a couch"]}
    return s.gateway.post_json("/v1/embeddings", payload)


def check_embeddings(reply: Reply) -> str:
    data = expect(reply, 200)["data"]
    sizes = {len(item["embedding"]) for item in data}
    if len(data) != 2 or not all(sizes):
        raise StepFailed(f"expected 2 vectors: {reply.describe()}")
    return f"2 vectors of {sizes.pop()} floats"


def vision(s: Session) -> Reply:
    payload = {"model": s.model("vision")["id"], "image": data_url(png(), "image/png"), "top_k": 3}
    return s.gateway.post_json("/v1/vision/classifications", payload)


def check_vision(reply: Reply) -> str:
    labels = [item["label"] for item in expect(reply, 200)["data"]]
    if len(labels) != 3:
        raise StepFailed(f"expected top 3 labels: {reply.describe()}")
    return f"top 3: {', '.join(labels)}"


def speech(s: Session) -> Reply:
    model = s.model("tts")
    voice = (model.get("voices") or [""])[0]
    payload = {"model": model["id"], "input": "Hello from the compose smoke test.", "voice": voice,
               "response_format": "wav"}  # fmt: skip
    return s.gateway.post_json("/v1/audio/speech", payload)


def check_speech(reply: Reply) -> bytes:
    audio = expect(reply, 200)
    if not isinstance(audio, bytes) or not audio.startswith(b"RIFF"):
        raise StepFailed(f"not a WAV: {reply.describe()}")
    return audio


def transcription(s: Session) -> Reply:
    files = {"file": ("speech.wav", s.wav or silence(), "audio/wav")}
    return s.gateway.post_form("/v1/audio/transcriptions", {"model": s.model("asr")["id"]}, files)


def check_transcription(reply: Reply) -> str:
    text = expect(reply, 200).get("text")
    if not isinstance(text, str):
        raise StepFailed(f"no text: {reply.describe()}")
    return f"{text.strip()[:60]!r}"


def create_collection(s: Session) -> str:
    expect(s.gateway.post_json("/v1/collections", {"name": s.collection}), 200, 201)
    return f"collection {s.collection!r}"


def add_document(s: Session) -> str:
    documents = [{"id": "ada", "text": DOCUMENT}, {"id": "paris", "text": "Paris is the capital of France."}]
    reply = s.gateway.post_json(f"/v1/collections/{s.collection}/documents", {"documents": documents})
    answer = expect(reply, 200, 201)
    return f"ids {answer['ids']}, {answer.get('chunks')} chunks"


def query(s: Session) -> Reply:
    payload = {"collection": s.collection, "query": "who keeps the lighthouse?", "top_k": 2}
    return s.gateway.post_json("/v1/retrieval/query", payload)


def check_query(reply: Reply) -> str:
    results = expect(reply, 200)["results"]
    if not results:
        raise StepFailed(f"no results: {reply.describe()}")
    first = results[0]["document_id"]
    if first != "ada":
        raise StepFailed(f"the lighthouse document is not first: {reply.describe()}")
    return f"{len(results)} results, first {first!r} (score {results[0]['score']:.3f})"


# Per task: the request, and the check of a 200 answer (each returns a line for the report).
CALLS: dict[str, tuple[Callable[[Session], Reply], Callable[[Reply], Any]]] = {
    "chat": (chat, check_chat),
    "embedding": (embeddings, check_embeddings),
    "vision": (vision, check_vision),
    "tts": (speech, lambda reply: f"{len(check_speech(reply))} bytes of WAV"),
    "asr": (transcription, check_transcription),
    "retrieval": (query, check_query),
}
