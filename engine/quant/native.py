"""The native kernels, compiled for this CPU at first use: the GEMVs (`block_gemv.cpp`: 4-bit Q4_1 and
8-bit Q8_0 blocks) and whole 4-bit decoder layers (`decode_layers.cpp`), both on the block dot products
of `block_dot.h`, and the bf16 causal attention of long extends (`../attention/causal_bf16.cpp`, on
CPUs with AVX-512 BF16 and no AMX).

The kernel is built with `torch.utils.cpp_extension` (a C++ compiler and ninja) with `-march=native`,
once per CPU kind: the build folder lives in radixlm's cache under a key of the CPU's model and flags,
so a cache shared by machines of different kinds never runs code built for another. Where it cannot
build (no compiler, a CPU without AVX2/FMA/F16C, not x86), `block_kernels_available()` says so and
logs why, and block-quantized weights are multiplied in plain torch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path

import torch

from ..model_source import cache_root

log = logging.getLogger("radixlm.engine")
SOURCES = [*(Path(__file__).with_name(name) for name in ("block_gemv.cpp", "decode_layers.cpp")),
           Path(__file__).parent.parent / "attention" / "causal_bf16.cpp"]


def cpu_key() -> str:
    """A short key of this CPU's model and instruction-set flags (from /proc/cpuinfo where it exists)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    text = "\n".join(wanted) or platform.processor() or platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def block_kernels_available() -> bool:
    """Build (first time on this CPU kind) and load the kernels; False, logged with the reason, where
    they cannot be built."""
    from torch.utils.cpp_extension import load

    key = cpu_key()
    build = cache_root() / "kernels" / key
    build.mkdir(parents=True, exist_ok=True)
    try:
        if shutil.which("ninja") is None:  # pip's ninja, when its environment's bin folder is not on PATH
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
        load(name=f"radixlm_block_gemv_{key}", sources=[str(p) for p in SOURCES], build_directory=str(build),
             extra_cflags=["-O3", "-march=native", "-fopenmp"], is_python_module=False, verbose=False)
    except (RuntimeError, OSError, ImportError) as exc:  # no compiler or ninja, or a CPU the source rejects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("block-quantized kernels unavailable on this CPU (%s); those weights use plain torch", first)
        return False
    for exact in ("", "_exact"):
        torch.library.register_fake(f"radixlm::q4_gemv{exact}")(_q4_gemv_shape)
        torch.library.register_fake(f"radixlm::q8_gemv{exact}")(_q8_gemv_shape)
    return True


def _q4_gemv_shape(x: torch.Tensor, packed: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], packed.shape[0]))


def _q8_gemv_shape(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], q.shape[0]))
