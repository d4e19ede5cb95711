"""The request bodies of the OpenAI-compatible endpoints as msgspec Structs: decoding checks every field's
type and rejects fields the API does not have, naming the field. Besides OpenAI's own fields they take the
sampling extensions SGLang and vLLM accept (top_k, min_p, repetition_penalty, min_tokens, stop_token_ids,
ignore_eos, regex)."""

from __future__ import annotations

from typing import Any, Union

import msgspec


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    max_tokens: Union[int, None] = None
    temperature: Union[float, None] = None
    top_p: Union[float, None] = None
    n: int = 1
    stop: Union[str, list[str], None] = None
    seed: Union[int, None] = None
    stream: bool = False
    stream_options: Union[dict[str, Any], None] = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Union[dict[str, float], None] = None
    user: Union[str, None] = None
    prompt_cache_key: Union[str, None] = None
    # Extensions of SGLang's and vLLM's OpenAI servers.
    top_k: Union[int, None] = None
    min_p: Union[float, None] = None
    repetition_penalty: Union[float, None] = None
    min_tokens: Union[int, None] = None
    stop_token_ids: Union[list[int], None] = None
    ignore_eos: bool = False
    regex: Union[str, None] = None
    # Accepted and without effect here: bookkeeping fields of OpenAI's platform.
    store: Union[bool, None] = None
    metadata: Union[dict[str, str], None] = None
    service_tier: Union[str, None] = None


class ChatCompletionRequest(_Body):
    messages: list[dict[str, Any]]
    max_completion_tokens: Union[int, None] = None
    logprobs: bool = False
    top_logprobs: Union[int, None] = None
    tools: Union[list[dict[str, Any]], None] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Union[bool, None] = None
    response_format: Union[dict[str, Any], None] = None


class CompletionRequest(_Body):
    prompt: Any
    logprobs: Union[int, None] = None
    echo: bool = False
    suffix: Union[str, None] = None
    best_of: Union[int, None] = None
