"""The radixlm engine: model, KV pool, radix cache, scheduler (imports torch)."""
