"""The Llama-family model and its per-step attention context."""
