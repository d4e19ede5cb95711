"""The systems compared in one run, behind one small interface.

radixlm systems are engine processes reached over ZeroMQ, as users reach them, and run a workload's
programs all at once; peers (HF transformers, llama-cpp-python) serve one call at a time, so they
run the programs one after another (concurrency would only interleave their calls).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from typing import Any

from .calls import CallLog
from .machine import cpu_info

RADIXLM = {"radixlm lpm": {"policy": "lpm"}, "radixlm fcfs": {"policy": "fcfs"},
           "radixlm cache off": {"policy": "lpm", "radix_cache": False},
           "radixlm int8": {"policy": "lpm", "quantization": "int8", "compile_decode": True},
           "radixlm q4": {"policy": "lpm", "quantization": "q4"}}
QUANTIZED = "radixlm q4"  # the batch-1 decode format: the GGUF's own 4-bit blocks, as llama.cpp runs them
HF, LLAMACPP = "HF transformers", "llama-cpp-python"
ALL = [*RADIXLM, HF, LLAMACPP]


class Unavailable(Exception):
    """The system cannot run here; the message says why (it goes into the results)."""


class System(ABC):
    """One system: `backend` (program language), `dspy_lm(max_tokens)`, a `log` of its calls."""

    name: str
    sequential: bool
    log: CallLog
    backend: Any

    @abstractmethod
    def dspy_lm(self, max_tokens: int):
        """A dspy.LM on this system that answers with at most `max_tokens` tokens."""

    def begin(self) -> None:
        """Start a workload from an empty cache."""
        self.log.clear()

    def end(self, programs: int, wall_s: float) -> dict:
        return self.log.summary(programs, wall_s)

    def close(self) -> None:
        pass


class RadixSystem(System):
    """A radixlm engine spawned with `engine_options` on a private ipc endpoint."""

    sequential = False

    def __init__(self, name: str, model: str, engine_options: dict) -> None:
        import radixlm
        from radixlm.engine.model_source import resolve_model
        from radixlm.engine.tokenizer import Tokenizer

        from .radixlm_backend import RecordingBackend

        self.name, self.model = name, model
        self._dir = tempfile.TemporaryDirectory(prefix="radixlm-bench-")
        self.client = radixlm.connect(f"ipc://{self._dir.name}/engine.sock", model=model, timeout=3600,
                                      **engine_options)
        self.tok = Tokenizer(resolve_model(model))
        self.backend = RecordingBackend(self.client, self.tok)
        self.log = self.backend.log
        self.backend.chat_template_parts()  # the one-time template probe, outside any timed run
        self.client.generate("Warm up.", max_new_tokens=4)

    def dspy_lm(self, max_tokens: int):
        from radixlm.adapters.dspy import LM
        from radixlm.adapters.dspy_engine import AsyncRadixEngine

        from .radixlm_backend import RecordingRadixEngine

        engine = RecordingRadixEngine(self.client, self.tok, self.log)
        lm = LM(self.model, client=self.client, cache=False, max_tokens=max_tokens, num_retries=0)
        return lm.copy(engine=engine, async_engine=AsyncRadixEngine(engine))

    def begin(self) -> None:
        from radixlm.connection import EngineError

        for _ in range(200):  # the previous workload's last pass may still be finishing
            try:
                self.client.flush_cache()
                break
            except EngineError as exc:
                if "running" not in str(exc):
                    raise
                time.sleep(0.05)
        super().begin()
        self._before = self.client.stats()

    def end(self, programs: int, wall_s: float) -> dict:
        after = self.client.stats()
        counts = tuple(after[k] - self._before[k] for k in ("prompt_tokens", "cached_tokens"))
        return self.log.summary(programs, wall_s, engine_counts=counts)

    def close(self) -> None:
        self.client.shutdown()
        self._dir.cleanup()


class PeerSystem(System):
    """HF transformers or llama-cpp-python on the same model."""

    sequential = True

    def __init__(self, name: str, model: str, threads: int) -> None:
        from radixlm.engine.model_source import resolve_model

        folder = str(resolve_model(model))
        self.name = name
        if name == HF:
            import torch

            from .hf_backend import HFBackend

            torch.set_num_threads(threads)

            self.backend = HFBackend(folder)
        else:
            try:
                import llama_cpp  # noqa: F401
            except ImportError as exc:
                raise Unavailable(f"llama-cpp-python is not installed ({exc}); `radixlm bench --install-peers` "
                                  "installs the bench extra (it builds llama.cpp from source, about 10 minutes)")
            from .llamacpp_backend import LlamaCppBackend

            self.backend = LlamaCppBackend(folder, threads, model)
        self.log = self.backend.log
        self.backend.generate("Warm up.", max_new_tokens=4)

    def dspy_lm(self, max_tokens: int):
        from .dspy_peer import peer_lm

        return peer_lm(self.backend, self.name, max_tokens)

    def begin(self) -> None:
        self.backend.flush()
        super().begin()


def open_system(name: str, model: str, threads: int) -> System:
    """Start one system by name; raises Unavailable (with the reason) when it cannot run here. A
    radixlm engine process takes its thread count from OMP_NUM_THREADS (the suite sets it)."""
    return RadixSystem(name, model, RADIXLM[name]) if name in RADIXLM else PeerSystem(name, model, threads)


def bench_requirements() -> list[str]:
    """The requirements of radixlm's `bench` extra, as its installed metadata lists them."""
    reqs = importlib.metadata.requires("radixlm") or []
    return [r.split(";")[0].strip() for r in reqs if "extra" in r and '"bench"' in r.replace("'", '"')]


