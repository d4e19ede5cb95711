"""Agent traces for DSPy: every LM call made inside one outermost module call carries one trace id,
and the LM calls of a running `dspy.ReAct` can see its tools (for per-tool argument grammars).

Both live in DSPy's thread-local overrides, so `dspy.Parallel` workers inside a traced module
inherit them, while each top-level `module.batch` example gets its own trace."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import dspy
from dspy.dsp.utils.settings import thread_local_overrides
from dspy.utils.callback import BaseCallback

from radixlm.client import end_trace_everywhere

_TRACE_KEY = "radixlm_trace_id"
_TOOLS_KEY = "radixlm_react_tools"


def current_trace_id() -> str | None:
    """The trace id the LM calls of the current DSPy module call carry (None outside one)."""
    return thread_local_overrides.get().get(_TRACE_KEY)


def current_tools() -> dict[str, Any] | None:
    """The tools (name -> dspy.Tool) of the innermost running dspy.ReAct (None outside one)."""
    return thread_local_overrides.get().get(_TOOLS_KEY)


def _set(key: str, value: Any):
    return thread_local_overrides.set({**thread_local_overrides.get(), key: value})


@contextlib.contextmanager
def trace(trace_id: str | None = None) -> Iterator[str]:
    """Group every LM call inside this block under one trace id (a new one if not given);
    an enclosing trace wins unless `trace_id` is given explicitly."""
    current = current_trace_id()
    if trace_id is None and current is not None:
        yield current
        return
    trace_id = trace_id or uuid.uuid4().hex
    token = _set(_TRACE_KEY, trace_id)
    try:
        yield trace_id
    finally:
        thread_local_overrides.reset(token)
        end_trace_everywhere(trace_id)  # the engine releases the KV it kept for this agent


class TraceCallback(BaseCallback):
    """Opens a trace id at the outermost DSPy module call and closes it when that call ends; while a
    `dspy.ReAct` runs, publishes its tools to the LM calls it makes.

    DSPy runs module callbacks in the caller's thread and context (sync and async), immediately
    around the module call, so what is set here is visible to every LM call the module makes."""

    def __init__(self) -> None:
        self._open: dict[str, list] = {}
        self._roots: dict[str, str] = {}  # call id of an outermost module call -> the trace it opened
        self._lock = threading.Lock()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        tokens = []
        if current_trace_id() is None:
            self._roots[call_id] = uuid.uuid4().hex
            tokens.append(_set(_TRACE_KEY, self._roots[call_id]))
        if isinstance(instance, dspy.ReAct):
            tokens.append(_set(_TOOLS_KEY, dict(instance.tools)))
        if tokens:
            with self._lock:
                self._open[call_id] = tokens

    def on_module_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        with self._lock:
            tokens = self._open.pop(call_id, [])
        opened = self._roots.pop(call_id, None)
        if opened is not None:
            end_trace_everywhere(opened)  # the engine releases the KV it kept for this agent
        for token in reversed(tokens):
            try:
                thread_local_overrides.reset(token)
            except ValueError:  # created in another context; leave that context to end by itself
                pass


_install_lock = threading.Lock()


def install_callback(callback_type: type[BaseCallback] = TraceCallback) -> None:
    """Add one `callback_type()` to DSPy's global callbacks (idempotent; module and adapter callbacks
    are read from there)."""
    with _install_lock:
        callbacks = list(dspy.settings.get("callbacks", []) or [])
        if any(isinstance(cb, callback_type) for cb in callbacks):
            return
        dspy.settings.configure(callbacks=[*callbacks, callback_type()])
