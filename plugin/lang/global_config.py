"""`sgl.global_config`: the process-wide settings of the frontend language that radixlm honours."""

from __future__ import annotations

from typing import Any


class GlobalConfig:
    """`default_backend`: the backend programs run on when `run` gets none (`set_default_backend`).
    `enable_precache_with_tracing`: `run_batch` of more than one program first caches the program's
    constant prefix, found by tracing it with placeholder arguments."""

    def __init__(self) -> None:
        self.default_backend: Any = None
        self.enable_precache_with_tracing = True


global_config = GlobalConfig()
