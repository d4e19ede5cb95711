"""What the httpx client's server dialects share: one HTTP call, and the stream parser interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import protocol as P
from ..client import Result, StreamChunk
from ..connection import EngineError

# The header SGLang's model gateway (smg) routes on. The client sends the trace id in it, so one key keeps
# an agent on one worker behind a router, and radixlm's front reads it as the trace id of the request.
ROUTING_KEY_HEADER = "x-smg-routing-key"
# HTTP statuses as the engine's error codes (radixlm.protocol.Error), so callers handle both alike.
STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "unauthorized", 404: "not_found",
                409: "duplicate_request", 413: "too_large", 422: "invalid_request", 429: "overloaded",
                503: "unavailable"}


def error_from_body(status: int, body: Any) -> EngineError:
    """The EngineError of an HTTP error answer (OpenAI's, SGLang's or vLLM's error body, or plain text)."""
    message = body
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message", err) if isinstance(err, dict) else err
    return EngineError(STATUS_CODES.get(status, "engine_error"), f"HTTP {status}: {message}")


@dataclass
class Call:
    """One HTTP request for one Generate: where it goes, its JSON body and headers."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    output_logprobs: bool = False  # the caller asked for output logprobs (else drop what came anyway)


class StreamParser(Protocol):
    def feed(self, event: dict[str, Any]) -> list[StreamChunk | Result]:
        """The chunks and finished results that one SSE event (decoded JSON) carries."""

    def close(self) -> list[StreamChunk | Result]:
        """What the end of the stream (`[DONE]`) completes."""


class Dialect(Protocol):
    """How one kind of server is asked to generate: radixlm or SGLang (native /generate), or any
    OpenAI-compatible server."""

    name: str

    def call(self, msg: P.Generate) -> Call:
        """The HTTP request of a Generate message (raises ValueError for what this server cannot do)."""

    def results(self, call: Call, data: Any) -> list[Result]:
        """The results of a non-streaming answer."""

    def stream_parser(self, call: Call) -> StreamParser:
        """A parser for the SSE events of a streaming answer."""
