"""The backend interface the frontend language runs on, and `EngineBackend` over the ZeroMQ client.

A backend sees only TEXT prompts (the program state keeps its running prompt as text) so that an
HTTP backend can implement the same few calls later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

from ..client import Result, StreamChunk
from .chat import probe_chat_template
from .global_config import global_config


@dataclass
class Usage:
    """Token counts of one engine request (as the engine reported them)."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int = 0
    kind: str = "gen"


@dataclass
class GenOutput:
    """A finished generation. Logprob entries are (logprob, token_id, token_text), None where the
    engine has none (the first prompt token)."""

    text: str
    finish_reason: str
    usage: Usage
    matched_stop: Any = None
    output_logprobs: list | None = None
    output_top_logprobs: list | None = None
    prompt_logprobs: list | None = None
    prompt_top_logprobs: list | None = None


@dataclass
class StreamPiece:
    """New text of a streamed generation, the number of tokens it took, and their logprobs (when asked)."""

    text: str
    token_count: int
    logprobs: list | None = None
    top_logprobs: list | None = None


@dataclass
class ChoiceScore:
    """Logprobs of the tokens that spell one choice after a prefix, and the request's usage."""

    token_logprobs: list[float]
    token_ids: list[int]
    usage: Usage
    healed: bool = False  # the prefix's last token merged with the choice's first text
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    def generate(self, prompt: str, **options: Any) -> GenOutput:
        """Generate after `prompt`. Options: the client's (max_new_tokens, min_new_tokens, stop,
        temperature, top_p, top_k, seed, regex, json_schema, logprobs, top_logprobs,
        logprob_start_len, ...)."""

    def stream(self, prompt: str, **options: Any) -> Iterator[StreamPiece | GenOutput]:
        """Yield StreamPieces as tokens are generated, then the whole GenOutput last."""

    def cache_prefix(self, prompt: str) -> Usage:
        """Compute and cache `prompt` without generating (a prefix hint)."""

    def score_choices(self, prefix: str, choices: list[str]) -> list[ChoiceScore]:
        """Logprobs of each choice's tokens given `prefix`, scored together."""

    def chat_template_parts(self) -> dict[str, tuple[str, str]] | None:
        """{role: (begin text, end text)} for system/user/assistant in the model's chat template, or
        None when the model has no template this backend can express as text."""


class EngineBackend:
    """A Backend over a radixlm `Client` (default: `radixlm.connect()`)."""

    def __init__(self, client: Any = None, **connect_options: Any) -> None:
        if client is None:
            from ..client import connect

            client = connect(**connect_options)
        self.client = client
        self._parts: dict | None = None
        self._parts_probed = False

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompt: str, **options: Any) -> GenOutput:
        return _gen_output(self.client.generate(prompt, **options))

    def stream(self, prompt: str, **options: Any) -> Iterator[StreamPiece | GenOutput]:
        for item in self.client.stream(prompt, include_result=True, **options):
            if isinstance(item, StreamChunk):
                yield StreamPiece(item.text, len(item.token_ids), item.logprobs, item.top_logprobs)
            else:
                yield _gen_output(item)

    def cache_prefix(self, prompt: str) -> Usage:
        r = self.client.generate(prompt, prefix_only=True)
        return Usage(r.prompt_tokens, r.cached_tokens, 0, kind="prefix")

    # -- select ---------------------------------------------------------------------------------
    def score_choices(self, prefix: str, choices: list[str]) -> list[ChoiceScore]:
        """Send the prefix once (prefix_only, also asking the logprob of its LAST token so that its id
        is known), then every `prefix + choice` as prefix_only requests with prompt logprobs from the
        prefix's last position, all sent back to back from one event loop so that the engine admits
        them into one extend pass over the cached prefix. Token healing: `prefix + choice` is
        tokenized as one text; if the token at the prefix's last position is not the prefix's own last
        token, the boundary merged and that merged token counts as part of the choice."""
        if not prefix:
            raise ValueError("select needs a non-empty prefix")
        head = self.client.generate(prefix, prefix_only=True, logprob_start_len=1 << 30)
        n = head.prompt_tokens
        last_id = head.prompt_logprobs[-1][1] if n > 1 and head.prompt_logprobs and head.prompt_logprobs[-1] else None
        start = max(n - 1, 0)

        async def all_choices() -> list[Result]:
            return await asyncio.gather(*(self.client.aio.generate(prefix + c, prefix_only=True, logprob_start_len=start)
                                          for c in choices))

        def score(r: Result) -> ChoiceScore:
            entries = list(r.prompt_logprobs or [])
            healed = not entries or entries[0] is None or entries[0][1] != last_id
            picked = [e for e in (entries if healed else entries[1:]) if e is not None]
            return ChoiceScore([e[0] for e in picked], [e[1] for e in picked],
                               Usage(r.prompt_tokens, r.cached_tokens, 0, kind="select"), healed)

        return [score(r) for r in asyncio.run(all_choices())]

    # -- chat -----------------------------------------------------------------------------------
    def chat_template_parts(self) -> dict[str, tuple[str, str]] | None:
        if not self._parts_probed:
            self._parts = probe_chat_template(self.client)
            self._parts_probed = True
        return self._parts


def _gen_output(r: Result) -> GenOutput:
    return GenOutput(r.text, r.finish_reason, Usage(r.prompt_tokens, r.cached_tokens, r.completion_tokens),
                     r.matched_stop, r.output_logprobs, r.output_top_logprobs, r.prompt_logprobs, r.prompt_top_logprobs)


def set_default_backend(backend: Backend) -> None:
    """The backend programs run on when `run` gets none (`sgl.global_config.default_backend`)."""
    global_config.default_backend = backend


def get_default_backend() -> Backend:
    """The default backend; an EngineBackend over `radixlm.connect()` when none was set."""
    if global_config.default_backend is None:
        global_config.default_backend = EngineBackend()
    return global_config.default_backend
