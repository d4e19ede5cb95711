"""Chaos: several client processes send random mixes of valid, invalid, aborted, disconnecting,
over-long and huge-n requests to one live engine process. Every valid request completes once with
the model's output, every invalid one is rejected with a code, nothing is lost or leaked, and the
engine never restarts. Run with -s to see the counts."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import chaos_worker
from fake_model import FakeModel
from radixlm.client import Client
from radixlm.connection import Connection
from server_harness import settled_stats, wait_for_engine

HERE = Path(__file__).parent
WORKERS, ROUNDS = 4, 60


def test_chaos_rounds_against_one_live_engine(tmp_path):
    endpoint = f"ipc://{tmp_path / 'chaos.sock'}"
    config = {"kv_cache_tokens": 3000, "max_context": chaos_worker.CONTEXT, "max_running_requests": 16, "chunk_size": 64}
    engine = subprocess.Popen([sys.executable, str(HERE / "fake_engine_process.py"), endpoint, json.dumps(config)])
    try:
        wait_for_engine(endpoint, engine, timeout=60)
        client = Client(Connection(endpoint), timeout=60)
        start = time.monotonic()
        with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
            reports = pool.starmap(chaos_worker.run, [(endpoint, seed, ROUNDS) for seed in range(WORKERS)])
        seconds = time.monotonic() - start
        counts = sum((Counter(r["counts"]) for r in reports), Counter())
        model = FakeModel()
        wrong = [o for r in reports for (p, n, o) in [tuple(x) for x in r["outputs"]] if o != model.reference(p, n)]
        stats = settled_stats(client, timeout=10)  # aborted and disconnected requests drain
        assert not stats["running"] and not stats["waiting"], stats
        leaked = stats["pool_capacity"] - stats["pool_free"] - stats["cache_evictable"]
        summary = {**dict(sorted(counts.items())), "lost": counts["lost"], "leaked_slots": leaked, "engine_restarts": int(engine.poll() is not None),
                   "seconds": round(seconds, 1)}
        print("chaos:", json.dumps(summary))
        assert counts["rounds"] == counts["integrity_ok"] == WORKERS * ROUNDS
        assert counts["lost"] == 0 and counts["invalid_accepted"] == 0 and not wrong
        rejected = sum(v for k, v in counts.items() if k.startswith("rejected:"))
        assert counts["sent"] == counts["completed"] + rejected + counts["aborted"] + counts["disconnected"]
        assert set(k for k in counts if k.startswith("rejected:")) == {"rejected:invalid_request"}
        assert leaked == 0 and stats["integrity"] == "ok" and engine.poll() is None
        client.close()
    finally:
        engine.kill()
        engine.wait()
