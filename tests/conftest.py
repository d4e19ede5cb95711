"""Shared fixtures: the real SmolLM2 model (ours and the HF reference), loaded once per session, and an
engine process serving it for one test module."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from radixlm.torch_env import apply_torch_defaults

apply_torch_defaults()  # before torch loads: pytest's own engines run as radixlm's do

import torch  # noqa: E402

import radixlm  # noqa: E402
from radixlm.engine.loader import LoadedModel, load_model  # noqa: E402


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_model("smollm2")


@pytest.fixture(scope="session")
def hf_smollm2(smollm2: LoadedModel) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2.folder), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def smollm2_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[radixlm.Client]:
    """A client of a `radixlm serve` process spawned on SmolLM2 at a private ipc endpoint
    (`client.conn.endpoint`), shut down after the module."""
    endpoint = f"ipc://{tmp_path_factory.mktemp('engine') / 'engine.sock'}"
    client = radixlm.connect(endpoint, model="smollm2", timeout=300)
    yield client
    client.shutdown()
