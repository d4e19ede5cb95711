"""Which dtype each pass runs in: the `dtype` option, including `auto`.

Extend (prefill) passes are matmul-bound: bf16 wins where the CPU multiplies bf16 natively (AMX tiles
or AVX-512 BF16 dot products: 2.5x-3x fp32 measured on both CPU kinds seen here), and on CUDA.
Batch-1 decode is bandwidth-bound and a bf16 GEMV on CPU is slower than fp32 (oneDNN converts the
weights as it goes), so decode keeps fp32 on CPU unless the weights are quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")
_NAMED = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_has_native_bf16_matmul() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX tiles or AVX-512 BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """extend: dtype of extend passes' weights and activations; decode: dtype of decode passes'
    activations and of the KV pool (the weights of decode may be quantized on top of it)."""

    extend: torch.dtype
    decode: torch.dtype

    @property
    def split(self) -> bool:
        """Whether extend and decode run in different dtypes (two copies of the dense weights)."""
        return self.extend != self.decode


def resolve_precision(dtype: str | torch.dtype, device: torch.device | str = "cpu") -> Precision:
    """The dtypes of each pass for the `dtype` option on `device`; raises ValueError for an unknown name."""
    if isinstance(dtype, torch.dtype):
        return Precision(dtype, dtype)
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if dtype != "auto":
        return Precision(_NAMED[dtype], _NAMED[dtype])
    if torch.device(device).type == "cuda":
        return Precision(torch.bfloat16, torch.bfloat16)
    extend = torch.bfloat16 if cpu_has_native_bf16_matmul() else torch.float32
    return Precision(extend, torch.float32)
