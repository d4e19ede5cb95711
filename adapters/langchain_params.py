"""What both LangChain models share: their fields (engine address, sampling defaults), the engine
options one call sends, and LangChain's usage and logprob shapes of an engine result."""

from __future__ import annotations

from typing import Any

from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, Field

from radixlm.client import CONSTRAINT_FIELDS, Client
from radixlm.protocol import max_new_tokens_of

from .langchain_common import get_client, trace_id_for

PASSTHROUGH_OPTIONS = ("min_new_tokens", "repetition_penalty", "frequency_penalty", "presence_penalty", "min_p", "n",
                       "ignore_eos")


class RadixLMParams(BaseModel):
    """Fields shared by `ChatRadixLM` and `RadixLLM`."""

    model: str = "smollm2"
    """Model the engine serves (spawned with it when no engine answers at `endpoint`)."""
    endpoint: str | None = None
    """Engine address, e.g. "ipc:///tmp/engine.sock"; None: the user's default socket."""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    """Return each generated token's logprob (in response_metadata / generation_info)."""
    top_logprobs: int | None = None
    """With logprobs: that many alternatives per position."""
    timeout: float | None = None
    """Seconds to wait for one reply from the engine (None: forever)."""
    max_retries: int = 0
    """Accepted for compatibility with LangChain's standard parameters; a local engine is not retried."""
    engine_options: dict[str, Any] = Field(default_factory=dict)
    """EngineConfig options used only when this process spawns the engine."""

    def _client(self) -> Client:
        return get_client(self.endpoint, self.model, self.timeout, self.engine_options)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "endpoint": self.endpoint, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "top_p": self.top_p, "seed": self.seed}

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any], run_manager: Any = None) -> dict[str, Any]:
        """Engine generation options from the fields, overridden by per-call kwargs; the trace id is
        the root run of `run_manager`'s run tree."""
        kwargs = dict(kwargs)
        kwargs.pop("model", None)
        temperature = kwargs.pop("temperature", self.temperature)
        max_tokens = kwargs.pop("max_tokens", kwargs.pop("max_new_tokens", self.max_tokens))
        top_p = kwargs.pop("top_p", self.top_p)
        top_k = kwargs.pop("top_k", self.top_k)
        seed = kwargs.pop("seed", self.seed)
        logprobs = kwargs.pop("logprobs", self.logprobs)
        top_logprobs = kwargs.pop("top_logprobs", self.top_logprobs)
        stop = stop if stop is not None else self.stop
        opts: dict[str, Any] = {"max_new_tokens": max_new_tokens_of(max_tokens)}
        if temperature is not None:
            opts["temperature"] = float(temperature)
        if top_p is not None:
            opts["top_p"] = float(top_p)
        if top_k is not None:
            opts["top_k"] = int(top_k)
        if seed is not None:
            opts["seed"] = int(seed)
        if stop:
            opts["stop"] = list(stop)
        if logprobs or top_logprobs:
            opts["logprobs"] = True
            if top_logprobs:
                opts["top_logprobs"] = int(top_logprobs)
        for key in CONSTRAINT_FIELDS:
            if kwargs.get(key) is not None:
                opts[key] = kwargs.pop(key)
        for key in PASSTHROUGH_OPTIONS:
            if key in kwargs:
                opts[key] = kwargs.pop(key)
        trace = trace_id_for(run_manager)
        if trace is not None:
            opts["trace_id"] = trace
        return opts


def usage_metadata(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> UsageMetadata:
    """LangChain's usage of one reply; the prompt tokens served from the prefix cache are `cache_read`."""
    return UsageMetadata(input_tokens=prompt_tokens, output_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens,
                         input_token_details={"cache_read": cached_tokens})


def logprobs_metadata(output_logprobs: list | None, top: list | None) -> dict[str, Any]:
    """OpenAI-style {"content": [{"token", "logprob", "top_logprobs": [...]}, ...]}."""
    content = []
    for i, (lp, token_id, text) in enumerate(output_logprobs or []):
        entry: dict[str, Any] = {"token": text, "token_id": token_id, "logprob": lp}
        if top is not None and i < len(top):
            entry["top_logprobs"] = [{"token": t, "token_id": tid, "logprob": l} for l, tid, t in top[i]]
        content.append(entry)
    return {"content": content}
