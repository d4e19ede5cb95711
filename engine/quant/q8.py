"""8-bit weight-only quantization in blocks of 32 (the Q8_0 scheme): w = d * q per block.

Each block of 32 consecutive weights of one output row has a float16 scale d = max|w| / 127 and codes
q = round(w / d) in -127..127. A GGUF Q8_0 block dequantized to float and quantized again here gives
back its own codes and scale (the embedded model's head is Q8_0). Two ways to multiply, as in `q4`:
the native kernel (`radixlm::q8_gemv`; x quantized per block to int8 for an integer dot) and plain
torch (dequantize, one GEMM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import BLOCK, as_blocks, scaled

QMAX = 127


@dataclass(frozen=True)
class Q8Weight:
    """q: [out, in] int8; d: [out, in / 32] float16."""

    q: torch.Tensor
    d: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> "Q8Weight":
        """Quantize a [out, in] weight (HF layout; in a multiple of 64) block by block."""
        blocks = as_blocks(weight, "8-bit block")
        out, size = weight.shape
        d = (blocks.abs().amax(-1) / QMAX).half()
        codes = scaled(blocks, d)
        q = torch.round(codes).clamp_(-QMAX, QMAX).to(torch.int8)
        return cls(q.view(out, size).contiguous(), d.contiguous())

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight these blocks stand for."""
        out, size = self.q.shape
        return (self.q.view(out, size // BLOCK, BLOCK).float() * self.d.float()[..., None]).view(out, size)


def matmul_dequant(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x [rows, in] times the 8-bit block weight -> [rows, out] in x's dtype; plain torch."""
    return x @ Q8Weight(q, d).dequantize().t().to(x.dtype)


def matmul_native(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """x [rows, in] times the 8-bit block weight -> [rows, out] in x's dtype, through the native
    kernel (`native.block_kernels_available()` must be true); `exact` as in `q4.matmul_native`."""
    op = torch.ops.radixlm.q8_gemv_exact if exact else torch.ops.radixlm.q8_gemv
    return op(x.float(), q, d).to(x.dtype)
