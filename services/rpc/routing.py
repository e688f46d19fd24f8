"""Which replica gets a call. Chat requests go where their prompt's beginning was sent before, so that the
replica's prefix cache holds it (turn after turn of a conversation, or every request that shares a long
system prompt), unless that replica is saturated; the rest go round-robin.

The router keeps, per replica, the chained hashes of the full token blocks of the prompts it sent there
(an approximation of that replica's prefix cache, as SGLang's router keeps a radix tree), bounded and
least recently used first out."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.config.settings import ROUTING_POLICIES


@dataclass(frozen=True)
class RoutingConfig:
    policy: str = "cache_aware"
    block_size: int = 16  # tokens per hashed block (the engine's KV block size)
    # Calls in flight beyond the least loaded replica's before the preferred replica counts as saturated.
    max_imbalance: int = 4
    blocks_per_replica: int = 1 << 16  # hashes remembered per replica
    # A replica holds a prompt when its cached prefix is more than this share of the prompt's full blocks
    # (SGLang's cache_threshold): a chat template's few tokens of boilerplate, the same at the start of
    # every prompt, do not tie every conversation to the first replica that served one.
    min_match_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.policy not in ROUTING_POLICIES:
            raise ValueError(f"routing policy must be one of {', '.join(ROUTING_POLICIES)}: {self.policy!r}")
        if self.block_size < 1 or self.max_imbalance < 0 or self.blocks_per_replica < 1:
            raise ValueError("block_size and blocks_per_replica must be ≥ 1, max_imbalance ≥ 0")
        if not 0 <= self.min_match_ratio < 1:
            raise ValueError(f"min_match_ratio must be in [0, 1), got {self.min_match_ratio}")


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """One hash per full block, each chained with the hash of everything before it: equal hashes at
    position i mean equal prompts up to the end of block i."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


class Router:
    def __init__(self, config: RoutingConfig = RoutingConfig()) -> None:
        self.config = config
        self._turn = itertools.count()
        self._seen: dict[str, OrderedDict[int, None]] = {}

    def order(
        self,
        addresses: Sequence[str],
        in_flight: Mapping[str, int],
        token_ids: Sequence[int] | None = None,
    ) -> list[str]:
        """Every address, the one to try first at the front; the others follow as fallbacks."""
        rotated = _rotate(addresses, next(self._turn))
        if self.config.policy == "round_robin" or token_ids is None:
            return rotated
        self._forget_all_but(addresses)
        hashes = block_hashes(token_ids, self.config.block_size)
        load = {a: in_flight.get(a, 0) for a in addresses}
        least = min(load.values())
        # Longest cached prefix first; among equals the least loaded, then round-robin order.
        ranked = sorted(rotated, key=lambda a: (-self._matched(a, hashes), load[a]))
        first = ranked[0]
        matched = self._matched(first, hashes)
        held = matched > 0 and matched > self.config.min_match_ratio * len(hashes)
        if not held or load[first] - least > self.config.max_imbalance:
            first = min(rotated, key=lambda a: load[a])
        self._remember(first, hashes)
        return [first, *(a for a in ranked if a != first)]

    def _matched(self, address: str, hashes: list[int]) -> int:
        seen = self._seen.get(address)
        if not seen:
            return 0
        count = 0
        for h in hashes:
            if h not in seen:
                break
            count += 1
        return count

    def _remember(self, address: str, hashes: list[int]) -> None:
        seen = self._seen.setdefault(address, OrderedDict())
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.config.blocks_per_replica:
            seen.popitem(last=False)

    def _forget_all_but(self, addresses: Sequence[str]) -> None:
        """A replica that left takes what it had cached with it."""
        for gone in self._seen.keys() - set(addresses):
            del self._seen[gone]


def _rotate(items: Sequence[str], by: int) -> list[str]:
    k = by % len(items) if items else 0
    return [*items[k:], *items[:k]]
