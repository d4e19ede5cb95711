"""Attention backends over the KV pool; each reads the per-step ForwardContext."""
