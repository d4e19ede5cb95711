"""Work checks: did every system do the same work as the reference system (radixlm lpm)?

Every workload is greedy, so every system should produce the same outputs for the same programs.
Outputs are compared program by program as text (every system's output ids are decoded by the same
tokenizer, so equal text means equal tokens); the generated-token totals are compared alongside, so
a system that stopped early or ran extra agent steps shows up even where its texts differ anyway.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(outputs: list[Any]) -> str:
    """A short fingerprint of a workload's outputs (equal outputs, equal digest)."""
    text = json.dumps(outputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compare(outputs: list[Any], reference: list[Any]) -> int:
    """How many programs produced exactly the reference's outputs (a failed program never agrees)."""
    return sum(o is not None and o == r for o, r in zip(outputs, reference))


def add_agreement(results: dict[str, dict[str, dict]], reference: str) -> None:
    """Give every system's result of every workload an "agreement" entry against `reference`'s:
    programs with equal outputs, programs compared, and generated tokens over the reference's."""
    for by_system in results.values():
        ref = by_system.get(reference, {})
        if "outputs" not in ref:
            continue
        for r in by_system.values():
            if "outputs" not in r:
                continue
            r["agreement"] = {
                "with": reference,
                "equal": compare(r["outputs"], ref["outputs"]),
                "programs": len(ref["outputs"]),
                "output_tokens_ratio": r["output_tokens"] / ref["output_tokens"] if ref["output_tokens"] else None,
            }
