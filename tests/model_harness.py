"""Helpers for the logit-parity tests (not a test module).

`build(kind)` makes a tiny random-weight HF model and our LlamaModel sharing its weights;
`prefill`, `extend` and `decode_batch` drive our model through ForwardContext over a KVPool;
`hf_logits` is the reference: one HF forward over a whole sequence. `q4_state` gives a tiny model
weights that are exactly 4-/8-bit blocks (the q4 and exact-blocks passes), `needs_kernel` marks tests
of the native block kernels.
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from typing import Any, Sequence

import pytest
import torch

from radixlm.engine.attention.torch_backend import TorchAttention
from radixlm.engine.kv_pool import KVPool
from radixlm.engine.model.config import ModelConfig
from radixlm.engine.model.context import ForwardContext, use_context
from radixlm.engine.model.llama import LlamaModel
from radixlm.engine.quant.q4 import Q4Weight
from radixlm.engine.quant.q8 import Q8Weight

KINDS = ("llama3", "qwen2", "qwen3")
VOCAB = 128
_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


@dataclass
class Pair:
    """A HF reference model and our model built from the same weights."""

    hf: torch.nn.Module
    ours: LlamaModel
    cfg: ModelConfig


def hf_config(kind: str) -> Any:
    """Tiny HF config: Llama with llama3 rope scaling, Qwen2 (q/k/v bias), Qwen3 (q/k norm, head_dim 64, tied)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if kind == "llama3":
        # original_max_position_embeddings=32 puts some frequencies in each llama3 band (scaled/smoothed/kept).
        rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                    high_freq_factor=4.0, original_max_position_embeddings=32)
        return LlamaConfig(**_COMMON, rope_parameters=rope, rms_norm_eps=1e-5)
    if kind == "qwen2":
        return Qwen2Config(**_COMMON, rope_parameters=dict(rope_type="default", rope_theta=1e6), rms_norm_eps=1e-6)
    if kind == "qwen3":
        return Qwen3Config(**_COMMON, head_dim=64, tie_word_embeddings=True, rms_norm_eps=1e-6)
    raise ValueError(kind)


def build(kind: str, seed: int = 0) -> Pair:
    """Random weights large enough to make attention, biases and norms matter (HF zero-inits biases)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hc = hf_config(kind)
    hf = AutoModelForCausalLM.from_config(hc, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    cfg = ModelConfig.from_dict(hc.to_dict())
    return Pair(hf, LlamaModel(cfg, hf.state_dict(), TorchAttention()), cfg)


def new_pool(cfg: ModelConfig, num_slots: int = 1024) -> KVPool:
    return KVPool(num_slots, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)


@torch.inference_mode()
def hf_logits(hf: torch.nn.Module, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Reference logits [len(ids), vocab] of one full-sequence HF forward."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    return hf(ids[None]).logits[0].float()


def extend(
    model: LlamaModel, pool: KVPool, batch: Sequence[tuple[torch.Tensor, Sequence[int] | torch.Tensor]]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One extend call over several sequences, each given as (cached_slots, new_ids).

    Allocates slots for the new tokens; returns per sequence the logits of all its new positions
    and its full slot list (cached + new)."""
    seq_slots, prefix_lens, ids, positions = [], [], [], []
    for cached, new in batch:
        new = torch.as_tensor(new, dtype=torch.int64)
        p = len(cached)
        seq_slots.append(torch.cat([cached.to(torch.int64), pool.allocator.alloc(len(new))]))
        prefix_lens.append(p)
        ids.append(new)
        positions.append(torch.arange(p, p + len(new)))
    flat_ids = torch.cat(ids)
    rows = torch.arange(len(flat_ids))  # every new token of every sequence
    with use_context(ForwardContext.for_extend(pool, seq_slots, prefix_lens, rows)):
        logits = model(flat_ids, torch.cat(positions))
    return list(logits.split([len(i) for i in ids])), seq_slots


