"""ProgramState: the `s` of a program. `s += expr` queues work on the state's own single worker thread
(so operations of one state run in order while the program goes on); `s["name"]` waits for that
variable. `fork(n)` makes n branch states that start from this state's text once the ops queued
before the fork have run, after the shared prefix was cached in the engine (prefix_only)."""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Iterator

from .backend import Backend, ChoiceScore, Usage
from .choices import decide, resolve
from .ir import DTYPE_REGEX, ExprList, Gen, RoleBegin, RoleEnd, Select, dtype_name, parse_dtype

NEUTRAL_CONTEXT = "\n"  # the context whose likelihood of a choice is its "unconditional" likelihood
_END = object()
_GEN_TO_ENGINE = {"max_tokens": "max_new_tokens", "stop": "stop", "stop_token_ids": "stop_token_ids",
                  "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
                  "regex": "regex", "json_schema": "json_schema", "ignore_eos": "ignore_eos"}


class _Serial:
    """Runs submitted functions one at a time in submission order on a thread that exists only
    while there is queued work (so thousands of finished states hold no threads)."""

    def __init__(self) -> None:
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, fn: Callable[[], None]) -> Future:
        fut: Future = Future()
        with self._lock:
            self._queue.append((fn, fut))
            if not self._running:
                self._running = True
                threading.Thread(target=self._drain, name="radixlm-state", daemon=True).start()
        return fut

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                fn, fut = self._queue.popleft()
            try:
                fn()
                fut.set_result(None)
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)


class ProgramState:
    def __init__(self, backend: Backend, defaults: dict[str, Any] | None = None, stream: bool = False,
                 snapshot: Future | None = None) -> None:
        self.backend, self.defaults, self.stream = backend, dict(defaults or {}), stream
        self._text = ""
        self._vars: dict[str, Any] = {}
        self._new_vars: list[str] = []  # variables set on this state itself (not inherited at a fork)
        self._events: dict[str, threading.Event] = {}
        self._meta: dict[str, dict] = {}
        self.requests: list[Usage] = []  # every engine request this state made, in order
        self._messages: list[dict] = []
        self._role: tuple[str, int] | None = None
        self._error: BaseException | None = None
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._worker = _Serial()
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
                if self._error is None:
                    self._error = e
                for ev in self._events.values():
                    ev.set()
                if on_fail is not None:
                    on_fail(e)

        return self._worker.submit(run)

    def _declare(self, name: str | None) -> None:
        if name is not None:
            self._events[name] = threading.Event()

    def sync(self) -> "ProgramState":
        """Wait until everything queued so far has run; raise the program's error, if any."""
        self._submit(lambda: None).result()
        if self._error is not None:
            raise self._error
        return self

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
        else:
            raise TypeError(f"cannot append {type(expr).__name__} to a program state")

    def _add_text(self, text: str, var: str | None = None) -> None:
        self._text += text
        self._chunks.put((var, text))

    def _set_var(self, name: str | None, value: Any, meta: dict) -> None:
        if name is None:
            return
        self._vars[name], self._meta[name] = value, meta
        if name not in self._new_vars:
            self._new_vars.append(name)
        self._events.setdefault(name, threading.Event()).set()

    def _run_gen(self, g: Gen) -> None:
        opts = {}
        for field, key in _GEN_TO_ENGINE.items():
            value = getattr(g, field)
            if value is None:
                value = self.defaults.get(key)
            if value is not None:
                opts[key] = value
        if g.dtype is not None:
            opts["regex"] = DTYPE_REGEX[dtype_name(g.dtype)]
            opts.setdefault("max_new_tokens", 32)
        prompt = self._text
        usage = None
        if self.stream:
            parts = []
            for piece in self.backend.stream(prompt, **opts):
                parts.append(piece)
                self._add_text(piece, g.name)
            text = "".join(parts)
        else:
            out = self.backend.generate(prompt, **opts)
            text, usage = out.text, out.usage
            self.requests.append(usage)
            self._add_text(text, g.name)
        value = parse_dtype(g.dtype, text) if g.dtype is not None else text
        self._set_var(g.name, value, {"usage": usage, "text": text, "prompt": prompt})

    def _run_select(self, sel: Select) -> None:
        method = resolve(sel.choices_method)
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
            self._messages.append({"role": marker.role, "content": self._text[self._role[1]:]})
            self._role = None
            self._add_text(end)

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

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self._vars

    def get_meta_info(self, name: str) -> dict:
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

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Text as it is produced (the whole program's, or only variable `var_name`'s), until the
        program ends. Only for states returned by `run`; one reader."""
        while True:
            item = self._chunks.get()
            if item is _END:
                break
            var, text = item
            if var_name is None or var == var_name:
                yield text
        if self._error is not None:
            raise self._error

    def _end(self) -> None:
        self._submit(lambda: None).add_done_callback(lambda _: self._chunks.put(_END))

    # -- fork / join --------------------------------------------------------------------------
    def fork(self, n: int = 1, cache_prefix: bool = True) -> "ForkGroup":
        """n branch states starting from this state's text; the shared prefix is cached once first."""
        if n < 1:
            raise ValueError("fork needs n >= 1")
        snap: Future = Future()

        def take() -> None:
            usage = None
            if cache_prefix and self._text:
                usage = self.backend.cache_prefix(self._text)
                self.requests.append(usage)
            snap.set_result((self._text, dict(self._vars), dict(self._meta), list(self._messages), self._role, usage))

        self._submit(take, on_fail=lambda e: snap.done() or snap.set_exception(e))
        return ForkGroup([ProgramState(self.backend, self.defaults, self.stream, snap) for _ in range(n)], self)

    def _start_from(self, snapshot: tuple) -> None:
        self._text, vars_, meta, self._messages, self._role, self.fork_prefix_usage = snapshot
        self.fork_text = self._text
        self._vars.update(vars_)
        self._meta.update(meta)
        for name in vars_:
            self._events.setdefault(name, threading.Event()).set()

    def join(self, forks: "ForkGroup | list[ProgramState]", mode: str = "gather_variable") -> None:
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


class ForkGroup:
    """The branches of one fork: index, iterate, `+=` to all (or a list, one item per branch), join."""

    def __init__(self, states: list[ProgramState], parent: ProgramState) -> None:
        self.states, self.parent = states, parent

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def __iadd__(self, other: Any) -> "ForkGroup":
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} items for {len(self.states)} branches")
            for s, x in zip(self.states, other):
                s += x
        else:
            for s in self.states:
                s += other
        return self

    def join(self, mode: str = "gather_variable") -> ProgramState:
        self.parent.join(self, mode)
        return self.parent
