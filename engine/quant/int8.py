"""Int8 weight-only quantization: symmetric, one float32 scale per output channel.

A batch-1 decode step reads every weight once per token, so its speed is the weights' size over the
memory bandwidth; int8 halves bf16 and quarters fp32. The activations stay in float32.

`Int8Weight.q` is stored [out, in] so that one output's dot product reads contiguous memory. Two
ways to multiply, with the same result up to float rounding:
  * `matmul_dequant`: the plain-torch reference (dequantizes the whole matrix, then one GEMM);
  * `matmul_reduce`: the same product written as an elementwise product and a sum over `in`, which
    torch.compile turns into one fused GEMV kernel that reads the int8 bytes once and never builds
    the float matrix (eagerly it would build a [rows, out, in] temporary: only use it compiled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QMAX = 127


@dataclass(frozen=True)
class Int8Weight:
    """q: [out, in] int8; scale: [out] float32; the weight is q * scale[:, None]."""

    q: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> "Int8Weight":
        """Quantize a [out, in] weight (HF layout) with a per-output-channel absmax scale."""
        if weight.dim() != 2:
            raise ValueError(f"int8 quantization takes a 2-D weight, got shape {tuple(weight.shape)}")
        w = weight.float()
        scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / QMAX
        q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
        return cls(q.contiguous(), scale.contiguous())

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight these bytes stand for."""
        return self.q.float() * self.scale[:, None]


def matmul_dequant(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [rows, in] (float) times the int8 weight -> [rows, out] in x's dtype; plain torch."""
    return (x @ q.t().to(x.dtype)) * scale.to(x.dtype)


def matmul_reduce(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The same product as a broadcast multiply and a row sum: the shape torch.compile fuses into
    one GEMV over the int8 bytes. Eagerly it allocates [rows, out, in]; call it compiled only."""
    return (x[:, None, :] * q[None].to(x.dtype)).sum(-1) * scale.to(x.dtype)
