"""Tool calls out of generated text, incrementally: content before, between and after calls streams as
content; each ``<tool_call>`` block becomes a call (its id and name as soon as the name is complete, then
its arguments as they are written). Running the whole text through it gives the non-streamed answer, so
both agree."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from enum import Enum

from pipelines.llm.tool_prompt import TOOL_CALL_BEGIN, TOOL_CALL_END

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)', re.DOTALL)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCallDelta:
    """A piece of call number ``index``: its start (``id`` and ``name``) or more of its ``arguments``."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, object]:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        function = {"name": self.name, "arguments": self.arguments}
        return {"index": self.index, "id": self.id, "type": "function", "function": function}


@dataclass
class Pieces:
    """What one ``feed`` turned into."""

    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)


class _State(Enum):
    TEXT = 0  # outside a call
    HEADER = 1  # after <tool_call>, before the arguments
    ARGUMENTS = 2


def _held_back(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that could be the start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallParser:
    def __init__(self) -> None:
        self.state = _State.TEXT
        self.pending = ""  # text not yet given out
        self.sent = 0  # ARGUMENTS: characters of ``pending`` already given out
        self.num_calls = 0
        self.num_complete = 0
        self.after_call = False

    def feed(self, text: str, final: bool = False) -> Pieces:
        """The content and call pieces that ``text`` completes; ``final`` flushes what is held back."""
        self.pending += text
        out = Pieces()
        while self._advance(out):
            pass
        if final:
            self._flush(out)
        return out

    def _advance(self, out: Pieces) -> bool:
        """One transition if the pending text allows it; True when the state changed."""
        if self.state is _State.TEXT:
            if self.after_call:  # the line breaks between and after calls are not content
                self.pending = self.pending.lstrip()
                self.after_call = not self.pending
            at = self.pending.find(TOOL_CALL_BEGIN)
            if at < 0:
                keep = _held_back(self.pending, TOOL_CALL_BEGIN)
                out.content += self.pending[: len(self.pending) - keep]
                self.pending = self.pending[len(self.pending) - keep :]
                return False
            out.content += self.pending[:at]
            self.pending = self.pending[at + len(TOOL_CALL_BEGIN) :]
            self.state = _State.HEADER
            return True
        if self.state is _State.HEADER:
            match = _HEADER.match(self.pending)
            if match is None:
                return False
            name = json.loads(f'"{match.group(1)}"')
            out.calls.append(ToolCallDelta(self.num_calls, id=new_call_id(), name=name))
            self.num_calls += 1
            self.pending, self.sent = self.pending[match.end() :], 0
            self.state = _State.ARGUMENTS
            return True
        end = self.pending.find(TOOL_CALL_END)
        # The arguments object is followed by the "}" that closes the call: never give out the last "}"
        # seen until the call's end shows which one it was.
        if end >= 0:
            body = self.pending[:end].rstrip()
            cut = len(body) - 1 if body.endswith("}") else len(body)
        else:
            body = self.pending
            last = body.rfind("}")
            cut = len(body) if last < 0 else last
        if cut > self.sent:
            self._arguments(out, body[self.sent : cut])
            self.sent = cut
        if end < 0:
            return False
        self.num_complete += 1
        self.after_call = True
        self.pending = self.pending[end + len(TOOL_CALL_END) :]
        self.state = _State.TEXT
        return True

    def _arguments(self, out: Pieces, text: str) -> None:
        last = out.calls[-1] if out.calls else None
        if last is not None and last.index == self.num_calls - 1:
            last.arguments += text
        else:
            out.calls.append(ToolCallDelta(self.num_calls - 1, arguments=text))

    def _flush(self, out: Pieces) -> None:
        """At the end (the answer was cut short): what is left, as it stands."""
        if self.state is _State.TEXT:
            out.content += self.pending
        elif self.state is _State.HEADER:
            out.content += TOOL_CALL_BEGIN + self.pending
        else:
            rest = self._arguments_left()
            if len(rest) > self.sent:
                self._arguments(out, rest[self.sent :])
        self.pending, self.sent = "", 0

    def _arguments_left(self) -> str:
        """The arguments at the end: without the call's closing "}" and the start of its end tag when what
        comes before them is a whole JSON object (cut short after the arguments), else as they stand."""
        held = _held_back(self.pending, TOOL_CALL_END)
        candidate = self.pending[: len(self.pending) - held].rstrip()
        if candidate.endswith("}"):
            try:
                if isinstance(json.loads(candidate[:-1]), dict):
                    return candidate[:-1]
            except ValueError:
                pass
        return self.pending


@dataclass
class ParsedCalls:
    content: str
    calls: list[ToolCallDelta]  # one per call, whole
    num_complete: int


def parse_all(text: str) -> ParsedCalls:
    """The whole text at once: content, and each call with its id, name and complete arguments."""
    parser = ToolCallParser()
    pieces = parser.feed(text, final=True)
    calls: list[ToolCallDelta] = []
    for piece in pieces.calls:
        if piece.id is not None:
            calls.append(piece)
        else:
            calls[piece.index].arguments += piece.arguments
    return ParsedCalls(pieces.content, calls, parser.num_complete)
