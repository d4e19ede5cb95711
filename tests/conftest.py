"""Shared fixtures: the real SmolLM2 model (ours and the HF reference), loaded once per session."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from radixlm.engine.loader import LoadedModel, load_model


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_model("smollm2")


@pytest.fixture(scope="session")
def hf_smollm2(smollm2: LoadedModel) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2.folder), dtype=torch.float32).eval()
