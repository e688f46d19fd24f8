"""Replica discovery and the choice of replica per call (services/rpc/replicas.py, routing.py): a
conversation's turns stay on the replica that has their prefix cached, new prefixes spread by load, a
saturated replica is passed over, and replicas joining or leaving are followed."""

from __future__ import annotations

import asyncio
import random

import pytest

from services.config.settings import Settings
from services.rpc.replicas import Replicas, split_dns_target
from services.rpc.routing import Router, RoutingConfig, block_hashes

A, B, C = "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"


def prompt(seed: int, length: int) -> list[int]:
    return random.Random(seed).choices(range(1000, 40000), k=length)


def test_block_hashes_are_chained_over_full_blocks() -> None:
    tokens = prompt(1, 50)
    hashes = block_hashes(tokens, 16)
    assert len(hashes) == 3  # the last 2 tokens make no full block
    assert block_hashes(tokens[:40], 16) == hashes[:2]
    changed = [tokens[0] + 1, *tokens[1:]]
    # one token changed in the first block changes every later hash, though those blocks are equal
    assert not set(block_hashes(changed, 16)) & set(hashes)


def test_turns_of_a_conversation_stay_on_one_replica() -> None:
    router = Router()
    system = prompt(7, 200)
    firsts = {}
    for chat in range(6):  # six conversations, four turns each, the prompt growing by each turn
        history = system + prompt(100 + chat, 30)
        firsts[chat] = router.order([A, B], {}, history)[0]
        for turn in range(1, 4):
            history = history + prompt(1000 * chat + turn, 40)
            assert router.order([A, B], {}, history)[0] == firsts[chat], (chat, turn)


def test_new_prefixes_go_to_the_least_loaded_replica() -> None:
    router = Router()
    assert router.order([A, B, C], {A: 3, B: 0, C: 1}, prompt(1, 64))[0] == B
    # equally loaded: round-robin over the replicas
    picks = [router.order([A, B], {}, prompt(seed, 64))[0] for seed in range(2, 6)]
    assert sorted(picks) == [A, A, B, B]


def test_a_short_prefix_every_prompt_shares_does_not_tie_prompts_to_one_replica() -> None:
    """A chat template's default system prompt (one block here) starts every prompt: it alone does not
    make a replica the prompt's home, so distinct prompts spread; a long shared prefix still does."""
    router = Router()
    boilerplate = prompt(9, 16)
    picks = [router.order([A, B], {}, boilerplate + prompt(seed, 20))[0] for seed in range(20, 26)]
    assert sorted(picks) == [A, A, A, B, B, B]
    system = prompt(10, 160)  # ten blocks shared, one or two of the user's
    homes = {router.order([A, B], {}, system + prompt(seed, 24))[0] for seed in range(30, 36)}
    assert len(homes) == 1


def test_a_saturated_replica_is_passed_over_and_comes_first_among_the_fallbacks() -> None:
    router = Router(RoutingConfig(max_imbalance=2))
    tokens = prompt(3, 64)
    home = router.order([A, B], {}, tokens)[0]
    other = B if home == A else A
    assert router.order([A, B], {home: 2, other: 0}, tokens)[0] == home  # within the allowed imbalance
    order = router.order([A, B], {home: 3, other: 0}, tokens)
    assert order == [other, home]
    # the other replica now holds the prefix too: it keeps getting it while it is the less loaded
    assert router.order([A, B], {home: 1, other: 0}, tokens)[0] == other


def test_a_replica_that_leaves_takes_its_prefixes_with_it() -> None:
    router = Router()
    tokens = prompt(4, 64)
    home = router.order([A, B], {}, tokens)[0]
    survivor = B if home == A else A
    moved = router.order([survivor, C], {}, tokens)[0]
    # the prefix now lives where it went; the returning replica starts with nothing cached
    assert moved != home and router.order([A, B, C], {}, tokens)[0] == moved


def test_round_robin_ignores_the_prompt() -> None:
    router = Router(RoutingConfig(policy="round_robin"))
    tokens = prompt(5, 64)
    assert [router.order([A, B], {}, tokens)[0] for _ in range(4)] == [A, B, A, B]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="routing policy"):
        RoutingConfig(policy="random")
    with pytest.raises(ValueError, match="MMSERVE_CHAT_ROUTING"):
        Settings.from_env({"MMSERVE_CHAT_ROUTING": "sticky"})
    assert Settings.from_env({}).chat_routing == "cache_aware"


def test_dns_targets_expand_into_every_address_the_name_has() -> None:
    assert split_dns_target("dns:///llm:50051") == ("llm", 50051)
    assert split_dns_target("127.0.0.1:50051") is None
    with pytest.raises(ValueError, match="dns:///name:port"):
        Replicas(["dns:///llm"])
    replicas = Replicas(["dns:///localhost:50051", "127.0.0.2:50052"])
    # localhost has an IPv4 and an IPv6 address, one server: its IPv4 address stands for it
    assert asyncio.run(replicas.addresses()) == ("127.0.0.1:50051", "127.0.0.2:50052")
    unknown = Replicas(["dns:///no-such-host.invalid:50051"])
    assert asyncio.run(unknown.addresses()) == ("dns:///no-such-host.invalid:50051",)
