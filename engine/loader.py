"""Load a model by name or path into a ready LlamaModel + Tokenizer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .attention.select import make_attention
from .model.config import ModelConfig
from .model.llama import LlamaModel
from .model.precision import resolve_precision
from .model_source import load_weights, resolve_model
from .tokenizer import Tokenizer


@dataclass
class LoadedModel:
    """A model ready to run, with where it came from and how long loading took."""

    name: str
    folder: Path
    config: ModelConfig
    model: LlamaModel
    tokenizer: Tokenizer
    load_seconds: float

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset(self.config.eos_token_ids) | self.tokenizer.eos_token_ids


def load_model(name: str, device: str = "cpu", dtype: str | torch.dtype = torch.float32,
               quantization: str = "none", compile_decode: bool = False, exact_blocks: bool = True) -> LoadedModel:
    """Resolve `name` (alias, .gguf or HF folder), load weights and tokenizer, and build the model
    with the attention backend for `device` (torch on CPU, triton on CUDA). `dtype` is a torch dtype
    or a name ("float32", "bfloat16", "auto": see `model.precision`); `quantization` ("none", "int8", "q4")
    and `compile_decode` choose the decode pass's weights and whether it is compiled; `exact_blocks`: see
    `LlamaModel`."""
    start = time.perf_counter()
    precision = resolve_precision(dtype, device)
    folder = resolve_model(name)
    config = ModelConfig.from_folder(folder)
    model = LlamaModel(config, load_weights(folder), make_attention("auto", device), device=device, dtype=precision,
                       quantization=quantization, compile_decode=compile_decode, exact_blocks=exact_blocks)
    tokenizer = Tokenizer(folder)
    return LoadedModel(name, folder, config, model, tokenizer, time.perf_counter() - start)
