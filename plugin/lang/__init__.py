"""The SGLang frontend language on radixlm: `import radixlm as sgl` and run SGLang programs."""

from .backend import Backend, ChoiceScore, EngineBackend, GenOutput, Usage, get_default_backend, set_default_backend
from .choices import greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from .function import SglFunction, function
from .ir import (DTypeError, assistant, assistant_begin, assistant_end, gen, gen_int, gen_string, select, system,
                 system_begin, system_end, user, user_begin, user_end)
from .state import ForkGroup, ProgramState

__all__ = [
    "Backend", "ChoiceScore", "DTypeError", "EngineBackend", "ForkGroup", "GenOutput", "ProgramState", "SglFunction",
    "Usage", "assistant", "assistant_begin", "assistant_end", "function", "gen", "gen_int", "gen_string",
    "get_default_backend", "greedy_token_selection", "select", "set_default_backend", "system", "system_begin",
    "system_end", "token_length_normalized", "unconditional_likelihood_normalized", "user", "user_begin", "user_end",
]
