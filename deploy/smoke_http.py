"""The gateway's HTTP API as deploy/compose_smoke.py calls it, with the standard library only (urllib), and
the media it sends: a PNG drawn here, and a WAV (the speech step's output, or silence before it has run).
"""

from __future__ import annotations

import io
import json
import struct
import urllib.error
import urllib.request
import uuid
import wave
import zlib
from base64 import b64encode
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        """The status and the start of the body, for a failed step's message."""
        text = self.body[:300].decode("utf-8", "replace")
        return f"HTTP {self.status}: {text}"


@dataclass(frozen=True)
class Gateway:
    base: str  # http://127.0.0.1:8000: the smoke test only ever calls the loopback address
    timeout: float = 300.0  # a first request on a busy 2-core host can take minutes

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> Reply:
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return Reply(answer.status, answer.read(), answer.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.read(), error.headers.get("Content-Type", ""))

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post_json(self, path: str, payload: dict[str, Any]) -> Reply:
        return self.request("POST", path, json.dumps(payload).encode(), "application/json")

    def post_form(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> Reply:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n')
        body = "".join(parts).encode()
        for name, (filename, data, mime) in files.items():
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {mime}\r\n\r\n"
            )
            body += head.encode() + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body, f"multipart/form-data; boundary={boundary}")


def png(width: int = 96, height: int = 96) -> bytes:
    """An RGB gradient with a disc in the middle: any valid image will do for a classification."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type of the row: none
        for x in range(width):
            inside = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (width / 4) ** 2
            rows += bytes((255, 140, 0) if inside else (x * 255 // width, y * 255 // height, 128))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{b64encode(data).decode()}"


def silence(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(b"\0\0" * int(seconds * rate))
    return out.getvalue()
