"""The benchmark suite's machinery, without a model: the optimal hit rate (exact numbers), the
per-run figures, and a whole `run_suite` + report on stand-in systems (JSON, markdown, PNG)."""

from __future__ import annotations

import json

import pytest

from radixlm.bench import report, suite
from radixlm.bench.calls import CallLog
from radixlm.bench.common import optimal_hit_rate
from radixlm.bench.systems import HF, LLAMACPP, Unavailable
from radixlm.bench.workloads import Workload


def test_optimal_hit_rate_shared_prefix():
    # Two prompts share 3 tokens: the second reuses them and computes 2.
    assert optimal_hit_rate([([1, 2, 3, 4], []), ([1, 2, 3, 5, 6], [])]) == (3 / 9, 3, 9)


def test_optimal_hit_rate_counts_outputs_and_serves_shortest_first():
    # The agent's step 2 prompt = step 1 prompt + its output + new text: all but 2 tokens reusable,
    # whatever order the calls are listed in.
    calls = [([1, 2, 3, 7, 8, 9, 10], [11]), ([1, 2, 3], [7, 8])]
    assert optimal_hit_rate(calls) == (5 / 10, 5, 10)


def test_optimal_hit_rate_identical_prompts_compute_one_token():
    assert optimal_hit_rate([([5, 6, 7], []), ([5, 6, 7], [])]) == (2 / 6, 2, 6)
    assert optimal_hit_rate([]) == (0.0, 0, 0)


def test_call_log_summary():
    log = CallLog()
    log.add("gen", [1, 2, 3], [4, 5], 0, 0.5)
    log.add("gen", [1, 2, 3, 4, 5, 6], [7], 5, 0.25)
    log.add("prefix", [1, 2], [], 2, 9.0)  # prefix-only: not in the first-token latency
    s = log.summary(programs=2, wall_s=4.0)
    assert s["programs_per_s"] == 0.5 and s["output_tokens_per_s"] == 0.75
    assert s["first_token_s"] == 0.375
    assert s["hit_rate"] == 7 / 11 and s["optimal_hit_rate"] == 7 / 11 and s["hit_vs_optimal"] == 1.0
    assert log.summary(2, 4.0, engine_counts=(22, 11))["hit_rate"] == 0.5
    log.clear()
    assert log.calls == []


class FakeSystem:
    """A stand-in system whose 'programs' each log one call; `speed` scales its wall time."""

    def __init__(self, name: str, sequential: bool, speed: float) -> None:
        self.name, self.sequential, self.speed, self.log = name, sequential, speed, CallLog()

    def begin(self) -> None:
        self.log.clear()

    def end(self, programs: int, wall_s: float) -> dict:
        return self.log.summary(programs, programs / self.speed)

    def close(self) -> None:
        pass


def _fake_run(system, n: int) -> int:
    for i in range(n):
        system.log.add("gen", [1, 2, 3, i], [9], 3 if (i and not system.sequential) else 0, 0.1)
    return n


def _failing_run(system, n: int) -> int:
    raise RuntimeError("boom")


@pytest.fixture
def fake_suite(monkeypatch):
    speeds = {"radixlm lpm": 10.0, "radixlm fcfs": 8.0, HF: 1.0}

    def open_system(name, model, threads):
        if name == LLAMACPP:
            raise Unavailable("llama-cpp-python is not installed")
        return FakeSystem(name, name == HF, speeds[name])

    workloads = {"fake": Workload("fake", "stand-in", 4, 4, 2, 2, _fake_run),
                 "tree-of-thought": Workload("tree-of-thought", "fails", 1, 1, 1, 1, _failing_run)}
    monkeypatch.setattr(suite, "open_system", open_system)
    monkeypatch.setattr(suite, "registry", lambda: workloads)
    monkeypatch.setattr(suite, "warn_if_busy", lambda: 0.0)


def test_run_suite_writes_json_markdown_and_png(fake_suite, tmp_path):
    data = suite.run_suite(["fake", "tree-of-thought"], ["radixlm lpm", "radixlm fcfs", HF, LLAMACPP], quick=True)
    fake = data["results"]["fake"]
    assert fake["radixlm lpm"]["programs"] == 4 and fake[HF]["programs"] == 2
    assert fake["radixlm lpm"]["hit_rate"] == 9 / 16 and fake["radixlm lpm"]["optimal_hit_rate"] == 9 / 16
    assert fake[LLAMACPP] == {"error": "llama-cpp-python is not installed"}
    assert data["results"]["tree-of-thought"]["radixlm lpm"] == {"error": "RuntimeError: boom"}
    assert report.ratio(data["results"], "fake", "radixlm lpm", HF) == 10.0

    paths = report.write(data, tmp_path, "suite_quick")
    assert [p.name for p in paths] == ["suite_quick.json", "suite_quick.md", "suite_quick.png"]
    assert json.loads(paths[0].read_text())["results"]["fake"]["radixlm fcfs"]["programs_per_s"] == 8.0
    md = paths[1].read_text()
    assert "| fake | radixlm lpm | 4/4 | 10.00 |" in md
    assert "| fake | radixlm lpm vs HF programs/s | 10.00 | >= 5x | yes |" in md
    assert "| tree-of-thought | radixlm lpm vs llama-cpp programs/s | n/a | >= 1.5x | n/a |" in md
    assert "- fake on llama-cpp-python: llama-cpp-python is not installed" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_passes_bench_options_to_the_suite(monkeypatch):
    from radixlm import cli

    seen = []
    monkeypatch.setattr(cli, "_bench", seen.append)  # build_parser binds it when called
    cli.main(["bench", "--quick", "--systems", "lpm", "hf"])
    parsed = suite.build_parser().parse_args(seen[0].bench_args)
    assert parsed.quick and parsed.systems == ["lpm", "hf"] and parsed.workloads == list(suite.registry())
