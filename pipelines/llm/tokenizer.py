"""The text side of a chat model: tokenizer and chat template, without the weights.

The gateway tokenizes with this alone when the model itself runs in another process.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2.defaults import DEFAULT_NAMESPACE as JINJA_GLOBALS
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from pipelines.llm.tool_prompt import generic_messages, hf_messages, template_renders_tools
from shared_engine.errors import InvalidRequest

# How byte-level BPE vocabularies spell each byte, and how SentencePiece spells a byte-fallback token.
_BYTE_OF_CHAR = {char: byte for byte, char in bytes_to_unicode().items()}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TemplateOptions:
    """How the chat template renders a conversation (vLLM's chat extras): ``add_generation_prompt`` opens the
    assistant's turn; ``continue_final_message`` leaves the last message open instead, for the model to go
    on with (a prefilled answer); ``kwargs`` are more variables for the template (Qwen3's
    ``enable_thinking``, say)."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.add_generation_prompt and self.continue_final_message:
            raise InvalidRequest(
                "continue_final_message continues the last message instead of opening a new turn: send "
                "it with add_generation_prompt false",
                param="continue_final_message",
            )


OPEN_ASSISTANT_TURN = TemplateOptions()  # the default: the messages, then the assistant's turn opened


class ChatTokenizer:
    def __init__(self, folder: Path, model_name: str) -> None:
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        self.model_name = model_name
        # Names a template variable of chat_template_kwargs may not take: apply_chat_template's own
        # arguments, what it hands the template itself, and Jinja's globals (range, namespace...).
        self.reserved_template_names = frozenset(
            {"self", "messages", "tools", "documents", "raise_exception", "strftime_now"}
            | set(JINJA_GLOBALS)
            | set(inspect.signature(self.tokenizer.apply_chat_template).parameters)
            | set(self.tokenizer.special_tokens_map)
        ) - {"kwargs"}

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        options: TemplateOptions = OPEN_ASSISTANT_TURN,
    ) -> list[int]:
        """The prompt's token ids. ``messages`` may carry OpenAI's ``tool_calls`` and ``tool`` turns, and
        ``tools`` the functions offered (``tool_prompt``: the template's own rendering when it has one)."""
        if not self.has_chat_template:
            raise InvalidRequest(
                f"model {self.model_name!r} has no chat template; use /v1/completions", param="model"
            )
        uses_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
        extra: dict[str, Any] = {}
        if not uses_tools:
            rendered: list[dict[str, Any]] = [
                {"role": m["role"], "content": m.get("content") or ""} for m in messages
            ]
        elif template_renders_tools(self.tokenizer.chat_template):
            rendered, extra = hf_messages(messages), {"tools": list(tools)} if tools else {}
        else:
            rendered = list(generic_messages(messages, tools or ()))
        if taken := sorted(self.reserved_template_names & set(options.kwargs)):
            raise InvalidRequest(
                f"chat_template_kwargs cannot set {', '.join(taken)}", param="chat_template_kwargs"
            )
        try:
            text = self.tokenizer.apply_chat_template(
                rendered,
                add_generation_prompt=options.add_generation_prompt,
                continue_final_message=options.continue_final_message,
                tokenize=False,
                **extra,
                **options.kwargs,
            )
        except (
            jinja2.TemplateError,
            TypeError,
            ValueError,
        ) as exc:  # the template's own checks (roles alternating...)
            raise InvalidRequest(f"the chat template refused the messages: {exc}", param="messages") from None
        # The template already spells out its special tokens.
        return self.encode(str(text), add_special_tokens=False)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        return ids

    def token_pieces(self, token_ids: list[int]) -> list[str]:
        """Each token as the vocabulary spells it (``ĠParis``, ``<0xF0>``)."""
        return [str(piece) for piece in self.tokenizer.convert_ids_to_tokens(token_ids)]

    def decode_token(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for, also where they are only part of a character (which decoding
        the token alone shows as U+FFFD)."""
        text = self.decode_token(token_id)
        if "\ufffd" not in text:
            return text.encode()
        piece = str(self.tokenizer.convert_ids_to_tokens(token_id))
        if (byte := _BYTE_PIECE.fullmatch(piece)) is not None:
            return bytes([int(byte[1], 16)])
        if all(c in _BYTE_OF_CHAR for c in piece):
            return bytes(_BYTE_OF_CHAR[c] for c in piece)
        return text.encode()

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids))
