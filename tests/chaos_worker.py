"""One client process of the chaos test: rounds of random valid, invalid, aborted, disconnecting,
over-long and huge-n requests against one engine (torch-free, so it starts fast)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from radixlm import EngineError
from radixlm.client import Client
from radixlm.connection import Connection

VOCAB = 64
CONTEXT = 1024


def _prompt(rng: random.Random, shared: list[int]) -> list[int]:
    return shared[: rng.randrange(0, len(shared) + 1)] + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 12))]


INVALID: list[tuple[str, dict[str, Any]]] = [
    ("oov_prompt", dict(prompt=[VOCAB + 5])),
    ("oov_stop_with_min_tokens", dict(stop_token_ids=[10_000_000], min_new_tokens=3)),
    ("huge_n", dict(n=10**9)),
    ("nan_temperature", dict(temperature=float("nan"))),
    ("huge_max_new_tokens", dict(max_new_tokens=10**9)),
    ("over_long_prompt", dict(prompt=[7] * CONTEXT)),
    ("empty_prompt", dict(prompt=[])),
    ("negative_seed", dict(seed=-3)),
]


def run(endpoint: str, seed: int, rounds: int) -> dict[str, Any]:
    """Returns counts and, for every valid request, (prompt, max_new_tokens, output ids) to check."""
    rng = random.Random(seed)
    shared = [rng.randrange(1, VOCAB) for _ in range(30)]
    client = Client(Connection(endpoint), timeout=60)
    counts: Counter = Counter()
    outputs: list[tuple[list[int], int, list[int]]] = []
    for _ in range(rounds):
        for kind in rng.sample(["valid", "stream", "n3", "invalid", "abort", "disconnect"], k=3):
            counts["sent"] += 1
            max_new = rng.randrange(1, 16)
            prompt = _prompt(rng, shared)
            try:
                if kind == "valid":
                    r = client.generate(prompt, max_new_tokens=max_new, ignore_eos=True)
                    outputs.append((prompt, max_new, r.output_ids))
                elif kind == "stream":
                    ids = [t for ch in client.stream(prompt, max_new_tokens=max_new, ignore_eos=True) for t in ch.token_ids]
                    outputs.append((prompt, max_new, ids))
                elif kind == "n3":
                    for r in client.generate(prompt, max_new_tokens=max_new, ignore_eos=True, n=3):
                        outputs.append((prompt, max_new, r.output_ids))
                elif kind == "invalid":
                    name, options = rng.choice(INVALID)
                    options = {"prompt": prompt, "max_new_tokens": max_new, **options}
                    try:
                        client.generate(**options)
                        counts["invalid_accepted"] += 1
                    except EngineError as exc:
                        counts[f"rejected:{exc.code}"] += 1
                        counts[f"rejected_kind:{name}"] += 1
                    continue
                elif kind == "abort":
                    stream = client.stream(prompt, max_new_tokens=900, ignore_eos=True)
                    next(stream)
                    stream.close()
                    counts["aborted"] += 1
                    continue
                else:  # a client that sends a long request and goes away without a word
                    gone = Client(Connection(endpoint), timeout=60)
                    gone.conn.send(_long_request(gone, prompt), None)
                    gone.ping()  # the request has arrived
                    gone.close()
                    counts["disconnected"] += 1
                    continue
                counts["completed"] += 1
            except TimeoutError:
                counts["lost"] += 1
        stats = client.stats(check_integrity=True)
        counts["integrity_ok"] += stats["integrity"] == "ok"
        counts["rounds"] += 1
    client.close()
    return {"counts": dict(counts), "outputs": outputs}


def _long_request(client: Client, prompt: list[int]):
    from radixlm.client import _generate_message

    return _generate_message(client.conn.new_rid(), prompt, False, {"max_new_tokens": 900, "ignore_eos": True})
