"""What a results file says about the machine it came from: CPU model and instruction-set flags,
cores, memory and its measured copy bandwidth, the load, and the versions of everything compared.
Figures from different machines are not comparable; the results file's name carries the CPU."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Instruction sets that decide which kernels a CPU can run (kept in the summary; all flags are saved too).
KEY_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8")
PACKAGES = ("radixlm", "torch", "transformers", "llama_cpp_python", "dspy", "llguidance", "pyzmq")


def cpu_info() -> dict[str, Any]:
    """CPU model name and flags from /proc/cpuinfo (platform's processor string elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": [], "key_flags": []}
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flag_list = flags.group(1).split() if flags else []
    return {"model": model.group(1).strip() if model else platform.machine(), "flags": flag_list,
            "key_flags": [f for f in KEY_FLAGS if f in flag_list]}


def memory_gib() -> float | None:
    """Total memory in GiB (from /proc/meminfo), None where it cannot be read."""
    try:
        match = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 2**20 if match else None


def copy_bandwidth_gb_s(mib: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s of a large tensor copy (bytes read + written), the best of `repeats`."""
    import torch

    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def versions() -> dict[str, str | None]:
    """Python's and each compared package's version (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the checkout the bench runs from, with "+dirty" if it has changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine(bandwidth: bool = True) -> dict[str, Any]:
    """The machine section of a results file (`bandwidth`: measure the copy bandwidth, ~1 s)."""
    cpu = cpu_info()
    return {
        "cpu": cpu["model"],
        "key_flags": cpu["key_flags"],
        "flags": cpu["flags"],
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "copy_bandwidth_gb_s": copy_bandwidth_gb_s() if bandwidth else None,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
        "versions": versions(),
        "commit": git_commit(),
        "argv": sys.argv,
    }


def slug(text: str) -> str:
    """`text` as a file-name part: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "cpu"
