"""The playground's JSON schema box, in a real headless Chromium against the real server: with a schema the
streamed answer is JSON that follows it (the request carries it as ``response_format``); text that is not
JSON is reported in the chat's alert and nothing is sent; emptied, the chat is free text again."""

from __future__ import annotations

import json

import jsonschema

from tests.services.test_playground import (  # noqa: F401 (fixtures, shared with the playground's own tests)
    Session,
    browser,
    playwright,
    session,
)

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
DONE = (
    "() => !document.querySelector('.msg.assistant.streaming')"
    " && !document.getElementById('chat-send').disabled"
)


def test_a_schema_shapes_the_streamed_answer(session: Session) -> None:  # noqa: F811
    page = session.page
    sent: list[dict[str, object]] = []
    page.on(
        "request",
        lambda r: (
            sent.append(json.loads(r.post_data or "{}")) if r.url.endswith("/chat/completions") else None
        ),
    )
    page.fill("#chat-max-tokens", "48")
    page.fill("#chat-temperature", "0")
    page.click("#chat-schema-box summary")
    page.fill("#chat-schema", "{not json")
    page.fill("#chat-input", "Weather in Paris?")
    page.click("#chat-send")
    assert "JSON schema" in page.inner_text("#chat-error")
    assert not sent and page.input_value("#chat-input") == "Weather in Paris?"  # kept, not sent

    page.fill("#chat-schema", json.dumps(SCHEMA))
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant")
    page.wait_for_function(DONE)
    assert not page.is_visible("#chat-error"), page.inner_text("#chat-error")
    jsonschema.validate(json.loads(page.inner_text(".msg.assistant")), SCHEMA)
    assert sent[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "playground", "schema": SCHEMA, "strict": True},
    }

    page.fill("#chat-schema", "")
    page.fill("#chat-input", "Say hello.")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 2")
    page.wait_for_function(DONE)
    assert "response_format" not in sent[-1]
