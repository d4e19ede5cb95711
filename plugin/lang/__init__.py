"""The SGLang frontend language on radixlm: `import radixlm as sgl` and run SGLang programs."""

from . import ir
from .backend import (Backend, ChoiceScore, EngineBackend, GenOutput, StreamPiece, Usage, get_default_backend,
                      set_default_backend)
from .choices import greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from .fork import ForkGroup
from .function import SglFunction, function
from .global_config import GlobalConfig, global_config
from .ir import (REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, assistant, assistant_begin, assistant_end, gen,
                 gen_int, gen_string, select, system, system_begin, system_end, user, user_begin, user_end)
from .state import ProgramState

__all__ = [
    "Backend", "ChoiceScore", "EngineBackend", "ForkGroup", "GenOutput", "GlobalConfig", "ProgramState", "REGEX_BOOL",
    "REGEX_FLOAT", "REGEX_INT", "REGEX_STR", "SglFunction", "StreamPiece", "Usage", "assistant", "assistant_begin",
    "assistant_end", "function", "gen", "gen_int", "gen_string", "get_default_backend", "global_config",
    "greedy_token_selection", "ir", "select", "set_default_backend", "system", "system_begin", "system_end",
    "token_length_normalized", "unconditional_likelihood_normalized", "user", "user_begin", "user_end",
]
