"""`@function` programs: run one (blocking, or streaming on a thread), run a batch (with the
constant prefix cached once), trace, and compose (a program called inside a running program)."""

from __future__ import annotations

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, Callable

from ..connection import EngineDiedError
from .backend import Backend, Usage, get_default_backend
from .global_config import global_config
from .ir import Call, ExprList, RoleBegin, RoleEnd, role_block
from .options import run_defaults

ARG_MARK = "\x00radixlm-arg\x00"
_inside_program: ContextVar[bool] = ContextVar("radixlm_inside_program", default=False)


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

    def _role(self, role: str, expr: Any) -> None:
        if expr is None:  # `with s.user(): ...` scopes are not followed
            raise _StopTrace
        self._add(role_block(role, expr))

    def system(self, expr: Any = None) -> None:
        self._role("system", expr)

    def user(self, expr: Any = None) -> None:
        self._role("user", expr)

    def assistant(self, expr: Any = None) -> None:
        self._role("assistant", expr)

    def __getattr__(self, name: str) -> Any:
        raise _StopTrace

    def __getitem__(self, name: str) -> Any:
        raise _StopTrace


class SglFunction:
    """A program: `def prog(s, ...)` decorated with `@function`."""

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
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.__name__} has no argument(s) {', '.join(sorted(unknown))}")
        return SglFunction(self.func, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, stream: bool = False, backend: Backend | None = None, **kwargs: Any):
        """Run the program once and return its state (gens may still be running: reading waits).
        Sampling keywords (SGLang's: max_new_tokens, stop, temperature, top_p, top_k, min_p,
        frequency_penalty, presence_penalty, ignore_eos, return_logprob, logprob_start_len,
        top_logprobs_num, return_text_in_logprobs; and seed) are the defaults of every gen; the other
        keywords are the program's arguments. `stream=True` runs the program body on its own thread
        and returns at once; read it with `text_iter` / `text_async_iter`."""
        defaults = run_defaults(kwargs)
        return self._run(args, kwargs, defaults, stream, backend or get_default_backend())

    def _run(self, args: tuple, kwargs: dict, defaults: dict, stream: bool, backend: Backend):
        from .state import ProgramState

        state = ProgramState(backend, defaults, stream)
        kwargs = {**self.bind_arguments, **kwargs}

        def body() -> None:
            token = _inside_program.set(True)
            try:
                self.func(state, *args, **kwargs)
            finally:
                _inside_program.reset(token)
                state._end()

        if not stream:
            body()
            return state

        def body_on_thread() -> None:
            try:
                body()
            except BaseException as e:  # noqa: BLE001 - the reader of the stream re-raises it
                state._fail(e)

        threading.Thread(target=body_on_thread, name=f"radixlm-{self.__name__}", daemon=True).start()
        return state

    def __call__(self, *args: Any, **kwargs: Any):
        """Outside a program: `run`. Inside a running program: an expression that, appended to a state
        (`s += other(...)`), runs this program's body on that state."""
        if _inside_program.get():
            return Call(self.func, args, {**self.bind_arguments, **kwargs})
        return self.run(*args, **kwargs)

    def trace_prefix(self, backend: Backend | None = None) -> str:
        """The text the program appends before its first argument-dependent or generated part."""
        tracer = _Tracer(backend or get_default_backend())
        placeholders = {n: _Placeholder(f"{ARG_MARK}{n}{ARG_MARK}") for n in self.arg_names}
        token = _inside_program.set(True)
        try:
            self.func(tracer, **{**self.bind_arguments, **placeholders})
        except EngineDiedError:
            raise
        except Exception:  # noqa: BLE001 - any use of an argument a constant trace cannot follow ends it
            pass
        finally:
            _inside_program.reset(token)
        return tracer.text

    def run_batch(self, batch_kwargs: list, *, num_threads: int | str = "auto", progress_bar: bool = False,
                  backend: Backend | None = None, cache_prefix: bool = True, **run_options: Any) -> list:
        """Run the program once per item (a dict of arguments, or a list/tuple of them in order) with
        `run_options` (run's sampling keywords) as every run's defaults; the states come back in input
        order, all finished. With more than one item the program's constant
        prefix is traced and sent once as a prefix_only request first."""
        backend = backend or get_default_backend()
        batch_kwargs = [self._as_kwargs(item) for item in batch_kwargs]
        self.prefix_usage: Usage | None = None
        precache = cache_prefix and global_config.enable_precache_with_tracing and len(batch_kwargs) > 1
        self.batch_prefix = self.trace_prefix(backend) if precache else ""
        if self.batch_prefix:
            self.prefix_usage = backend.cache_prefix(self.batch_prefix)
        if num_threads == "auto":
            num_threads = 64
        num_threads = max(1, min(int(num_threads), len(batch_kwargs)))

        rest = dict(run_options)
        defaults = run_defaults(rest)  # takes the sampling keywords out of `rest`
        if rest:
            raise TypeError(f"run_batch got unknown keyword(s): {', '.join(sorted(rest))}")

        def one(kwargs: dict):
            return self._run((), kwargs, defaults, False, backend).sync()

        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            futures = [pool.submit(one, kw) for kw in batch_kwargs]
            if progress_bar:
                from tqdm import tqdm

                for f in tqdm(futures, total=len(futures)):
                    f.exception()
            return [f.result() for f in futures]

    def _as_kwargs(self, item: Any) -> dict:
        if isinstance(item, dict):
            return item
        if isinstance(item, (list, tuple)) and len(item) <= len(self.arg_names):
            return dict(zip(self.arg_names, item))
        raise TypeError(f"a run_batch item must be a dict or a list of at most {len(self.arg_names)} arguments, "
                        f"got {item!r}")


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None):
    """Decorator: `@function` or `@function()` turns `def prog(s, ...)` into a runnable program."""
    if num_api_spec_tokens is not None:
        raise ValueError("num_api_spec_tokens: API speculative execution is not supported by radixlm")
    if func is None:
        return SglFunction
    return SglFunction(func)
