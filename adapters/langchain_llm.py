"""`RadixLLM`: LangChain's completion-model interface on a radixlm engine. A batch of prompts is sent
to the engine at once, so the engine schedules them together."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from radixlm.client import Result, StreamChunk

from .langchain_params import RadixLMParams, logprobs_metadata


class RadixLLM(RadixLMParams, BaseLLM):
    """Completion model served by a radixlm engine. A batch of prompts is sent to the engine at once,
    so the engine schedules them together."""

    max_concurrency: int = 64
    """Most prompts in flight at once from one `generate` call."""

    @property
    def _llm_type(self) -> str:
        return "radixlm"

    def _generation(self, r: Result) -> list[Generation]:
        info: dict[str, Any] = {"finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
                                "cached_tokens": r.cached_tokens, "completion_tokens": r.completion_tokens}
        if r.output_logprobs is not None:
            info["logprobs"] = logprobs_metadata(r.output_logprobs, r.output_top_logprobs)
        return [Generation(text=r.text, generation_info=info)]

    def _llm_output(self, results: list[Result]) -> dict[str, Any]:
        return {"model_name": self.model,
                "token_usage": {"prompt_tokens": sum(r.prompt_tokens for r in results),
                                "cached_tokens": sum(r.cached_tokens for r in results),
                                "completion_tokens": sum(r.completion_tokens for r in results)}}

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        opts = self._options(stop, kwargs, run_manager)
        client = self._client()
        if len(prompts) == 1:
            results = [client.generate(prompts[0], **opts)]
        else:
            with ThreadPoolExecutor(max_workers=min(len(prompts), self.max_concurrency)) as pool:
                results = list(pool.map(lambda p: client.generate(p, **opts), prompts))
        return LLMResult(generations=[self._generation(r) for r in results], llm_output=self._llm_output(results))

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        opts = self._options(stop, kwargs, run_manager)
        client = self._client()
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(p: str) -> Result:
            async with limit:
                return await client.aio.generate(p, **opts)

        results = await asyncio.gather(*(one(p) for p in prompts))
        return LLMResult(generations=[self._generation(r) for r in results], llm_output=self._llm_output(results))

    @staticmethod
    def _chunk(item: StreamChunk | Result) -> GenerationChunk | None:
        if isinstance(item, Result):
            return GenerationChunk(text="", generation_info={"finish_reason": item.finish_reason})
        return GenerationChunk(text=item.text) if item.text else None

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        opts = self._options(stop, kwargs, run_manager)
        for item in self._client().stream(prompt, include_result=True, **opts):
            chunk = self._chunk(item)
            if chunk is None:
                continue
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        opts = self._options(stop, kwargs, run_manager)
        async for item in self._client().aio.stream(prompt, include_result=True, **opts):
            chunk = self._chunk(item)
            if chunk is None:
                continue
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
