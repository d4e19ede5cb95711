"""Reading a tool-grammar reply while it decodes. The grammar of `langchain_tools.tool_call_grammar`
writes either a call, `{"name": "<tool>", "arguments": {...}}`, or an answer: `{"answer": "<text>"}`
(or, with a `response_format`, an object of that schema). `ReplyReader` turns the reply's text, fed in
the pieces the engine streams, into what LangChain streams: content text as the answer decodes, and
`tool_call_chunks` (the call's name and id first, then its arguments' JSON text piece by piece).

Joining everything a reader yields gives the same message `parse_reply` makes from the whole text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk

from .langchain_tools import dumps, new_call_id

ANSWER_HEAD = '{"answer": "'


def call_head(name: str) -> str:
    """How the grammar's JSON starts for a call of tool `name`, up to its arguments' value."""
    return "{" + dumps("name") + ": " + dumps(name) + ", " + dumps("arguments") + ": "


@dataclass
class Piece:
    """What one fed text adds: answer text, and at most one tool-call chunk."""

    content: str = ""
    tool_call_chunks: list[ToolCallChunk] = field(default_factory=list)


class ReplyReader:
    """Incremental reader of one tool-grammar reply. `tool_names`: the bound tools; `json_answer`: the
    answer is an object of its own schema (streamed as its JSON text) instead of {"answer": text}."""

    def __init__(self, tool_names: Sequence[str], json_answer: bool) -> None:
        self.heads = {call_head(n): n for n in tool_names}
        self.json_answer = json_answer
        self.state = "head"  # head -> call | answer_text | answer_json -> done
        self.buffer = ""  # undecided head, or the answer string's raw JSON not decoded yet
        self.depth = 0  # nesting of the call's arguments object
        self.in_string = self.escaped = False
        self.call_id: str | None = None

    @property
    def called(self) -> bool:
        return self.call_id is not None

    def feed(self, text: str) -> Piece:
        piece = Piece()
        if self.state == "head":
            text = self._decide(self.buffer + text, piece)
        if self.state == "call":
            args = self._scan_arguments(text)
            if piece.tool_call_chunks:  # one chunk per piece: LangChain merges chunks across messages only
                piece.tool_call_chunks[0]["args"] += args
            elif args:
                piece.tool_call_chunks.append(tool_call_chunk(name=None, args=args, id=None, index=0))
        elif self.state == "answer_text":
            piece.content += self._decode_answer(text)
        elif self.state == "answer_json":
            piece.content += text
        return piece

    def _decide(self, text: str, piece: Piece) -> str:
        """Pick the reply's branch once its start tells; returns the text after the branch's head."""
        for head, name in self.heads.items():
            if text.startswith(head):
                self.state, self.call_id, self.buffer = "call", new_call_id(), ""
                piece.tool_call_chunks.append(tool_call_chunk(name=name, args="", id=self.call_id, index=0))
                return text[len(head):]
        if not self.json_answer and text.startswith(ANSWER_HEAD):
            self.state, self.buffer = "answer_text", ""
            return text[len(ANSWER_HEAD):]
        candidates = list(self.heads) + ([] if self.json_answer else [ANSWER_HEAD])
        if any(head.startswith(text) for head in candidates):
            self.buffer = text  # still a prefix of more than one branch: wait for more text
            return ""
        if not self.json_answer:
            raise ValueError(f"reply {text!r} starts like no branch of the tool grammar")
        self.state, self.buffer = "answer_json", ""
        return text

    def _scan_arguments(self, text: str) -> str:
        """The part of `text` that belongs to the arguments object (the reply's closing brace does not)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.state = "done"
                    return text[:i + 1]
        return text

    def _decode_answer(self, text: str) -> str:
        """Decoded answer text from the raw JSON string body seen so far; an escape sequence cut in two
        (or half a surrogate pair) waits for the rest."""
        raw = self.buffer + text
        end = _string_end(raw)
        if end is not None:
            self.state, self.buffer = "done", ""
            return json.loads('"' + raw[:end] + '"')
        cut = _safe_cut(raw)
        self.buffer = raw[cut:]
        return json.loads('"' + raw[:cut] + '"') if cut else ""


def _string_end(raw: str) -> int | None:
    """Index of the unescaped quote that closes a JSON string body, if `raw` has it."""
    i = 0
    while i < len(raw):
        if raw[i] == "\\":
            i += 2
        elif raw[i] == '"':
            return i
        else:
            i += 1
    return None


def _safe_cut(raw: str) -> int:
    """Longest prefix of a JSON string body that ends on a whole character (not inside an escape, not
    after a lone high surrogate escape)."""
    i, cut = 0, 0
    while i < len(raw):
        if raw[i] != "\\":
            i += 1
        elif i + 1 >= len(raw):
            break
        elif raw[i + 1] != "u":
            i += 2
        elif i + 6 > len(raw):
            break
        elif 0xD800 <= int(raw[i + 2:i + 6], 16) <= 0xDBFF:
            if i + 12 > len(raw):
                break
            i += 12
        else:
            i += 6
        cut = i
    return cut
