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
    CALL_END = 3  # after the arguments, before </tool_call>
    ANSWER = 4  # an answer in a format, which holds no call: content to its end


def _held_back(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that could be the start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


_STRING_RUN = re.compile(r'[^"\\]+')


class _ValueScan:
    """Where a JSON value ends, read a piece at a time: what it has seen of the value so far."""

    def __init__(self) -> None:
        self.depth = 0  # open objects and arrays
        self.in_string = False
        self.escaped = False  # in a string, right after a backslash

    def end(self, text: str) -> int | None:
        """Where in ``text`` (the value's next piece) the value ends; None if it goes on past it."""
        i = 0
        while i < len(text):
            if self.in_string and not self.escaped:
                run = _STRING_RUN.match(text, i)
                if run is not None:
                    i = run.end()
                    continue
            c = text[i]
            i += 1
            if self.in_string:
                self.in_string = self.escaped or c != '"'
                self.escaped = not self.escaped and c == "\\"
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]" and self.depth:
                self.depth -= 1
                if not self.depth:
                    return i
            elif c in ",}]" and not self.depth:  # what follows a string, number or literal at the top
                return i - 1
        return None


class ToolCallParser:
    """``calls_or_answer``: the grammar lets the model either call (from the answer's start) or answer in
    a format (tools with a ``response_format``), so an answer that does not begin with a call is content
    whole, whatever it holds ("<tool_call>" in a JSON string, a "<" of a regex)."""

    def __init__(self, calls_or_answer: bool = False) -> None:
        self.calls_or_answer = calls_or_answer
        self.state = _State.TEXT
        self.pending = ""  # text not yet given out
        self.value = _ValueScan()  # ARGUMENTS: where the arguments given out so far stand
        self.num_calls = 0
        self.num_complete = 0
        self.after_call = False
        self.may_call = True  # TEXT: held-back text stands where a call could begin

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
        if self.state is _State.ANSWER:
            self._content(out, self.pending)
            self.pending = ""
            return False
        if self.state is _State.TEXT and self.calls_or_answer and not self.num_calls:
            if TOOL_CALL_BEGIN.startswith(self.pending):  # a call may yet begin
                return False
            if not self.pending.startswith(TOOL_CALL_BEGIN):
                self.state = _State.ANSWER
                return True
        if self.state is _State.TEXT:
            if self.after_call:  # the line breaks between and after calls are not content
                self.pending = self.pending.lstrip()
                self.after_call = not self.pending
            at = self.pending.find(TOOL_CALL_BEGIN)
            if at < 0:
                keep = _held_back(self.pending, TOOL_CALL_BEGIN)
                self._content(out, self.pending[: len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep :]
                return False
            self._content(out, self.pending[:at])
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
            self.pending, self.value = self.pending[match.end() :], _ValueScan()
            self.state = _State.ARGUMENTS
            return True
        if self.state is _State.ARGUMENTS:
            end = self.value.end(self.pending)
            cut = len(self.pending) if end is None else end
            if cut:
                self._arguments(out, self.pending[:cut])
            self.pending = self.pending[cut:]
            if end is None:
                return False
            self.state = _State.CALL_END
            return True
        at = self.pending.find(TOOL_CALL_END)  # the call's closing "}" comes before it
        if at < 0:
            self.pending = self.pending[len(self.pending) - _held_back(self.pending, TOOL_CALL_END) :]
            return False
        self.num_complete += 1
        self.after_call = self.may_call = True
        self.pending = self.pending[at + len(TOOL_CALL_END) :]
        self.state = _State.TEXT
        return True

    def _content(self, out: Pieces, text: str) -> None:
        if text:
            out.content += text
            self.may_call = text[-1].isspace()

    def _arguments(self, out: Pieces, text: str) -> None:
        last = out.calls[-1] if out.calls else None
        if last is not None and last.index == self.num_calls - 1:
            last.arguments += text
        else:
            out.calls.append(ToolCallDelta(self.num_calls - 1, arguments=text))

    def _flush(self, out: Pieces) -> None:
        """At the end (the answer was cut short): the arguments stay as written; the start of a call's
        markup is dropped, and so is its end; text held back in case it began a call is content only
        where no call could begin (right after a word, as in "a<")."""
        undecided = self.calls_or_answer and not self.num_calls  # an answer such as "<" of a choice
        if self.state is _State.TEXT and (not self.may_call or undecided):
            out.content += self.pending
        self.pending = ""


@dataclass
class ParsedCalls:
    content: str
    calls: list[ToolCallDelta]  # one per call, whole
    num_complete: int


def parse_all(text: str, calls_or_answer: bool = False) -> ParsedCalls:
    """The whole text at once: content, and each call with its id, name and complete arguments."""
    parser = ToolCallParser(calls_or_answer)
    pieces = parser.feed(text, final=True)
    calls: list[ToolCallDelta] = []
    for piece in pieces.calls:
        if piece.id is not None:
            calls.append(piece)
        else:
            calls[piece.index].arguments += piece.arguments
    return ParsedCalls(pieces.content, calls, parser.num_complete)
