"""Fault isolation on SmolLM2 (slow): while three requests stream, one request fails at validation,
one at grammar time and one inside the forward pass; the streams finish exactly as when each ran
alone, each culprit gets an Error naming its problem, and integrity holds."""

from __future__ import annotations

import threading
import uuid

import pytest

from fault_injection import PoisonedModel
from radixlm import EngineError
from radixlm.client import Client
from radixlm.connection import Connection
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.grammar import GrammarError, GrammarState
from radixlm.protocol import SamplingParams
from radixlm.engine.server import EngineServer
from server_harness import serve_in_thread, settled_stats

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Water boils at", "A list of three colors:"]
BUDGET = 16


def test_smollm2_culprits_fail_alone_while_others_stream(smollm2, tmp_path, monkeypatch):
    tok = smollm2.tokenizer
    solo = Engine(smollm2.model, EngineConfig(kv_cache_tokens=2048), smollm2.eos_token_ids, tok)
    expected = [solo.generate([tok.encode(p)], SamplingParams(max_new_tokens=BUDGET))[0].output_ids for p in PROMPTS]
    poison = smollm2.config.vocab_size - 1  # a token no prompt or output here computes
    assert all(poison not in tok.encode(p) + out for p, out in zip(PROMPTS, expected))

    def consume_fails(self, token_id):
        raise GrammarError("injected fault: the grammar rejects a token")

    monkeypatch.setattr(GrammarState, "consume", consume_fails)
    engine = Engine(PoisonedModel(smollm2.model, poison), EngineConfig(kv_cache_tokens=2048),
                    smollm2.eos_token_ids, tok)
    endpoint = f"ipc://{tmp_path / ('s-' + uuid.uuid4().hex[:8] + '.sock')}"
    with serve_in_thread(EngineServer(engine, endpoint)):
        client = Client(Connection(endpoint, heartbeat_timeout=600), timeout=600)  # a loaded CPU is slow
        streamed: dict[int, list[int]] = {}

        def stream(i: int) -> None:
            streamed[i] = [t for ch in client.stream(PROMPTS[i], max_new_tokens=BUDGET) for t in ch.token_ids]

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        culprits = [
            (dict(prompt="Hello", stop_token_ids=[10_000_000], min_new_tokens=3), "invalid_request", "stop_token_ids"),
            (dict(prompt="Hello", n=10**9), "invalid_request", "n must be"),
            (dict(prompt="Pick one:", regex="[a-z]{8}"), "request_failed", "injected fault: the grammar"),
            (dict(prompt=tok.encode("Say hi") + [poison]), "request_failed", "PoisonError"),
        ]
        for options, code, words in culprits:
            with pytest.raises(EngineError) as err:
                client.generate(**{"max_new_tokens": 8, **options})
            assert err.value.code == code and words in err.value.message, err.value
        for t in threads:
            t.join(timeout=300)
        assert [streamed[i] for i in range(len(PROMPTS))] == expected
        stats = settled_stats(client)
        assert stats["integrity"] == "ok" and stats["running"] == 0
        assert stats["pool_free"] + stats["cache_evictable"] == stats["pool_capacity"]
        client.close()
