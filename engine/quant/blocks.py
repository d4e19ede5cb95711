"""What the block formats (`q4`, `q8`) share: rows cut into blocks of 32 weights, each with its own
float16 scale, and codes = weight / scale where the scale is not zero."""

from __future__ import annotations

import torch

BLOCK = 32


def as_blocks(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """A [out, in] weight (HF layout; in a multiple of 64, whole block pairs) as float32
    [out, in / 32, 32]; ValueError naming `scheme` otherwise."""
    if weight.dim() != 2 or weight.shape[1] % (2 * BLOCK):
        raise ValueError(f"{scheme} quantization takes a 2-D weight with rows a multiple of {2 * BLOCK} long, "
                         f"got shape {tuple(weight.shape)}")
    out, size = weight.shape
    return weight.float().view(out, size // BLOCK, BLOCK)


def scaled(values: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """values [out, blocks, 32] divided by their block's float16 scale d [out, blocks]; 0 where d is 0."""
    scale = d.float()[..., None]
    return torch.where(scale > 0, values / scale.clamp_min(torch.finfo(torch.float32).tiny), 0)
