"""Whisper's timestamp rules on logits, against their textbook form (log-softmax, then compare)."""

from __future__ import annotations

import random

import torch

from pipelines.asr.decoding import TimestampRules, WhisperVocab

VOCAB = WhisperVocab(
    eot=90, sot=91, sot_prev=92, transcribe=93, translate=94, no_timestamps=95, timestamp_begin=100,
    languages={}, suppress=(), begin_suppress=(),
)  # fmt: skip
SIZE = 160  # 60 timestamp tokens


def textbook(outputs: list[int], logits: torch.Tensor, max_initial: int) -> None:
    ts, inf = VOCAB.timestamp_begin, float("-inf")
    last = len(outputs) >= 1 and outputs[-1] >= ts
    penultimate = len(outputs) < 2 or outputs[-2] >= ts
    if last:
        if penultimate:
            logits[ts:] = inf
        else:
            logits[: VOCAB.eot] = inf
    stamps = [t for t in outputs if t >= ts]
    if stamps:
        logits[ts : stamps[-1] if last and not penultimate else stamps[-1] + 1] = inf
    else:
        logits[:ts] = inf
        logits[max_initial + 1 :] = inf
    logprobs = torch.log_softmax(logits, dim=-1)
    if torch.logsumexp(logprobs[ts:], dim=-1) > logprobs[:ts].max():
        logits[:ts] = inf


def test_timestamp_rules_mask_as_the_textbook_form_does() -> None:
    rules = TimestampRules(VOCAB)
    rng = random.Random(0)
    torch.manual_seed(0)
    forced = 0
    for _ in range(500):
        outputs = [rng.choice([rng.randrange(90), rng.randrange(100, SIZE)]) for _ in range(rng.randrange(8))]
        logits = torch.randn(SIZE) * 3
        logits[VOCAB.timestamp_begin :] += rng.uniform(-4, 4)  # sometimes timestamps win overall
        expected = logits.clone()
        textbook(outputs, expected, rules.max_initial)
        rules(outputs, logits)
        assert torch.equal(torch.isinf(logits), torch.isinf(expected)), outputs
        forced += bool(torch.isinf(logits[: VOCAB.timestamp_begin]).all())
    assert 50 < forced < 450  # both outcomes of the probability comparison were exercised
