"""The wire protocol between clients and the engine: msgspec Structs, msgpack-encoded, never pickle.

Its `SamplingParams` (with its `Constraint`) and `Result` are the one vocabulary of a generation: the
client builds them from its keyword options, the wire carries them and the engine validates and runs
them, under the same names everywhere.

A client's DEALER sends two frames, `[VERSION, payload]`; the engine's ROUTER replies with the same
two frames. Every request carries a client-chosen `rid`; every reply names the `rid` it answers.
Unknown fields, wrong types and unknown tags fail decoding and are answered with an `Error`.
"""

from __future__ import annotations

import json
from typing import Any, Union

import msgspec

VERSION = b"radixlm/2"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class _Message(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", kw_only=True, omit_defaults=True):
    rid: str


DEFAULT_MAX_NEW_TOKENS = 128
"""The output budget of a request that names none (every client, adapter and front uses this one)."""


def max_new_tokens_of(max_tokens: int | None, default: int = DEFAULT_MAX_NEW_TOKENS) -> int:
    """`max_tokens` (the name OpenAI, DSPy, LangChain and SGLang's `gen` use) as the engine's
    `max_new_tokens`: the one place where the two names meet. None gives `default`."""
    return default if max_tokens is None else max_tokens


def json_schema_of(schema: dict[str, Any] | str) -> dict[str, Any]:
    """A JSON schema given as an object or as its JSON text, as the object (key order kept: it is the
    order of the output); raise ValueError naming the problem."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise ValueError(f"invalid JSON schema: not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"invalid JSON schema: expected a JSON object, got {schema!r}")
    return schema


class Constraint(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Grammar-constrained decoding: set exactly one field. The schema stays an object and the choices a
    list until the engine compiles the grammar."""

    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    choices: list[str] | None = None
    lark: str | None = None

    def selected(self) -> tuple[str, Any]:
        """(kind, value) of the one field set; raise ValueError unless exactly one is."""
        given = [(k, getattr(self, k)) for k in self.__struct_fields__ if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a constraint sets exactly one of regex, json_schema, choices, lark")
        return given[0]


class SamplingParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """How to decode one request, from the client through the wire to the engine's sampler.

    temperature 0 means greedy (argmax). top_k <= 0 disables top-k. repetition_penalty follows
    HF/vLLM (tokens of prompt + output: positive logits divided, negative multiplied);
    frequency_penalty and presence_penalty follow OpenAI (output tokens only). `n` samples share the
    prompt; sample i is seeded `seed + i`. `logprobs`: the logprob of each generated token;
    `top_logprobs`: that many alternatives per position; `logprob_start_len` >= 0: prompt logprobs
    from that position on (-1: none; such a request recomputes from there, since cached positions
    have no logits). The engine checks every field (radixlm.engine.validation)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
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
    logprobs: bool = False
    top_logprobs: int = 0
    logprob_start_len: int = -1
    constraint: Constraint | None = None

    @property
    def greedy(self) -> bool:
        """Whether this request takes the argmax instead of sampling."""
        return self.temperature == 0

    @property
    def wants_logprobs(self) -> bool:
        """Whether the generated tokens' logprobs are reported."""
        return self.logprobs or self.top_logprobs > 0


class Generate(_Message, tag="generate"):
    """Generate from exactly one of: `text`, `input_ids`, or chat `messages` (rendered with the model's
    chat template). `prefix_only` computes and caches the prompt without generating."""

    text: str | None = None
    input_ids: list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    sampling: SamplingParams = msgspec.field(default_factory=SamplingParams)
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


# [logprob, token_id, token_text], as SGLang reports them; None for the first prompt token. Results read
# from an OpenAI server have no token ids (None).
TokenLogprob = tuple[float, Union[int, None], str]


class Result(msgspec.Struct, omit_defaults=True):
    """A finished generation, as the engine sends it and every client returns it."""

    text: str
    output_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    matched_stop: str | int | None = None
    output_logprobs: list[TokenLogprob] | None = None
    output_top_logprobs: list[list[TokenLogprob]] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_top_logprobs: list[list[TokenLogprob]] | None = None


class Chunk(_Message, tag="chunk"):
    """Streamed progress: new token ids and the text they completed; with output logprobs asked,
    the new tokens' logprobs (and top alternatives) too."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    top_logprobs: list[list[TokenLogprob]] | None = None


class Done(_Message, tag="done"):
    """A finished generation; `index` tells the samples of an n > 1 request apart."""

    result: Result
    index: int = 0


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
