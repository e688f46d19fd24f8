"""Incremental detokenization with stop strings.

Text is produced by decoding a short window of tokens (a few already-emitted ones for context, plus
the new ones) and taking what the new ones add: spacing rules of SentencePiece/BPE tokenizers depend
on the preceding token, and a multi-byte character split across tokens decodes to U+FFFD until its
last byte arrives, in which case nothing is emitted yet (a request that finishes before that byte ends its
text with U+FFFD, as decoding all its tokens at once would). Text that could be the start of a stop string
is held back until it is clear it is not one, so a stop string is never returned, even in part (unless
asked for: then the text ends with it). Before
``min_tokens`` tokens are out, stop strings are not looked for (as vLLM does).
"""

from __future__ import annotations

from typing import Protocol

from shared_engine.outputs import FinishReason
from shared_engine.sampling_params import SamplingParams

CONTEXT_TOKENS = 5


class Tokenizer(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        stop: tuple[str, ...] = (),
        skip_special_tokens: bool = True,
        min_tokens: int = 0,
        include_stop: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.min_tokens = min_tokens
        self.include_stop = include_stop
        self.num_output_tokens = 0
        self.skip_special_tokens = skip_special_tokens
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        context = prompt_token_ids[-CONTEXT_TOKENS:]
        self.token_ids: list[int] = list(context)
        self.prefix_offset = 0
        self.read_offset = len(context)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    @classmethod
    def for_params(
        cls, tokenizer: Tokenizer, prompt_token_ids: list[int], params: SamplingParams
    ) -> IncrementalDetokenizer:
        return cls(
            tokenizer,
            prompt_token_ids,
            params.stop,
            params.skip_special_tokens,
            params.min_tokens,
            params.include_stop_str_in_output,
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add_tokens(self, token_ids: list[int], ends: bool = False) -> FinishReason | None:
        """Append generated tokens; returns STOP if a stop string now appears in the text. A stop token
        (``ends``) adds its text only where the stop is to be included."""
        if ends and not self.include_stop:
            return None
        self.token_ids.extend(token_ids)
        self.num_output_tokens += len(token_ids)
        prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset :])
        if len(full) <= len(prefix):
            return None
        delta = full[len(prefix) :]
        if delta.endswith("\ufffd"):
            # A multi-byte character is still incomplete: keep the window open, but the complete
            # part may already finish a stop string.
            return self._check_stop(self.text + delta.rstrip("\ufffd"), len(self.text))
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        old_len = len(self.text)
        self.text += delta
        return self._check_stop(self.text, old_len)

    def _check_stop(self, text: str, old_len: int) -> FinishReason | None:
        """Find the earliest stop string that ends after ``old_len``; cut the text before it (or after it,
        to include it)."""
        if self.num_output_tokens <= self.min_tokens:
            return None
        search_from = max(0, old_len - self.holdback)
        hits = [(at, len(s)) for s in self.stop if (at := text.find(s, search_from)) != -1]
        if hits:
            at, length = min(hits)
            self.text = text[: at + length if self.include_stop else at]
            self.stopped = True
            return FinishReason.STOP
        return None

    def take_new_text(self, finished: bool) -> str:
        """Text not yet handed out; while running, keeps back what may begin a stop string. Once finished
        (not by a stop string), the last tokens' incomplete character comes out as U+FFFD."""
        if finished and not self.stopped and self.read_offset < len(self.token_ids):
            prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
            self.text += self._decode(self.token_ids[self.prefix_offset :])[len(prefix) :]
            self.read_offset = len(self.token_ids)
        end = (
            len(self.text) if finished or not self.stop else max(self.emitted, len(self.text) - self.holdback)
        )
        out = self.text[self.emitted : end]
        self.emitted = end
        return out
