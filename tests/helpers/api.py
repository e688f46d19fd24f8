"""Assertions on HTTP answers shared by the API test suites."""

from __future__ import annotations

from typing import Any

import httpx

ERROR_KEYS = {"message", "type", "param", "code"}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check the status and OpenAI's error envelope; return the inner ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    return error
