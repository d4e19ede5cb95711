"""A per-state worker: runs submitted functions one at a time, in submission order."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable


class Serial:
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
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                fut.set_exception(e)
