"""The text side of an embedding model: its tokenizer and input window, without the weights.

The gateway tokenizes (and refuses over-long inputs) with this alone when the model itself runs in
another process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer

from pipelines.embedding.pooling import read_recipe
from pipelines.token_prefix import leading_ids, longest_token_chars
from shared_engine.errors import InvalidRequest


class InputTooLong(InvalidRequest):
    """``tokens``: how many the input has, or None when it was tokenized only far enough to tell that it
    has more than ``limit``."""

    def __init__(self, index: int, tokens: int | None, limit: int) -> None:
        count = "more tokens than" if tokens is None else f"{tokens} tokens, more than"
        super().__init__(
            f"input {index} has {count} this model's limit of {limit}; shorten it or send truncate: true",
            param="input",
        )


class EmbeddingTokenizer:
    def __init__(self, folder: Path) -> None:
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        # Large inputs are tokenized on worker threads; a fast tokenizer shared between threads can refuse
        # a call while another holds it ("Already borrowed").
        self._lock = threading.Lock()
        config = AutoConfig.from_pretrained(folder)
        window = int(config.max_position_embeddings)
        recipe = read_recipe(folder)
        self.max_input_tokens = min(recipe.max_seq_length or window, window)
        self._longest_token = longest_token_chars(self.tokenizer)
        self.dimensions = int(config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def tokenize(self, texts: Sequence[str], truncate: bool = False) -> list[list[int]]:
        with self._lock:
            leading = leading_ids(self._encode_batch, texts, self.max_input_tokens, self._longest_token)
        out = []
        for i, lead in enumerate(leading):
            if not lead.whole and not truncate:
                raise InputTooLong(i, None, self.max_input_tokens)
            out.append(self._fit(i, lead.ids, truncate, keep_last=True))
        return out

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        encoded: list[list[int]] = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return encoded

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """All of ``text``'s tokens, however many (a count, not an input to embed)."""
        with self._lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def token_pieces(self, token_ids: list[int]) -> list[str]:
        """Each token as the vocabulary spells it (``##ing``, ``[CLS]``)."""
        with self._lock:
            return [str(piece) for piece in self.tokenizer.convert_ids_to_tokens(token_ids)]

    def decode(self, token_ids: list[int]) -> str:
        with self._lock:
            return str(self.tokenizer.decode(token_ids))

    def check_length(self, index: int, ids: list[int], truncate: bool) -> list[int]:
        """A caller's token ids: as given, or with ``truncate`` the first that fit."""
        return self._fit(index, ids, truncate, keep_last=False)

    def _fit(self, index: int, ids: list[int], truncate: bool, keep_last: bool) -> list[int]:
        if len(ids) <= self.max_input_tokens:
            return ids
        if not truncate:
            raise InputTooLong(index, len(ids), self.max_input_tokens)
        if keep_last:  # a text's closing special token ([SEP]), so the encoder sees a well-formed sequence
            return ids[: self.max_input_tokens - 1] + ids[-1:]
        return ids[: self.max_input_tokens]
