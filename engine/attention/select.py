"""Which attention backend a model runs: torch on CPU, triton on CUDA, unless the user names one."""

from __future__ import annotations

import os
import torch

from .backend import AttentionBackend
from .torch_backend import TorchAttention

BACKENDS = ("auto", "torch", "triton")


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend for `name` on `device`; raises ValueError for an unknown name or for triton
    on a device it cannot run on."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton's interpreter (TRITON_INTERPRET=1, read when the kernels are imported) runs the
        # kernels on CPU tensors; it exists for testing and is far too slow to serve with.
        raise ValueError(f"the triton attention backend needs a CUDA device, the model is on {device}")
    return name


def make_attention(name: str, device: torch.device | str) -> AttentionBackend:
    """A fresh backend object for `name` ("auto", "torch" or "triton") on `device`."""
    if resolve_backend(name, device) == "torch":
        return TorchAttention()
    from .triton_backend import TritonAttention  # imports triton only when it is used

    return TritonAttention()
