"""Load a model by name or path into a ready LlamaModel + Tokenizer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .attention.select import make_attention
from .model.config import ModelConfig
from .model.llama import LlamaModel
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


def load_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Resolve `name` (alias, .gguf or HF folder), load weights and tokenizer, and build the model
    with the attention backend for `device` (torch on CPU, triton on CUDA)."""
    start = time.perf_counter()
    folder = resolve_model(name)
    config = ModelConfig.from_folder(folder)
    model = LlamaModel(config, load_weights(folder), make_attention("auto", device), device=device, dtype=dtype)
    tokenizer = Tokenizer(folder)
    return LoadedModel(name, folder, config, model, tokenizer, time.perf_counter() - start)
