"""ProgramState: the `s` of a program. `s += expr` queues work on the state's own worker (so the
operations of one state run in order while the program goes on); `s["name"]` waits for that
variable. `fork(n)` makes n branch states that start from this state's text once the ops queued
before the fork have run, after the shared prefix was cached in the engine (prefix_only)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .backend import Backend, ChoiceScore, GenOutput, StreamPiece, Usage
from .choices import decide, mean_logprob, resolve as resolve_method
from .ir import Call, ExprList, Gen, RoleBegin, RoleEnd, Select, VarScopeBegin, VarScopeEnd, role_block
from .meta import chunk_meta, gen_meta
from .options import resolve as resolve_options
from .serial import Serial
from .streaming import END, TextStream

NEUTRAL_CONTEXT = "\n"  # the context whose likelihood of a choice is its "unconditional" likelihood


class ProgramState(TextStream):
    def __init__(self, backend: Backend, defaults: dict[str, Any] | None = None, stream: bool = False,
                 snapshot: Future | None = None) -> None:
        self.backend, self.defaults, self.stream = backend, dict(defaults or {}), stream
        self._text = ""
        self._vars: dict[str, Any] = {}
        self._new_vars: list[str] = []  # variables set on this state itself (not inherited at a fork)
        self._events: dict[str, threading.Event] = {}
        self._meta: dict[str, dict] = {}
        self._scopes: dict[str, int] = {}  # open var_scope name -> where its text starts
        self.requests: list[Usage] = []  # every engine request this state made, in order
        self._messages: list[dict] = []
        self._role: tuple[str, int] | None = None
        self._error: BaseException | None = None
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()  # (variable, text, chunk meta) as produced
        self._worker = Serial()
        self.fork_text = ""
        self.fork_prefix_usage: Usage | None = None
        if snapshot is not None:
            self._submit(lambda: self._start_from(snapshot.result()))

    # -- queueing -----------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], None], on_fail: Callable[[BaseException], None] | None = None) -> Future:
        def run() -> None:
            try:
                if self._error is not None:
                    raise self._error
                fn()
            except BaseException as e:  # noqa: BLE001 - kept and re-raised to the program
                self._fail(e)
                if on_fail is not None:
                    on_fail(e)

        return self._worker.submit(run)

    def _fail(self, error: BaseException) -> None:
        """Keep the program's first error; wake every reader (they re-raise it)."""
        if self._error is None:
            self._error = error
        for ev in list(self._events.values()):
            ev.set()

    def _declare(self, name: str | None) -> None:
        if name is not None:
            self._events[name] = threading.Event()

    def sync(self) -> "ProgramState":
        """Wait until everything queued so far has run; raise the program's error, if any."""
        self._submit(lambda: None).result()
        if self._error is not None:
            raise self._error
        return self

    def error(self) -> BaseException | None:
        """Wait for the queued work; the program's error, or None."""
        self._submit(lambda: None).result()
        return self._error

    # -- appending ----------------------------------------------------------------------------
    def __iadd__(self, expr: Any) -> "ProgramState":
        self._append(expr)
        return self

    def _append(self, expr: Any) -> None:
        if isinstance(expr, str):
            self._submit(lambda: self._add_text(expr))
        elif isinstance(expr, ExprList):
            for item in expr.items:
                self._append(item)
        elif isinstance(expr, Gen):
            self._declare(expr.name)
            self._submit(lambda: self._run_gen(expr))
        elif isinstance(expr, Select):
            self._declare(expr.name)
            self._submit(lambda: self._run_select(expr))
        elif isinstance(expr, (RoleBegin, RoleEnd)):
            self._submit(lambda: self._run_role(expr))
        elif isinstance(expr, VarScopeBegin):
            self._declare(expr.name)
            self._submit(lambda: self._scopes.__setitem__(expr.name, len(self._text)))
        elif isinstance(expr, VarScopeEnd):
            self._submit(lambda: self._set_var(expr.name, self._text[self._scopes.pop(expr.name):], {}))
        elif isinstance(expr, Call):
            expr.func(self, *expr.args, **expr.kwargs)
        elif expr is None:
            raise ValueError("tried to append None to a program state")
        else:
            raise TypeError(f"cannot append {type(expr).__name__} to a program state")

    def _add_text(self, text: str, var: str | None = None, meta: dict | None = None) -> None:
        self._text += text
        self._chunks.put((var, text, meta))

    def _set_var(self, name: str | None, value: Any, meta: dict) -> None:
        if name is None:
            return
        self._vars[name], self._meta[name] = value, meta
        if name not in self._new_vars:
            self._new_vars.append(name)
        self._events.setdefault(name, threading.Event()).set()

    def _run_gen(self, g: Gen) -> None:
        opts, ask = resolve_options(g, self.defaults)
        prompt = self._text
        out = self._stream_gen(prompt, opts, ask, g.name) if self.stream else self.backend.generate(prompt, **opts)
        self.requests.append(out.usage)
        if not self.stream:
            self._add_text(out.text, g.name)
        self._set_var(g.name, out.text, gen_meta(out, ask, prompt))

    def _stream_gen(self, prompt: str, opts: dict, ask: Any, name: str | None) -> GenOutput:
        tokens = logprobs = 0
        out: GenOutput | None = None
        for item in self.backend.stream(prompt, **opts):
            if isinstance(item, StreamPiece):
                tokens += item.token_count
                logprobs += len(item.logprobs or [])
                self._add_text(item.text, name, chunk_meta(item, tokens, logprobs, ask))
            else:
                out = item
        if out is None:
            raise RuntimeError("the backend's stream ended without its result")
        return out

    def _run_select(self, sel: Select) -> None:
        method = resolve_method(sel.choices_method)
        prefix = self._text
        cond: list[ChoiceScore] = self.backend.score_choices(prefix, sel.choices)
        uncond = self.backend.score_choices(NEUTRAL_CONTEXT, sel.choices) if method.requires_unconditional else None
        self.requests.extend(c.usage for c in cond)
        index, scores = decide(method, [c.token_logprobs for c in cond],
                               [u.token_logprobs for u in uncond] if uncond else None)
        choice = sel.choices[index]
        self._add_text(choice, sel.name)
        self._set_var(sel.name, choice, {
            "scores": scores, "method": method.name, "choices": list(sel.choices),
            "normalized_prompt_logprobs": [mean_logprob(c.token_logprobs) for c in cond],
            "input_token_logprobs": [[(lp, t, None) for lp, t in zip(c.token_logprobs, c.token_ids)] for c in cond],
            "token_logprobs": [c.token_logprobs for c in cond], "token_ids": [c.token_ids for c in cond],
            "healed": [c.healed for c in cond],
            "unconditional_token_logprobs": [u.token_logprobs for u in uncond] if uncond else None,
            "usage": [c.usage for c in cond],
        })

    def _run_role(self, marker: RoleBegin | RoleEnd) -> None:
        parts = self.backend.chat_template_parts()
        if parts is None or marker.role not in parts:
            raise RuntimeError("this backend's model has no chat template the frontend can render as text")
        begin, end = parts[marker.role]
        if isinstance(marker, RoleBegin):
            if self._role is not None:
                raise RuntimeError(f"{marker.role} begins inside an open {self._role[0]} turn")
            self._add_text(begin)
            self._role = (marker.role, len(self._text))
        else:
            if self._role is None or self._role[0] != marker.role:
                raise RuntimeError(f"{marker.role}_end without a matching {marker.role}_begin")
            self._messages.append({"role": marker.role, "content": self._text[self._role[1]:].lstrip()})
            self._role = None
            self._add_text(end)

    # -- scopes ---------------------------------------------------------------------------------
    def _role_scope(self, role: str, expr: Any) -> Any:
        if expr is not None:
            self._append(role_block(role, expr))
            return None
        return self._scope(RoleBegin(role), RoleEnd(role))

    @contextmanager
    def _scope(self, begin: Any, end: Any) -> Iterator[None]:
        self._append(begin)
        yield
        self._append(end)

    def system(self, expr: Any = None) -> Any:
        """`s.system(expr)` appends a system turn; `with s.system(): ...` wraps what is appended inside."""
        return self._role_scope("system", expr)

    def user(self, expr: Any = None) -> Any:
        """`s.user(expr)` appends a user turn; `with s.user(): ...` wraps what is appended inside."""
        return self._role_scope("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        """`s.assistant(expr)` appends an assistant turn; `with s.assistant(): ...` wraps the block."""
        return self._role_scope("assistant", expr)

    def var_scope(self, name: str) -> Any:
        """`with s.var_scope(name): ...`: variable `name` becomes the text appended inside the block."""
        return self._scope(VarScopeBegin(name), VarScopeEnd(name))

    # -- reading ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        ev = self._events.get(name)
        if ev is not None:
            ev.wait()
            if self._error is not None:
                raise self._error
        else:
            self.sync()
        return self._vars[name]

    get_var = __getitem__

    def __setitem__(self, name: str, value: Any) -> None:
        self._declare(name)
        self._submit(lambda: self._set_var(name, value, {}))

    set_var = __setitem__

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self._vars

    def get_meta_info(self, name: str) -> dict:
        """SGLang's meta_info of variable `name` (token counts, finish reason, logprobs asked for;
        for a select: the per-choice scores)."""
        self[name]
        return self._meta[name]

    def scores(self, name: str) -> list[float]:
        """The per-choice scores of a select."""
        return self.get_meta_info(name)["scores"]

    def usage(self, name: str) -> Usage | list[Usage] | None:
        """Token usage of the request(s) behind variable `name` (a list for a select)."""
        return self.get_meta_info(name).get("usage")

    def text(self) -> str:
        self.sync()
        return self._text

    def messages(self) -> list[dict]:
        self.sync()
        return list(self._messages)

    def variables(self) -> dict[str, Any]:
        self.sync()
        return dict(self._vars)

    def _end(self) -> None:
        self._submit(lambda: None).add_done_callback(lambda _: self._chunks.put(END))

    # -- fork / join --------------------------------------------------------------------------
    def fork(self, size: int = 1, cache_prefix: bool = True) -> "ForkGroup":
        """`size` branch states starting from this state's text; the shared prefix is cached once first."""
        from .fork import ForkGroup

        if size < 1:
            raise ValueError("fork needs size >= 1")
        snap: Future = Future()

        def take() -> None:
            usage = None
            if cache_prefix and self._text:
                usage = self.backend.cache_prefix(self._text)
                self.requests.append(usage)
            snap.set_result((self._text, dict(self._vars), dict(self._meta), list(self._messages), self._role, usage))

        self._submit(take, on_fail=lambda e: snap.done() or snap.set_exception(e))
        return ForkGroup([ProgramState(self.backend, self.defaults, self.stream, snap) for _ in range(size)], self)

    def _start_from(self, snapshot: tuple) -> None:
        self._text, vars_, meta, self._messages, self._role, self.fork_prefix_usage = snapshot
        self.fork_text = self._text
        self._vars.update(vars_)
        self._meta.update(meta)
        for name in vars_:
            self._events.setdefault(name, threading.Event()).set()

    def join(self, forks: Any, mode: str = "gather_variable") -> None:
        """Gather the branches' new variables into lists on this state (`gather_variable`), or append
        the text each branch added after the fork (`concate_and_append`)."""
        branches = list(forks)
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"unknown join mode {mode!r}")

        def gather() -> None:
            for b in branches:
                b.sync()
            if mode == "gather_variable":
                names: list[str] = []
                for b in branches:
                    names += [v for v in b._new_vars if v not in names]
                for name in names:
                    self._set_var(name, [b._vars.get(name) for b in branches],
                                  {"branches": [b._meta.get(name) for b in branches]})
            else:
                self._add_text("".join(b._text[len(b.fork_text):] for b in branches))

        self._submit(gather)
