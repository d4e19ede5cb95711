"""LangChain adapters: `ChatRadixLM` (a chat model with grammar-constrained tool calling and
structured output) and `RadixLLM` (a completion model whose batches reach the engine at once).

Both connect lazily: constructing one never touches the engine; the first call attaches to the engine
at `endpoint` (or spawns one on `model`), sharing one client per (endpoint, model) in the process.
Each call is tagged with the id of the root run of its LangChain run tree as the engine's trace id,
so `client.stats()["traces"]` shows what a whole chain or agent run cost and reused.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Sequence

from langchain_core.callbacks import (AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun)
from langchain_core.language_models import BaseChatModel, BaseLLM, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation, LLMResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field

from radixlm import protocol as P
from radixlm.client import Client, Result

from .langchain_common import astream_with_result, get_client, stream_with_result, trace_id_for
from .langchain_tools import (MAX_STRING, dumps, parse_reply, response_format_schema, text_answer_schema, tighten,
                              to_engine_messages, tool_call_grammar, tools_prompt)

__all__ = ["ChatRadixLM", "RadixLLM"]

DEFAULT_MAX_TOKENS = 256


class _RadixLMParams(BaseModel):
    """Fields shared by both adapters."""

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

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine generation options from the fields, overridden by per-call kwargs."""
        kwargs = dict(kwargs)
        kwargs.pop("model", None)
        opts: dict[str, Any] = {}
        temperature = kwargs.pop("temperature", self.temperature)
        max_tokens = kwargs.pop("max_tokens", kwargs.pop("max_new_tokens", self.max_tokens))
        top_p = kwargs.pop("top_p", self.top_p)
        top_k = kwargs.pop("top_k", self.top_k)
        seed = kwargs.pop("seed", self.seed)
        logprobs = kwargs.pop("logprobs", self.logprobs)
        top_logprobs = kwargs.pop("top_logprobs", self.top_logprobs)
        stop = stop if stop is not None else self.stop
        opts["max_new_tokens"] = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
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
        for key in ("json_schema", "regex", "choices", "lark"):
            if kwargs.get(key) is not None:
                opts[key] = kwargs.pop(key)
        for key in ("min_new_tokens", "repetition_penalty", "frequency_penalty", "presence_penalty", "min_p", "n",
                    "ignore_eos"):
            if key in kwargs:
                opts[key] = kwargs.pop(key)
        return opts


