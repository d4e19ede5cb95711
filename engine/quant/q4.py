"""4-bit weight-only quantization in blocks of 32 (the Q4_1 scheme): w = d * q + m per block.

Each block of 32 consecutive weights of one output row has a float16 scale d = (max - min) / 15 and
offset m = min, and 4-bit codes q = round((w - m) / d) in 0..15. A GGUF Q4_1 block dequantized to
float and quantized again here gives back its own codes, scale and offset, so an engine loading a
Q4_1 GGUF multiplies by the same weights llama.cpp does.

`Q4Weight.packed` holds a row's blocks in pairs, 32 bytes per pair: byte j carries q[j] of the
pair's first block in its low nibble and q[j] of the second in its high nibble (the layout the native
kernel reads with one load per pair; see block_gemv.cpp). Two ways to multiply:
  * `matmul_native`: the native kernel (`radixlm::q4_gemv`, built at first use; see `native.py`);
    x is quantized per block to int8 there, as llama.cpp does, for an integer dot;
  * `matmul_dequant`: plain torch (dequantize the matrix, one GEMM), for CPUs the kernel does not
    build on and as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import BLOCK, as_blocks, scaled

LEVELS = 15


@dataclass(frozen=True)
class Q4Weight:
    """packed: [out, in / 2] uint8 (block pairs, see the module docstring); d, m: [out, in / 32] float16."""

    packed: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> "Q4Weight":
        """Quantize a [out, in] weight (HF layout; in a multiple of 64) block by block."""
        blocks = as_blocks(weight, "4-bit")
        out, size = weight.shape
        low, high = blocks.amin(-1), blocks.amax(-1)
        d = ((high - low) / LEVELS).half()
        m = low.half()
        codes = scaled(blocks - m.float()[..., None], d)
        q = torch.round(codes).clamp_(0, LEVELS).to(torch.uint8).view(out, size // (2 * BLOCK), 2, BLOCK)
        packed = q[:, :, 0] | (q[:, :, 1] << 4)
        return cls(packed.reshape(out, size // 2).contiguous(), d.contiguous(), m.contiguous())

    def codes(self) -> torch.Tensor:
        """The 4-bit codes as uint8 [out, in]."""
        out, half = self.packed.shape
        pairs = self.packed.view(out, half // BLOCK, 1, BLOCK)
        return torch.cat([pairs & 15, pairs >> 4], dim=2).view(out, 2 * half)

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight these blocks stand for."""
        out, size = self.packed.shape[0], self.packed.shape[1] * 2
        q = self.codes().view(out, size // BLOCK, BLOCK).float()
        return (q * self.d.float()[..., None] + self.m.float()[..., None]).view(out, size)


def matmul_dequant(x: torch.Tensor, packed: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [rows, in] times the 4-bit weight -> [rows, out] in x's dtype; plain torch."""
    return x @ Q4Weight(packed, d, m).dequantize().t().to(x.dtype)


def matmul_native(x: torch.Tensor, packed: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
                  exact: bool = False) -> torch.Tensor:
    """x [rows, in] times the 4-bit weight -> [rows, out] in x's dtype, through the native kernel
    (`native.block_kernels_available()` must be true); `exact`: x stays float32 and multiplies the
    blocks' own float32 weights (the product with `dequantize()`, in another summation order)."""
    op = torch.ops.radixlm.q4_gemv_exact if exact else torch.ops.radixlm.q4_gemv
    return op(x.float(), packed, d, m).to(x.dtype)
