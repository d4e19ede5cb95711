"""Run a bench function in its own child process, so that a system that crashes (a segfault in a
native library), hangs or cannot even be imported costs only its own results.

`run_isolated(target, kwargs, timeout_s)` starts `python -m radixlm.bench.isolation`, which imports
`target` ("package.module:function") and calls it with `kwargs` and an `emit` callback; every dict
the child emits comes back to the parent as soon as it is written (one JSON line each). When the
child dies, exits with an error, or emits nothing for `timeout_s` seconds, the parent yields a
`Failure` with the reason as its last item (a hung child and everything it started is killed).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

POLL_S = 0.1


@dataclass(frozen=True)
class Failure:
    """Why an isolated child ended without finishing its work."""

    reason: str


def resolve(target: str) -> Callable[..., Any]:
    """The function named by "package.module:function"."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"expected 'package.module:function', got {target!r}")
    return getattr(importlib.import_module(module), name)


def run_isolated(target: str, kwargs: dict[str, Any], timeout_s: float,
                 env: dict[str, str] | None = None) -> Iterator[dict[str, Any] | Failure]:
    """Call `target(**kwargs, emit=...)` in a child process; yield what it emits, then a Failure if
    it did not exit cleanly. `timeout_s` bounds the silence between two emitted items (and before
    the first), not the whole run. `env`: variables added to this process's environment."""
    with tempfile.TemporaryDirectory(prefix="radixlm-isolated-") as tmp:
        args_path, out_path, err_path = (Path(tmp) / n for n in ("args.json", "out.jsonl", "stderr.txt"))
        args_path.write_text(json.dumps(kwargs))
        out_path.touch()
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "radixlm.bench.isolation", target, str(args_path),
                                     str(out_path)], stderr=err, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        try:
            yield from _follow(proc, out_path, err_path, timeout_s)
        finally:
            _kill_group(proc)


def _follow(proc: subprocess.Popen, out_path: Path, err_path: Path, timeout_s: float) -> Iterator[Any]:
    offset, deadline = 0, time.monotonic() + timeout_s
    with open(out_path, "rb") as out:
        while True:
            code = proc.poll()
            out.seek(offset)
            chunk = out.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.splitlines():
                deadline = time.monotonic() + timeout_s
                yield json.loads(line)
            if code is not None:
                break
            if time.monotonic() > deadline:
                _kill_group(proc)
                yield Failure(f"timed out: nothing finished within {timeout_s:.0f} s; killed")
                return
            time.sleep(POLL_S)
    if code != 0:
        yield Failure(describe_exit(code, err_path.read_text(errors="replace")))


def describe_exit(code: int, stderr: str) -> str:
    """A one-line reason for a child's exit status, with the last line it wrote to stderr."""
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = f"crashed ({name})"
    else:
        what = f"exited with status {code}"
    return f"{what}: {last}" if last else what


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and whatever it started (its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _child(target: str, args_path: str, out_path: str) -> None:
    kwargs = json.loads(Path(args_path).read_text())
    with open(out_path, "a") as out:
        def emit(item: dict[str, Any]) -> None:
            out.write(json.dumps(item, default=str) + "\n")
            out.flush()

        resolve(target)(**kwargs, emit=emit)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