def prefill(model: LlamaModel, pool: KVPool, ids: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill one sequence from scratch: (logits at every position, its slots)."""
    logits, slots = extend(model, pool, [(torch.empty(0, dtype=torch.int64), ids)])
    return logits[0], slots[0]


def decode_batch(
    model: LlamaModel, pool: KVPool, seq_slots: Sequence[torch.Tensor], last_ids: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One decode step for B sequences: `last_ids[b]` is appended to sequence b.

    Builds a kv_index padded with the scratch slot 0; returns (logits [B, vocab], updated slots)."""
    new_slots = [torch.cat([s, pool.allocator.alloc(1)]) for s in seq_slots]
    lens = torch.tensor([len(s) for s in new_slots])
    kv_index = torch.zeros(len(new_slots), int(lens.max()), dtype=torch.int64)
    for b, s in enumerate(new_slots):
        kv_index[b, : len(s)] = s
    with use_context(ForwardContext.for_decode(pool, kv_index, lens)):
        logits = model(torch.as_tensor(list(last_ids), dtype=torch.int64), lens - 1)
    return logits, new_slots


def greedy_decode(
    model: LlamaModel, pool: KVPool, prompts: Sequence[Sequence[int]], steps: int
) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
    """Prefill each prompt, then decode all together `steps` times feeding back our argmax.

    Returns per sequence the full token list (prompt + 1 + steps tokens; the last one is never fed)
    and the logits that chose each generated token (prefill's last row, then one per decode step)."""
    tokens, slots, step_logits = [], [], []
    for p in prompts:
        logits, s = prefill(model, pool, p)
        tokens.append(list(p) + [int(logits[-1].argmax())])
        slots.append(s)
        step_logits.append([logits[-1]])
    for _ in range(steps):
        logits, slots = decode_batch(model, pool, slots, [t[-1] for t in tokens])
        for b in range(len(prompts)):
            tokens[b].append(int(logits[b].argmax()))
            step_logits[b].append(logits[b])
    return tokens, step_logits


def assert_same_greedy_decode(model: LlamaModel, ref: LlamaModel, cfg: ModelConfig,
                              prompts: Sequence[Sequence[int]], steps: int, atol: float = 1e-4) -> None:
    """`model` and `ref`, each on a fresh pool, decode `prompts` greedily to the same tokens, and
    every step's logits agree within `atol` (`assert_close`)."""
    ref_tokens, ref_logits = greedy_decode(ref, new_pool(cfg), prompts, steps)
    tokens, logits = greedy_decode(model, new_pool(cfg), prompts, steps)
    assert tokens == ref_tokens
    for ours, theirs in zip(logits, ref_logits):
        assert_close(torch.stack(ours), torch.stack(theirs), atol)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float) -> float:
    """Max abs diff <= atol and the same argmax in every row; returns the max abs diff."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = float((ours - ref).abs().max())
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"
    mismatch = (ours.argmax(-1) != ref.argmax(-1)).nonzero().flatten().tolist()
    assert not mismatch, f"argmax differs at rows {mismatch} (max abs diff {diff:.3g})"
    return diff


PROMPTS = [[3, 17, 42, 9, 88, 5], [7, 7, 1], [100, 2, 64, 31, 12, 9, 5, 77, 1, 2]]
CAN_BUILD = platform.machine() in ("x86_64", "AMD64") and shutil.which("c++") is not None
needs_kernel = pytest.mark.skipif(not CAN_BUILD, reason="the native 4-bit kernel builds on x86 with a C++ compiler")


def q4_state(kind: str, seed: int) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """A tiny model's weights with every layer matrix replaced by its 4-bit round trip and the head
    by its 8-bit block one: an fp32 model on them holds exactly the weights of the q4 decode pass."""
    pair = build(kind, seed)
    head = "model.embed_tokens.weight" if pair.cfg.tie_word_embeddings else "lm_head.weight"

    def round_trip(name: str, t: torch.Tensor) -> torch.Tensor:
        if name == head:
            return Q8Weight.quantize(t).dequantize()
        return Q4Weight.quantize(t).dequantize() if name.startswith("model.layers.") and t.dim() == 2 else t

    return {n: round_trip(n, t) for n, t in pair.hf.state_dict().items()}, pair.cfg
