"""DSPy on the radixlm engine, through DSPy 3.4's canonical engine contract.

    import dspy
    from radixlm.adapters.dspy import LM
    dspy.configure(lm=LM("smollm2"))   # attaches to (or spawns) the local engine

`LM(...)` returns a plain `dspy.LM` whose `engine=` / `async_engine=` are a `RadixEngine` /
`AsyncRadixEngine` pair (dspy_engine.py); the request/response mapping is in dspy_mapping.py.
Whatever DSPy adapter formats a request (ChatAdapter by default, its JSONAdapter fallback, a
JSONAdapter), the reply is decoded under the grammar of what that adapter parses (dspy_plan.py,
dspy_grammar.py), so the first reply parses. Native function calling: dspy_tools.py.
Usage reports prefix reuse as `cache_read_tokens` (DSPy's usage tracker shows them as
prompt_tokens_details.cached_tokens). Every LM call inside one outermost module call carries one
trace id (dspy_trace.py; see `client.stats()["traces"]`)."""

from __future__ import annotations

from typing import Any

import dspy

import radixlm
from radixlm.client import Client

from .dspy_engine import AsyncRadixEngine, RadixEngine
from .dspy_grammar import chat_grammar, json_reply_schema
from .dspy_plan import PlanCallback
from .dspy_trace import TraceCallback, current_trace_id, install_callback, trace

# DSPy's own adapters: on this engine they need no subclass any more (the engine gives each reply its
# adapter's grammar). The names stay importable from here for code written against earlier versions.
JSONAdapter = dspy.JSONAdapter
ChatAdapter = dspy.ChatAdapter

__all__ = ["LM", "JSONAdapter", "ChatAdapter", "RadixEngine", "AsyncRadixEngine", "TraceCallback", "PlanCallback", "trace", "current_trace_id",
           "chat_grammar", "json_reply_schema"]


# DSPy's adapters ask for several output fields per reply (JSON, or [[ ## field ## ]] sections), and DSPy's
# own LM gave 1000 tokens by default (2.x); DSPy users expect a structured reply to fit without asking for
# a budget, so this LM keeps a larger default than the engine's DEFAULT_MAX_NEW_TOKENS.
DSPY_MAX_TOKENS = 512


def LM(model: str = "smollm2", endpoint: str | None = None, *, client: Client | None = None,
       temperature: float | None = 0.0, max_tokens: int | None = DSPY_MAX_TOKENS, cache: bool = True,
       num_retries: int = 3, timeout: float | None = None, trace: bool = True,
       engine_options: dict[str, Any] | None = None, **kwargs: Any) -> dspy.LM:
    """A `dspy.LM` served by the radixlm engine.

    model: engine model alias (e.g. "smollm2") or path, used when an engine must be spawned.
    endpoint: engine address (default: the user's ipc socket); attaches to a running engine or
        spawns one there (`radixlm.connect`). `client=` reuses an existing `radixlm.Client` instead.
    temperature / max_tokens / other kwargs (top_p, top_k, stop, seed, ...): default generation
        options, overridable per call like any dspy.LM.
    cache / num_retries / callbacks / ...: DSPy's own LM settings (its response cache and retries).
    timeout: seconds each engine call may take (None: no limit).
    trace: install `TraceCallback` so all LM calls of one outermost module call share a trace id.
    The `PlanCallback` that gives replies their adapter's grammar is always installed (both live in
    `dspy.settings.callbacks`: a later `dspy.configure(callbacks=[...])` must keep them).
    engine_options: EngineConfig fields for a spawned engine.
    """
    owns = client is None
    if client is None:
        client = radixlm.connect(endpoint, model, timeout=timeout, **(engine_options or {}))
    engine = RadixEngine(client, model, endpoint=client.endpoint, owns_client=owns)
    install_callback(PlanCallback)
    if trace:
        install_callback(TraceCallback)
    return dspy.LM(f"radixlm/{model}", engine=engine, async_engine=AsyncRadixEngine(engine),
                   temperature=temperature, max_tokens=max_tokens, cache=cache, num_retries=num_retries,
                   **kwargs)
