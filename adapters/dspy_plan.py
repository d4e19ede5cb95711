"""What the DSPy adapter that formatted a request will parse, so the engine can decode its reply under
exactly that grammar.

DSPy calls `Adapter.format(signature, demos, inputs)` right before it sends the formatted messages to
the LM, in the same thread and context. `PlanCallback` records the adapter and the signature it
formatted, with the text of the last message it produced; the engine pairs a request with that
record only when the request's last message is that text (`plan_for`), so an LM call made by other
code (a bare `lm("...")`) never picks up a stale plan."""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass
from typing import Any

from dspy.utils.callback import BaseCallback

_PLAN: contextvars.ContextVar[OutputPlan | None] = contextvars.ContextVar("radixlm_dspy_plan", default=None)


@dataclass(frozen=True)
class OutputPlan:
    """The adapter that formatted a request, the (processed) signature it formatted, and the text of
    the last message it produced."""

    adapter: Any
    signature: Any
    last_message: str


def plan_for(last_message: str) -> OutputPlan | None:
    """The plan of the adapter call whose last formatted message is `last_message` (None if the
    current context has none, or it formatted something else)."""
    plan = _PLAN.get()
    return plan if plan is not None and plan.last_message == last_message else None


def _last_text(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    content = messages[-1].get("content")
    return content if isinstance(content, str) else None


class PlanCallback(BaseCallback):
    """Records each `Adapter.format` call as the current context's `OutputPlan`."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    # A subclass that inherits `format` wraps it in DSPy's callback wrapper once more: the outer call
    # sees the inner wrapper's (*args, **kwargs) and no `signature`; the inner call records the plan.
    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if "signature" in inputs:
            with self._lock:
                self._pending[call_id] = (instance, inputs["signature"])

    def on_adapter_format_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        with self._lock:
            recorded = self._pending.pop(call_id, None)
        if recorded is None:
            return
        last = _last_text(outputs)
        _PLAN.set(None if exception is not None or last is None else OutputPlan(*recorded, last))
