"""A live progress board: one row per agent, redrawn in place on a terminal, or printed as event lines
when the output is not a terminal (CI logs)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass
class AgentRow:
    """What the board shows for one agent."""

    name: str
    framework: str
    status: str = "waiting"
    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    done: bool = False


class Board:
    """Thread-safe board; agents call `update`, a background thread redraws every `period` seconds."""

    def __init__(self, names: list[tuple[str, str]], out: TextIO = sys.stdout, period: float = 0.5) -> None:
        self.rows = {name: AgentRow(name, framework) for name, framework in names}
        self.out, self.period = out, period
        self.live = out.isatty()
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True) if self.live else None

    def __enter__(self) -> Board:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw()

    def update(self, name: str, status: str | None = None, *, calls: int | None = None,
               prompt_tokens: int | None = None, cached_tokens: int | None = None, done: bool = False) -> None:
        """Change an agent's row; without a terminal, print the change as one line."""
        with self._lock:
            row = self.rows[name]
            if status is not None:
                row.status = status
            if calls is not None:
                row.calls = calls
            if prompt_tokens is not None:
                row.prompt_tokens = prompt_tokens
            if cached_tokens is not None:
                row.cached_tokens = cached_tokens
            row.done = row.done or done
            if not self.live and status is not None:
                print(f"[{time.perf_counter() - self.start:6.1f}s] {name:<10} {status}", file=self.out, flush=True)

    def _line(self, row: AgentRow) -> str:
        reuse = f"{row.cached_tokens / row.prompt_tokens:4.0%}" if row.prompt_tokens else "   -"
        mark = "✓" if row.done else "…"
        status = row.status if len(row.status) <= 60 else row.status[:57] + "..."
        return f" {mark} {row.name:<10} {row.framework:<9} calls {row.calls:>2}  reuse {reuse}  {status}"

    def _draw(self) -> None:
        with self._lock:
            lines = [f" elapsed {time.perf_counter() - self.start:6.1f} s"] + [self._line(r) for r in self.rows.values()]
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._draw()
