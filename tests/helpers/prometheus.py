"""Read what a /metrics endpoint says: every sample, and sums of those that carry given labels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(url: str, client: httpx.Client | None = None) -> list[Sample]:
    response = client.get(url) if client is not None else httpx.get(url, timeout=30.0)
    assert response.status_code == 200, f"GET {url}: {response.status_code} {response.text[:200]}"
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def present(samples: Iterable[Sample], name: str, **labels: str) -> bool:
    return any(s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples)
