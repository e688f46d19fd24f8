"""The browser playground at ``/``, driven in a real headless Chromium by Playwright against a real
``services.commands.serve`` process on loopback with the packaged default models.

Chromium comes from the system (Debian's ``chromium`` package, which ``make test`` installs when it can);
Playwright only drives it (``playwright install`` is never needed). Where no Chromium binary exists the
tests skip, saying so.

The page forbids inline and evaluated scripts (its Content-Security-Policy), so every probe below passes
Playwright a function (``"() => ..."``), which it runs through the DevTools protocol, never a bare
expression, which it would have to ``eval``.

``MMSERVE_PLAYGROUND_SCREENSHOT=docs/playground.png`` makes the chat-and-image test save a 1280×800
screenshot of the page at its end (the one in the README)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

from tests.helpers.server import LOOPBACK

try:
    from playwright.sync_api import (
        Browser,
        ConsoleMessage,
        Page,
        Playwright,
        Request,
        Route,
        ViewportSize,
        sync_playwright,
    )
except ImportError:  # the dev extra pins it; without it these tests cannot run at all
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)

# Generous: on a loaded 2-core machine a short generation can take tens of seconds.
TIMEOUT_MS = 180_000
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
SENTENCE = "The quick brown fox jumps over the lazy dog."
SCREENSHOT = os.environ.get("MMSERVE_PLAYGROUND_SCREENSHOT")


def chromium_binary() -> str | None:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch_args() -> list[str]:
    # Chromium's sandbox refuses to run as root (containers, CI); as any other user it stays on.
    return ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if chromium_binary() is None:
        pytest.skip(
            "no Chromium binary: neither `chromium` on PATH nor /usr/bin/chromium "
            "(`apt-get install chromium`, or `make browser` as root)"
        )
    with sync_playwright() as driver:
        yield driver


def launch(driver: Playwright, *extra_args: str) -> Browser:
    binary = chromium_binary()
    assert binary is not None
    return driver.chromium.launch(executable_path=binary, args=[*launch_args(), *extra_args])


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = launch(playwright)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class Session:
    """A loaded playground page and what it did: console errors, uncaught exceptions, every request."""

    page: Page
    console_errors: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def open_playground(
    browser: Browser, base_url: str, before_load: Callable[[Page], None] | None = None, **context: Any
) -> Session:
    ctx = browser.new_context(viewport=VIEWPORT, **context)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    session = Session(page)
    page.on("console", lambda m: session.console_errors.append(m) if m.type == "error" else None)
    page.on("pageerror", lambda exc: session.page_errors.append(str(exc)))
    page.on("request", lambda r: session.requests.append(r.url))
    if before_load:
        before_load(page)
    page.goto(f"{base_url}/")
    # app.js marks the body once /v1/models has filled the model pickers.
    page.wait_for_selector("body[data-ready=true]", state="attached")
    return session


@pytest.fixture
def session(browser: Browser, base_url: str) -> Iterator[Session]:
    s = open_playground(browser, base_url)
    try:
        yield s
    finally:
        s.page.context.close()


@pytest.fixture(scope="module")
def cat_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's photograph of Chelsea the cat, as a JPEG file."""
    path = tmp_path_factory.mktemp("images") / "chelsea.jpg"
    Image.fromarray(np.asarray(samples.chelsea())).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def speech_wav(http: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE spoken by the served Piper voice, as a WAV file."""
    response = http.post("/v1/audio/speech", json={"input": SENTENCE, "response_format": "wav"})
    assert response.status_code == 200, response.text
    path = tmp_path_factory.mktemp("audio") / "fox.wav"
    path.write_bytes(response.content)
    return path


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("blob", "data"):
        return is_local(url.split(":", 1)[1]) if parts.scheme == "blob" else True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in (LOOPBACK, "localhost", "::1")


def metrics_missing(http: httpx.Client) -> bool:
    return http.get("/metrics").status_code == 404


def unexpected_console_errors(session: Session, tolerate_metrics_404: bool) -> list[str]:
    """Console errors, less the one the page is designed to survive: the browser's own "Failed to load
    resource ... 404" line for GET /metrics on a gateway that does not expose metrics."""
    errors = []
    for message in session.console_errors:
        url = message.location.get("url", "")
        if tolerate_metrics_404 and urlsplit(url).path == "/metrics" and "404" in message.text:
            continue
        errors.append(f"{message.text} ({url})")
    return errors


# -- the page and its assets ---------------------------------------------------------------------------


def test_page_and_assets_load_without_errors_or_outside_requests(
    session: Session, base_url: str, http: httpx.Client
) -> None:
    page = session.page
    assert page.title() == "mmserve playground"
    html = http.get("/").text
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    assert {"/static/app.js", "/static/style.css"} <= set(assets), assets
    for asset in assets:
        assert f"{base_url}{asset}" in session.requests, f"{asset} was not requested: {session.requests}"
        response = http.get(asset)
        assert response.status_code == 200, (asset, response.status_code)
    # The stylesheet applied and the script ran: the model pickers are filled from /v1/models.
    assert page.eval_on_selector("#chat-log", "e => getComputedStyle(e).overflowY") == "auto"
    models = http.get("/v1/models").json()["data"]
    for select, task in (("#chat-model", "chat"), ("#vision-model", "vision"), ("#tts-model", "tts")):
        options = page.eval_on_selector_all(f"{select} option", "os => os.map(o => o.value)")
        assert options == [m["id"] for m in models if m["task"] == task], (select, options)
    assert page.eval_on_selector_all("#tts-voice option", "os => os.length") >= 1
    # One metrics poll has answered either way (numbers, or "metrics unavailable").
    page.wait_for_function("() => document.getElementById('stat-note').textContent !== 'connecting…'")
    # Every tab opens.
    for tab in ("asr", "tts", "rag", "vision"):
        page.click(f"#tab-{tab}")
        assert page.is_visible(f"#panel-{tab}")
        assert page.get_attribute(f"#tab-{tab}", "aria-selected") == "true"
    page.wait_for_timeout(300)  # a late error of the collections list would land here

    assert session.page_errors == []
    assert unexpected_console_errors(session, tolerate_metrics_404=metrics_missing(http)) == []
    outside = [url for url in session.requests if not is_local(url)]
    assert outside == [], f"requests left loopback: {outside}"


def test_the_page_is_not_in_the_openapi_schema(http: httpx.Client) -> None:
    paths = http.get("/schema/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith("/static")]
    page = http.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert http.get("/static/missing.js").status_code == 404


# -- chat and image classification --------------------------------------------------------------------

WATCH_ASSISTANT = """() => {
  window.__assistantUpdates = [];
  const log = document.getElementById("chat-log");
  new MutationObserver((records) => {
    for (const record of records) {
      const el = record.target.nodeType === 1 ? record.target : record.target.parentElement;
      if (!el || !el.classList.contains("assistant")) continue;
      for (const node of record.addedNodes) {
        if (node.nodeType === 3) window.__assistantUpdates.push([node.textContent, performance.now()]);
      }
    }
  }).observe(log, { subtree: true, childList: true, characterData: true });
}"""


def test_chat_streams_and_an_image_is_classified(
    browser: Browser, base_url: str, cat_jpeg: Path, http: httpx.Client
) -> None:
    s = open_playground(browser, base_url)
    page = s.page
    try:
        # Chat: the answer grows in the page as server-sent events arrive.
        page.evaluate(WATCH_ASSISTANT)
        page.fill("#chat-max-tokens", "48")
        page.fill("#chat-temperature", "0")
        page.fill("#chat-input", "Write a haiku about the sea.")
        page.click("#chat-send")
        page.wait_for_selector(".msg.assistant")
        page.wait_for_function(
            "() => !document.querySelector('.msg.assistant.streaming')"
            " && !document.getElementById('chat-send').disabled"
        )
        assert not page.is_visible("#chat-error"), page.inner_text("#chat-error")
        answer = page.inner_text(".msg.assistant").strip()
        assert answer, "the assistant's answer is empty"
        updates: list[list[Any]] = page.evaluate("() => window.__assistantUpdates")
        texts = [text for text, _ in updates if text]
        assert len(set(texts)) > 1, f"the answer arrived in one piece, not streamed: {updates}"
        assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts  # it only grew
        assert texts[-1].strip() == answer
        assert updates[-1][1] > updates[0][1]  # over time, not in one task
        assert "completion tokens" in page.inner_text("#chat-usage")  # stream_options.include_usage

        # Image: upload the photograph, get labels with scores.
        page.click("#tab-vision")
        page.set_input_files("#image-file", str(cat_jpeg))
        assert page.is_visible("#image-preview")
        page.click("#vision-submit")
        page.wait_for_selector("#vision-results li")
        assert not page.is_visible("#vision-error"), page.inner_text("#vision-error")
        labels = page.eval_on_selector_all("#vision-results .label", "ls => ls.map(l => l.textContent)")
        scores = page.eval_on_selector_all("#vision-results .score", "ss => ss.map(s => s.textContent)")
        assert len(labels) == len(scores) == 5, (labels, scores)
        assert any("cat" in label.lower() for label in labels), labels
        assert all(re.fullmatch(r"\d+\.\d %", score) for score in scores), scores

        assert s.page_errors == []
        assert unexpected_console_errors(s, tolerate_metrics_404=metrics_missing(http)) == []
        if SCREENSHOT:
            page.screenshot(path=SCREENSHOT)
    finally:
        page.context.close()


# -- speech --------------------------------------------------------------------------------------------

AUDIO_READY = """(id) => {
  const audio = document.getElementById(id);
  return audio.src.startsWith("blob:") && audio.duration > 0;
}"""
TRANSCRIBED = """() => {
  const text = document.getElementById("asr-transcript").textContent;
  return (text && text !== "…") || !document.getElementById("asr-error").hidden;
}"""


def test_text_to_speech_fills_the_audio_player(session: Session) -> None:
    page = session.page
    page.click("#tab-tts")
    page.fill("#tts-input", "Hello from the playground.")
    page.click("#tts-submit")
    page.wait_for_function(AUDIO_READY, arg="tts-audio")
    assert not page.is_visible("#tts-error"), page.inner_text("#tts-error")
    duration = page.eval_on_selector("#tts-audio", "a => a.duration")
    assert 0.5 < duration < 10, duration
    assert page.get_attribute("#tts-download", "href") == page.eval_on_selector("#tts-audio", "a => a.src")
    assert session.page_errors == []


def test_an_uploaded_wav_is_transcribed(session: Session, speech_wav: Path) -> None:
    page = session.page
    page.click("#tab-asr")
    # This browser has no microphone (or may not use it): recording fails politely, uploading still works.
    page.click("#mic-record")
    page.wait_for_selector("#asr-error:not([hidden])")
    assert page.inner_text("#asr-error").startswith("microphone:")
    assert page.get_attribute("#mic-record", "aria-pressed") == "false"
    page.set_input_files("#audio-file", str(speech_wav))
    page.click("#asr-submit")
    page.wait_for_function(TRANSCRIBED)
    assert not page.is_visible("#asr-error"), page.inner_text("#asr-error")
    assert "fox" in page.inner_text("#asr-transcript").lower()


def test_the_microphone_is_recorded_as_wav_and_transcribed(
    playwright: Playwright, base_url: str, speech_wav: Path
) -> None:
    """Chromium's fake capture device plays the WAV file as the microphone; the page records it with
    MediaRecorder, re-encodes it as 16-bit PCM WAV in JavaScript and uploads that."""
    browser = launch(
        playwright,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech_wav}",
    )
    try:
        s = open_playground(browser, base_url, permissions=["microphone"])
        page = s.page
        page.click("#tab-asr")
        page.click("#mic-record")
        page.wait_for_selector("#mic-record[aria-pressed=true]")
        page.wait_for_timeout(3500)  # the sentence lasts about 2.5 s
        uploads: list[bytes] = []

        def keep_upload(route: Route, request: Request) -> None:
            uploads.append(request.post_data_buffer or b"")
            route.continue_()

        page.route("**/v1/audio/transcriptions", keep_upload)
        page.click("#mic-record")
        page.wait_for_function(TRANSCRIBED)
        assert not page.is_visible("#asr-error"), page.inner_text("#asr-error")
        assert "fox" in page.inner_text("#asr-transcript").lower()
        page.wait_for_function(AUDIO_READY, arg="asr-audio")  # the recording is playable in the page
        # What was uploaded: a mono 16-bit PCM WAV at 16 kHz, in the multipart field `file`.
        (body,) = uploads
        assert b'name="file"; filename="recording.wav"' in body
        wav = body[body.index(b"RIFF") :]
        fmt, channels, rate, bits = struct.unpack_from("<HHI6xH", wav, 20)
        assert (wav[8:12], fmt, channels, rate, bits) == (b"WAVE", 1, 1, 16000, 16), wav[:44]
        data_bytes = struct.unpack_from("<I", wav, 40)[0]
        assert data_bytes > 2 * 16000 * 2, data_bytes  # more than two seconds
        assert s.page_errors == []
    finally:
        browser.close()


# -- collections and RAG -------------------------------------------------------------------------------


@pytest.fixture
def collection_name(http: httpx.Client) -> Iterator[str]:
    name = f"playground-{uuid.uuid4().hex[:8]}"
    yield name
    http.delete(f"/v1/collections/{name}")


def test_a_collection_is_created_filled_and_asked(session: Session, collection_name: str) -> None:
    page = session.page
    page.click("#tab-rag")
    page.fill("#collection-name", collection_name)
    page.click("#collection-create")
    page.wait_for_function(
        "(name) => document.getElementById('collection-select').value === name", arg=collection_name
    )
    page.fill(
        "#documents-input",
        "Python was created by Guido van Rossum and first released in 1991.\n"
        "Paris is the capital and largest city of France.\n",
    )
    page.click("#documents-add")
    page.wait_for_function(
        "() => document.getElementById('documents-status').textContent.startsWith('added')"
    )
    assert page.inner_text("#documents-status").startswith("added 2 document(s)")

    page.fill("#rag-question", "Who created Python?")
    page.click("#rag-submit")
    page.wait_for_selector("#rag-citations li")
    page.wait_for_selector("#rag-submit:not([disabled])")
    assert not page.is_visible("#rag-error"), page.inner_text("#rag-error")
    assert page.inner_text("#rag-answer").strip()
    citations = page.inner_text("#rag-citations")
    assert "Guido van Rossum" in citations, citations
    assert re.search(r"\[1\] \S+ · chunk \d+ · score", citations), citations

    # An API error is shown with the server's message: the collection exists already (409).
    page.fill("#collection-name", collection_name)
    page.click("#collection-create")
    page.wait_for_selector("#rag-error:not([hidden])")
    message = page.inner_text("#rag-error")
    assert collection_name in message and "exist" in message.lower(), message
    assert session.page_errors == []


# -- the statistics strip ------------------------------------------------------------------------------


def serve_metrics(handler: Callable[[Route, Request], None]) -> Callable[[Page], None]:
    """Answers the page's GET /metrics with ``handler`` instead of the server."""

    def install(page: Page) -> None:
        page.route("**/metrics", handler)

    return install


def fake_metrics(running: int) -> Callable[[Route, Request], None]:
    """A /metrics endpoint whose token counter grows by 100 a poll (the real one's names)."""
    polls = [0]

    def handle(route: Route, _: Request) -> None:
        polls[0] += 1
        tokens = 1000 + 100 * polls[0]
        body = (
            "# HELP mmserve:num_requests_running Requests in the running batch.\n"
            "# TYPE mmserve:num_requests_running gauge\n"
            f'mmserve:num_requests_running{{model_name="smollm2-135m-instruct"}} {running - 1}.0\n'
            'mmserve:num_requests_running{model_name="whisper-tiny.en"} 1.0\n'
            "# TYPE mmserve:generation_tokens_total counter\n"
            f'mmserve:generation_tokens_total{{model_name="smollm2-135m-instruct"}} {tokens}.0\n'
            f'mmserve:generation_tokens_created{{model_name="smollm2-135m-instruct"}} {time.time()}\n'
        )
        route.fulfill(status=200, body=body, content_type="text/plain; version=0.0.4; charset=utf-8")

    return handle


def test_stats_show_batch_size_and_tokens_per_second(browser: Browser, base_url: str) -> None:
    s = open_playground(browser, base_url, before_load=serve_metrics(fake_metrics(3)))
    page = s.page
    try:
        page.wait_for_function(
            "() => document.getElementById('stat-tps').textContent !== '–'", timeout=15_000
        )
        assert page.inner_text("#stat-batch") == "3"  # summed over models
        tokens_per_second = float(page.inner_text("#stat-tps"))
        assert 20 < tokens_per_second < 200, tokens_per_second  # 100 tokens per ~2 s poll
        assert page.inner_text("#stat-note") == "live"
        assert s.page_errors == []
    finally:
        page.context.close()


def test_stats_say_unavailable_without_metrics(browser: Browser, base_url: str) -> None:
    def not_found(route: Route, _: Request) -> None:
        route.fulfill(status=404, json={"error": {"message": "not found", "type": "not_found_error"}})

    s = open_playground(browser, base_url, before_load=serve_metrics(not_found))
    page = s.page
    try:
        page.wait_for_function("() => document.getElementById('stat-note').textContent !== 'connecting…'")
        assert page.inner_text("#stat-note") == "metrics unavailable"
        assert not page.is_visible("#stat-batch")
        assert not page.is_visible("#stat-tps")
        # Nothing else broke: the pickers are filled and the chat answers.
        assert page.eval_on_selector_all("#chat-model option", "os => os.length") >= 1
        page.fill("#chat-max-tokens", "8")
        page.fill("#chat-input", "Say hello.")
        page.click("#chat-send")
        page.wait_for_function(
            "() => document.querySelector('.msg.assistant') && !document.getElementById('chat-send').disabled"
        )
        assert page.inner_text(".msg.assistant").strip()
        assert s.page_errors == []
    finally:
        page.context.close()
