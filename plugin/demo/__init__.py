"""The main job, `radixlm demo`: several agents at once on the embedded model through one engine."""

from .main import run_demo

__all__ = ["run_demo"]
