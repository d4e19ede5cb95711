"""`@function` programs: run one, run a batch (with the constant prefix cached once), trace."""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .backend import Backend, Usage, get_default_backend
from .ir import ExprList, RoleBegin, RoleEnd

_SAMPLING_DEFAULTS = ("max_new_tokens", "stop", "stop_token_ids", "temperature", "top_p", "top_k", "seed", "ignore_eos")
ARG_MARK = "\x00radixlm-arg\x00"


class _StopTrace(Exception):
    pass


class _Placeholder(str):
    """Stands for a program argument while tracing: any text built from it carries ARG_MARK."""


class _Tracer:
    """A state that records only the text a program appends before anything argument-dependent,
    generated, or read back; every other use ends the trace."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.text, self.done = backend, "", False

    def __iadd__(self, expr: Any) -> "_Tracer":
        self._add(expr)
        return self

    def _add(self, expr: Any) -> None:
        if self.done:
            raise _StopTrace
        if isinstance(expr, ExprList):
            for item in expr.items:
                self._add(item)
        elif isinstance(expr, str):
            cut = expr.find(ARG_MARK)
            self.text += expr if cut < 0 else expr[:cut]
            if cut >= 0:
                self.done = True
                raise _StopTrace
        elif isinstance(expr, (RoleBegin, RoleEnd)):
            parts = self.backend.chat_template_parts()
            if not parts or expr.role not in parts:
                raise _StopTrace
            self.text += parts[expr.role][0 if isinstance(expr, RoleBegin) else 1]
        else:
            raise _StopTrace

    def __getattr__(self, name: str) -> Any:
        raise _StopTrace

    def __getitem__(self, name: str) -> Any:
        raise _StopTrace


class SglFunction:
    def __init__(self, func: Callable, bind_arguments: dict | None = None) -> None:
        self.func = func
        self.bind_arguments = dict(bind_arguments or {})
        params = list(inspect.signature(func).parameters.values())
        if not params:
            raise TypeError("a program takes the state as its first argument")
        self.arg_names = [p.name for p in params[1:]
                          if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in self.bind_arguments]
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> "SglFunction":
        return SglFunction(self.func, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, stream: bool = False, backend: Backend | None = None, **kwargs: Any):
        """Run the program once; returns its state (gens may still be running: reading waits).
        Sampling defaults for every gen: max_new_tokens, stop, temperature, top_p, top_k, seed."""
        from .state import ProgramState

        defaults = {k: kwargs.pop(k) for k in _SAMPLING_DEFAULTS if k in kwargs}
        defaults = {k: v for k, v in defaults.items() if v is not None}
        state = ProgramState(backend or get_default_backend(), defaults, stream)
        try:
            self.func(state, *args, **{**self.bind_arguments, **kwargs})
        finally:
            state._end()
        return state

    __call__ = run

    def trace_prefix(self, backend: Backend | None = None) -> str:
        """The text the program appends before its first argument-dependent or generated part."""
        tracer = _Tracer(backend or get_default_backend())
        placeholders = {n: _Placeholder(f"{ARG_MARK}{n}{ARG_MARK}") for n in self.arg_names}
        try:
            self.func(tracer, **{**self.bind_arguments, **placeholders})
        except Exception:  # noqa: BLE001 - any use a constant trace cannot follow ends it
            pass
        return tracer.text

    def run_batch(self, batch_kwargs: list[dict], *, num_threads: int | str = "auto", progress_bar: bool = False,
                  backend: Backend | None = None, cache_prefix: bool = True, **run_options: Any) -> list:
        """Run the program once per kwargs dict (states in input order, all finished). The program's
        constant prefix is traced and sent once as a prefix_only request first."""
        backend = backend or get_default_backend()
        self.prefix_usage: Usage | None = None
        self.batch_prefix = self.trace_prefix(backend) if cache_prefix else ""
        if self.batch_prefix:
            self.prefix_usage = backend.cache_prefix(self.batch_prefix)
        if num_threads == "auto":
            num_threads = max(1, min(len(batch_kwargs), 64))

        def one(kwargs: dict):
            return self.run(backend=backend, **run_options, **kwargs).sync()

        with ThreadPoolExecutor(max_workers=int(num_threads)) as pool:
            futures = [pool.submit(one, kw) for kw in batch_kwargs]
            if progress_bar:
                from tqdm import tqdm

                for f in tqdm(futures, total=len(futures)):
                    f.exception()
            return [f.result() for f in futures]


def function(func: Callable | None = None, **options: Any):
    """Decorator: `@function` or `@function()` turns `def prog(s, ...)` into a runnable program."""
    if func is None:
        return lambda f: SglFunction(f, **options)
    return SglFunction(func, **options)