def _usage(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> UsageMetadata:
    return UsageMetadata(input_tokens=prompt_tokens, output_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens,
                         input_token_details={"cache_read": cached_tokens})


def _logprobs_metadata(output_logprobs: list | None, top: list | None) -> dict[str, Any]:
    """OpenAI-style {"content": [{"token", "logprob", "top_logprobs": [...]}, ...]}."""
    content = []
    for i, (lp, token_id, text) in enumerate(output_logprobs or []):
        entry: dict[str, Any] = {"token": text, "token_id": token_id, "logprob": lp}
        if top is not None and i < len(top):
            entry["top_logprobs"] = [{"token": t, "token_id": tid, "logprob": l} for l, tid, t in top[i]]
        content.append(entry)
    return {"content": content}


class ChatRadixLM(_RadixLMParams, BaseChatModel):
    """Chat model served by a radixlm engine. Messages are rendered with the model's own chat template
    by the engine; tool calls and structured output are produced under a grammar, so they always parse.

    ```python
    from radixlm.adapters.langchain import ChatRadixLM
    llm = ChatRadixLM(model="smollm2", max_tokens=64)
    llm.invoke("Hello!")
    llm.bind_tools([add], tool_choice="any").invoke("What is 2 + 3?").tool_calls
    ```
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    streaming: bool = False
    """Stream by default in `invoke` (used by callbacks that want tokens)."""
    tool_max_tokens: int = 512
    """Token budget of a tool call or structured reply (at least max_tokens), so JSON is not cut off."""
    max_string_length: int | None = MAX_STRING
    """In tool arguments and structured replies, strings whose schema sets no maxLength are capped at
    this many characters (None: no cap), so a small model cannot loop inside one."""

    @property
    def _llm_type(self) -> str:
        return "radixlm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "endpoint": self.endpoint, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "top_p": self.top_p, "seed": self.seed}

    # -- requests --------------------------------------------------------------------------------

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any,
                 kwargs: dict[str, Any]) -> tuple[list[dict], dict[str, Any], str | None]:
        """(engine messages, generation options, reply format): the reply format is None for free text,
        "tools" for a tool-grammar reply whose answer is {"answer": text}, "tools+json" for one whose
        answer is the `response_format` object itself."""
        kwargs = dict(kwargs)
        for key in ("ls_structured_output_format", "structured_output_format", "stream"):
            kwargs.pop(key, None)
        tools = kwargs.pop("tools", None)
        choice = kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        opts = self._options(stop, kwargs)
        trace = trace_id_for(run_manager)
        if trace is not None:
            opts["trace_id"] = trace
        answer = response_format_schema(response_format, self.max_string_length) if response_format else None
        if tools:
            choice = choice or "auto"
            budget = opts["max_new_tokens"]
            # A text answer is capped at ~4 characters per token of max_tokens: a small model that
            # loops inside it stops near the budget the caller asked for.
            opts["json_schema"] = tool_call_grammar(tools, choice, self.max_string_length,
                                                    answer or text_answer_schema(4 * budget))
            if choice != "none":
                opts["max_new_tokens"] = max(budget, self.tool_max_tokens)
            opts.pop("stop", None)  # a stop string inside the JSON would cut the reply short
            prompt = to_engine_messages(messages, tools_prompt(tools, json_answer=answer is not None))
            return prompt, opts, "tools+json" if answer is not None else "tools"
        if answer is not None:
            opts["json_schema"] = answer
        elif isinstance(opts.get("json_schema"), dict):
            opts["json_schema"] = tighten(opts["json_schema"], self.max_string_length)
        if any(k in opts for k in ("json_schema", "regex", "choices", "lark")):
            opts["max_new_tokens"] = max(opts["max_new_tokens"], self.tool_max_tokens)
        return to_engine_messages(messages), opts, None

    def _message(self, text: str, finish_reason: str, prompt_tokens: int, cached: int, completion: int,
                 output_logprobs: list | None, top_logprobs: list | None, reply_format: str | None,
                 chunk: bool = False) -> AIMessage | AIMessageChunk:
        metadata: dict[str, Any] = {"model_name": self.model, "finish_reason": finish_reason,
                                    "model_provider": "radixlm"}
        if output_logprobs is not None:
            metadata["logprobs"] = _logprobs_metadata(output_logprobs, top_logprobs)
        usage = _usage(prompt_tokens, cached, completion)
        if reply_format is not None:
            content, calls, invalid = parse_reply(text, json_answer=reply_format == "tools+json")
            if calls and finish_reason == "stop":
                metadata["finish_reason"] = "tool_calls"
            if chunk:
                return AIMessageChunk(content=content, usage_metadata=usage, response_metadata=metadata,
                                      tool_call_chunks=[{"type": "tool_call_chunk", "name": c["name"],
                                                         "args": dumps(c["args"]), "id": c["id"], "index": i}
                                                        for i, c in enumerate(calls)],
                                      chunk_position="last")
            return AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid,
                             usage_metadata=usage, response_metadata=metadata)
        cls = AIMessageChunk if chunk else AIMessage
        extra = {"chunk_position": "last"} if chunk else {}
        return cls(content=text, usage_metadata=usage, response_metadata=metadata, **extra)

    def _from_result(self, r: Result, reply_format: str | None) -> ChatResult:
        msg = self._message(r.text, r.finish_reason, r.prompt_tokens, r.cached_tokens, r.completion_tokens,
                            r.output_logprobs, r.output_top_logprobs, reply_format)
        info: dict[str, Any] = {"finish_reason": msg.response_metadata["finish_reason"]}
        if r.output_logprobs is not None:
            info["logprobs"] = msg.response_metadata["logprobs"]
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info=info)],
                          llm_output={"model_name": self.model})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        prompt, opts, reply_format = self._request(messages, stop, run_manager, kwargs)
        return self._from_result(self._client().generate(prompt, **opts), reply_format)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        prompt, opts, reply_format = self._request(messages, stop, run_manager, kwargs)
        return self._from_result(await self._client().aio.generate(prompt, **opts), reply_format)

    def _final_chunk(self, done: P.Done, reply_format: str | None, streamed_text: bool) -> ChatGenerationChunk:
        u = done.usage
        msg = self._message("" if streamed_text else done.text, done.finish_reason, u.prompt_tokens,
                            u.cached_tokens, u.completion_tokens, done.output_logprobs, done.output_top_logprobs,
                            reply_format, chunk=True)
        return ChatGenerationChunk(message=msg, generation_info={"finish_reason": msg.response_metadata["finish_reason"]})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        prompt, opts, reply_format = self._request(messages, stop, run_manager, kwargs)
        constrained = reply_format is not None or "json_schema" in opts
        for reply in stream_with_result(self._client(), prompt, opts):
            if isinstance(reply, P.Done):
                chunk = self._final_chunk(reply, reply_format, streamed_text=not constrained)
            elif constrained or not reply.text:
                continue  # a grammar reply is delivered whole, so every chunk parses
            else:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=reply.text))
            if run_manager and chunk.message.content:
                run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        prompt, opts, reply_format = self._request(messages, stop, run_manager, kwargs)
        constrained = reply_format is not None or "json_schema" in opts
        async for reply in astream_with_result(self._client(), prompt, opts):
            if isinstance(reply, P.Done):
                chunk = self._final_chunk(reply, reply_format, streamed_text=not constrained)
            elif constrained or not reply.text:
                continue
            else:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=reply.text))
            if run_manager and chunk.message.content:
                await run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk

    # -- tools and structured output -------------------------------------------------------------

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: str | dict | bool | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools. `tool_choice`: "auto" (default: call a tool or answer), "any" / "required" / True
        (must call one), "none" (must answer), a tool's name or {"type": "function", "function": {"name": ...}}
        (must call that one). Calls are generated under a JSON-schema grammar, so they always parse. The
        tools stay in the prompt whatever the choice, so an agent that forces its last step to answer
        keeps its cached prefix. A `response_format` bound as well (OpenAI style, as `langchain.agents`
        binds it) is the schema of the answer, returned as JSON text in the content."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        if isinstance(tool_choice, dict):
            tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if tool_choice is True or tool_choice == "required":
            tool_choice = "any"
        if tool_choice is False:
            tool_choice = "none"
        if tool_choice not in (None, "auto", "any", "none") and tool_choice not in names:
            raise ValueError(f"tool_choice {tool_choice!r} is not one of the bound tools {names}")
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: dict | type, *,
                               method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
                               include_raw: bool = False, strict: bool | None = None,
                               **kwargs: Any) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Replies that follow `schema` (a Pydantic class, TypedDict, JSON schema or OpenAI tool dict).
        method "json_schema" (default): the reply is constrained to the schema; "function_calling": a
        forced call of a tool with that schema; "json_mode": any JSON object (prompt for the shape)."""
        if kwargs:
            raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "function_calling":
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name,
                                  ls_structured_output_format={"kwargs": {"method": method, "strict": strict},
                                                               "schema": tool})
            parser: Runnable = (PydanticToolsParser(tools=[schema], first_tool_only=True) if is_pydantic
                                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                json_schema = convert_to_json_schema(schema)
                fmt_schema: Any = json_schema
            else:
                json_schema, fmt_schema = {"type": "object"}, schema
            llm = self.bind(json_schema=json_schema,
                            ls_structured_output_format={"kwargs": {"method": method, "strict": strict},
                                                         "schema": fmt_schema})
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
        else:
            raise ValueError(f"unknown method {method!r}: use json_schema, function_calling or json_mode")
        if not include_raw:
            return llm | parser
        parser_assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
        return RunnableMap(raw=llm) | parser_with_fallback


class RadixLLM(_RadixLMParams, BaseLLM):
    """Completion model served by a radixlm engine. A batch of prompts is sent to the engine at once,
    so the engine schedules them together."""

    max_concurrency: int = 64
    """Most prompts in flight at once from one `generate` call."""

    @property
    def _llm_type(self) -> str:
        return "radixlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "endpoint": self.endpoint, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def _generation(self, r: Result) -> list[Generation]:
        info: dict[str, Any] = {"finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
                                "cached_tokens": r.cached_tokens, "completion_tokens": r.completion_tokens}
        if r.output_logprobs is not None:
            info["logprobs"] = _logprobs_metadata(r.output_logprobs, r.output_top_logprobs)
        return [Generation(text=r.text, generation_info=info)]

    def _llm_output(self, results: list[Result]) -> dict[str, Any]:
        return {"model_name": self.model,
                "token_usage": {"prompt_tokens": sum(r.prompt_tokens for r in results),
                                "cached_tokens": sum(r.cached_tokens for r in results),
                                "completion_tokens": sum(r.completion_tokens for r in results)}}

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        opts = self._options(stop, kwargs)
        trace = trace_id_for(run_manager)
        if trace is not None:
            opts["trace_id"] = trace
        client = self._client()
        if len(prompts) == 1:
            results = [client.generate(prompts[0], **opts)]
        else:
            with ThreadPoolExecutor(max_workers=min(len(prompts), self.max_concurrency)) as pool:
                results = list(pool.map(lambda p: client.generate(p, **opts), prompts))
        return LLMResult(generations=[self._generation(r) for r in results], llm_output=self._llm_output(results))

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        opts = self._options(stop, kwargs)
        trace = trace_id_for(run_manager)
        if trace is not None:
            opts["trace_id"] = trace
        client = self._client()
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(p: str) -> Result:
            async with limit:
                return await client.aio.generate(p, **opts)

        results = await asyncio.gather(*(one(p) for p in prompts))
        return LLMResult(generations=[self._generation(r) for r in results], llm_output=self._llm_output(results))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[Any]:
        from langchain_core.outputs import GenerationChunk

        opts = self._options(stop, kwargs)
        trace = trace_id_for(run_manager)
        if trace is not None:
            opts["trace_id"] = trace
        for reply in stream_with_result(self._client(), prompt, opts):
            if isinstance(reply, P.Done):
                yield GenerationChunk(text="", generation_info={"finish_reason": reply.finish_reason})
            elif reply.text:
                chunk = GenerationChunk(text=reply.text)
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
