"""The model's own tokenizer and chat template, behind the few calls the engine makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


class Tokenizer:
    """Wraps the HF tokenizer saved in a model folder."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(folder))
        self.vocab_size = len(self.hf)
        eos = {self.hf.eos_token_id} if self.hf.eos_token_id is not None else set()
        self.eos_token_ids: frozenset[int] = frozenset(eos)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without adding special tokens (chat templates already carry them)."""
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.hf.chat_template)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render chat messages with the model's template into the prompt text."""
        if not self.has_chat_template:
            raise ValueError("this model has no chat template; send a plain text prompt instead of messages")
        return self.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