# llama.cpp built for an explicit instruction set on x86-64 CPUs with AVX2: a native build (-march=native) of
# llama-cpp-python 0.3.36 crashed in libggml-cpu on an AVX-512 + AMX Intel Xeon; AVX2 kernels run on them all.
LLAMA_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF "
                    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")


def llama_cmake_args() -> str | None:
    """CMAKE_ARGS for building llama-cpp-python here: LLAMA_CMAKE_ARGS on an x86-64 CPU with AVX2, else
    None (llama.cpp's own defaults)."""
    if platform.machine() == "x86_64" and "avx2" in cpu_info()["flags"]:
        return LLAMA_CMAKE_ARGS
    return None


def install_peers() -> int:
    """pip-install the bench extra (llama-cpp-python; matplotlib) into this Python (scripts/setup-bench.sh
    does the same for a checkout's .venv). llama-cpp-python is built from source with CMAKE_ARGS, or
    llama_cmake_args() when that is unset; with LLAMA_CPP_WHEEL=/path/to/llama_cpp_python-*.whl that
    wheel is installed instead (it must be the extra's pinned version)."""
    reqs = bench_requirements()
    if not reqs:
        print("radixlm's metadata lists no `bench` extra; reinstall radixlm from this checkout", file=sys.stderr)
        return 1
    env = dict(os.environ)
    wheel = env.get("LLAMA_CPP_WHEEL")
    if wheel:  # listed before the pinned requirement, pip takes llama-cpp-python from this wheel only
        reqs.insert(0, wheel)
        print(f"installing {' '.join(reqs)}", flush=True)
    else:
        print(f"installing {' '.join(reqs)} (llama-cpp-python compiles llama.cpp: about 10-20 minutes on 2 cores)",
              flush=True)
        cmake_args = env.get("CMAKE_ARGS", llama_cmake_args())
        if cmake_args is not None:
            env["CMAKE_ARGS"] = cmake_args
    # No wheel cache: a cached llama-cpp-python wheel may have been built for another instruction set.
    return subprocess.call([sys.executable, "-m", "pip", "install", "--no-cache-dir", *reqs], env=env)
