"""The benchmark suite's machinery, without a model: the optimal hit rate (exact numbers), the
per-run figures, systems isolated in child processes (a segfault, a hang, an import failure each
become a failed row and the suite goes on), the work checks, the results file and the README table,
on the stand-ins of tests/bench_fakes.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from radixlm.bench import report, suite
from radixlm.bench.agreement import add_agreement, compare, digest
from radixlm.bench.calls import CallLog
from radixlm.bench.common import optimal_hit_rate
from radixlm.bench.isolation import describe_exit, run_isolated
from radixlm.bench.machine import machine, slug
from radixlm.bench.systems import HF

FAKES = {"opener": "bench_fakes:open_system", "registry_ref": "bench_fakes:registry"}


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


@pytest.fixture
def fakes_importable(monkeypatch):
    """Children find tests/bench_fakes.py (they inherit this environment)."""
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


def _run(system: str, workloads: list[str], timeout_s: float = 60.0) -> dict:
    lines: list[str] = []
    results = suite.run_system(system, workloads, True, "smollm2", 1, timeout_s, show=lines.append, **FAKES)
    assert len(lines) >= 1  # progress is shown
    return results


def test_a_peer_that_segfaults_on_start_fails_every_row(fakes_importable):
    results = _run("segfaults on start", ["fake", "crashy"])
    assert set(results) == {"fake", "crashy"}
    for r in results.values():
        assert r["error"].startswith("failed to start: crashed (SIGSEGV)")


def test_a_segfault_in_one_workload_costs_that_row_only(fakes_importable):
    results = _run("segfaults in a workload", ["fake", "crashy", "one-fails"])
    assert results["fake"]["programs"] == 2 and "error" not in results["fake"]
    assert results["crashy"]["error"].startswith("crashed (SIGSEGV)")
    assert results["one-fails"]["programs"] == 3 and results["one-fails"]["failed"] == 1  # ran in a fresh child


def test_a_hung_workload_is_killed_after_the_timeout(fakes_importable):
    results = _run("hangs in a workload", ["crashy", "fake"], timeout_s=4.0)
    assert results["crashy"]["error"].startswith("timed out")
    assert results["fake"]["outputs"] == [{"answer": "a0"}, {"answer": "a1"}]


def test_a_crash_after_the_last_workload_keeps_the_results_and_the_suite_goes_on(fakes_importable, capsys):
    data = suite.run_suite(["fake", "one-fails"], ["segfaults on close", "radixlm lpm"], quick=True, threads=1,
                           bandwidth=False, **FAKES)
    assert data["complete"]
    for system in ("segfaults on close", "radixlm lpm"):
        assert data["results"]["fake"][system]["programs"] == 2 and "error" not in data["results"]["fake"][system]
        assert data["results"]["one-fails"][system]["failed"] == 1
    out = capsys.readouterr().out
    assert "  segfaults on close: after its last workload: crashed (SIGSEGV)" in out
    # workload by workload: both systems run `fake` before either runs `one-fails`
    order = [out.index(line) for line in ("\nfake:", "  segfaults on close: fake:", "  radixlm lpm: fake:",
                                          "\none-fails:", "  segfaults on close: one-fails:", "  radixlm lpm: one-fails:")]
    assert order == sorted(order)


def test_a_system_that_cannot_start_is_tried_once(fakes_importable, capsys):
    data = suite.run_suite(["fake", "one-fails"], ["cannot import", "radixlm lpm"], quick=True, threads=1,
                           bandwidth=False, **FAKES)
    assert data["complete"]
    reasons = {data["results"][w]["cannot import"]["error"] for w in ("fake", "one-fails")}
    assert len(reasons) == 1 and reasons.pop().startswith("failed to start: exited with status 1")
    assert capsys.readouterr().out.count("cannot import: n/a:") == 1


def test_an_import_failure_is_the_reason_given(fakes_importable):
    results = _run("cannot import", ["fake"])
    assert results["fake"]["error"] == ("failed to start: exited with status 1: ModuleNotFoundError: No module named "
                                        "'a_peer_library_that_is_not_installed'")


def test_a_workload_that_raises_is_a_row_with_its_error(fakes_importable):
    assert _run("radixlm lpm", ["raises"])["raises"] == {"error": "RuntimeError: boom"}


def test_an_abandoned_child_is_killed(fakes_importable):
    items = run_isolated("bench_fakes:emit_pid_then_hang", {}, timeout_s=60.0)
    pid = next(items)["pid"]
    items.close()  # the parent stops listening (an exception, Ctrl-C, SIGTERM): the child must not linger
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_describe_exit():
    assert describe_exit(-11, "x\nFatal Python error: Segmentation fault\n\n") == \
        "crashed (SIGSEGV): Fatal Python error: Segmentation fault"
    assert describe_exit(2, "") == "exited with status 2"


def test_agreement_counts_equal_programs_and_token_ratio():
    assert digest([{"a": 1}, None]) == digest([{"a": 1}, None]) != digest([{"a": 2}, None])
    assert compare([{"a": 1}, None, {"b": 2}], [{"a": 1}, None, {"b": 3}]) == 1  # a failed program never agrees
    results = {"w": {"ref": {"outputs": ["x", "y"], "output_tokens": 10},
                     "peer": {"outputs": ["x", "z"], "output_tokens": 15}, "broken": {"error": "boom"}}}
    add_agreement(results, "ref")
    assert results["w"]["peer"]["agreement"] == {"with": "ref", "equal": 1, "programs": 2, "output_tokens_ratio": 1.5}
    assert results["w"]["ref"]["agreement"]["equal"] == 2 and "agreement" not in results["w"]["broken"]


def test_the_quantized_system_is_held_to_the_llama_cpp_target_where_it_ran():
    from radixlm.bench.systems import LLAMACPP

    row = {"programs_per_s": 1.0}
    data = {"results": {"agent-sequential": {report.MAIN: row, report.QUANTIZED: {"programs_per_s": 3.0},
                                             LLAMACPP: {"programs_per_s": 1.5}},
                        "multi-agent": {report.MAIN: row, LLAMACPP: {"programs_per_s": 2.0}}}}
    vs_llama = {(r[0], r[1]): (r[2], r[4]) for r in report.checks(data) if "vs llama-cpp" in r[1]}
    assert vs_llama == {("agent-sequential", f"{report.MAIN} vs llama-cpp programs/s"): ("0.67x", "NO"),
                        ("agent-sequential", f"{report.QUANTIZED} vs llama-cpp programs/s"): ("2.00x", "yes"),
                        ("multi-agent", f"{report.MAIN} vs llama-cpp programs/s"): ("0.50x", "NO")}


def test_machine_names_the_cpu_and_versions():
    m = machine(bandwidth=False)
    assert m["cpu"] and m["cores"] >= 1 and set(m["key_flags"]) <= set(m["flags"])
    assert m["versions"]["radixlm"] and "llama_cpp_python" in m["versions"]
    assert slug("Intel(R) Xeon(R) Platinum 8480+") == "intel-r-xeon-r-platinum-8480"


def test_run_suite_same_programs_checked_outputs_results_file_and_readme(fakes_importable, tmp_path):
    systems = ["radixlm lpm", HF, "disagreeing peer", "segfaults on start"]
    seen = []  # a checkpoint after every workload: a run cut short still leaves a file
    data = suite.run_suite(["fake", "one-fails"], systems[:3], quick=True, threads=1, bandwidth=False,
                           checkpoint=lambda d: seen.append((d["complete"], sorted(d["results"]["fake"]))), **FAKES)
    assert seen[0] == (False, ["radixlm lpm"]) and len(seen) == 6 and [c for c, _ in seen].count(True) == 1
    # A later run adds a system to the same file, with the same work (its own arguments are ignored).
    data = suite.run_suite(["crashy"], systems[3:], quick=False, threads=7, bandwidth=False, add_to=data, **FAKES)
    assert data["config"]["systems"] == systems and data["config"]["threads"] == 1 and data["complete"]
    assert len(data["runs"]) == 2 and "crashy" not in data["results"]
    fake = data["results"]["fake"]
    assert {fake[s]["programs"] for s in systems[:3]} == {2}  # every system ran the same programs
    assert fake[HF]["agreement"]["equal"] == 2 and fake["disagreeing peer"]["agreement"]["equal"] == 1
    assert fake["disagreeing peer"]["agreement"]["output_tokens_ratio"] == 5 / 4
    assert fake["segfaults on start"]["error"].startswith("failed to start: crashed (SIGSEGV)")
    assert data["config"]["threads"] == 1 and data["config"]["workloads"]["fake"]["programs"] == 2
    assert report.ratio(data["results"], "fake", "radixlm lpm", HF) == 10.0

    path = suite.save(data, suite.results_path(data, tmp_path))
    assert path.name == f"{data['time'][:10]}-{slug(data['machine']['cpu'])}-quick.json"
    saved = json.loads(path.read_text())
    assert saved["results"]["fake"]["radixlm lpm"]["outputs_digest"] == digest([{"answer": "a0"}, {"answer": "a1"}])

    md = report.markdown(saved)
    assert "| fake | radixlm lpm | 2/2 | 10.00 |" in md
    assert "| fake | radixlm lpm vs HF programs/s | 10.00x | >= 5x | yes |" in md
    assert "| fake | HF transformers outputs equal to radixlm lpm's | 2/2 | all | yes |" in md
    assert "- fake on segfaults on start: failed to start: crashed (SIGSEGV)" in md

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    report.main([str(path), "--readme", str(readme), "--chart", str(tmp_path / "chart.png")])
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{report.END}\n\nafter\n")
    assert "| fake | 2 | 10.000 | 1.000 | 2.000 | failed | 10.00x | n/a | 2/2, – |" in text
    assert f"[`{path.name}`]({path.name})" in text
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_passes_bench_options_to_the_suite(monkeypatch):
    from radixlm import cli

    seen = []
    monkeypatch.setattr(cli, "_bench", seen.append)  # build_parser binds it when called
    cli.main(["bench", "--quick", "--systems", "lpm", "hf", "--threads", "3"])
    parsed = suite.build_parser().parse_args(seen[0].bench_args)
    assert parsed.quick and parsed.systems == ["lpm", "hf"] and parsed.workloads == list(suite.registry())
    assert parsed.threads == 3 and suite.build_parser().parse_args([]).threads == os.cpu_count()


def test_single_benches_are_modules_of_the_installed_package():
    """Every single bench runs as `python -m radixlm.bench.<name>`: no bench module edits sys.path or imports
    script-relative (`from common import`), and each with a main() imports as a module of the package."""
    import importlib
    import pkgutil

    import radixlm.bench

    folder = Path(radixlm.bench.__path__[0])
    sources = {m.name: (folder / f"{m.name}.py").read_text()
               for m in pkgutil.iter_modules(radixlm.bench.__path__) if not m.ispkg}
    benches = [name for name, source in sources.items() if "\ndef main(" in source]
    assert {"shared_prefix", "http_overhead", "smg_scaleout", "zmq_latency", "fork_programs"} <= set(benches)
    for name, source in sources.items():
        assert "sys.path" not in source and "from common import" not in source, name
    for name in benches:
        assert callable(importlib.import_module(f"radixlm.bench.{name}").main), name
