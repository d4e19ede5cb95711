"""radixlm: fast local engine for DSPy programs and LangChain agents.

Importing this package never imports torch: the client side stays light; the engine lives in
`radixlm.engine` and runs in its own process.
"""

__version__ = "0.1.0"

from .client import AsyncClient, Client, Result, StreamChunk, connect
from .connection import EngineDiedError, EngineError
from .lang import (EngineBackend, assistant, assistant_begin, assistant_end, function, gen, select,
                   set_default_backend, system, system_begin, system_end, user, user_begin, user_end)

__all__ = ["AsyncClient", "Client", "EngineDiedError", "EngineError", "Result", "StreamChunk", "connect",
           "EngineBackend", "assistant", "assistant_begin", "assistant_end", "function", "gen", "select",
           "set_default_backend", "system", "system_begin", "system_end", "user", "user_begin", "user_end"]
