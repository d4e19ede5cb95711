"""Reading a program's text as it is produced: the state's `_chunks` queue holds
(variable, text, chunk meta) items in production order, then END when the program has finished."""

from __future__ import annotations

import asyncio
import queue
from typing import Any, AsyncIterator, Iterator

from .meta import merge_chunk_meta

END = object()


class TextStream:
    """The readers of ProgramState; expects `_chunks` (a queue.SimpleQueue) and `_error`."""

    _chunks: queue.SimpleQueue
    _error: BaseException | None

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Text as it is produced (the whole program's, or only variable `var_name`'s), until the
        program ends. Only for states returned by `run`; one reader."""
        for var, text, _ in self._produced():
            if text and (var_name is None or var == var_name):
                yield text

    async def text_async_iter(self, var_name: str | None = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        """`text_iter` for asyncio. With `return_meta_data` (and a variable) each item is
        (text, that chunk's meta_info); logprobs of tokens that produced no text yet ride along with
        the next chunk that has text."""
        loop = asyncio.get_running_loop()
        pending: dict | None = None
        while True:
            item = await loop.run_in_executor(None, self._chunks.get)
            if item is END:
                break
            var, text, meta = item
            if var_name is not None and var != var_name:
                continue
            if not return_meta_data or var_name is None:
                if text:
                    yield text
            elif text:
                yield text, merge_chunk_meta(pending, meta or {})
                pending = None
            elif meta is not None:
                pending = merge_chunk_meta(pending, meta)
        if self._error is not None:
            raise self._error

    def _produced(self) -> Iterator[tuple]:
        while True:
            item = self._chunks.get()
            if item is END:
                break
            yield item
        if self._error is not None:
            raise self._error
