"""SGLang's native `/generate` as a client dialect, for radixlm's HTTP front and SGLang servers: prompts as
text or token ids (chat messages go to radixlm's `/generate` extension, or to SGLang's
`/v1/chat/completions`), `max_new_tokens: 0` as the prefix hint, prompt logprobs for `select`, and the
trace id as SGLang's model gateway routing key, so an agent's calls land on one worker."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from .. import protocol as P
from ..client import StreamChunk
from ..protocol import Result
from .openai_wire import OpenAIDialect
from .wire import ROUTING_KEY_HEADER, Call, error_from_body

_DEFAULTS = P.SamplingParams()
# Fields of SamplingParams that SGLang's request carries outside `sampling_params` (or, the constraint, spread in it).
_OUTSIDE = {"logprobs", "top_logprobs", "logprob_start_len", "constraint"}


def _sampling_params(msg: P.Generate, radixlm: bool) -> dict[str, Any]:
    params = {k: v for k, v in msgspec.structs.asdict(msg.sampling).items()
              if k not in _OUTSIDE and v != getattr(_DEFAULTS, k)}
    if "seed" in params and not radixlm:
        params["sampling_seed"] = params.pop("seed")
    if msg.prefix_only:
        params["max_new_tokens"] = 0
    else:
        params["max_new_tokens"] = msg.sampling.max_new_tokens
    c = msg.sampling.constraint
    if c is not None:
        if c.regex is not None:
            params["regex"] = c.regex
        if c.json_schema is not None:  # SGLang takes the schema as JSON text
            params["json_schema"] = json.dumps(c.json_schema, ensure_ascii=False)
        if c.choices is not None:
            if radixlm:
                params["choices"] = list(c.choices)
            else:  # SGLang has no choices constraint: the same language as a regex
                params["regex"] = "(" + "|".join(re.escape(x) for x in c.choices) + ")"
        if c.lark is not None:
            if not radixlm:
                raise ValueError("lark grammars are radixlm's; SGLang takes EBNF (send it as a regex or json_schema)")
            params["lark"] = c.lark
    return params


def _entry(e: Any) -> tuple | None:
    if e is None or e[0] is None:
        return None
    return (e[0], e[1], e[2] if len(e) > 2 and e[2] is not None else "")


def _entries(xs: list | None) -> list | None:
    return None if xs is None else [_entry(e) for e in xs]


def _tops(lists: list | None) -> list | None:
    return None if lists is None else [[_entry(e) for e in (top or []) if e is not None] for top in lists]


def result_of(obj: dict[str, Any], call: Call) -> Result:
    """A Result from one SGLang-format answer object ({"text", "output_ids", "meta_info"})."""
    meta = obj["meta_info"]
    finish = meta.get("finish_reason") or {}
    kind = finish.get("type", "stop") if isinstance(finish, dict) else str(finish)
    if call.body["sampling_params"].get("max_new_tokens") == 0:
        kind = "stop"  # the prefix hint (radixlm's prefix_only): nothing was asked to be generated
    out_lp = meta.get("output_token_logprobs") if call.output_logprobs else None
    out_top = meta.get("output_top_logprobs") if call.output_logprobs else None
    wants_prompt = "logprob_start_len" in call.body
    return Result(
        text=obj.get("text", ""), output_ids=list(obj.get("output_ids") or []), finish_reason=kind,
        prompt_tokens=meta["prompt_tokens"], cached_tokens=meta.get("cached_tokens", 0),
        completion_tokens=meta.get("completion_tokens", 0),
        matched_stop=finish.get("matched") if isinstance(finish, dict) else None,
        output_logprobs=_entries(out_lp) if out_lp is not None else None,
        output_top_logprobs=_tops(out_top) if out_top is not None else None,
        prompt_logprobs=_entries(meta.get("input_token_logprobs")) if wants_prompt else None,
        prompt_top_logprobs=_tops(meta.get("input_top_logprobs")) if wants_prompt else None,
    )


class NativeStreamParser:
    """SGLang's streamed events carry the text and ids so far; chunks are their growth."""

    def __init__(self, call: Call) -> None:
        self.call, self.text, self.ids = call, "", 0

    def feed(self, event: dict[str, Any]) -> list[StreamChunk | Result]:
        if "error" in event:
            raise error_from_body(500, event)
        items: list[StreamChunk | Result] = []
        text, ids = event.get("text", ""), event.get("output_ids") or []
        delta = text[len(self.text):] if text.startswith(self.text) else text
        if delta or len(ids) > self.ids:
            items.append(StreamChunk(delta, list(ids[self.ids:])))
        self.text, self.ids = text, max(self.ids, len(ids))
        if event.get("meta_info", {}).get("finish_reason") is not None:
            items.append(result_of(event, self.call))
        return items

    def close(self) -> list[StreamChunk | Result]:
        return []


class NativeDialect:
    """radixlm's HTTP front (`radixlm=True`: chat messages, lark and choices travel as extensions) or an
    SGLang server, which renders chat templates on its OpenAI endpoint (`openai`) only."""

    def __init__(self, radixlm: bool, model: str) -> None:
        self.radixlm, self.openai = radixlm, OpenAIDialect(model)
        self.name = "radixlm" if radixlm else "sglang"

    def call(self, msg: P.Generate) -> Call:
        headers = {ROUTING_KEY_HEADER: msg.trace_id} if msg.trace_id else {}
        if msg.messages is not None and not self.radixlm:
            return self.openai.call(msg)
        body: dict[str, Any] = {"sampling_params": _sampling_params(msg, self.radixlm)}
        if msg.text is not None:
            body["text"] = msg.text
        elif msg.input_ids is not None:
            body["input_ids"] = list(msg.input_ids)
        else:
            body["messages"] = msg.messages
        s = msg.sampling
        if s.wants_logprobs or s.logprob_start_len >= 0:
            body["return_logprob"] = True
            body["return_text_in_logprobs"] = True
            if s.top_logprobs:
                body["top_logprobs_num"] = s.top_logprobs
            if s.logprob_start_len >= 0:
                body["logprob_start_len"] = s.logprob_start_len
        if msg.stream:
            body["stream"] = True
        return Call("/generate", body, headers, output_logprobs=s.logprobs)

    def results(self, call: Call, data: Any) -> list[Result]:
        if call.path != "/generate":
            return self.openai.results(call, data)
        objs = data if isinstance(data, list) else [data]
        return [result_of(o, call) for o in objs]

    def stream_parser(self, call: Call):  # noqa: ANN201
        if call.path != "/generate":
            return self.openai.stream_parser(call)
        return NativeStreamParser(call)

