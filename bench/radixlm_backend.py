"""radixlm as users reach it (a ZeroMQ client to the engine process), with every call recorded:
`RecordingBackend` for the program language and `RecordingRadixEngine` for DSPy.

Gen calls stream, so the first token's arrival is seen; token ids of prompts are the engine's own
tokenization (same tokenizer), output ids are what the engine returned.
"""

from __future__ import annotations

import time
from typing import Any

from radixlm.adapters.dspy_engine import RadixEngine
from radixlm.adapters.dspy_mapping import request_messages, request_options, to_response, translate_error
from radixlm.engine.tokenizer import Tokenizer
from radixlm.lang.backend import ChoiceScore, EngineBackend, GenOutput, Usage

from .calls import CallLog


class RecordingBackend(EngineBackend):
    """`EngineBackend` that records each call in `self.log` (replace it per workload)."""

    def __init__(self, client: Any, tokenizer: Tokenizer) -> None:
        super().__init__(client)
        self.tok = tokenizer
        self.log = CallLog()

    def generate(self, prompt: str, **options: Any) -> GenOutput:
        t0 = time.perf_counter()
        first = None
        for item in self.client.stream(prompt, include_result=True, **options):
            if first is None and getattr(item, "token_ids", None):
                first = time.perf_counter()
        r = item  # the final Result
        self.log.add("gen", self.tok.encode(prompt), r.output_ids, r.cached_tokens, (first or time.perf_counter()) - t0)
        return GenOutput(r.text, r.finish_reason, Usage(r.prompt_tokens, r.cached_tokens, r.completion_tokens),
                         r.matched_stop)

    def cache_prefix(self, prompt: str) -> Usage:
        t0 = time.perf_counter()
        usage = super().cache_prefix(prompt)
        self.log.add("prefix", self.tok.encode(prompt), [], usage.cached_tokens, time.perf_counter() - t0)
        return usage

    def score_choices(self, prefix: str, choices: list[str]) -> list[ChoiceScore]:
        t0 = time.perf_counter()
        scores = super().score_choices(prefix, choices)
        elapsed = time.perf_counter() - t0
        # The head request reports no usage back; the suite takes radixlm's hit rate from engine stats.
        self.log.add("prefix", self.tok.encode(prefix), [], 0, elapsed)
        for choice, score in zip(choices, scores):
            self.log.add("select", self.tok.encode(prefix + choice), [], score.usage.cached_tokens, elapsed)
        return scores


class RecordingRadixEngine(RadixEngine):
    """radixlm's DSPy engine, streaming each call to see its first token, recording it in `log`."""

    def __init__(self, client: Any, tokenizer: Tokenizer, log: CallLog) -> None:
        super().__init__(client)
        self.tok, self.log = tokenizer, log

    def complete(self, request):
        opts = request_options(request, self.trace_id)
        messages = request_messages(request)
        t0 = time.perf_counter()
        first = None
        try:
            for item in self.client.stream(messages, include_result=True, **opts):
                if first is None and getattr(item, "token_ids", None):
                    first = time.perf_counter()
        except Exception as exc:
            raise translate_error(exc) from exc
        prompt = self.tok.encode(self.tok.apply_chat_template(messages))
        self.log.add("gen", prompt, item.output_ids, item.cached_tokens, (first or time.perf_counter()) - t0)
        return to_response(request, item, opts.get("trace_id"))
