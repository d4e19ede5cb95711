"""The native 4-bit GEMV (`q4_gemv.cpp`), compiled for this CPU at first use.

The kernel is built with `torch.utils.cpp_extension` (a C++ compiler and ninja) with `-march=native`,
once per CPU kind: the build folder lives in radixlm's cache under a key of the CPU's model and flags,
so a cache shared by machines of different kinds never runs code built for another. Where it cannot
build (no compiler, a CPU without AVX2/FMA/F16C, not x86), `q4_kernel_available()` says so and logs
why, and 4-bit weights are multiplied in plain torch.
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
SOURCE = Path(__file__).with_name("q4_gemv.cpp")


def cpu_key() -> str:
    """A short key of this CPU's model and instruction-set flags (from /proc/cpuinfo where it exists)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    text = "\n".join(wanted) or platform.processor() or platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def q4_kernel_available() -> bool:
    """Build (first time on this CPU kind) and load the kernel; False, logged with the reason, where
    it cannot be built."""
    from torch.utils.cpp_extension import load

    if shutil.which("ninja") is None:  # pip's ninja, when its environment's bin folder is not on PATH
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    key = cpu_key()
    build = cache_root() / "kernels" / key
    build.mkdir(parents=True, exist_ok=True)
    try:
        load(name=f"radixlm_q4_gemv_{key}", sources=[str(SOURCE)], build_directory=str(build),
             extra_cflags=["-O3", "-march=native", "-fopenmp"], is_python_module=False, verbose=False)
    except (RuntimeError, OSError, ImportError) as exc:  # compiler missing, or a CPU the source rejects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("4-bit kernel unavailable on this CPU (%s); 4-bit weights use plain torch", first)
        return False
    torch.library.register_fake("radixlm::q4_gemv")(_q4_gemv_shape)
    return True


def _q4_gemv_shape(x: torch.Tensor, packed: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], packed.shape[0]))
