"""Token ids to text, in one place for the engine and the server: the final text of a request
(trimmed at its stop string), the stop-string search, a stream's incremental text, and the text of
each token in logprob lists.

Incremental text: each step decodes only the tokens since the previous step plus the ones before
them (`prefix_offset` .. end), and keeps the part past what the earlier tokens alone decode to. A
step whose text ends inside a UTF-8 sequence (the tokenizer renders it as U+FFFD) sends nothing and
waits for the next token. Of the text that is sent, the longest end that could still grow into a
stop string is held back, so a stream never shows text that the stop then trims away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .request import Request, TokenLogprob

INCOMPLETE = "\ufffd"  # what a decoder renders a cut-off UTF-8 sequence as


class TokenDecoder(Protocol):
    """What the detokenizer needs of a tokenizer."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`."""


@dataclass
class TextStream:
    """One streamed request's text: what was decoded (the output up to `read_offset` tokens) and what
    was sent (`sent_text`, covering `sent_tokens` output tokens)."""

    decoded: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    sent_text: str = ""
    sent_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    """The next piece of a stream: its new text and the output tokens it covers."""

    text: str
    tokens: slice


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Detokenizer:
    """Text of token ids for one tokenizer; an engine without a tokenizer has no text ("" in
    streams and logprob lists, None as a final text) and cannot stop on strings."""

    def __init__(self, tokenizer: TokenDecoder | None) -> None:
        self.tokenizer = tokenizer

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`; "" without a tokenizer."""
        return self.tokenizer.decode(ids, skip_special_tokens) if self.tokenizer is not None else ""

    def final_text(self, req: Request) -> str | None:
        """The request's output text, trimmed where its stop string starts; None without a tokenizer."""
        if self.tokenizer is None:
            return None
        text = self.decode(req.output_ids)
        return text if req.stop_text_end is None else text[: req.stop_text_end]

    def find_stop(self, output_ids: Sequence[int], stops: Sequence[str], new_tokens: int) -> tuple[int, str] | None:
        """Where the first stop string starts in the output text and which one it is, or None.

        A new match must end in the `new_tokens` newest tokens, so only a tail window of the output
        is decoded (every token holds at least one byte); the whole output is decoded once, when the
        tail shows a match, to place the trim exactly."""
        if self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        window = new_tokens + 2 * max(len(s.encode()) for s in stops) + 3
        tail = self.decode(output_ids[-window:])
        if not any(s in tail for s in stops):
            return None
        text = self.decode(output_ids)
        hits = [(i, s) for i, s in ((text.find(s), s) for s in stops) if i >= 0]
        return min(hits) if hits else None

    def next_delta(self, stream: TextStream, req: Request) -> TextDelta | None:
        """The text of the request's output tokens not yet sent on `stream`, or None when there is
        nothing to send yet (no new token, or the text ends inside a character)."""
        ids = req.output_ids
        if len(ids) <= stream.sent_tokens:
            return None
        if req.finish_reason is None:
            if not self._decode_new(stream, ids):
                return None
            text = stream.decoded[: len(stream.decoded) - held_back(stream.decoded, req.params.stop)]
        else:
            text = self.final_text(req) or ""  # once per request, at its end
        delta = text[len(stream.sent_text) :] if text.startswith(stream.sent_text) else text
        tokens = slice(stream.sent_tokens, len(ids))
        stream.sent_tokens, stream.sent_text = len(ids), text
        return TextDelta(delta, tokens)

    def _decode_new(self, stream: TextStream, ids: Sequence[int]) -> bool:
        """Extend `stream.decoded` with the new tokens' text; False while it ends inside a character."""
        before = self.decode(ids[stream.prefix_offset : stream.read_offset])
        after = self.decode(ids[stream.prefix_offset :])
        if after.endswith(INCOMPLETE):
            return False
        stream.decoded += after[len(before) :]
        stream.prefix_offset, stream.read_offset = stream.read_offset, len(ids)
        return True

    def logprob_texts(self, pairs: Sequence[TokenLogprob | None] | None) -> list[tuple[float, int, str] | None] | None:
        """(logprob, token id) pairs with each token's own text (special tokens kept) appended."""
        if pairs is None:
            return None
        return [None if p is None else (p[0], p[1], self.decode([p[1]], skip_special_tokens=False)) for p in pairs]

    def top_logprob_texts(self, lists: Sequence[Sequence[TokenLogprob]] | None) -> list | None:
        """`logprob_texts` of each position's top-logprob list."""
        return None if lists is None else [self.logprob_texts(t) for t in lists]
