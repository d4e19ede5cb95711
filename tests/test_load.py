"""Load through ZeroMQ: 8 client processes x 32 concurrent streaming requests on the fake model."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random

from fake_model import FakeModel
from server_harness import fake_server

PROCESSES, PER_PROCESS, NEW_TOKENS = 8, 32, 12


def prompts_for(worker: int) -> list[list[int]]:
    rng = random.Random(worker)
    trunk = [rng.randrange(1, 64) for _ in range(20)]
    return [trunk[: rng.randrange(0, 20)] + [rng.randrange(1, 64) for _ in range(rng.randrange(1, 8))]
            for _ in range(PER_PROCESS)]


def client_process(endpoint: str, worker: int, out: mp.Queue) -> None:
    from radixlm.client import Client
    from radixlm.connection import Connection

    client = Client(Connection(endpoint), timeout=60)

    async def one(prompt):
        tokens = []
        async for chunk in client.aio.stream(prompt, max_new_tokens=NEW_TOKENS, ignore_eos=True):
            tokens.extend(chunk.token_ids)
        return tokens

    async def run():
        return await asyncio.gather(*[one(p) for p in prompts_for(worker)])

    out.put((worker, asyncio.run(run())))
    client.close()


def test_eight_processes_of_concurrent_streams_lose_and_duplicate_nothing(tmp_path):
    model = FakeModel()
    with fake_server(tmp_path) as server:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=client_process, args=(server.endpoint, w, out)) for w in range(PROCESSES)]
        for p in procs:
            p.start()
        results = dict(out.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert sorted(results) == list(range(PROCESSES))
        for worker, streams in results.items():
            expected = [model.reference(p, NEW_TOKENS) for p in prompts_for(worker)]
            assert streams == expected
        stats = server.engine.stats_dict()
        assert stats["requests_finished"] == PROCESSES * PER_PROCESS
        server.engine.check_integrity()
