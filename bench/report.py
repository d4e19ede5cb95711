"""The suite's outputs: results JSON, a markdown table with the issue's targets, and a PNG bar chart
of each system's speed-up over HF transformers (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import markdown_table
from .systems import HF, LLAMACPP

MAIN = "radixlm lpm"
TARGETS = {"vs_hf": 5.0, "vs_llamacpp": 1.5, "hit_vs_optimal": 0.95}
VS_LLAMACPP_WORKLOADS = ("multi-agent", "tree-of-thought")


def ratio(results: dict, workload: str, system: str, baseline: str) -> float | None:
    """programs/s of `system` over `baseline` on a workload; None when either did not run."""
    a, b = results[workload].get(system, {}), results[workload].get(baseline, {})
    if "programs_per_s" not in a or "programs_per_s" not in b or not b["programs_per_s"]:
        return None
    return a["programs_per_s"] / b["programs_per_s"]


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{x:.1%}"


def markdown(data: dict) -> str:
    """The results table (one row per workload and system), the targets, and what did not run."""
    results = data["results"]
    headers = ["workload", "system", "programs ok", "programs/s", "output tok/s", "first token s", "hit rate",
               "optimal hit", "hit / optimal", "vs HF", "vs llama-cpp"]
    rows, missing = [], []
    for workload, by_system in results.items():
        for system, r in by_system.items():
            if "programs_per_s" not in r:
                missing.append(f"- {workload} on {system}: {r.get('error', 'n/a')}")
                continue
            rows.append([workload, system, f"{r['programs'] - r['failed']}/{r['programs']}", r["programs_per_s"],
                         r["output_tokens_per_s"], r["first_token_s"], _pct(r["hit_rate"]), _pct(r["optimal_hit_rate"]),
                         _pct(r["hit_vs_optimal"]), ratio(results, workload, system, HF),
                         ratio(results, workload, system, LLAMACPP)])
    checks = []
    for workload in results:
        main = results[workload].get(MAIN, {})
        checks.append([workload, f"{MAIN} vs HF programs/s", ratio(results, workload, MAIN, HF),
                       f">= {TARGETS['vs_hf']:g}x", _met(ratio(results, workload, MAIN, HF), TARGETS["vs_hf"])])
        if workload in VS_LLAMACPP_WORKLOADS:
            r = ratio(results, workload, MAIN, LLAMACPP)
            checks.append([workload, f"{MAIN} vs llama-cpp programs/s", r, f">= {TARGETS['vs_llamacpp']:g}x",
                           _met(r, TARGETS["vs_llamacpp"])])
        hit = main.get("hit_vs_optimal")
        checks.append([workload, f"{MAIN} hit rate / optimal", _pct(hit), f">= {TARGETS['hit_vs_optimal']:.0%}",
                       _met(hit, TARGETS["hit_vs_optimal"])])
    cfg = data["config"]
    out = [f"`{cfg['command']}` ({'quick' if cfg['quick'] else 'full'} run, {data['time']}; "
           f"{data['busy_cores_before']:.1f} CPU cores busy before it)", "",
           markdown_table(headers, rows), "", markdown_table(["workload", "check", "value", "target", "met"], checks)]
    if missing:
        out += ["", "Not measured:", *missing]
    out += ["", "Peers serve one call at a time, so they run their programs one after another (and fewer of them: "
            "their rate per program does not depend on the count); radixlm runs each workload's programs all at "
            "once. Hit rate: prompt tokens served from the system's cache; optimal: what a prefix cache with "
            "unlimited memory would serve for the same calls."]
    return "\n".join(out) + "\n"


def _met(value: float | None, target: float) -> str:
    return "n/a" if value is None else ("yes" if value >= target else "NO")


def plot(data: dict, path: Path) -> None:
    """Grouped bars: per workload, each system's programs/s over HF's (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    workloads = list(results)
    systems = [s for s in data["config"]["systems"] if s != HF]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(workloads)), 4.5))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        values = [ratio(results, w, system, HF) or 0.0 for w in workloads]
        ax.bar([x + i * width for x in range(len(workloads))], values, width, label=system)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(workloads))], workloads, rotation=20,
                  ha="right")
    ax.set_ylabel("programs/s over HF transformers (log)")
    ax.set_title(f"radixlm bench ({'quick' if data['config']['quick'] else 'full'}), {data['time']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(data: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Write <stem>.json, <stem>.md and <stem>.png under `out`; a missing matplotlib is said in the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    text = markdown(data)
    try:
        plot(data, out / f"{stem}.png")
        paths.append(out / f"{stem}.png")
    except ImportError as exc:
        text += f"\nNo chart: matplotlib is missing ({exc}); `radixlm bench --install-peers` installs it.\n"
    paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths[1].write_text(text)
    return paths
