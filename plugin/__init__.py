"""radixlm: fast local engine for DSPy programs and LangChain agents.

Importing this package never imports torch: the client side stays light; the engine lives in
`radixlm.engine` and runs in its own process. The program language (SGLang's frontend API) is
re-exported here, so `import radixlm as sgl` runs SGLang programs.
"""

__version__ = "0.1.0"

from .client import AsyncClient, Client, Result, StreamChunk, connect
from .connection import EngineDiedError, EngineError
from . import lang
from .lang import (EngineBackend, assistant, assistant_begin, assistant_end, function, gen, gen_int, gen_string,
                   global_config, greedy_token_selection, select, set_default_backend, system, system_begin,
                   system_end, token_length_normalized, unconditional_likelihood_normalized, user, user_begin,
                   user_end)

__all__ = ["AsyncClient", "Client", "EngineDiedError", "EngineError", "Result", "StreamChunk", "connect",
           "EngineBackend", "assistant", "assistant_begin", "assistant_end", "function", "gen", "gen_int",
           "gen_string", "global_config", "greedy_token_selection", "lang", "select", "set_default_backend",
           "system", "system_begin", "system_end", "token_length_normalized", "unconditional_likelihood_normalized",
           "user", "user_begin", "user_end"]
