"""The wire protocol between clients and the engine: msgspec Structs, msgpack-encoded, never pickle.

A client's DEALER sends two frames, `[VERSION, payload]`; the engine's ROUTER replies with the same
two frames. Every request carries a client-chosen `rid`; every reply names the `rid` it answers.
Unknown fields, wrong types and unknown tags fail decoding and are answered with an `Error`.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

VERSION = b"radixlm/1"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class _Message(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", kw_only=True, omit_defaults=True):
    rid: str


class SamplingOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Decoding controls of one request (temperature 0 = greedy)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = []
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    n: int = 1


class Constraint(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Grammar-constrained decoding: set exactly one field."""

    regex: str | None = None
    json_schema: str | None = None
    choices: list[str] | None = None
    lark: str | None = None


class LogprobOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """`output`: logprob of each generated token; `top_k`: that many alternatives per position;
    `prompt_start`: prompt logprobs from that position (-1: none)."""

    output: bool = False
    top_k: int = 0
    prompt_start: int = -1


class Generate(_Message, tag="generate"):
    """Generate from exactly one of: `text`, `input_ids`, or chat `messages` (rendered with the model's
    chat template). `prefix_only` computes and caches the prompt without generating."""

    text: str | None = None
    input_ids: list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    sampling: SamplingOptions = msgspec.field(default_factory=SamplingOptions)
    constraint: Constraint | None = None
    logprobs: LogprobOptions | None = None
    stream: bool = False
    trace_id: str | None = None
    prefix_only: bool = False


class Abort(_Message, tag="abort"):
    """Stop request `target` and free its KV."""

    target: str


class EndTrace(_Message, tag="end_trace"):
    """The agent of `trace_id` is done: the engine releases the KV it kept for the trace."""

    trace_id: str


class Info(_Message, tag="info"):
    pass


class Stats(_Message, tag="stats"):
    """Engine counters; with `check_integrity` the engine also verifies its KV ownership invariants."""

    check_integrity: bool = False


class Flush(_Message, tag="flush"):
    """Drop every cached prefix. On loopback TCP only the owner (`token`, see radixlm.auth) may."""

    token: str | None = None


class Ping(_Message, tag="ping"):
    pass


class Shutdown(_Message, tag="shutdown"):
    """Stop the engine. On loopback TCP only the owner (`token`, see radixlm.auth) may."""

    token: str | None = None


Request = Union[Generate, Abort, EndTrace, Info, Stats, Flush, Ping, Shutdown]


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


# [logprob, token_id, token_text], as SGLang reports them; None for the first prompt token.
TokenLogprob = tuple[float, int, str]


class Chunk(_Message, tag="chunk"):
    """Streamed progress: new token ids and the text they completed; with output logprobs asked,
    the new tokens' logprobs (and top alternatives) too."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    top_logprobs: list[list[TokenLogprob]] | None = None


class Done(_Message, tag="done"):
    """A finished generation; `index` tells the samples of an n > 1 request apart."""

    text: str
    output_ids: list[int]
    finish_reason: str
    usage: Usage
    index: int = 0
    matched_stop: str | int | None = None
    output_logprobs: list[TokenLogprob] | None = None
    output_top_logprobs: list[list[TokenLogprob]] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_top_logprobs: list[list[TokenLogprob]] | None = None


class Error(_Message, tag="error"):
    """`code` is one of: bad_message, bad_version, invalid_request (rejected at the door, nothing
    allocated), request_failed (failed alone inside a step; the others went on), unknown_request,
    duplicate_request, unauthorized, engine_error."""

    code: str
    message: str


class Reply(_Message, tag="reply"):
    """Answer to Info, Stats, Flush, Ping, Shutdown, Abort and EndTrace."""

    data: dict[str, Any] = {}


class Heartbeat(_Message, tag="heartbeat"):
    """Sent by the engine about once a second to each client with requests in flight: a client that
    is gone is found this way (its requests are aborted) even when it streams nothing."""

    rid: str = ""


Response = Union[Chunk, Done, Error, Reply, Heartbeat]

_request_decoder = msgspec.msgpack.Decoder(Request)
_response_decoder = msgspec.msgpack.Decoder(Response)
_encoder = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_request(payload: bytes) -> Request:
    """Decode a client message; raises msgspec.ValidationError / DecodeError naming the problem."""
    return _request_decoder.decode(payload)


def decode_response(payload: bytes) -> Response:
    return _response_decoder.decode(payload)


def peek_rid(payload: bytes) -> str | None:
    """Best-effort `rid` of an undecodable message, so its Error can still be routed to the caller."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, ValueError, TypeError):
        return None
    rid = raw.get("rid") if isinstance(raw, dict) else None
    return rid if isinstance(rid, str) else None
