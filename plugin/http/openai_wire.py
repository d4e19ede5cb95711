"""The OpenAI API as a client dialect, for vLLM, llama.cpp's and Ollama's servers or anything else that
speaks it: text and token-id prompts to `/v1/completions`, chat messages to `/v1/chat/completions`, a JSON
schema as `response_format`, regex / choices / lark as vLLM's `structured_outputs`, and the trace id as
`user` and as the routing-key header. OpenAI servers report no token ids: results carry `output_ids=[]`
and logprob entries (logprob, None, token text)."""

from __future__ import annotations

from typing import Any

from .. import protocol as P
from ..client import StreamChunk
from ..protocol import Result
from .wire import ROUTING_KEY_HEADER, Call, error_from_body

# Sampling options outside OpenAI's own API that vLLM and SGLang accept; sent only when not the default.
EXTENSIONS = {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty",
              "min_new_tokens": "min_tokens", "stop_token_ids": "stop_token_ids", "ignore_eos": "ignore_eos"}
_DEFAULTS = P.SamplingParams()


def _usage(data: dict[str, Any] | None) -> tuple[int, int, int]:
    u = data or {}
    details = u.get("prompt_tokens_details") or {}
    return u.get("prompt_tokens", 0), details.get("cached_tokens") or 0, u.get("completion_tokens", 0)


def _chat_logprobs(lp: dict | None) -> tuple[list | None, list | None]:
    if not lp or lp.get("content") is None:
        return None, None
    entries = lp["content"]
    return ([(e["logprob"], None, e["token"]) for e in entries],
            [[(t["logprob"], None, t["token"]) for t in e.get("top_logprobs") or []] for e in entries])


def _completion_logprobs(lp: dict | None) -> tuple[list | None, list | None]:
    if not lp or lp.get("tokens") is None:
        return None, None
    tops = lp.get("top_logprobs")
    return ([(v, None, t) for t, v in zip(lp["tokens"], lp["token_logprobs"])],
            None if tops is None else [[(v, None, t) for t, v in (top or {}).items()] for top in tops])


class OpenAIStreamParser:
    def __init__(self, chat: bool) -> None:
        self.chat, self.text, self.finish = chat, "", "stop"
        self.usage: dict | None = None

    def feed(self, event: dict[str, Any]) -> list[StreamChunk | Result]:
        if "error" in event:
            raise error_from_body(500, event)
        if event.get("usage"):
            self.usage = event["usage"]
        items: list[StreamChunk | Result] = []
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
            if piece:
                self.text += piece
                items.append(StreamChunk(piece, []))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return items

    def close(self) -> list[StreamChunk | Result]:
        prompt, cached, completion = _usage(self.usage)
        return [Result(self.text, [], self.finish, prompt, cached, completion)]


class OpenAIDialect:
    name = "openai"

    def __init__(self, model: str) -> None:
        self.model = model

    def call(self, msg: P.Generate) -> Call:
        s = msg.sampling
        if msg.prefix_only or s.logprob_start_len >= 0:
            raise ValueError("prefix hints and prompt logprobs (the program language's fork and select) need "
                             "SGLang's native /generate: connect to a radixlm or SGLang server for them")
        if s.n != 1:
            raise ValueError("n > 1 over the OpenAI API would report one usage for all samples; send n requests")
        chat = msg.messages is not None
        body: dict[str, Any] = {"model": self.model, "max_tokens": s.max_new_tokens, "temperature": s.temperature}
        if chat:
            body["messages"] = msg.messages
        else:
            body["prompt"] = msg.text if msg.text is not None else list(msg.input_ids)
        for name in ("top_p", "seed", "frequency_penalty", "presence_penalty"):
            if getattr(s, name) != getattr(_DEFAULTS, name):
                body[name] = getattr(s, name)
        if s.stop:
            body["stop"] = list(s.stop)
        for name, key in EXTENSIONS.items():
            if getattr(s, name) != getattr(_DEFAULTS, name):
                body[key] = getattr(s, name)
        if s.wants_logprobs:
            if chat:
                body["logprobs"] = True
                if s.top_logprobs:
                    body["top_logprobs"] = s.top_logprobs
            else:
                body["logprobs"] = s.top_logprobs
        if s.constraint is not None:
            body.update(self.constraint_fields(s.constraint, chat))
        headers = {}
        if msg.trace_id:
            body["user"] = msg.trace_id
            headers[ROUTING_KEY_HEADER] = msg.trace_id
        if msg.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        return Call(path, body, headers, output_logprobs=s.logprobs)

    def constraint_fields(self, c: P.Constraint, chat: bool) -> dict[str, Any]:
        """The body fields that ask for constraint `c`: a JSON schema as OpenAI's `response_format`, the
        others as vLLM's `structured_outputs`."""
        if c.json_schema is not None:
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": "output", "schema": c.json_schema, "strict": True}}}
        if c.regex is not None:
            return {"structured_outputs": {"regex": c.regex}}
        if c.choices is not None:
            return {"structured_outputs": {"choice": list(c.choices)}}
        return {"structured_outputs": {"grammar": c.lark}}

    def results(self, call: Call, data: Any) -> list[Result]:
        chat = call.path.endswith("/chat/completions")
        prompt, cached, completion = _usage(data.get("usage"))
        out = []
        for choice in data["choices"]:
            text = (choice["message"].get("content") or "") if chat else choice["text"]
            lp, top = (_chat_logprobs if chat else _completion_logprobs)(choice.get("logprobs"))
            out.append(Result(text, [], choice.get("finish_reason") or "stop", prompt, cached, completion,
                              output_logprobs=lp if call.output_logprobs else None,
                              output_top_logprobs=top if call.output_logprobs and top and any(top) else None))
        return out

    def stream_parser(self, call: Call) -> OpenAIStreamParser:
        return OpenAIStreamParser(call.path.endswith("/chat/completions"))
