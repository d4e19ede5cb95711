"""Shared pieces of the LangChain adapters: one engine client per (endpoint, model) with what its engine
said about itself, and the root run id of a LangChain run tree (used as the engine's trace id)."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook

import radixlm
from radixlm.client import Client, end_trace_everywhere

_clients: dict[tuple[str | None, str], Client] = {}
_engine_infos: dict[tuple[str | None, str], dict[str, Any]] = {}
_clients_lock = threading.Lock()


def get_client(endpoint: str | None, model: str, timeout: float | None = None,
               engine_options: dict[str, Any] | None = None) -> Client:
    """The process-wide client for (endpoint, model); attaches to (or spawns) the engine on first use."""
    key = (endpoint, model)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = radixlm.connect(endpoint, model=model, timeout=timeout, **(engine_options or {}))
            _engine_infos[key] = client.info()
            _clients[key] = client
        return client


def engine_info(endpoint: str | None, model: str) -> dict[str, Any] | None:
    """`Client.info()` of the engine for (endpoint, model), once this process has attached to it."""
    with _clients_lock:
        return _engine_infos.get((endpoint, model))


def forget_client(endpoint: str | None, model: str) -> None:
    """Drop the cached client (e.g. after its engine was shut down); the next call reconnects."""
    with _clients_lock:
        _clients.pop((endpoint, model), None)
        _engine_infos.pop((endpoint, model), None)


class _RootRunTracker(BaseCallbackHandler):
    """Remembers, for every live LangChain run, the id of the root run of its tree. It is attached to
    every callback manager through a configure hook, so a model call deep inside a chain or an agent
    loop can name its whole trace."""

    run_inline = True
    raise_error = False

    def __init__(self) -> None:
        self.roots: dict[UUID, UUID] = {}

    def _start(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        if parent_run_id is None:
            self.roots[run_id] = run_id
        else:
            self.roots[run_id] = self.roots.get(parent_run_id, parent_run_id)

    def _end(self, run_id: UUID) -> None:
        if self.roots.pop(run_id, None) == run_id:
            end_trace_everywhere(str(run_id))  # the root run ended: the engine releases its trace's KV

    def root_of(self, run_id: UUID) -> UUID | None:
        return self.roots.get(run_id)

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start(run_id, parent_run_id)

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start(run_id, parent_run_id)
        _model_run_root.set(self.roots[run_id])

    def on_llm_start(self, serialized, prompts, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start(run_id, parent_run_id)
        _model_run_root.set(self.roots[run_id])

    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start(run_id, parent_run_id)

    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start(run_id, parent_run_id)

    def on_chain_end(self, outputs, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)

    def on_chain_error(self, error, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)

    def on_llm_end(self, response, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)

    def on_llm_error(self, error, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)

    def on_tool_end(self, output, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)

    def on_tool_error(self, error, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)

    def on_retriever_end(self, documents, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)

    def on_retriever_error(self, error, *, run_id, **kw):  # noqa: ANN001
        self._end(run_id)


# The root of the model run that started last in this context: langchain-core (1.8) calls `_stream`
# without its run manager, and this handler runs inline, so the model call that follows sees it.
_model_run_root: ContextVar[UUID | None] = ContextVar("radixlm_model_run_root", default=None)
ROOT_TRACKER = _RootRunTracker()
_tracker_var: ContextVar[_RootRunTracker | None] = ContextVar("radixlm_root_run_tracker", default=ROOT_TRACKER)
register_configure_hook(_tracker_var, True)


def trace_id_for(run_manager: Any) -> str | None:
    """The root run id of the run tree `run_manager` belongs to (its parent's or its own id when the
    tree is not known), as the engine's trace id; without a run manager (a `_stream` call), that of
    the model run that started last in this context."""
    if run_manager is None:
        root = _model_run_root.get()
        return str(root) if root is not None else None
    root = ROOT_TRACKER.root_of(run_manager.run_id)
    if root is None:
        root = run_manager.parent_run_id or run_manager.run_id
    return str(root)
