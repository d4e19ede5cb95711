"""Small helpers shared by the benches: threads, timing, the HF baseline model, tables, results JSON,
and the optimal prefix-cache hit rate of a workload.

The single-topic benches run as modules of the installed package (`python -m radixlm.bench.<name>`) and
import it as `radixlm.bench.common`, as the suite (`radixlm bench`) does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

# Results go to bench/results/ of the checkout the benches are run from (its root is the working
# directory); the module's own folder may be an installed copy in site-packages.
RESULTS_DIR = Path.cwd() / "bench" / "results"
THREADS = 2


def setup_torch(threads: int = THREADS) -> None:
    """Fixed thread count so radixlm and HF run under the same conditions."""
    import torch

    torch.set_num_threads(threads)


def optimal_hit_rate(calls: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[float, int, int]:
    """Best possible fraction of prompt tokens served from a prefix cache with unlimited memory.

    `calls` are (prompt ids, output ids) pairs. Calls are served shortest prompt first (a later
    step of an agent always has a longer prompt than the step it extends); each computes the prompt
    tokens not yet in the trie of earlier prompts and outputs (at least one token, as an engine
    always computes the last prompt token), then its prompt + output joins the trie.
    Returns (rate, cacheable tokens, total prompt tokens); rate 0.0 when there are no prompt tokens."""
    root: dict = {}
    computed = 0
    for prompt, output in sorted(calls, key=lambda c: len(c[0])):
        node, matched = root, 0
        for t in prompt:
            if t not in node:
                break
            node, matched = node[t], matched + 1
        computed += 1 if matched == len(prompt) else len(prompt) - matched
        node = root
        for t in (*prompt, *output):
            node = node.setdefault(t, {})
    total = sum(len(p) for p, _ in calls)
    return ((total - computed) / total if total else 0.0), total - computed, total


class FirstTokenTimer:
    """HF logits processor that records when generate produced its first logits (the end of prefill)."""

    def __init__(self) -> None:
        self.time: float | None = None

    def __call__(self, input_ids, scores):
        if self.time is None:
            self.time = time.perf_counter()
        return scores


def load_hf_model(folder: str | Path):
    """The HF transformers baseline: float32, eval mode (call it under torch.inference_mode())."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.eval()


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table_rows(rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [[fmt(c) for c in row] for row in rows]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Aligned plain-text table on stdout."""
    cells = table_rows(rows)
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for raw, r in zip(rows, cells):
        numeric = [(isinstance(v, (int, float)) and not isinstance(v, bool)) or (isinstance(v, str) and v[:1].isdigit())
                   for v in raw]
        print("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = table_rows(rows)
    out = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def load_average() -> float:
    return os.getloadavg()[0]


def busy_cores(seconds: float = 1.0) -> float:
    """CPU cores in use by any process, sampled from /proc/stat over `seconds` (else the load average)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
        return (1 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1)
    except OSError:
        return load_average()


def warn_if_busy(limit: float = 0.3) -> float:
    """Print a warning when other processes are using the CPU (timings would be unreliable)."""
    busy = busy_cores()
    if busy > limit:
        print(f"WARNING: {busy:.1f} CPU cores busy before the bench: other processes share the CPU, so "
              f"timings (and ratios) are unreliable", flush=True)
    return busy


def machine_info() -> dict[str, Any]:
    """The machine section of a single bench's results (CPU model and flags, cores, versions, load)."""
    import torch

    from radixlm.bench.machine import machine

    return {**machine(bandwidth=False), "torch_threads": torch.get_num_threads()}


def save_results(name: str, data: dict[str, Any], markdown: str | None = None) -> Path:
    """Write bench/results/<name>.json (the markdown table, when given, goes in its "markdown" key)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {"bench": name, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(), **data}
    if markdown is not None:
        data["markdown"] = markdown
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
