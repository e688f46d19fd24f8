"""The addresses of a task's replicas: the configured targets, with each ``dns:///name:port`` expanded into
the addresses the name resolves to now (compose services, Kubernetes headless Services), resolved again
every few seconds so that a replica joining or leaving is seen."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence

logger = logging.getLogger(__name__)

DNS_PREFIX = "dns:"


def split_dns_target(target: str) -> tuple[str, int] | None:
    """``dns:///name:port`` (or ``dns:name:port``) → (name, port); None for any other target."""
    if not target.startswith(DNS_PREFIX):
        return None
    rest = target[len(DNS_PREFIX) :]
    if rest.startswith("//"):  # dns://[authority]/name:port: the authority (a DNS server) is not used
        rest = rest[2:].partition("/")[2]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{target!r} is not dns:///name:port")
    return host.strip("[]"), int(port)


def address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Replicas:
    """Resolves lazily, on the caller's event loop; a name that stops resolving keeps its last addresses
    (a DNS hiccup is not a replica leaving), and the gateway's retry moves past any that are gone."""

    def __init__(self, targets: Sequence[str], refresh_s: float = 5.0) -> None:
        if not targets:
            raise ValueError("no addresses")
        self.targets = tuple(targets)
        self.refresh_s = refresh_s
        for target in self.targets:
            split_dns_target(target)  # a malformed target fails now, not on the first call
        self._resolved: dict[str, tuple[str, ...]] = {}
        self._resolved_at = float("-inf")

    @property
    def needs_resolving(self) -> bool:
        return any(split_dns_target(t) for t in self.targets)

    async def addresses(self) -> tuple[str, ...]:
        if self.needs_resolving and time.monotonic() - self._resolved_at >= self.refresh_s:
            self._resolved_at = time.monotonic()
            for target in self.targets:
                name = split_dns_target(target)
                if name is not None:
                    found = await _resolve(*name)
                    if found:
                        self._resolved[target] = found
        out: list[str] = []
        for target in self.targets:
            for addr in self._resolved.get(target, (target,) if split_dns_target(target) is None else ()):
                if addr not in out:
                    out.append(addr)
        return tuple(out) or self.targets


async def _resolve(host: str, port: int) -> tuple[str, ...]:
    """The name's IPv4 addresses, or its IPv6 ones where it has none (``localhost`` is both: one server)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        logger.warning("resolving %s failed: %s", host, exc)
        return ()
    v4 = sorted({str(i[4][0]) for i in infos if i[0] == socket.AF_INET})
    v6 = sorted({str(i[4][0]) for i in infos if i[0] == socket.AF_INET6})
    return tuple(address(ip, port) for ip in (v4 or v6))
