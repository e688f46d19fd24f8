"""Per-request generation parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from shared_engine.guided import GuidedDecoding

if TYPE_CHECKING:
    import torch

LogitsProcessor = Callable[[Sequence[int], "torch.Tensor"], None]
"""Edits one request's next-token logits (a float32 row, in place) given its output tokens so far."""

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's bound: -100 bans a token, 100 all but forces it
# Below this a temperature is treated as greedy: dividing logits by it would overflow to inf/NaN.
GREEDY_TEMPERATURE = 1e-5
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_PENALTY = 2.0  # OpenAI's bound on presence and frequency penalties, either sign


class OutputKind(StrEnum):
    """How a caller receives a request's outputs: ``delta`` one increment per engine step (streaming),
    ``final_only`` one output with the whole completion when the request finishes (a caller that
    waits for the end anyway: it is woken once, not once per token, and over RPC it costs one message)."""

    DELTA = "delta"
    FINAL_ONLY = "final_only"


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature`` below 1e-5 (0 included) means greedy. ``guided`` constrains the output to a grammar
    (a JSON schema, a regex, ...; see ``shared_engine.guided``): tokens it forbids are never sampled, and
    the request stops when the grammar is complete. ``logit_bias`` adds (token id, bias) to those
    tokens' logits before the penalties and the ``logits_processors``. ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's, -2 to 2) subtract from each token's logit once if it is in the output
    so far and once per time it is there; ``repetition_penalty`` (CTRL's, as vLLM and transformers apply
    it: > 1 discourages) divides the positive logits of tokens in the prompt or the output by it and
    multiplies their negative ones. ``min_p`` drops tokens less likely than ``min_p`` times the most likely
    one (after temperature, before top-k and top-p). ``min_tokens`` (vLLM's) bars the stop tokens (end of
    sequence unless ``ignore_eos``, and ``stop_token_ids``) until that many tokens are out, and stop strings
    count only after them. ``allowed_token_ids`` (vLLM's) are the only tokens that may be sampled;
    ``include_stop_str_in_output`` keeps the stop string that ended the text. ``bad_words_token_ids``
    (vLLM's ``bad_words``, as token ids) are never completed: a one-token word is barred everywhere, a
    longer one's last token wherever the output ends with the rest of it. ``top_k <= 0`` disables
    top-k. ``seed`` makes
    sampling reproducible per request whatever else shares the batch: its draws do not depend on the other
    rows (the logits they are drawn from still round with the batch's size). ``logprobs`` is the number of
    alternatives to report per token (``0`` reports only the chosen token's log-probability;
    ``None`` reports nothing). Log-probabilities are those of the distribution after the bias, the
    penalties and the ``logits_processors`` (a pipeline's decoding rules, e.g. Whisper's suppressed
    tokens) and before temperature and truncation. ``prompt_logprobs`` asks for the log-probability of
    each prompt token after the first, under the model given the tokens before it, with that many
    alternatives (raw model scores: no processors, no bias); such a request computes its whole prompt,
    never reading it from the prefix cache.
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    output_kind: OutputKind = OutputKind.DELTA
    guided: GuidedDecoding | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    allowed_token_ids: tuple[int, ...] | None = None
    include_stop_str_in_output: bool = False
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    logits_processors: tuple[LogitsProcessor, ...] = field(default=(), compare=False, hash=False)
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be from 0 to max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be between {SEED_MIN} and {SEED_MAX}, got {self.seed}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -MAX_PENALTY <= getattr(self, name) <= MAX_PENALTY:
                raise ValueError(f"{name} must be between {-MAX_PENALTY:g} and {MAX_PENALTY:g}")
        if not 0 < self.repetition_penalty < float("inf"):
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        if any(token_id < 0 for token_id in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be token ids (>= 0), got {list(self.stop_token_ids)}")
        if self.allowed_token_ids is not None and (
            not self.allowed_token_ids or min(self.allowed_token_ids) < 0
        ):
            raise ValueError("allowed_token_ids must hold at least one token id, none negative")
        if self.allowed_token_ids is not None and self.guided is not None:
            raise ValueError(
                "allowed_token_ids cannot be combined with a structured output (response_format, tools, "
                "guided_*): the grammar decides the tokens"
            )
        if any(not word or min(word) < 0 for word in self.bad_words_token_ids):
            raise ValueError("bad_words_token_ids must hold non-empty sequences of token ids (>= 0)")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        for name in ("logprobs", "prompt_logprobs"):
            n = getattr(self, name)
            if n is not None and not 0 <= n <= MAX_TOP_LOGPROBS:
                raise ValueError(f"{name} must be between 0 and {MAX_TOP_LOGPROBS}, got {n}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        for token_id, bias in self.logit_bias:
            if token_id < 0 or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(
                    f"logit_bias takes token ids >= 0 and biases between {-MAX_LOGIT_BIAS:g} and "
                    f"{MAX_LOGIT_BIAS:g}, got {token_id}: {bias}"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    def out_of_vocabulary(self, vocab_size: int) -> str | None:
        """The first field naming a token id past a vocabulary of ``vocab_size`` tokens, if any."""
        fields = {
            "logit_bias": [token_id for token_id, _ in self.logit_bias],
            "allowed_token_ids": self.allowed_token_ids or (),
            "stop_token_ids": self.stop_token_ids,
            "bad_words": [token_id for word in self.bad_words_token_ids for token_id in word],
        }
        return next((name for name, ids in fields.items() if any(i >= vocab_size for i in ids)), None)

    @property
    def penalized(self) -> bool:
        """Whether a token's logit depends on the tokens before it (presence, frequency or repetition)."""
        return bool(self.presence_penalty or self.frequency_penalty) or self.repetition_penalty != 1.0
