"""LangChain adapters: `ChatRadixLM` (a chat model with grammar-constrained tool calling and
structured output, streamed as it decodes) and `RadixLLM` (a completion model whose batches reach the
engine at once, in langchain_llm.py).

Both connect lazily: constructing one never touches the engine; the first call attaches to the engine
at `endpoint` (or spawns one on `model`), sharing one client per (endpoint, model) in the process.
Each call is tagged with the id of the root run of its LangChain run tree as the engine's trace id,
so `client.stats()["traces"]` shows what a whole chain or agent run cost and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict

from radixlm.client import CONSTRAINT_FIELDS, Client, Result, StreamChunk

from .langchain_common import engine_info
from .langchain_llm import RadixLLM
from .langchain_params import RadixLMParams, logprobs_metadata, usage_metadata
from .langchain_stream import ReplyReader
from .langchain_tools import (MAX_STRING, TOOL_MAX_TOKENS, normalize_tool_choice, parse_reply,
                              response_format_schema, tighten, to_engine_messages, tool_reply_options,
                              tools_prompt)

__all__ = ["ChatRadixLM", "RadixLLM"]

# What every model an engine serves can do through this adapter; the context window comes from the engine.
CAPABILITIES = ModelProfile(
    text_inputs=True, image_inputs=False, image_url_inputs=False, pdf_inputs=False, audio_inputs=False,
    video_inputs=False, image_tool_message=False, pdf_tool_message=False, text_outputs=True, image_outputs=False,
    audio_outputs=False, video_outputs=False, reasoning_output=False, tool_calling=True, tool_choice=True,
    tool_call_streaming=True, structured_output=True, mid_conversation_system_messages=True, attachment=False,
    temperature=True)


def context_profile(info: dict[str, Any]) -> ModelProfile:
    """The profile's token limits from an engine's `info()`: a prompt leaves room for one new token,
    and a reply fills at most what the prompt leaves."""
    limit = int(info["max_context"]) - 1
    return ModelProfile(max_input_tokens=limit, max_output_tokens=limit)


@dataclass(frozen=True)
class ToolReply:
    """A reply under the tool grammar: the bound tools' names, and whether the answer is an object of
    the `response_format` schema (else {"answer": text})."""

    tool_names: tuple[str, ...]
    json_answer: bool


class ChatRadixLM(RadixLMParams, BaseChatModel):
    """Chat model served by a radixlm engine. Messages are rendered with the model's own chat template
    by the engine; tool calls and structured output are produced under a grammar, so they always parse,
    and they stream as they decode (answer text, `tool_call_chunks` with partial arguments, partial JSON).

    ```python
    from radixlm.adapters.langchain import ChatRadixLM
    llm = ChatRadixLM(model="smollm2", max_tokens=64)
    llm.invoke("Hello!")
    llm.bind_tools([add], tool_choice="any").invoke("What is 2 + 3?").tool_calls
    ```

    `profile` tells the capabilities at once; its `max_input_tokens` / `max_output_tokens` come from
    the engine's info as soon as this process has attached to the engine (at construction when it
    already has, else at the model's first call).
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    streaming: bool = False
    """Stream by default in `invoke` (used by callbacks that want tokens)."""
    tool_max_tokens: int = TOOL_MAX_TOKENS
    """Token budget of a tool call or structured reply (at least max_tokens), so JSON is not cut off."""
    max_string_length: int | None = MAX_STRING
    """In tool arguments and structured replies, strings whose schema sets no maxLength are capped at
    this many characters (None: no cap), so a small model cannot loop inside one."""

    @property
    def _llm_type(self) -> str:
        return "radixlm-chat"

    # -- profile ---------------------------------------------------------------------------------

    def _resolve_model_profile(self) -> ModelProfile:
        profile = ModelProfile(name=self.model, **CAPABILITIES)
        info = engine_info(self.endpoint, self.model)
        return ModelProfile(**profile, **context_profile(info)) if info is not None else profile

    def _client(self) -> Client:
        client = super()._client()
        if self.profile is not None and "max_input_tokens" not in self.profile:
            limits = context_profile(engine_info(self.endpoint, self.model))
            self.profile = ModelProfile(**{**limits, **self.profile})  # what the caller set stays
        return client

    # -- requests --------------------------------------------------------------------------------

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any,
                 kwargs: dict[str, Any]) -> tuple[list[dict], dict[str, Any], ToolReply | None]:
        """(engine messages, generation options, reply format): the reply format is None for free
        (or plainly constrained) text, a `ToolReply` for a reply under the tool grammar."""
        kwargs = dict(kwargs)
        for key in ("ls_structured_output_format", "structured_output_format", "stream"):
            kwargs.pop(key, None)
        tools = kwargs.pop("tools", None)
        choice = kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        opts = self._options(stop, kwargs, run_manager)
        answer = response_format_schema(response_format, self.max_string_length) if response_format else None
        if tools:
            opts = tool_reply_options(opts, tools, choice or "auto", answer, self.max_string_length,
                                      self.tool_max_tokens)
            prompt = to_engine_messages(messages, tools_prompt(tools, json_answer=answer is not None))
            return prompt, opts, ToolReply(tuple(t["function"]["name"] for t in tools), answer is not None)
        if answer is not None:
            opts["json_schema"] = answer
        elif isinstance(opts.get("json_schema"), dict):
            opts["json_schema"] = tighten(opts["json_schema"], self.max_string_length)
        if CONSTRAINT_FIELDS & opts.keys():
            opts["max_new_tokens"] = max(opts["max_new_tokens"], self.tool_max_tokens)
        return to_engine_messages(messages), opts, None

    def _metadata(self, r: Result, called: bool) -> dict[str, Any]:
        metadata: dict[str, Any] = {"model_name": self.model, "model_provider": "radixlm",
                                    "finish_reason": "tool_calls" if called and r.finish_reason == "stop"
                                    else r.finish_reason}
        if r.output_logprobs is not None:
            metadata["logprobs"] = logprobs_metadata(r.output_logprobs, r.output_top_logprobs)
        return metadata

    def _from_result(self, r: Result, reply: ToolReply | None) -> ChatResult:
        usage = usage_metadata(r.prompt_tokens, r.cached_tokens, r.completion_tokens)
        if reply is None:
            msg = AIMessage(content=r.text, usage_metadata=usage, response_metadata=self._metadata(r, False))
        else:
            content, calls, invalid = parse_reply(r.text, json_answer=reply.json_answer)
            msg = AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid, usage_metadata=usage,
                            response_metadata=self._metadata(r, bool(calls)))
        info: dict[str, Any] = {"finish_reason": msg.response_metadata["finish_reason"]}
        if r.output_logprobs is not None:
            info["logprobs"] = msg.response_metadata["logprobs"]
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info=info)],
                          llm_output={"model_name": self.model})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        prompt, opts, reply = self._request(messages, stop, run_manager, kwargs)
        return self._from_result(self._client().generate(prompt, **opts), reply)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        prompt, opts, reply = self._request(messages, stop, run_manager, kwargs)
        return self._from_result(await self._client().aio.generate(prompt, **opts), reply)

    # -- streaming -------------------------------------------------------------------------------

    def _chunk(self, item: StreamChunk | Result, reader: ReplyReader | None) -> ChatGenerationChunk | None:
        """The LangChain chunk of one streamed item (None when it adds nothing): new text, or under the
        tool grammar the answer text and tool-call chunks it completes; the final result closes the
        message with usage, finish reason and logprobs."""
        if isinstance(item, Result):
            metadata = self._metadata(item, reader is not None and reader.called)
            usage = usage_metadata(item.prompt_tokens, item.cached_tokens, item.completion_tokens)
            info = {"finish_reason": metadata["finish_reason"]}
            return ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage, response_metadata=metadata,
                                                              chunk_position="last"), generation_info=info)
        if reader is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=item.text)) if item.text else None
        piece = reader.feed(item.text)
        if not piece.content and not piece.tool_call_chunks:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content=piece.content, tool_call_chunks=piece.tool_call_chunks))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        prompt, opts, reply = self._request(messages, stop, run_manager, kwargs)
        reader = ReplyReader(reply.tool_names, reply.json_answer) if reply is not None else None
        for item in self._client().stream(prompt, include_result=True, **opts):
            chunk = self._chunk(item, reader)
            if chunk is None:
                continue
            if run_manager and not isinstance(item, Result):
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        prompt, opts, reply = self._request(messages, stop, run_manager, kwargs)
        reader = ReplyReader(reply.tool_names, reply.json_answer) if reply is not None else None
        async for item in self._client().aio.stream(prompt, include_result=True, **opts):
            chunk = self._chunk(item, reader)
            if chunk is None:
                continue
            if run_manager and not isinstance(item, Result):
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
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
        tool_choice = normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
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
